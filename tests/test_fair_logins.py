"""Issue 29, the abuse run at 4e032ff: the queue was shared by client address, and the benchmark's 16 ordinary
users all connect from 127.0.0.1, so together they were one client with 16 users' recent seconds; a flood from
one login on another address then ran ahead of all of them (its 48 analyses before any of theirs), and their
events waited past the 60-s upload age limit. With logins, a login is the client."""

from __future__ import annotations

from types import SimpleNamespace


def _event(address, name, username=None):
    return SimpleNamespace(_id=name, name=name, session_hash=name, username=username,
                           request=SimpleNamespace(scope={"client": (address, 1)}))


def test_users_behind_one_address_are_not_one_client_beside_a_flood_from_one_login():
    from serdemo.uikit import FairShare, fair_queue
    clock = [0.0]
    share = FairShare(half_life_s=60, clock=lambda: clock[0])
    group = SimpleNamespace(queue=[])
    queue = SimpleNamespace(event_queue_per_concurrency_id={"a": group}, active_jobs=[None, None],
                            get_events=lambda: ([group.queue.pop(0)], False, "a"))
    fair_queue(SimpleNamespace(_queue=queue), share=share)
    # a minute of ordinary use: 16 users on 127.0.0.1 ran 2-s analyses back to back on both workers
    for i in range(60):
        group.queue.append(_event("127.0.0.1", f"warm{i}", username=f"user{i % 16:02d}"))
        queue.active_jobs[0] = queue.get_events()[0]
        clock[0] += 2
        queue.active_jobs[0][0].run_time = 2.0
        queue.active_jobs[0] = None
    flood = [_event("127.0.0.2", f"flood{i}", username="mallory") for i in range(20)]
    users = [_event("127.0.0.1", f"user{i:02d}", username=f"user{i:02d}") for i in range(4)]
    group.queue += flood + users
    picked = []
    for _ in range(8):  # each runs 2 s; two workers: one ends every second
        event = queue.get_events()[0][0]
        picked.append(event.name)
        event.run_time = 2.0
        clock[0] += 1
    # each user has had ~7 s lately, mallory none: the flood catches up to one user's time, then takes turns
    # (by address, 127.0.0.1 had had 120 s, and all 20 of the flood's went first)
    assert {"user00", "user01", "user02", "user03"} <= set(picked), picked
    assert sum(name.startswith("flood") for name in picked) <= 4, picked


def test_without_logins_the_address_is_still_the_client():
    from serdemo.uikit import fair_queue
    flood = [_event("203.0.113.9", f"flood{i}") for i in range(5)]
    other = _event("198.51.100.4", "alice")
    group = SimpleNamespace(queue=[*flood, other])
    queue = SimpleNamespace(event_queue_per_concurrency_id={"a": group},
                            get_events=lambda: group.queue.pop(0).name)
    fair_queue(SimpleNamespace(_queue=queue))
    assert [queue.get_events() for _ in range(2)] == ["flood0", "alice"]
