"""Per-client counters across every worker process: connections, and AUTH attempts per time unit.

Postfix keeps these counts in its ``anvil`` server; we keep them in anonymous shared memory
maps that the master creates before forking. Each worker process writes only its own row (so
no lock is needed), and a client's count is the sum of its slot over all rows. When a worker
dies, the master clears its row, so a crash cannot leave clients counted forever.

Rates (``smtpd_client_auth_rate_limit``) are counted in fixed windows of
``anvil_rate_time_unit``: each slot remembers which window its count belongs to.

Addresses are hashed into ``SLOTS`` slots; two clients that share a slot share a count, which
can only make the limit stricter for them, never looser.
"""

from __future__ import annotations

import mmap
import zlib

SLOTS = 16384  # per row; counts are 16-bit
MAX_ROWS = 64  # worker processes alive at once, old generations draining included


class ClientCounts:
    def __init__(self) -> None:
        self._map = mmap.mmap(-1, SLOTS * MAX_ROWS * 2)  # MAP_SHARED | MAP_ANONYMOUS
        self._view = memoryview(self._map).cast("H")
        self._rate_map = mmap.mmap(-1, SLOTS * MAX_ROWS * 8)  # per slot: window number, count
        self._rates = memoryview(self._rate_map).cast("I")
        self._free = list(range(MAX_ROWS - 1, -1, -1))

    # The master's side -------------------------------------------------------------------

    def allocate_row(self) -> int:
        """A row for a new worker; raises RuntimeError when MAX_ROWS workers are alive."""
        if not self._free:
            raise RuntimeError(f"more than {MAX_ROWS} worker processes alive")
        return self._free.pop()

    def release_row(self, row: int) -> None:
        """Forget everything a (dead) worker counted."""
        self._view[row * SLOTS : (row + 1) * SLOTS] = memoryview(bytes(SLOTS * 2)).cast("H")
        self._rates[row * SLOTS * 2 : (row + 1) * SLOTS * 2] = memoryview(bytes(SLOTS * 8)).cast("I")
        self._free.append(row)

    # A worker's side -------------------------------------------------------------------------

    def bind(self, row: int) -> WorkerCounts:
        return WorkerCounts(self._view, self._rates, row)


class WorkerCounts:
    """One worker's view: it changes its own row and reads everyone's."""

    def __init__(self, view: memoryview, rates: memoryview, row: int) -> None:
        self._view = view
        self._base = row * SLOTS
        self._rates = rates

    @staticmethod
    def _slot(address: str) -> int:
        return zlib.crc32(address.encode()) & (SLOTS - 1)

    def opened(self, address: str) -> int:
        """Count a new connection; return the client's connections across all workers."""
        slot = self._slot(address)
        mine = self._base + slot
        view = self._view
        if view[mine] < 0xFFFF:
            view[mine] += 1
        return sum(view[slot::SLOTS])

    def closed(self, address: str) -> None:
        mine = self._base + self._slot(address)
        if self._view[mine] > 0:
            self._view[mine] -= 1

    def event(self, address: str, window: int) -> int:
        """Count one rate-limited event (an AUTH) in time window ``window``; return the client's
        events in that window across all workers."""
        slot = self._slot(address)
        rates = self._rates
        mine = (self._base + slot) * 2
        if rates[mine] != window:
            rates[mine] = window
            rates[mine + 1] = 0
        rates[mine + 1] += 1
        total = 0
        for index in range(slot * 2, len(rates), SLOTS * 2):
            if rates[index] == window:
                total += rates[index + 1]
        return total
