"""trtop's loops follow kopf's peering rule: only the highest-priority live replica works."""
import datetime as dt

from trtop.k8s.peering import PeeringConfig, allowed, should_work

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)


def peer(priority, seconds_ago=1, lifetime=60):
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - dt.timedelta(seconds=seconds_ago)).isoformat()}


def test_highest_priority_works_and_the_other_waits():
    peers = {"a": peer(10), "b": peer(5)}
    assert should_work(peers, 10, "a", NOW)
    assert not should_work(peers, 5, "b", NOW)


def test_dead_peers_do_not_count():
    peers = {"a": peer(10, seconds_ago=120), "b": peer(5)}
    assert should_work(peers, 5, "b", NOW)


def test_same_priority_pauses_everyone_like_kopf():
    peers = {"a": peer(0), "b": peer(0)}
    assert not should_work(peers, 0, "a", NOW) and not should_work(peers, 0, "b", NOW)


def test_without_own_id_a_single_peer_at_our_priority_is_us():
    assert should_work({"x": peer(3)}, 3, None, NOW)
    assert not should_work({"x": peer(3), "y": peer(3)}, 3, None, NOW)
    assert not should_work({"x": peer(3), "y": peer(7)}, 3, None, NOW)


def test_standalone_never_reads_the_cluster():
    assert allowed(PeeringConfig(standalone=True, name="trtop"))
