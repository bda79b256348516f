"""Loopback pod IPs: lowest free first, reused after release, one per owner."""
from __future__ import annotations

import socket

import pytest

from trtop_dev.localrunner.addresses import AddressesExhausted, LoopbackAddresses


def test_lowest_free_address_and_reuse() -> None:
    pool = LoopbackAddresses()
    assert [pool.take(o) for o in ("a", "b", "c")] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert pool.take("a") == "127.0.0.2"
    pool.give_back("b")
    assert pool.take("d") == "127.0.0.3"


def test_a_wanted_address_is_kept_when_free() -> None:
    pool = LoopbackAddresses()
    assert pool.take("a", wanted="127.0.0.9") == "127.0.0.9"
    assert pool.take("b", wanted="127.0.0.9") == "127.0.0.2"
    assert pool.take("c", wanted="10.0.0.1") == "127.0.0.3"


def test_skips_network_and_broadcast_like_octets_and_runs_out() -> None:
    pool = LoopbackAddresses(first="127.0.0.253", last="127.0.1.2")
    assert [pool.take(o) for o in "abcd"] == ["127.0.0.253", "127.0.0.254", "127.0.1.1", "127.0.1.2"]
    with pytest.raises(AddressesExhausted):
        pool.take("e")


def test_two_servers_bind_the_same_port_on_two_pod_addresses() -> None:
    # Linux routes 127.0.0.0/8 to lo: the fact the runner's per-pod addresses rest on.
    first, second = socket.socket(), socket.socket()
    try:
        first.bind(("127.0.0.2", 0))
        port = first.getsockname()[1]
        second.bind(("127.0.0.3", port))
    finally:
        first.close()
        second.close()
