"""The retry schedule, table-driven, with Postfix's defaults and edge settings."""

import pytest

from smarthost.queue.schedule import DAY, RetryParams, delay_warning_due, next_attempt

DEFAULTS = RetryParams()
T0 = 1_700_000_000.0


@pytest.mark.parametrize(
    "attempts, age, params, null_sender, wait",
    [
        (0, 0, DEFAULTS, False, 0),  # never tried: now
        (1, 0, DEFAULTS, False, 300),  # first failure: minimal_backoff_time
        (2, 300, DEFAULTS, False, 300),
        (3, 600, DEFAULTS, False, 600),  # from here the wait doubles ...
        (4, 1200, DEFAULTS, False, 1200),
        (5, 2400, DEFAULTS, False, 2400),
        (6, 4800, DEFAULTS, False, 4000),  # ... up to maximal_backoff_time
        (30, 3 * DAY, DEFAULTS, False, 4000),
        (30, 5 * DAY - 1, DEFAULTS, False, 4000),
        (30, 5 * DAY, DEFAULTS, False, None),  # maximal_queue_lifetime reached: bounce
        (1, 10, RetryParams(maximal_queue_lifetime=0), False, None),  # 0: try once
        (3, 2 * DAY, RetryParams(bounce_queue_lifetime=DAY), True, None),  # bounces expire sooner
        (3, 2 * DAY, RetryParams(bounce_queue_lifetime=DAY), False, 4000),  # ... only bounces
        (2, 100, RetryParams(minimal_backoff_time=60, queue_run_delay=60), False, 100),
        (2, 100, RetryParams(minimal_backoff_time=60, queue_run_delay=900), False, 900),  # the scan interval floors it
        (2, 9000, RetryParams(minimal_backoff_time=5000, maximal_backoff_time=1000), False, 5000),  # crossed: min wins
        (1, -50, DEFAULTS, False, 300),  # clock went backwards: age 0
    ],
)
def test_next_attempt(attempts, age, params, null_sender, wait):
    now = T0 + age
    expected = None if wait is None else now + wait
    assert next_attempt(attempts, T0, now, params, null_sender=null_sender) == expected


def test_a_day_of_retries_with_the_defaults():
    now, attempts, times = T0, 0, []
    while now < T0 + DAY:
        attempts += 1
        now = next_attempt(attempts, T0, now, DEFAULTS)
        times.append(now - T0)
    assert times[:7] == [300, 600, 1200, 2400, 4800, 8800, 12800]
    assert len(times) == 26


@pytest.mark.parametrize(
    "age, params, sent, null_sender, due",
    [
        (10 * 3600, DEFAULTS, False, False, False),  # 0h: off
        (3 * 3600, RetryParams(delay_warning_time=4 * 3600), False, False, False),
        (4 * 3600, RetryParams(delay_warning_time=4 * 3600), False, False, True),
        (5 * 3600, RetryParams(delay_warning_time=4 * 3600), True, False, False),  # only once
        (5 * 3600, RetryParams(delay_warning_time=4 * 3600), False, True, False),  # never to <>
    ],
)
def test_delay_warning(age, params, sent, null_sender, due):
    assert delay_warning_due(T0, T0 + age, params, already_sent=sent, null_sender=null_sender) is due


def test_params_from_config(tmp_path):
    from smarthost.config import load

    (tmp_path / "main.cf").write_text("maximal_queue_lifetime = 2d\ndelay_warning_time = 4h\nminimal_backoff_time = 10m\n")
    (tmp_path / "master.cf").write_text("")
    params = RetryParams.from_params(load(tmp_path).params)
    assert params == RetryParams(
        minimal_backoff_time=600, maximal_queue_lifetime=2 * DAY, delay_warning_time=4 * 3600
    )
