"""``trtop dev runner``: wiring through ``trtop dev``, argument errors, a real start and stop."""
from __future__ import annotations

import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trtop_dev.devcluster.cli import main as dev_main
from trtop_dev.devcluster.testing import DevCluster


def test_errors_are_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dev_main(["runner", "--kubeconfig", str(tmp_path / "missing")]) == 1
    assert "no kubeconfig at" in capsys.readouterr().err
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    assert dev_main(["runner", "--kubeconfig", str(tmp_path / "kubeconfig"), "--taint", "nope"]) == 1
    assert "KEY=VALUE:EFFECT" in capsys.readouterr().err


def test_runs_until_sigterm_then_marks_its_node_not_ready(dev_cluster: DevCluster, tmp_path: Path) -> None:
    node = f"local-runner-cli-{secrets.token_hex(3)}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trtop.cli", "dev", "runner", "--kubeconfig", dev_cluster.kubeconfig, "--node-name", node,
         "--work-dir", str(tmp_path), "--taint", "trtop.io/local-runner=true:NoSchedule", "--label", "team=ml", "--no-delete-node-on-exit"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]  # the log line, then the banner
        assert any(f"node {node} is Ready" in line for line in lines), lines
        labels = dev_cluster.get("node", node)["metadata"]["labels"]
        assert labels["team"] == "ml"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    try:
        assert proc.returncode == 0, out
        conditions = dev_cluster.get("node", node)["status"]["conditions"]
        assert next(c for c in conditions if c["type"] == "Ready")["status"] == "False"
    finally:
        dev_cluster.delete_node(node)
