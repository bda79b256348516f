"""The GPU code the converter and the server share: one of each, so a verified engine is served by the code that verified it.

- ``nvml``: what GPU this process sees (name, compute capability, driver).
- ``device``: the device as the engine set names it, and whether an engine's target runs on it.
- ``cuda``: the CUDA runtime calls (device and pinned host memory, streams, CUDA graphs) over libcudart.
- ``tensorrt``: a TensorRT engine run at a set of batch sizes (buckets), one execution context,
  buffer set and CUDA graph per bucket (``bucket``).

The converter runs its parity check and benchmark through ``tensorrt.TensorRTEngine``; the
server's TensorRT backend is the same class with the server's error types. Nothing here
imports ``trtop.serve`` or ``trtop.convert`` (import-linter keeps it so); TensorRT and
libcudart are loaded only when an engine is.
"""
