"""Queue ids: the time they carry, across the point where their leading characters change."""

from __future__ import annotations

from smarthost.queue import ids


def test_ids_carry_their_time_across_the_cached_prefix(monkeypatch):
    # The leading 7 of the 9 time characters change every 62**2 µs and are kept between ids;
    # ids made on both sides of such a change must still carry their own microsecond.
    base = 1_765_000_000_000_000 // 3844 * 3844  # a multiple of 62**2 µs, in 2025
    monkeypatch.setattr(ids, "_last_us", 0)  # ids made earlier in this process carry a later time
    monkeypatch.setattr(ids, "_seq", 0)
    made = []
    for us in (base - 2, base - 1, base, base + 1, base + 3844, base + 3 * 3844 + 17):
        monkeypatch.setattr(ids.time, "time_ns", lambda us=us: us * 1000)
        made.append((us, ids.new_queue_id()))
    for us, queue_id in made:
        assert ids.is_queue_id(queue_id)
        assert round(ids.queue_id_time(queue_id) * 1e6) == us, queue_id
    assert [q for _, q in made] == sorted(q for _, q in made)
    assert len({q for _, q in made}) == len(made)


def test_ids_within_one_microsecond_differ_and_sort():
    made = [ids.new_queue_id() for _ in range(5000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
