"""Run the operator the way the chart's Deployment does, as the chart's ServiceAccount.

On kwok nothing runs inside pods, so the chart's operator pod is "Ready" without a
process. These helpers run the real `trtop operator` locally with the installed
Deployment's command, args and env, authenticated by a token of the chart's
ServiceAccount: the chart's RBAC, peering objects and settings are then what the real
process meets. Only the ports and the engine store are swapped for local ones.
Used by tests/charts/test_cluster.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.operator_harness import OperatorProcess, wait_for
from trtop_dev.devcluster.testing import DevCluster


def service_account_kubeconfig(cluster: DevCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig for the API server of ``cluster`` that authenticates as ``namespace/account``."""
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


class ChartOperator(OperatorProcess):
    """The installed Deployment's container, run as a local process (see the module docstring)."""

    def __init__(self, deployment: dict[str, Any], kubeconfig: Path, store: Path, log_path: Path,
                 pod_id: str = "chart-test") -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        super().__init__(str(kubeconfig), "", store, log_path)
        chart_env = {e["name"]: e.get("value", "") for e in container.get("env", []) if "valueFrom" not in e}
        self.env = {
            **os.environ, **chart_env, "KUBECONFIG": str(kubeconfig), "POD_ID": pod_id,
            # Local stand-ins for what the pod would have: a store folder, free ports.
            "TRTOP_STORE_URI": str(store), "TRTOP_STORE_PVC": "", "TRTOP_STORE_SECRET": "",
            "TRTOP_METRICS_PORT": str(self.metrics_port), "TRTOP_RECONCILE_INTERVAL_SECONDS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        assert container["command"][0] == "trtop", container["command"]
        args = [a for a in container["args"] if not a.startswith("--liveness")]
        self.argv = [*container["command"][1:], *args, f"--liveness=http://127.0.0.1:{self.health_port}/healthz"]

    def start(self) -> ChartOperator:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "trtop.cli", *self.argv], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_for("operator liveness endpoint", self.healthy, timeout=60)
        return self

