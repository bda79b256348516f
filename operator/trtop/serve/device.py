"""The device this server runs on: ``trtop.gpu.device``, the one NVML reader and match rule, under its old name.

``server`` calls ``detect_device`` once at start-up and ``selection`` picks the engine for
the ``Device``; both live in ``trtop.gpu.device``, shared with the converter.
"""
from __future__ import annotations

from trtop.gpu.device import Device, detect_device, gfd_product, parse_device

__all__ = ["Device", "detect_device", "gfd_product", "parse_device"]
