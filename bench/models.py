"""Models for the server benchmarks, built locally (no downloads), cached under ``.work/bench/``.

- ``light``: a few small convolutions on 3x64x64 images (NCHW): so little compute that the
  server's own cost per request dominates; built with ``onnx.helper`` (random weights).
- ``tiny``: one 16x16 MatMul: the request ceiling of the server itself.
- ``mobilenet``: MobileNetV2 224x224 (``bench/serve.py`` builds it with TensorFlow + tf2onnx).
- ``resnet50``: torchvision ResNet-50 exported with ``torch.onnx`` (the GPU host has PyTorch).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".work" / "bench"


def _cached(path: Path) -> bool:
    """Whether ``path`` was built before (models are built once per checkout); else make its folder."""
    if path.exists():
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    return False


def _save(graph: Any, path: Path) -> Path:
    """An ONNX graph as a checked model at opset 17 / IR 8 (what every ONNX Runtime here reads)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def light(path: Path | None = None) -> Path:
    """conv3x3/2 (3->16) relu, conv3x3/2 (16->32) relu, conv3x3/2 (32->64) relu, global pool, 64->10."""
    from onnx import TensorProto, helper, numpy_helper

    path = path or WORK / "light.onnx"
    if _cached(path):
        return path
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    channels = [3, 16, 32, 64]
    prev = "x"
    for i, (cin, cout) in enumerate(zip(channels, channels[1:], strict=False)):
        w = (rng.standard_normal((cout, cin, 3, 3)) * (2.0 / (cin * 9)) ** 0.5).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], strides=[2, 2], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    fc = (rng.standard_normal((64, 10)) * 0.1).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc"), numpy_helper.from_array(np.zeros(10, np.float32), "fcb")]
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 64, 64])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    return _save(helper.make_graph(nodes, "light", [x], [y], inits), path)


def fat(path: Path | None = None) -> Path:
    """[batch, 3, 224, 224] -> [batch, 1000] through ReduceMax over the image and a 3x1000 MatMul."""
    from onnx import TensorProto, helper, numpy_helper

    path = path or WORK / "fat.onnx"
    if _cached(path):
        return path
    w = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])
    nodes = [helper.make_node("ReduceMax", ["input"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["logits"])]
    return _save(helper.make_graph(nodes, "fat", [x], [y], [numpy_helper.from_array(w, "w")]), path)


def tiny(path: Path | None = None) -> Path:
    """y = x @ W for x: [batch, 16] (the server's own ceiling: nearly no compute)."""
    from onnx import TensorProto, helper, numpy_helper

    path = path or WORK / "tiny.onnx"
    if _cached(path):
        return path
    w = np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])
    return _save(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny", [x], [y],
                                   [numpy_helper.from_array(w, "w")]), path)


def resnet50(path: Path | None = None) -> Path:
    """torchvision ResNet-50 (random weights), dynamic batch, opset 17 (needs torch + torchvision)."""
    path = path or WORK / "resnet50.onnx"
    if _cached(path):
        return path
    code = (
        "import torch, torchvision\n"
        "m = torchvision.models.resnet50(weights=None).eval()\n"
        "x = torch.randn(1, 3, 224, 224)\n"
        f"torch.onnx.export(m, x, {str(path)!r}, input_names=['input'], output_names=['logits'], opset_version=17,\n"
        "                  dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}}, dynamo=False)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


BUILDERS = {"light": light, "tiny": tiny, "resnet50": resnet50}
