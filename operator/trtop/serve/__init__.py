"""``trtop serve``: the program in every inference pod.

Open Inference Protocol v2 (KServe v2 / Triton HTTP) over starlette + uvicorn, with
dynamic batching, Prometheus metrics and engine selection by compute capability.

Layers, inside out (the inner ones know nothing of HTTP):
- ``batching`` (pure policy, merge/split) and ``scheduler`` (its asyncio worker),
- ``runtime`` + ``backends/`` (ONNX Runtime, TensorRT, TensorFlow, picked from a table),
- ``model`` (what a model accepts; request admission), ``selection`` + ``device``
  (which engine this pod runs), ``metrics``,
- the shell: ``protocol`` (wire models), ``app`` (routes), ``server`` (lifecycle),
  ``settings`` and ``cli``.
"""
