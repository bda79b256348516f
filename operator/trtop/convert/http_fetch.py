"""One guarded HTTP(S) download: policy-checked at every hop, bounded in bytes and time.

Redirects are followed by hand (at most ``MAX_REDIRECTS``) so that each target passes
``guard.check_url`` (no https->http, allowed hosts) and each connection goes to an
address ``guard.resolve`` checked (no private, loopback or link-local address unless
allowed); an ``Authorization`` header is dropped when a redirect leaves the host.
The body is written with a byte cap (and must be as long as its Content-Length says);
a watchdog closes the connection when the fetch's deadline passes, so a server that
trickles its TLS handshake, headers or body cannot hold a build past it.
Proxies are not used: a build reaches its sources directly. Called by ``source``.
"""
from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from trtop.api.fetch import FetchPolicy, redact
from trtop.convert.errors import FetchRefusedError, ModelNotFoundError, NetworkError, TooLargeError
from trtop.convert.guard import Deadline, check_url, resolve

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_REDIRECTS = 5
_USER_HTTP = {400, 401, 403, 404, 410}
_REDIRECTS = {301, 302, 303, 307, 308}


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address, with the certificate checked for the URL's host name."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        self.sock = sock = socket.create_connection((self._address, self.port), self.timeout)  # the watchdog's
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def download(url: str, dest: Path, policy: FetchPolicy, deadline: Deadline,
             headers: Mapping[str, str] | None = None) -> Path:
    """Fetch ``url`` into ``dest``; user errors for 4xx and policy refusals, NetworkError otherwise."""
    current, previous = url, ""
    sent = dict(headers or {})
    for _ in range(MAX_REDIRECTS + 1):
        parts = check_url(current, policy, previous=previous)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = resolve(host, port, policy, current, deadline)
        conn = _connection(parts.scheme, host, port, address, deadline.left())
        watchdog = threading.Timer(deadline.left(at_most=float("inf")), _abort, (conn,))
        watchdog.daemon = True
        watchdog.start()
        response: http.client.HTTPResponse | None = None
        try:
            # Percent-encoded where it is not ASCII (http.client sends ASCII only: a name such as m\u00fc.onnx
            # raised UnicodeEncodeError, an internal error); what is encoded already stays as it is.
            path = urllib.parse.urlunsplit(("", "", urllib.parse.quote(parts.path or "/", safe=_URL_SAFE),
                                            urllib.parse.quote(parts.query, safe=_URL_SAFE), ""))
            conn.request("GET", path, headers={"Host": parts.netloc.rsplit("@", 1)[-1], **sent})
            response = conn.getresponse()
            if response.status in _REDIRECTS:
                location = response.getheader("Location") or ""
                if not location:
                    raise NetworkError(f"{redact(current)}: HTTP {response.status} without a Location")
                previous, current = current, urllib.parse.urljoin(current, location)
                if urllib.parse.urlsplit(current).hostname != host:
                    sent.pop("Authorization", None)  # credentials stay with the host they were meant for
                continue
            if response.status in _USER_HTTP:
                raise ModelNotFoundError(f"{redact(current)}: HTTP {response.status} {response.reason}: check the "
                                         "URI and its access rights")
            if response.status != 200:
                raise NetworkError(f"{redact(current)}: HTTP {response.status} {response.reason}")
            _copy(conn, response, dest, policy.max_bytes, deadline, current)
            return dest
        except (OSError, http.client.HTTPException) as exc:
            deadline.left()  # the watchdog cut the connection at the deadline: say so
            raise NetworkError(f"{redact(current)}: cannot reach the host ({exc}); check the host name and the network") \
                from None
        finally:
            watchdog.cancel()
            if response is not None:
                response.close()
            conn.close()
    raise FetchRefusedError(f"{redact(url)}: more than {MAX_REDIRECTS} redirects")


_URL_SAFE = "/%:@!$&'()*+,;=~"  # (with letters, digits and _.-, which quote() never encodes)


def _connection(scheme: str, host: str, port: int, address: str, timeout: float) -> http.client.HTTPConnection:
    if scheme == "https":
        return _PinnedHTTPSConnection(host, port, address, timeout, ssl.create_default_context())
    return _PinnedHTTPConnection(host, port, address, timeout)


def _abort(conn: http.client.HTTPConnection) -> None:
    """The deadline passed: end the connection, so that a read blocked in it returns at once."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _copy(conn: http.client.HTTPConnection, response: http.client.HTTPResponse, dest: Path, cap: int,
          deadline: Deadline, what: str) -> None:
    announced = response.length or 0  # http.client's parse of Content-Length: None when absent, chunked or bogus
    if announced > cap:
        raise TooLargeError(f"{redact(what)}: {announced} bytes announced, more than the {cap} a fetch may "
                            "download (fetch.maxBytes)")
    done, last = 0, time.monotonic()
    with open(dest, "wb") as f:
        while True:
            timeout = deadline.left()
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            chunk = response.read1(CHUNK)
            if not chunk:
                break
            done += len(chunk)
            if done > cap:
                raise TooLargeError(f"{redact(what)}: more than the {cap} bytes a fetch may download "
                                    "(fetch.maxBytes)")
            f.write(chunk)
            if time.monotonic() - last > 5:
                last = time.monotonic()
                share = f" of {announced / 2**20:.1f} MiB" if announced else ""
                log.info("fetching %s: %.1f MiB%s", redact(what), done / 2**20, share)
    if done < announced:  # http.client ends a body at a closed connection without complaint
        raise NetworkError(f"{redact(what)}: the connection closed after {done} of the {announced} bytes announced")
