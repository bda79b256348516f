"""A fake ``tensorrt`` module: just enough of TensorRT 10 / 11's Python API to record what the converter calls.

``make_fake_tensorrt(version)`` returns a module to put in ``sys.modules["tensorrt"]``
and the list every call is appended to. The ONNX parser reads the real ONNX file (with
the onnx package) so the network's inputs are the model's.
"""
from __future__ import annotations

import types
from enum import Enum
from typing import Any

import onnx


class _Severity(Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


def make_fake_tensorrt(version: str = "10.13.0", *, build_fails_with: str | None = None,
                       parser_errors: tuple[str, ...] = (), cache_mismatch: bool = False,
                       levels: tuple[str, ...] = ("NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY")) -> tuple[
                           types.ModuleType, list[tuple[Any, ...]]]:
    calls: list[tuple[Any, ...]] = []
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]

    class ILogger:
        Severity = _Severity

        def __init__(self) -> None:
            calls.append(("ILogger.__init__",))

    class Logger(ILogger):
        WARNING = _Severity.WARNING

        def __init__(self, level: Any = None) -> None:
            super().__init__()

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[Tensor] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class ParserError:
        def __init__(self, text: str) -> None:
            self.text = text

        def desc(self) -> str:
            return self.text

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            if parser_errors:
                self.num_errors = len(parser_errors)
                return False
            model = onnx.load(path)
            init = {i.name for i in model.graph.initializer}
            for value in model.graph.input:
                if value.name not in init:
                    dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                                 for d in value.type.tensor_type.shape.dim)
                    self.network.inputs.append(Tensor(value.name, dims))
            return True

        def get_error(self, i: int) -> ParserError:
            return ParserError(parser_errors[i])

    class Profile:
        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return b"CACHE:" + self.data

    class Config:
        def __init__(self) -> None:
            self.cache: TimingCache | None = None

        def __setattr__(self, name: str, value: Any) -> None:
            if name != "cache":
                calls.append(("config." + name, value))
            object.__setattr__(self, name, value)

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag: Any) -> None:
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, profile: Profile) -> int:
            calls.append(("add_optimization_profile",))
            return 0

        def create_timing_cache(self, data: bytes) -> TimingCache:
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", cache.data, ignore_mismatch))
            if cache_mismatch and cache.data:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache

    class Builder:
        def __init__(self, logger: Any) -> None:
            calls.append(("Builder",))
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            calls.append(("build_serialized_network",))
            if build_fails_with is not None:
                self.logger.log(_Severity.WARNING, "a warning before the failure")
                self.logger.log(_Severity.ERROR, build_fails_with)
                return None
            self.logger.log(_Severity.INFO, "built")
            return b"PLAN-" + version.encode()

    trt.ILogger = ILogger  # type: ignore[attr-defined]
    trt.Logger = Logger  # type: ignore[attr-defined]
    trt.Builder = Builder  # type: ignore[attr-defined]
    trt.OnnxParser = OnnxParser  # type: ignore[attr-defined]
    trt.Dims = lambda dims: tuple(dims)  # type: ignore[attr-defined]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
    flags = ("FP16", "BF16", "INT8", "FP8", "VERSION_COMPATIBLE") if major == 10 else ("VERSION_COMPATIBLE",)
    trt.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})  # type: ignore[attr-defined]
    trt.HardwareCompatibilityLevel = types.SimpleNamespace(**{lv: lv for lv in levels})  # type: ignore[attr-defined]
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)  # type: ignore[attr-defined]
    return trt, calls
