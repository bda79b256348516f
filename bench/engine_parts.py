"""What one batch-1 run of the server's GPU engine path is made of (run on a GPU host).

    PYTHONPATH=/tmp/site:$PWD/operator python3 bench/engine_parts.py [--model resnet50.onnx] [--seconds 2]

ONNX Runtime's CUDA provider with the server's engine path (a bound session per bucket, CUDA
graph, the input in page-locked memory, ``OnnxRuntime.prepare([1])``), at batch 1, each part
timed alone (median of a loop of them, after a warm-up):

- ``run``: ``OnnxRuntime.run`` from the calling thread, as ``serve_gpu.py``'s in-process baseline
  and the server's scheduler call it: the hop to the slot's thread and back, the copy of the input
  to the GPU, the graph's replay, the copy of the output back;
- ``in_slot``: the same run on the slot's own thread (no hop);
- ``hop``: a call to the slot's thread that does nothing;
- ``replay``: ``run_with_iobinding`` alone (the input already on the GPU, the output left there);
- ``h2d_pinned`` / ``h2d_pageable``: the input's copy to the GPU from page-locked / ordinary memory;
- ``d2h``: the output's copy back (``OrtValue.numpy``).

Prints one JSON line (microseconds).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def median_us(fn: Callable[[], Any], seconds: float) -> float:
    for _ in range(20):
        fn()
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e6)


def parts(path: Path, seconds: float) -> dict[str, float]:
    from trtop.serve.backends.onnxruntime_impl import OnnxRuntime
    from trtop.serve.runtime import RuntimeOptions

    rt = OnnxRuntime(path, RuntimeOptions(threads=1, use_gpu=True))
    rt.prepare([1])
    pool = rt._bound  # the slot threads and their bound sessions (internals: this is a measurement)
    bound = pool._bound[1][0]
    name, out = rt.inputs[0].name, [rt.outputs[0].name]
    x = np.random.default_rng(0).random((1, *rt.inputs[0].shape[1:]), dtype=np.float32)
    pinned = rt.batch_array(x.shape, x.dtype)
    pinned[...] = x
    copier = pool._copiers[0]
    dst = bound._pointers[name]
    result = {"run": median_us(lambda: rt.run({name: pinned}, out), seconds),
              "hop": median_us(lambda: pool.in_slot(0, lambda: None), seconds)}

    def on_slot(fn: Callable[[], Any]) -> float:
        return pool.in_slot(0, median_us, fn, seconds)

    result["in_slot"] = on_slot(lambda: bound.run({name: pinned}, out))
    result["replay"] = on_slot(lambda: bound.session.run_with_iobinding(bound.binding))
    result["h2d_pinned"] = on_slot(lambda: copier.copy(dst, pinned))
    result["h2d_pageable"] = on_slot(lambda: copier.copy(dst, x))
    result["d2h"] = on_slot(lambda: bound.outputs[out[0]].numpy())
    rt.close()
    return {k: round(v, 1) for k, v in result.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="an ONNX model (default: bench/models.py's ResNet-50)")
    p.add_argument("--seconds", type=float, default=2.0)
    args = p.parse_args()
    if args.model is None:
        import models

        args.model = models.resnet50()
    print(json.dumps(parts(args.model, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
