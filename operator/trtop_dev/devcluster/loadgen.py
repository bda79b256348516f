"""A closed-loop load generator for the demo and the autoscaling e2e test.

``concurrency`` threads each send Open Inference Protocol v2 requests (JSON tensors) one
after another to the serving endpoints, spreading over whatever ``endpoints()`` returns
(the Service's ready endpoints, read from its EndpointSlices: client-side balancing,
since the dev cluster has no kube-proxy). Counts answers, errors and latencies.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LoadStats:
    ok: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    last_error: str = ""

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0


def infer_body(name: str, data: np.ndarray[Any, Any]) -> bytes:
    return json.dumps({"inputs": [{"name": name, "datatype": "FP32", "shape": list(data.shape),
                                   "data": data.astype(np.float32).ravel().tolist()}]}).encode()


def infer(address: str, model: str, body: bytes, timeout: float = 30) -> dict[str, Any]:
    """One request to ``host:port``; raises on a non-200 answer."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{address}: HTTP {resp.status}: {data[:200]!r}")
        return dict(json.loads(data))
    finally:
        conn.close()


class LoadGenerator:
    def __init__(self, endpoints: Callable[[], Sequence[str]], model: str, body: bytes, concurrency: int) -> None:
        self.endpoints, self.model, self.body, self.concurrency = endpoints, model, body, concurrency
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._targets: list[str] = []
        self._refresher = threading.Thread(target=self._refresh, daemon=True)

    def __enter__(self) -> LoadGenerator:
        self._targets = list(self.endpoints())
        self._refresher.start()
        for i in range(self.concurrency):
            t = threading.Thread(target=self._worker, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in [*self._threads, self._refresher]:
            t.join(timeout=35)

    def _refresh(self) -> None:
        while not self._stop.wait(1.0):
            try:
                found = list(self.endpoints())
            except Exception:  # noqa: BLE001 - keep the last known endpoints
                continue
            if found:
                self._targets = found

    def _worker(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            targets = self._targets
            if not targets:
                time.sleep(0.2)
                continue
            address = targets[n % len(targets)]
            n += 1
            start = time.perf_counter()
            try:
                infer(address, self.model, self.body)
            except Exception as e:  # noqa: BLE001 - counted; the load goes on
                with self._lock:
                    self.stats.errors += 1
                    self.stats.last_error = str(e)[:300]
                time.sleep(0.1)
                continue
            with self._lock:
                self.stats.ok += 1
                self.stats.latencies_ms.append((time.perf_counter() - start) * 1000)
