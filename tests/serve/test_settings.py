"""Server settings: flags beat TRTOP_* variables, which beat defaults."""
from __future__ import annotations

from pathlib import Path

import pytest

from trtop import names
from trtop.serve.settings import SMALL_MODEL_RUN_S, SMALL_REQUEST_BYTES, ServeSettings, parse_settings, small_request_bytes
from trtop.serve.supervisor import GROUP_LIMIT_GPU, group_limit, grpc_go_threads, small_group_limit


def test_defaults() -> None:
    s = parse_settings([], env={})
    assert s == ServeSettings()
    assert s.max_body_bytes == 64 * 1024 * 1024


def test_env_then_flags() -> None:
    env = {names.ENV_MODEL_NAME: "resnet", names.ENV_SERVE_MAX_QUEUE_DELAY_MS: "7.5", names.ENV_SERVE_PORT: "9000",
           names.ENV_ENGINE_SET: '["e-1"]', names.ENV_STORE_URI: "s3://b/p"}
    s = parse_settings(["--port", "9100"], env=env)
    assert (s.model_name, s.max_queue_delay_ms, s.port, s.engine_set, s.store_uri) == (
        "resnet", 7.5, 9100, '["e-1"]', "s3://b/p")


def test_grpc_port_defaults_to_tritons_and_0_turns_it_off() -> None:
    assert parse_settings([], env={}).grpc_port == 8001
    assert parse_settings([], env={names.ENV_SERVE_GRPC_PORT: "0"}).grpc_port == 0
    assert parse_settings(["--grpc-port", "9001"], env={names.ENV_SERVE_GRPC_PORT: "0"}).grpc_port == 9001
    assert parse_settings([], env={}).gpu_io == "graphs"
    assert parse_settings(["--gpu-io", "plain"], env={names.ENV_SERVE_GPU_IO: "bind"}).gpu_io == "plain"
    assert parse_settings([], env={}).slot_handoff == "on"  # measured at every load on two H100s (39th session)
    assert parse_settings([], env={names.ENV_SERVE_SLOT_HANDOFF: "off"}).slot_handoff == "off"
    assert parse_settings(["--slot-handoff", "off"], env={}).slot_handoff == "off"
    assert parse_settings([], env={}).grpc_frontend == "auto"  # native whenever the HTTP front-ends are
    assert parse_settings(["--http-frontend", "native"],
                          env={names.ENV_SERVE_GRPC_FRONTEND: "native"}).grpc_frontend == "native"


@pytest.mark.parametrize("argv,env,match", [
    (["--max-queue-size", "0"], {}, "max-queue-size"),
    (["--model", "a.onnx", "--engine-dir", "d"], {}, "only one"),
    (["--timeout-s", "0"], {}, "timeout"),
    ([], {names.ENV_SERVE_PORT: "http"}, "TRTOP_PORT"),
    (["--grpc-port", "-1"], {}, "--grpc-port must be 0 (off) or 1-65535"),
    (["--group-limit", "-1"], {}, "--group-limit must be >= 0"),
    (["--small-group-limit", "-1"], {}, "--small-group-limit must be >= 0"),
    (["--frontend-stuck-s", "-1"], {}, "--frontend-stuck-s must be >= 0"),
    (["--grpc-max-connection-age-s", "-1"], {}, "--grpc-max-connection-age-s must be >= 0 (0: never)"),
    (["--grpc-port", "8000"], {}, "give gRPC its own port"),
    ([], {names.ENV_SERVE_GPU_IO: "fast"}, "--gpu-io must be one of graphs, bind, plain"),
    (["--slot-handoff", "yes"], {}, "--slot-handoff must be one of on, off"),
    (["--grpc-frontend", "go"], {}, "--grpc-frontend must be one of auto, native, python"),
    (["--grpc-only-frontends", "-2"], {}, "--grpc-only-frontends must be -1 (auto), 0 or more"),
    ([], {names.ENV_SERVE_GRPC_GO_THREADS: "-1"}, "--grpc-go-threads must be 0 (the default) or more"),
    (["--grpc-frontend", "native", "--http-frontend", "python"], {},
     "--grpc-frontend native runs in the native HTTP front-ends"),
])
def test_bad_settings_exit_with_usage(argv: list[str], env: dict[str, str], match: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_settings(argv, env=env)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err



def test_the_group_limit_is_by_the_device_unless_set() -> None:
    assert group_limit(2, gpu=False) == 3 and group_limit(0, gpu=False) == 2  # a batch per instance and one more
    assert group_limit(2, gpu=True) == GROUP_LIMIT_GPU  # the backlog decides
    limit = parse_settings([], env={names.ENV_SERVE_GROUP_LIMIT: "4"}).group_limit
    assert limit == 4 and group_limit(2, gpu=True, setting=limit) == 4 and group_limit(2, gpu=False, setting=limit) == 4
    assert parse_settings([]).small_group_limit == 0  # by the device
    assert parse_settings([], env={names.ENV_SERVE_SMALL_GROUP_LIMIT: "3"}).small_group_limit == 3


def test_small_requests_get_a_count_of_their_own_on_a_gpu() -> None:
    assert small_group_limit(2, gpu=True) == 3  # a batch per instance and one more, as on CPU
    assert small_group_limit(1, gpu=True) == 2 and small_group_limit(0, gpu=True) == 2
    assert small_group_limit(2, gpu=False) == 0  # CPU: the group limit's count already is instances + 1
    assert small_group_limit(2, gpu=True, group_setting=5) == 0  # an explicit --group-limit alone sets both
    assert small_group_limit(2, gpu=True, setting=7) == 7 and small_group_limit(2, gpu=False, setting=7) == 7
    assert small_group_limit(2, gpu=True, setting=7, group_setting=5) == 7


def test_grpc_takes_a_second_go_thread_while_calls_overlap_only_beyond_two_cores_unless_set() -> None:
    assert grpc_go_threads(0, cores=12) == grpc_go_threads(0, cores=3) == 2
    assert grpc_go_threads(0, cores=2) == grpc_go_threads(0, cores=1) == 1  # shared with the engine (and a client)
    told = parse_settings([], env={names.ENV_SERVE_GRPC_GO_THREADS: "4"}).grpc_go_threads
    assert grpc_go_threads(told, cores=2) == grpc_go_threads(told, cores=12) == 4
    assert grpc_go_threads(parse_settings(["--grpc-go-threads", "1"]).grpc_go_threads, cores=12) == 1


def test_requests_are_small_only_for_a_short_model_unless_the_bound_is_set() -> None:
    assert small_request_bytes(0.0002, bound_set=False) == SMALL_REQUEST_BYTES  # a tiny model's batch-1 run
    assert small_request_bytes(SMALL_MODEL_RUN_S, bound_set=False) == 0  # a longer one keeps the backlog's rule
    assert small_request_bytes(None, bound_set=False) == 0  # not timed yet (loading), or its run failed
    assert small_request_bytes(0.005, bound_set=True) == small_request_bytes(None, bound_set=True) == SMALL_REQUEST_BYTES


@pytest.mark.parametrize(("argv", "handoff"), [([], True), (["--slot-handoff", "off"], False)])
def test_slot_handoff_reaches_the_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str],
                                          handoff: bool) -> None:
    """The server's default hands the GIL to a GPU slot's thread (the runtime's ``handoff``); off by the flag."""
    from trtop.serve import server
    from trtop.serve.runtime import RuntimeOptions
    from trtop.serve.source import Servable

    seen: list[RuntimeOptions] = []
    monkeypatch.setattr(server, "fetch_servable", lambda servable, cache: (tmp_path / "m.onnx", None))
    monkeypatch.setattr(server, "load_runtime", lambda backend, path, options: seen.append(options) or object())
    server.build_loader(Servable(backend="onnxruntime", origin="test"), parse_settings(argv, env={}), threads=1,
                        gpu=True, slots=2)
    assert [(o.handoff, o.use_gpu, o.slots) for o in seen] == [(handoff, True, 2)]
