"""The retry schedule: when a deferred message is tried again, when it expires, when to warn.

Pure functions of the message's arrival, the clock reading passed in, and
Postfix's parameters (postconf(5), qmgr(8)):

* After a failed attempt the message waits as long as it has been queued,
  but at least ``minimal_backoff_time`` and at most ``maximal_backoff_time``
  (qmgr: "exponential backoff by doubling the time between delivery
  attempts"; Postfix computes it from the time in the queue, so retries
  spread out instead of bunching).
* ``queue_run_delay``: Postfix scans the deferred queue that often, so no
  retry comes sooner.  Our queue manager wakes exactly when an entry is due,
  so here it is a floor on the wait (postconf(5) asks for
  ``minimal_backoff_time`` >= ``queue_run_delay`` anyway).
* ``maximal_queue_lifetime`` (``bounce_queue_lifetime`` for null-sender
  mail, i.e. bounces): once a message has been queued this long, the next
  temporary failure returns it as undeliverable.  0 means "try once".
* ``delay_warning_time``: one warning after the message has waited this
  long; 0 (Postfix's default, ``0h``) turns warnings off; never for the null
  sender.  Whether it was already sent is derived, not stored: the warning goes
  out with the first failed attempt that ends at least ``delay_warning_time``
  after arrival, and :func:`delay_warning_sent` tells from the time an attempt
  was due (which the previous failed attempt computed with :func:`next_attempt`)
  whether that previous attempt had already crossed the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class RetryParams:
    minimal_backoff_time: float = 300.0
    maximal_backoff_time: float = 4000.0
    queue_run_delay: float = 300.0
    maximal_queue_lifetime: float = 5 * DAY
    bounce_queue_lifetime: float = 5 * DAY
    delay_warning_time: float = 0.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RetryParams:
        return cls(**{name: float(params[name]) for name in cls.__dataclass_fields__})


def next_attempt(
    attempts: int, first_arrival: float, now: float, params: RetryParams, *, null_sender: bool = False
) -> float | None:
    """When to try again after ``attempts`` attempts, the last one failing temporarily at ``now``.

    ``None`` means the message has expired: bounce it.  ``attempts == 0``
    (never tried) means now.
    """
    if attempts <= 0:
        return now
    age = max(0.0, now - first_arrival)
    lifetime = params.bounce_queue_lifetime if null_sender else params.maximal_queue_lifetime
    if age >= lifetime:
        return None
    return now + _backoff(age, params)


def _backoff(age: float, params: RetryParams) -> float:
    # Postfix's order: cap at the maximum, then raise to the minimum (which wins if they cross).
    delay = min(age, params.maximal_backoff_time)
    return max(delay, params.minimal_backoff_time, params.queue_run_delay)


def delay_warning_sent(first_arrival: float, due: float, params: RetryParams) -> bool:
    """Whether the failed attempt that scheduled the current one (due at ``due``) was already
    ``delay_warning_time`` or more after arrival, i.e. sent the warning.

    :func:`next_attempt` gives ``due = t + backoff(t - arrival)`` for the previous attempt's end
    ``t``, which grows with ``t``; so ``t >= arrival + delay_warning_time`` exactly when ``due``
    is at least what that threshold would have given. A fresh message (``due`` = arrival) has had
    no attempt. (An operator's flush, release or requeue changes ``due``; a warning may then be
    sent twice, never lost.)
    """
    threshold = first_arrival + params.delay_warning_time
    return due >= threshold + _backoff(params.delay_warning_time, params)


def delay_warning_due(
    first_arrival: float, now: float, params: RetryParams, *, already_sent: bool, null_sender: bool = False
) -> bool:
    """Whether to send the (single) "delayed mail" notice now."""
    if already_sent or null_sender or params.delay_warning_time <= 0:
        return False
    return now - first_arrival >= params.delay_warning_time
