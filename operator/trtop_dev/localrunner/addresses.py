"""Pod IPs on the loopback: 127.0.0.2, 127.0.0.3, ... one per pod, reused once the pod is gone.

Linux routes all of 127.0.0.0/8 to ``lo``, so each pod's process can bind its own address
and two replicas can listen on the same port. 127.0.0.1 is the node's (hostIP). Called by
``trtop_dev.localrunner.runner``.
"""
from __future__ import annotations

import ipaddress
import threading


class AddressesExhausted(RuntimeError):
    """Every loopback address of the range is held by a pod."""


class LoopbackAddresses:
    """Hands out the lowest free address of 127.0.0.2 .. 127.0.255.254 (skipping .0 and .255)."""

    def __init__(self, first: str = "127.0.0.2", last: str = "127.0.255.254") -> None:
        self._first = int(ipaddress.IPv4Address(first))
        self._last = int(ipaddress.IPv4Address(last))
        self._held: dict[str, str] = {}  # owner (pod uid) -> address
        self._lock = threading.Lock()

    def take(self, owner: str, wanted: str | None = None) -> str:
        """The owner's address: the one it holds, ``wanted`` when free (a pod seen again), else the lowest free."""
        with self._lock:
            if owner in self._held:
                return self._held[owner]
            used = set(self._held.values())
            if wanted and wanted not in used and self._in_range(wanted):
                self._held[owner] = wanted
                return wanted
            for n in range(self._first, self._last + 1):
                if n & 0xFF in (0, 255):
                    continue
                address = str(ipaddress.IPv4Address(n))
                if address not in used:
                    self._held[owner] = address
                    return address
        raise AddressesExhausted(f"all loopback addresses {self._first}..{self._last} are held by pods")

    def give_back(self, owner: str) -> None:
        with self._lock:
            self._held.pop(owner, None)

    def held(self) -> dict[str, str]:
        with self._lock:
            return dict(self._held)

    def _in_range(self, address: str) -> bool:
        try:
            n = int(ipaddress.IPv4Address(address))
        except ValueError:
            return False
        return self._first <= n <= self._last and n & 0xFF not in (0, 255)
