"""How many processes serve and of which kind (``trtop.serve.processes``): pure rules from the settings and the
cores, and the native front-end's binary looked up on PATH."""
from __future__ import annotations

from pathlib import Path

import pytest

from trtop.serve import processes
from trtop.serve.errors import StartupError
from trtop.serve.processes import native_binary
from trtop.serve.settings import ServeSettings


@pytest.mark.parametrize("setting,cores,expected", [(-1, 1, 0), (-1, 2, 0), (-1, 3, 2), (-1, 16, 8), (2, 1, 2),
                                                    (0, 16, 0)])
def test_python_front_end_processes_only_beyond_two_cores(monkeypatch: pytest.MonkeyPatch, setting: int, cores: int,
                                                          expected: int) -> None:
    monkeypatch.setattr(processes, "default_threads", lambda: cores)
    assert processes.frontend_count(ServeSettings(frontends=setting, http_frontend="python")) == expected


@pytest.mark.parametrize("setting,cores,expected", [(-1, 1, 1), (-1, 2, 1), (-1, 7, 1), (-1, 8, 2), (-1, 12, 2),
                                                    (-1, 16, 3), (-1, 64, 4), (0, 16, 0), (6, 4, 6)])
def test_native_front_ends_a_few_on_any_machine(monkeypatch: pytest.MonkeyPatch, setting: int, cores: int,
                                                expected: int) -> None:
    monkeypatch.setattr(processes, "default_threads", lambda: cores)
    monkeypatch.setattr(processes, "native_binary", lambda settings: "/opt/trtop/bin/trtop-http")
    assert processes.frontend_count(ServeSettings(frontends=setting)) == expected


@pytest.mark.parametrize("grpc_port,setting,cores,expected", [(8001, -1, 12, 8), (8001, -1, 2, 1), (0, -1, 12, 1),
                                                              (8001, 3, 12, 3)])
def test_python_front_ends_beside_native_ones_serve_grpc_as_without_them(
        monkeypatch: pytest.MonkeyPatch, grpc_port: int, setting: int, cores: int, expected: int) -> None:
    monkeypatch.setattr(processes, "default_threads", lambda: cores)
    settings = ServeSettings(grpc_port=grpc_port, frontends=setting)
    assert processes.grpc_frontends(settings) == expected
    # Native front-ends answering gRPC too leave one Python front-end, for what they forward ...
    assert processes.grpc_frontends(settings, "/bin/trtop-http") == 1
    # ... unless gRPC is kept in Python
    python_grpc = ServeSettings(grpc_port=grpc_port, frontends=setting, grpc_frontend="python")
    assert processes.grpc_frontends(python_grpc, "/bin/trtop-http") == expected


def test_native_is_used_when_installed_and_a_missing_binary_is_an_error_only_when_asked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert native_binary(ServeSettings(http_frontend="auto")) is None
    with pytest.raises(StartupError, match="trtop-http is not on PATH"):
        native_binary(ServeSettings(http_frontend="native"))
    exe = tmp_path / "trtop-http"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert native_binary(ServeSettings(http_frontend="auto")) == str(exe)
    assert native_binary(ServeSettings(http_frontend="python")) is None
    assert native_binary(ServeSettings()) == str(exe)  # native where installed (spec.DEFAULT_HTTP_FRONTEND)
