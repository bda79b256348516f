"""Calls that must come back: a test of a timeout fails, rather than hangs the run, when one is missing; and
trtop's API clients pointed at a test's server for such tests."""
from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes.config.kube_config
import pytest
import yaml


def call_within(seconds: float, call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """What ``call`` raised (None if it returned) and how long it took; the test fails if it is still
    running after ``seconds`` (it is left on a daemon thread)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            outcome.append(e)
    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still waiting after {seconds}s: a call without a bound"
    return outcome[0], time.monotonic() - started


@contextlib.contextmanager
def api_clients_at(url: str, folder: Path, monkeypatch: pytest.MonkeyPatch, timeout_s: float) -> Iterator[None]:
    """trtop's Kubernetes clients pointed at ``url`` (a test's own API server, or a port nothing answers) with an API
    timeout of ``timeout_s``, built afresh; as they were afterwards."""
    from trtop.config import Settings
    from trtop.k8s import client as k8s_client

    kubeconfig = folder / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    # kubernetes reads KUBECONFIG once, at import: setting the variable now would change nothing.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))  # the dynamic client's discovery cache file
    k8s_client.get_clients.cache_clear()
    k8s_client.configure_timeout(timeout_s)
    try:
        yield
    finally:
        k8s_client.configure_timeout(Settings().api_timeout_seconds)
        k8s_client.get_clients.cache_clear()
