"""The fetch policy against real servers: a local HTTPS server (self-signed, trusted through
SSL_CERT_FILE), moto S3 and crafted archives. Each refusal has a clear message and exit class."""
from __future__ import annotations

import datetime
import http.server
import io
import ipaddress
import json
import ssl
import tarfile
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trtop import names
from trtop.api.fetch import FetchPolicy, redact
from trtop.convert import errors, source
from trtop.convert.cli import build_parser, run
from trtop.convert.source import fetch

ROUTES: dict[str, tuple[int, dict[str, str], bytes]] = {}  # path -> (status, headers, body)
SEEN: list[str] = []  # paths the HTTPS server was asked for
LOOPBACK = FetchPolicy(private_networks=("127.0.0.1/32",), file_roots=("/nonexistent",))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urllib.parse.urlsplit(self.path).path
        SEEN.append(path)
        if path in ("/slow", "/drip-headers"):  # a trickle of body bytes, or of header bytes: one every 0.2 s
            if path == "/slow":
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
            else:
                self.send_response_only(200)
            try:
                for _ in range(60):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        if path in ("/short.onnx", "/bad-length.onnx"):  # a Content-Length that lies, or is no number
            self.send_response(200)
            self.send_header("Content-Length", "1000" if path == "/short.onnx" else "lots")
            self.end_headers()
            self.wfile.write(b"only-ten-b")
            return
        status, headers, body = ROUTES.get(path, (404, {}, b"not found"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trtop test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An HTTPS server on 0.0.0.0 (so 127.0.0.1 and 127.0.0.2 both reach it); its port and certificate."""
    cert, key = _certificate(tmp_path_factory.mktemp("tls"))
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], cert
    server.shutdown()
    server.server_close()


@pytest.fixture
def base(https_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch) -> str:
    port, cert = https_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setattr(source, "RETRY_DELAYS", (0.0, 0.0))
    ROUTES.clear()
    SEEN.clear()
    return f"https://127.0.0.1:{port}"


def _tgz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            t.addfile(info)
    return out.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


# --- what https URIs may reach -------------------------------------------------------------------
def test_an_allowed_https_download_and_archive_work(base: str, tmp_path: Path) -> None:
    ROUTES["/m.onnx"] = (200, {}, b"onnx-bytes")
    ROUTES["/m.tgz"] = (200, {}, _tgz({"saved_model/saved_model.pb": b"pb"}))
    assert fetch(f"{base}/m.onnx", tmp_path / "a", LOOPBACK).read_bytes() == b"onnx-bytes"
    assert (fetch(f"{base}/m.tgz", tmp_path / "b", LOOPBACK) / "saved_model.pb").read_bytes() == b"pb"


def test_loopback_is_refused_by_the_default_policy(base: str, tmp_path: Path) -> None:
    ROUTES["/m.onnx"] = (200, {}, b"onnx-bytes")
    with pytest.raises(errors.FetchRefusedError, match=r"127\.0\.0\.1 is a private, loopback or link-local") as e:
        fetch(f"{base}/m.onnx", tmp_path, FetchPolicy())
    assert e.value.exit_code == errors.EXIT_USER_ERROR and SEEN == []


def test_the_cloud_metadata_address_is_refused_without_a_connection(tmp_path: Path) -> None:
    with pytest.raises(errors.FetchRefusedError, match="169.254.169.254 is a private, loopback or link-local"):
        fetch("https://169.254.169.254/latest/meta-data/iam/security-credentials/", tmp_path, FetchPolicy())


def test_a_redirect_to_a_refused_address_is_refused(base: str, tmp_path: Path) -> None:
    port = urllib.parse.urlsplit(base).port
    ROUTES["/m.onnx"] = (302, {"Location": f"https://127.0.0.2:{port}/inner.onnx"}, b"")
    ROUTES["/inner.onnx"] = (200, {}, b"internal")
    with pytest.raises(errors.FetchRefusedError, match=r"127\.0\.0\.2 is a private"):
        fetch(f"{base}/m.onnx", tmp_path, LOOPBACK)
    assert SEEN == ["/m.onnx"]  # the refused hop was never asked


def test_a_redirect_from_https_to_http_is_refused(base: str, tmp_path: Path) -> None:
    permissive = FetchPolicy(schemes=("https", "http"), private_networks=("127.0.0.0/8",))
    ROUTES["/m.onnx"] = (301, {"Location": "http://127.0.0.1:9/m.onnx"}, b"")
    with pytest.raises(errors.FetchRefusedError, match="a redirect from https to http is refused") as e:
        fetch(f"{base}/m.onnx", tmp_path, permissive)
    assert e.value.exit_code == errors.EXIT_USER_ERROR


def test_plain_http_and_unlisted_hosts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.FetchRefusedError, match="scheme 'http' is not allowed"):
        fetch("http://models.example.com/m.onnx", tmp_path, FetchPolicy())
    with pytest.raises(errors.FetchRefusedError, match="host 'evil.example.org' is not one of the allowed hosts"):
        fetch("https://evil.example.org/m.onnx", tmp_path, FetchPolicy(hosts=("*.example.com",)))


def test_an_oversize_download_is_refused(base: str, tmp_path: Path) -> None:
    ROUTES["/big.onnx"] = (200, {}, b"x" * 5000)
    policy = FetchPolicy(private_networks=("127.0.0.1/32",), max_bytes=1000)
    with pytest.raises(errors.TooLargeError, match="more than the 1000 a fetch may download") as e:
        fetch(f"{base}/big.onnx", tmp_path, policy)
    assert e.value.exit_code == errors.EXIT_USER_ERROR


@pytest.mark.parametrize("path", ["/slow", "/drip-headers"])  # a slow body; headers a byte at a time (held 12 s)
def test_a_fetch_has_one_total_deadline(base: str, tmp_path: Path, path: str) -> None:
    policy = FetchPolicy(private_networks=("127.0.0.1/32",), deadline_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(errors.NetworkError, match="not fetched within 2 s"):
        fetch(f"{base}{path}", tmp_path, policy)
    assert time.monotonic() - started < 6


def test_a_url_that_is_not_ascii_is_sent_percent_encoded(base: str, tmp_path: Path) -> None:
    """http.client sends ASCII only: a model named m\u00fc.onnx raised UnicodeEncodeError (exit 1, retried)."""
    ROUTES["/m%C3%BC%20v2.onnx"] = (200, {}, b"umlaut")
    assert fetch(f"{base}/m\u00fc v2.onnx", tmp_path / "a", LOOPBACK).read_bytes() == b"umlaut"
    assert fetch(f"{base}/m%C3%BC%20v2.onnx", tmp_path / "b", LOOPBACK).read_bytes() == b"umlaut"  # as given


def test_a_body_shorter_than_its_content_length_is_a_network_error(base: str, tmp_path: Path) -> None:
    with pytest.raises(errors.NetworkError, match="10 of the 1000 bytes") as e:
        fetch(f"{base}/short.onnx", tmp_path, LOOPBACK)
    assert e.value.exit_code == errors.EXIT_INFRA_ERROR


def test_a_content_length_that_is_no_number_is_not_a_crash(base: str, tmp_path: Path) -> None:
    assert fetch(f"{base}/bad-length.onnx", tmp_path, LOOPBACK).read_bytes() == b"only-ten-b"


# --- archives ------------------------------------------------------------------------------------
@pytest.mark.parametrize("archive,error,match", [
    ("slip.tgz", errors.UnsafeArchiveError, "'../../escaped.txt' would land outside"),
    ("abs.tgz", errors.UnsafeArchiveError, "'/tmp/escaped.txt' would land outside"),
    ("link.tgz", errors.UnsafeArchiveError, "'token' is a link"),
    ("slip.zip", errors.UnsafeArchiveError, "'../escaped.txt' would land outside"),
    ("bomb.zip", errors.TooLargeError, "unpacks to more than 1000000 bytes"),
    ("bomb.tgz", errors.TooLargeError, "unpacks to more than 1000000 bytes"),
    ("many.zip", errors.TooLargeError, "more than 50 members"),
])
def test_unsafe_archives_are_refused(base: str, tmp_path: Path, archive: str, error: type, match: str) -> None:
    ROUTES["/slip.tgz"] = (200, {}, _tgz({"m/saved_model.pb": b"pb", "../../escaped.txt": b"planted"}))
    ROUTES["/abs.tgz"] = (200, {}, _tgz({"/tmp/escaped.txt": b"planted"}))
    ROUTES["/link.tgz"] = (200, {}, _tgz({"m/saved_model.pb": b"pb"},
                                         {"token": "/var/run/secrets/kubernetes.io/serviceaccount/token"}))
    ROUTES["/slip.zip"] = (200, {}, _zip({"../escaped.txt": b"planted"}))
    ROUTES["/bomb.zip"] = (200, {}, _zip({"zeros.bin": bytes(20_000_000)}))
    ROUTES["/bomb.tgz"] = (200, {}, _tgz({"zeros.bin": bytes(20_000_000)}))
    ROUTES["/many.zip"] = (200, {}, _zip({f"f{i}": b"" for i in range(60)}))
    policy = FetchPolicy(private_networks=("127.0.0.1/32",), max_extracted_bytes=1_000_000, max_files=50)
    with pytest.raises(error, match=match) as e:
        fetch(f"{base}/{archive}", tmp_path / "w", policy)
    assert e.value.exit_code == errors.EXIT_USER_ERROR
    assert not list(tmp_path.rglob("escaped.txt"))
    assert sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) < 2_000_000 + 200_000


def _tar_bytes(*members: tuple[str, bytes | None], fmt: int = tarfile.GNU_FORMAT,
               pax: dict[str, str] | None = None) -> bytes:
    """A .tgz of (name, data) members in this order; data None: a folder."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=fmt) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.pax_headers = dict(pax or {})
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            t.addfile(info, io.BytesIO(data or b""))
    return out.getvalue()


def _bad_crc(tgz: bytes) -> bytes:
    """The .tgz with its gzip trailer's CRC32 flipped: every member reads back, only the checksum says no."""
    return tgz[:-8] + bytes(x ^ 0xFF for x in tgz[-8:-4]) + tgz[-4:]


def _with_tail(tgz: bytes, tail: int) -> bytes:
    """The .tgz's tar stream followed by ``tail`` zero bytes past its end marker, compressed again."""
    import gzip

    return gzip.compress(gzip.decompress(tgz) + bytes(tail))


def _global_pax_chain(count: int) -> bytes:
    """A .tgz of ``count`` global pax headers before its one file (tarfile recurses once per header)."""
    import gzip

    raw = bytearray()
    for _ in range(count):
        info = tarfile.TarInfo("pax")
        info.type, info.size = tarfile.XGLTYPE, 12
        raw += info.tobuf(format=tarfile.USTAR_FORMAT) + b"11 comment=\n".ljust(512, b"\0")
    info = tarfile.TarInfo("m/x")
    info.size = 1
    raw += info.tobuf() + b"x".ljust(512, b"\0") + bytes(1024)
    return gzip.compress(bytes(raw))


def _zip_patched(compress: int = zipfile.ZIP_STORED, flag: int = 0, method: int | None = None,
                 garble: bool = False) -> bytes:
    """A .zip of one member, its headers patched: general purpose flag bits, compression method, data."""
    import os
    import struct

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compress) as z:
        z.writestr("m/x", os.urandom(1000) + bytes(5000))
    b = bytearray(out.getvalue())
    local, central = b.find(b"PK\x03\x04"), b.find(b"PK\x01\x02")
    for at in (local + 6, central + 8):
        struct.pack_into("<H", b, at, struct.unpack_from("<H", b, at)[0] | flag)
    if method is not None:
        struct.pack_into("<H", b, local + 8, method)
        struct.pack_into("<H", b, central + 10, method)
    if garble:
        for k in range(40):
            b[local + 33 + k] ^= 0xFF
    return bytes(b)


def _zip_members(*names: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in names:
            z.writestr(name, b"x")
    return out.getvalue()


def test_a_tgz_with_its_usual_padding_still_unpacks(tmp_path: Path) -> None:
    from trtop.convert import archives
    from trtop.convert.guard import Deadline

    archive = tmp_path / "m.tgz"
    archive.write_bytes(_with_tail(_tar_bytes(("m/x", b"model")), 20 * 512))
    out = archives.unpack(archive, FetchPolicy(max_extracted_bytes=1_000_000, max_files=50), Deadline(60, "m"))
    assert (out / "x").read_bytes() == b"model"


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("name,make,error,match", [
    ("long.tgz", lambda: _tar_bytes(("a" * 30_000_000, b"x")), errors.TooLargeError, "tar header block of"),
    ("pax.tgz", lambda: _tar_bytes(("m/x", b"x"), fmt=tarfile.PAX_FORMAT, pax={"comment": "z" * 30_000_000}),
     errors.TooLargeError, "tar header block of"),
    ("chain.tgz", lambda: _global_pax_chain(3000), errors.ModelFormatError, "not a readable archive"),
    ("dup.tgz", lambda: _tar_bytes(("m/a", b"first"), ("m/a", b"second")), errors.UnsafeArchiveError,
     "'m/a' appears more than once"),
    ("under.tgz", lambda: _tar_bytes(("m/a", b"x"), ("m/a/b", b"y")), errors.UnsafeArchiveError,
     "'m/a/b' collides with another member"),
    ("dirfile.tgz", lambda: _tar_bytes(("m/a", None), ("m/a", b"y")), errors.UnsafeArchiveError,
     "'m/a' appears more than once"),
    ("under.zip", lambda: _zip_members("m/a", "m/a/b"), errors.UnsafeArchiveError,
     "'m/a/b' collides with another member"),
    ("dup.zip", lambda: _zip_members("m/a", "m/a"), errors.UnsafeArchiveError, "'m/a' appears more than once"),
    ("name.zip", lambda: _zip_members("m/" + "a" * 300), errors.ModelFormatError, "too long for a file name"),
    ("secret.zip", lambda: _zip_patched(flag=0x1), errors.ModelFormatError, "'m/x' is encrypted"),
    ("deflate64.zip", lambda: _zip_patched(method=9), errors.ModelFormatError, "not a readable archive"),
    ("garbled.zip", lambda: _zip_patched(zipfile.ZIP_DEFLATED, garble=True), errors.ModelFormatError,
     "not a readable archive"),
    ("crc.tgz", lambda: _bad_crc(_tar_bytes(("m/x", b"x" * 1000))), errors.ModelFormatError,
     "not a readable archive.*CRC"),
    ("tail.tgz", lambda: _with_tail(_tar_bytes(("m/x", b"x")), 2 << 20), errors.UnsafeArchiveError,
     "bytes after the end of the archive"),
])
def test_hostile_archives_are_user_errors(tmp_path: Path, name: str, make: Any, error: type, match: str) -> None:
    """Each one used to end in an OSError, RuntimeError, zlib.error or RecursionError: exit 1, retried."""
    from trtop.convert import archives
    from trtop.convert.guard import Deadline

    archive = tmp_path / name
    archive.write_bytes(make())
    policy = FetchPolicy(max_extracted_bytes=1_000_000, max_files=5000)
    with pytest.raises(error, match=match) as e:
        archives.unpack(archive, policy, Deadline(60, name))
    assert e.value.exit_code == errors.EXIT_USER_ERROR


# --- local paths and S3 names ---------------------------------------------------------------------
def test_file_uris_only_under_the_model_mount(tmp_path: Path) -> None:
    models = tmp_path / "mnt" / "models"
    (models / "claim").mkdir(parents=True)
    (models / "claim" / "m.onnx").write_bytes(b"m")
    (models / "claim" / "sneaky").symlink_to("/etc")
    policy = FetchPolicy(file_roots=(str(models),))
    assert fetch(f"file://{models}/claim/m.onnx", tmp_path, policy).read_bytes() == b"m"
    with pytest.raises(errors.FetchRefusedError, match="local paths must lie under"):
        fetch("file:///etc/hostname", tmp_path, policy)
    with pytest.raises(errors.FetchRefusedError, match="local paths must lie under"):
        fetch(f"file://{models}/claim/sneaky/hostname", tmp_path, policy)
    with pytest.raises(errors.FetchRefusedError, match="sneaky links outside"):
        fetch(f"file://{models}/claim", tmp_path, policy)


def test_a_link_loop_on_the_mount_is_the_tenants_error(tmp_path: Path) -> None:
    """A loop of links (``a`` -> ``b`` -> ``a``) is refused with exit 2; resolving it raised RuntimeError (exit 1:
    an internal failure, retried)."""
    claim = tmp_path / "mnt" / "claim"
    claim.mkdir(parents=True)
    (claim / "saved_model.pb").write_bytes(b"pb")
    (claim / "a").symlink_to(claim / "b")
    (claim / "b").symlink_to(claim / "a")
    policy = FetchPolicy(file_roots=(str(tmp_path / "mnt"),))
    with pytest.raises(errors.FetchRefusedError, match="[ab] is a link that never ends") as e:
        fetch(f"file://{claim}", tmp_path / "w", policy)
    assert e.value.exit_code == errors.EXIT_USER_ERROR
    with pytest.raises(errors.UserError) as found:  # the loop named itself: it does not exist as a file
        fetch(f"file://{claim}/a", tmp_path / "w", policy)
    assert found.value.exit_code == errors.EXIT_USER_ERROR


def test_fifos_and_devices_on_the_mount_are_refused_before_anything_opens_them(tmp_path: Path) -> None:
    """open() of a FIFO with no writer blocks forever: the digest or the format sniff would hang the build."""
    import os

    claim = tmp_path / "mnt" / "claim"
    (claim / "folder").mkdir(parents=True)
    os.mkfifo(claim / "m.onnx")
    os.mkfifo(claim / "folder" / "weights.bin")
    (claim / "folder" / "saved_model.pb").write_bytes(b"pb")
    (claim / "folder" / "zero").symlink_to("/dev/zero")
    policy = FetchPolicy(file_roots=(str(tmp_path / "mnt"), "/dev"))
    with pytest.raises(errors.FetchRefusedError, match="m.onnx is not a regular file") as e:
        fetch(f"file://{claim}/m.onnx", tmp_path / "w", policy)
    assert e.value.exit_code == errors.EXIT_USER_ERROR
    with pytest.raises(errors.FetchRefusedError, match="is not a regular file"):
        fetch(f"file://{claim}/folder", tmp_path / "w", policy)
    os.unlink(claim / "folder" / "weights.bin")
    with pytest.raises(errors.FetchRefusedError, match="zero is not a regular file"):
        fetch(f"file://{claim}/folder", tmp_path / "w", policy)


def test_s3_object_names_that_leave_the_folder_are_refused(s3_env: str, tmp_path: Path) -> None:
    from trtop.store.s3 import s3_client

    client = s3_client()  # a bucket of its own: the moto server lives for the whole session
    client.create_bucket(Bucket="slip-models")
    client.put_object(Bucket="slip-models", Key="team/resnet/saved_model.pb", Body=b"pb")
    client.put_object(Bucket="slip-models", Key="team/resnet/../../escaped.txt", Body=b"planted")
    with pytest.raises(errors.UnsafeArchiveError, match="would land outside the download folder"):
        fetch("s3://slip-models/team/resnet", tmp_path / "w", FetchPolicy())
    assert not list(tmp_path.rglob("escaped.txt"))


def test_s3_folders_are_capped(s3_env: str, tmp_path: Path) -> None:
    from trtop.store.s3 import s3_client

    client = s3_client()
    client.create_bucket(Bucket="big-models")
    client.put_object(Bucket="big-models", Key="m/a.bin", Body=b"x" * 3000)
    with pytest.raises(errors.TooLargeError, match="more than the 1000 a fetch may download"):
        fetch("s3://big-models/m", tmp_path, FetchPolicy(max_bytes=1000))


# --- credentials never leak ----------------------------------------------------------------------
SECRET_URI = ("https://alice:hunter2@127.0.0.1:{port}/private/m.onnx"
              "?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeefcafe&X-Amz-Security-Token=tok123")


def test_redact_removes_userinfo_and_presigned_parameters() -> None:
    text = redact("fetching " + SECRET_URI.format(port=1) + " failed; Authorization: Bearer abc.def")
    for secret in ("hunter2", "alice", "deadbeefcafe", "AKIAEXAMPLE", "tok123", "abc.def"):
        assert secret not in text
    assert "https://REDACTED@127.0.0.1:1/private/m.onnx" in text
    assert redact(text) == text


def test_credentials_in_uris_stay_out_of_logs_errors_and_the_termination_message(
        base: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = urllib.parse.urlsplit(base).port
    uri = SECRET_URI.format(port=port)
    request = {"key": "e-0123456789abcdef", "model": {"uri": uri, "format": "onnx"}, "target": {"cc": "cpu"},
               "backend": "onnxruntime", "store_uri": str(tmp_path / "store"), "scope": "team-a"}
    env = {names.ENV_ENGINE_REQUEST: json.dumps(request), names.ENV_FETCH_POLICY: LOOPBACK.to_json(),
           "TRTOP_TERMINATION_LOG": str(tmp_path / "termination")}
    from trtop.convert.cli import RedactingFilter

    caplog.handler.addFilter(RedactingFilter())
    code = run(build_parser().parse_args([]), env)
    assert code == errors.EXIT_USER_ERROR  # 404 from the test server
    message = (tmp_path / "termination").read_text()
    assert "HTTP 404" in message
    for secret in ("hunter2", "deadbeefcafe", "AKIAEXAMPLE", "tok123"):
        assert secret not in message and secret not in caplog.text
