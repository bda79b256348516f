"""Picking this pod's engine from the engine set by compute capability and product."""
from __future__ import annotations

import json

import pytest

from trtop.api.engine import EngineKey
from trtop.api.targets import Target
from trtop.serve.device import Device
from trtop.serve.errors import StartupError
from trtop.serve.selection import EngineChoice, choose_engine, parse_engine_set

H100 = Device("9.0", "NVIDIA-H100-80GB-HBM3")
L4 = Device("8.9", "NVIDIA-L4")
CPU = Device("cpu")


SHA = "ab" * 32


def entry(key: str, target: str, backend: str = "tensorrt") -> EngineChoice:
    return EngineChoice(EngineKey(key), Target.parse(target), backend, "model.plan" if backend == "tensorrt" else "model.onnx",
                        SHA)


SET = [entry("e-0000000000000100", "9.0/NVIDIA-H100-80GB-HBM3"), entry("e-0000000000000090", "9.0"), entry("e-0000000000000089", "8.9"),
       entry("e-00000000000000c0", "cpu", "onnxruntime")]


def test_the_planners_engine_set_parses() -> None:
    text = json.dumps([{"key": "e-0000000000000001", "target": {"cc": "9.0", "product": "NVIDIA-H100-80GB-HBM3"},
                        "backend": "tensorrt", "artifact": "model.plan", "sha256": SHA}, "e-0000000000000002"])
    assert parse_engine_set(text) == [entry("e-0000000000000001", "9.0/NVIDIA-H100-80GB-HBM3"), EngineKey("e-0000000000000002")]


@pytest.mark.parametrize("text,match", [
    ("nope", "not valid JSON"), ("[]", "non-empty"), ("[3]", "expected an object"),
    ('[{"key": "e-0000000000000001", "target": {"cc": "nine"}, "backend": "tensorrt", "artifact": "a"}]', "not a valid engine entry"),
    ('[{"key": "e-0000000000000001"}]', "not a valid engine entry"),
])
def test_bad_engine_sets_are_refused_clearly(text: str, match: str) -> None:
    with pytest.raises(StartupError, match=match):
        parse_engine_set(text)


def _entry_text(**changes: str) -> str:
    doc = {"key": "e-0000000000000001", "target": {"cc": "cpu"}, "backend": "onnxruntime",
           "artifact": "model.onnx", "sha256": SHA, **changes}
    return json.dumps([doc])


@pytest.mark.parametrize("changes,match", [
    ({"backend": "os:system"}, "an engine set never names other backends"),
    ({"backend": "tests.serve.fakes:SlowRuntime"}, "--backend"),
    ({"artifact": "../../etc/passwd"}, "inside the engine folder"),
    ({"artifact": "engine.json"}, "inside the engine folder"),
    ({"key": "../e-1"}, "not an engine key"),
    ({"sha256": "abc"}, "64 lower-case hex digits"),
])
def test_engine_set_entries_are_checked(changes: dict[str, str], match: str) -> None:
    with pytest.raises(StartupError, match=match):
        parse_engine_set(_entry_text(**changes))


def test_an_engine_set_entry_without_a_pinned_sha256_is_refused() -> None:
    doc = json.loads(_entry_text())
    del doc[0]["sha256"]
    with pytest.raises(StartupError, match="sha256"):
        parse_engine_set(json.dumps(doc))


def test_exact_product_beats_same_compute_capability() -> None:
    assert choose_engine(SET, H100).key == "e-0000000000000100"
    assert choose_engine(SET[1:], H100).key == "e-0000000000000090"


def test_product_specific_engine_does_not_run_on_another_product_of_the_same_cc() -> None:
    h200 = Device("9.0", "NVIDIA-H200")
    assert choose_engine([SET[0], SET[1]], h200).key == "e-0000000000000090"
    with pytest.raises(StartupError):
        choose_engine([SET[0]], h200)


def test_cpu_engines_serve_cpu_and_are_the_last_resort_on_gpus() -> None:
    assert choose_engine(SET, CPU).key == "e-00000000000000c0"
    assert choose_engine([SET[0], SET[3]], L4).key == "e-00000000000000c0"


def test_no_match_lists_the_device_and_every_offered_target() -> None:
    with pytest.raises(StartupError) as err:
        choose_engine(SET[:2], Device("8.6", "NVIDIA-A10G"))
    text = str(err.value)
    assert "NVIDIA-A10G (compute capability 8.6)" in text
    assert "e-0000000000000100 for 9.0/NVIDIA-H100-80GB-HBM3 (tensorrt)" in text and "e-0000000000000090 for 9.0 (tensorrt)" in text
    assert "spec.engine.targets" in text
