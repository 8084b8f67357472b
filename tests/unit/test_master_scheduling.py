"""The master's scheduling policy: SCHED_BATCH when the system grants it, a warning when not."""

from __future__ import annotations

import errno
import os

from smarthost import master


def test_a_refused_policy_is_a_warning_not_a_failure(monkeypatch) -> None:
    def refuse(pid, policy, param):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    warning = master._batch_scheduling()
    assert warning == ("cannot use the SCHED_BATCH scheduling policy (Operation not permitted);"
                       " running with the default")


def test_the_policy_is_set_for_the_calling_thread(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda pid, policy, param: calls.append((pid, policy)))
    assert master._batch_scheduling() is None
    assert calls == [(0, os.SCHED_BATCH)]
