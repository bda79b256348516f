"""``trtop convert`` as the build Job runs it: exit codes, the termination message, SIGTERM."""
from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.convert.conftest import make_request
from trtop import names
from trtop.convert.guard import PERMISSIVE
from trtop.convert import cli, errors, source
from trtop.convert.cli import build_parser, write_termination_message

REPO = Path(__file__).resolve().parents[2]


def trtop(*argv: str, env: dict[str, str], **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "trtop.cli", "convert", *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRTOP_")}
    # A build Job gets the operator's fetch policy; here models live under /tmp and servers on loopback.
    env.update({"TRTOP_TERMINATION_LOG": str(tmp_path / "termination-log"),
                names.ENV_FETCH_POLICY: PERMISSIVE.to_json(), **extra})
    return env


def termination(tmp_path: Path) -> dict[str, object]:
    return json.loads((tmp_path / "termination-log").read_text())


@pytest.mark.slow
def test_build_job_run_then_rerun(onnx_fixed_batch: Path, tmp_path: Path) -> None:
    """The build Job's way: request in the environment, store on a path; the rerun reuses."""
    store = tmp_path / "engines"
    request = make_request(str(onnx_fixed_batch), "onnx", store)
    env = child_env(tmp_path, **{names.ENV_ENGINE_REQUEST: request.to_json()})
    first = trtop(env=env)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == errors.EXIT_OK, out
    summary = termination(tmp_path)
    assert summary["ok"] is True and summary["key"] == request.key and summary["reused"] is False
    assert summary["artifact"] == "model.onnx" and "verify" in summary["stages"]  # type: ignore[operator]
    assert "[verify] done in" in out and "[benchmark] done in" in out
    second = trtop(env=env)
    out, _ = second.communicate(timeout=120)
    assert second.returncode == errors.EXIT_OK
    assert termination(tmp_path)["reused"] is True and "already published" in out


@pytest.mark.slow
def test_user_error_exit_code_and_message(onnx_fixed_batch: Path, tmp_path: Path) -> None:
    request = make_request(str(onnx_fixed_batch), "onnx", tmp_path / "engines", digest="sha256:" + "0" * 64)
    (tmp_path / "request.json").write_text(request.to_json())
    proc = trtop("--request", str(tmp_path / "request.json"), env=child_env(tmp_path))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == errors.EXIT_USER_ERROR == 2
    summary = termination(tmp_path)
    assert summary["ok"] is False and summary["class"] == "user" and summary["stage"] == "fetch"
    assert "pins sha256:0000" in str(summary["error"]) and "user error in stage fetch" in out
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").iterdir())


class Stall(http.server.BaseHTTPRequestHandler):
    """Starts a large download and never finishes it, like a model host under load."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 30))
        self.end_headers()
        self.wfile.write(b"\0" * 1024)
        self.wfile.flush()
        time.sleep(20)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stalling_host() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/big.onnx"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_sigterm_stops_the_build_as_an_infrastructure_error(stalling_host: str, tmp_path: Path) -> None:
    store = tmp_path / "engines"
    proc = trtop("--model", stalling_host, "--store", str(store), env=child_env(tmp_path))
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # wait until it is downloading
        lines.append(line)
        if "[fetch] started" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == errors.EXIT_INFRA_ERROR == 3, "".join(lines) + rest
    summary = termination(tmp_path)
    assert summary["class"] == "infra" and "SIGTERM" in str(summary["error"]) and summary["stage"] == "fetch"
    assert not store.exists() or [p.name for p in store.iterdir()] == []


def test_unreachable_model_is_an_infrastructure_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(source, "RETRY_DELAYS", (0.0,))
    code = cli.run(build_parser().parse_args(["--model", "https://127.0.0.1:9/m.onnx", "--store", str(tmp_path)]),
                   {"TRTOP_TERMINATION_LOG": str(tmp_path / "termination-log")})
    assert code == errors.EXIT_INFRA_ERROR
    summary = termination(tmp_path)
    assert summary["class"] == "infra" and "cannot reach the host" in str(summary["error"])


def test_a_bug_is_exit_1_with_the_exception_in_the_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("oops")

    monkeypatch.setattr("trtop.convert.pipeline.convert", broken)
    code = cli.run(build_parser().parse_args(["--model", "m.onnx", "--store", str(tmp_path)]),
                   {"TRTOP_TERMINATION_LOG": str(tmp_path / "termination-log")})
    assert code == errors.EXIT_INTERNAL_ERROR == 1
    assert termination(tmp_path) == {"ok": False, "class": "internal", "exit_code": 1, "error": "KeyError: 'oops'"}


def test_bad_store_uri_is_a_user_error(tmp_path: Path) -> None:
    code = cli.run(build_parser().parse_args(["--model", "m.onnx", "--store", "ftp://x/y"]),
                   {"TRTOP_TERMINATION_LOG": str(tmp_path / "termination-log")})
    assert code == errors.EXIT_USER_ERROR
    assert "scheme 'ftp'" in str(termination(tmp_path)["error"])


def test_print_digest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "m.onnx").write_bytes(b"abc")
    assert cli.main(["--print-digest", str(tmp_path / "m.onnx")]) == 0
    assert capsys.readouterr().out.strip() == \
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_termination_message_fits_kubernetes_limit(tmp_path: Path) -> None:
    path = tmp_path / "t"
    write_termination_message(str(path), {"ok": False, "error": "x" * 10000, "stages": {"a": 1.0}})
    text = path.read_text()
    assert len(text.encode()) <= 4096 and json.loads(text)["error"].endswith(" ...")
    write_termination_message(str(tmp_path / "no" / "such" / "dir"), {"ok": True})  # not in a pod: no crash
