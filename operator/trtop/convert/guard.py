"""The fetch policy, enforced: which URIs, hosts, addresses and local paths a build may read.

A ModelDeployment's URIs are tenant input and the build pod runs inside the cluster, so
an https:// URI must not reach the cloud metadata service (169.254.169.254), in-cluster
services or loopback, and a file:// URI must not read the pod's own secrets. Every host
is checked on every connection (after each redirect too) against the addresses it
resolves to; the connection then goes to the checked address (no DNS rebinding in
between). Refusals are ``FetchRefusedError`` (a user error: exit 2, no retry).
Called by ``http_fetch`` and ``source``.
"""
from __future__ import annotations

import ipaddress
import socket
import stat
import time
import urllib.parse
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from trtop.api.fetch import FetchPolicy, redact
from trtop.convert.errors import FetchRefusedError, NetworkError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Local use (a person running ``trtop convert`` on a laptop): any path, any network, plain http.
PERMISSIVE = FetchPolicy(schemes=("https", "http", "s3", "gs", "file"), file_roots=("/",),
                         private_networks=("0.0.0.0/0", "::/0"))


@dataclass
class Deadline:
    """One fetch's time budget: every wait (connect, read, retry) is cut to what is left."""

    seconds: float
    what: str
    end: float = field(init=False)

    def __post_init__(self) -> None:
        self.end = time.monotonic() + self.seconds

    def left(self, at_most: float = 30.0) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise NetworkError(f"{redact(self.what)}: not fetched within {self.seconds:.0f} s (the fetch deadline); "
                               "use a closer or faster source, or ask the platform to raise fetch.deadlineSeconds")
        return min(at_most, remaining)


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def check_scheme(uri: str, policy: FetchPolicy) -> str:
    scheme = scheme_of(uri)
    if scheme not in policy.schemes:
        raise FetchRefusedError(f"{redact(uri)}: scheme {scheme!r} is not allowed here (allowed: "
                                f"{', '.join(policy.schemes)}); the platform's fetch policy decides this")
    return scheme


def check_host(host: str, policy: FetchPolicy, uri: str) -> None:
    if policy.hosts and not any(fnmatch(host.lower(), pattern.lower()) for pattern in policy.hosts):
        raise FetchRefusedError(f"{redact(uri)}: host {host!r} is not one of the allowed hosts "
                                f"({', '.join(policy.hosts)})")


def is_private(ip: IPAddress) -> bool:
    return bool(ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
                                         and is_private(ip.ipv4_mapped)))


def check_address(ip: IPAddress, policy: FetchPolicy, uri: str) -> None:
    if not is_private(ip):
        return
    if any(ip in ipaddress.ip_network(net, strict=False) for net in policy.private_networks):
        return
    raise FetchRefusedError(
        f"{redact(uri)}: {ip} is a private, loopback or link-local address (cluster services, the node, the cloud "
        "metadata service); builds may not fetch from there unless the platform lists the network in "
        "fetch.privateNetworks"
    )


def resolve(host: str, port: int, policy: FetchPolicy, uri: str, deadline: Deadline) -> str:
    """The first address of ``host`` after every one it resolves to passed ``check_address``."""
    deadline.left()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NetworkError(f"{redact(uri)}: cannot resolve {host!r} ({exc.strerror}); check the host name") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for ip in addresses:
        check_address(ip, policy, uri)
    return str(addresses[0])


def check_url(url: str, policy: FetchPolicy, *, previous: str = "") -> urllib.parse.SplitResult:
    """Scheme, host and downgrade checks of one URL (the first one, or a redirect's target)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if previous and urllib.parse.urlsplit(previous).scheme.lower() == "https" and scheme != "https":
        raise FetchRefusedError(f"{redact(previous)} redirects to {redact(url)}: a redirect from https to "
                                f"{scheme or 'another scheme'} is refused (it would drop the encryption)")
    if scheme not in ("https", "http") or scheme not in policy.schemes:
        raise FetchRefusedError(f"{redact(url)}: scheme {scheme!r} is not allowed here (allowed: "
                                f"{', '.join(s for s in policy.schemes if s.startswith('http')) or 'none'})")
    if not parts.hostname:
        raise FetchRefusedError(f"{redact(url)}: names no host")
    check_host(parts.hostname, policy, url)
    return parts


def check_local_path(uri: str, path: Path, policy: FetchPolicy) -> Path:
    """``path`` resolved, refused unless inside a file root; a folder's links must stay inside too.

    Only files and folders pass: opening a FIFO blocks for ever, and a device reads for ever.
    """
    resolved = _resolved(uri, path, path)
    roots = [Path(r).resolve() for r in policy.file_roots]
    if not any(resolved.is_relative_to(root) for root in roots):
        raise FetchRefusedError(f"{redact(uri)}: local paths must lie under {', '.join(policy.file_roots)} "
                                "(where the model's volume is mounted)")
    if resolved.is_dir():
        for p in resolved.rglob("*"):
            if p.is_symlink() and not any(_resolved(uri, p, p.relative_to(resolved)).is_relative_to(root)
                                          for root in roots):
                raise links_outside(uri, p.relative_to(resolved), policy)
            _check_kind(uri, p, p.relative_to(resolved))
    _check_kind(uri, resolved, Path(resolved.name))
    return resolved


def _resolved(uri: str, path: Path, shown: Path) -> Path:
    """``path.resolve()``, a link loop refused as the tenant's error (it raised RuntimeError, or OSError on newer
    Pythons: an internal failure, the build retried for nothing)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        raise FetchRefusedError(f"{redact(uri)}: {shown} is a link that never ends (a loop): {exc}") from None


def _check_kind(uri: str, path: Path, shown: Path) -> None:
    try:
        mode = path.stat().st_mode  # through links: what a reader would open
    except OSError:
        return  # a dangling link: nothing to open
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise not_regular(uri, shown)


def links_outside(uri: str, shown: object, policy: FetchPolicy) -> FetchRefusedError:
    """The refusal of a link in a local model that leaves the file roots (here, and in the converter's copy)."""
    return FetchRefusedError(f"{redact(uri)}: {shown} links outside {', '.join(policy.file_roots)}")


def not_regular(uri: str, shown: object) -> FetchRefusedError:
    """The refusal of a FIFO, socket or device in a local model (here, and in the converter's copy)."""
    return FetchRefusedError(f"{redact(uri)}: {shown} is not a regular file or folder (a FIFO, socket or "
                             "device would block or never end the build)")
