"""The kwok provider: a real control plane from our own binaries via ``kwokctl --runtime binary``.

kwokctl starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok-controller as detached processes, records their pids under
``.work/dev-cluster/kwok/clusters/<name>/pids`` and writes our kubeconfig. Every binary is
passed explicitly and kubectl comes from PATH / KWOK_KUBECTL_BINARY, so nothing is ever
downloaded (``--dry-run`` shows it). Called by ``trtop_dev.devcluster.cluster``.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from trtop_dev.devcluster import workspace
from trtop_dev.devcluster.kubectl import Kubectl
from trtop_dev.devcluster.tools import Tools

Log = Callable[[str], None]
CONFIG_FILES = ("kwokctl.yaml", "stages.yaml")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")


class KwokError(RuntimeError):
    """kwokctl failed; the message points at its log."""


@dataclass(frozen=True)
class KwokCluster:
    """One kwokctl cluster of this checkout."""

    root: Path
    name: str
    tools: Tools

    @property
    def kubeconfig(self) -> Path:
        return workspace.kubeconfig_path(self.root, self.name)

    @property
    def state_dir(self) -> Path:
        return workspace.kwok_workdir(self.root) / "clusters" / self.name

    @property
    def log_file(self) -> Path:
        return workspace.work_dir(self.root) / f"{self.name}.kwokctl.log"

    def kubectl(self) -> Kubectl:
        return Kubectl(self.tools.kubectl, self.kubeconfig, self.tools.helm)

    def env(self) -> dict[str, str]:
        """kwokctl's environment: state inside .work/, our kubectl, no ~/.kwok config."""
        return {
            **os.environ,
            "KWOK_WORKDIR": str(workspace.kwok_workdir(self.root)),
            "KWOK_KUBECTL_BINARY": str(self.tools.kubectl),
            "PATH": self.tools.search_path(),
        }

    def create_argv(self, config_files: list[Path]) -> list[str]:
        t = self.tools
        config = [arg for path in config_files for arg in ("-c", str(path))]
        return [
            str(t.kwokctl), *config, "create", "cluster", "--name", self.name, "--runtime", "binary",
            "--kube-apiserver-binary", str(t.kube_apiserver),
            "--kube-controller-manager-binary", str(t.kube_controller_manager),
            "--kube-scheduler-binary", str(t.kube_scheduler),
            "--etcd-binary", str(t.etcd),
            "--kwok-controller-binary", str(t.kwok),
            "--kubeconfig", str(self.kubeconfig),
            "--wait", "120s",
        ]

    def exists(self) -> bool:
        return (self.state_dir / "kwok.yaml").is_file()

    def pids(self) -> dict[str, int]:
        """Component -> pid recorded by kwokctl (only those whose process still runs)."""
        alive = {}
        for component in COMPONENTS:
            pid = _read_pid(self.state_dir / "pids" / f"{component}.pid")
            if pid and process_running(pid):
                alive[component] = pid
        return alive

    def create(self, log: Log, *, dry_run: bool = False) -> None:
        with ExitStack() as stack:
            # kwokctl.yaml (kwok manages annotated nodes only) and stages.yaml, from package data;
            # kwokctl copies them into the cluster's state, so a temporary path is enough.
            package = resources.files("trtop_dev.devcluster")
            files = [stack.enter_context(resources.as_file(package.joinpath(n))) for n in CONFIG_FILES]
            # The API server presents the cluster's admin certificate to kubelets (the real node's
            # accepts only clients of the cluster CA): its path is known only per cluster.
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            files[0] = tmp / CONFIG_FILES[0]
            files[0].write_text(with_kubelet_access(
                package.joinpath(CONFIG_FILES[0]).read_text(), self.state_dir / "pki"))
            argv = self.create_argv(files) + (["--dry-run"] if dry_run else [])
            if dry_run:
                subprocess.run(argv, env=self.env(), check=True)
                return
            self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
            log(f"starting the control plane (kwokctl --runtime binary; log: {self.log_file})")
            # kwokctl picks free ports at create time: two creates at once could pick the same ones.
            with (self.root / ".work" / "dev-cluster-create.lock").open("w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._kwokctl(argv)

    def start(self, log: Log) -> None:
        """Restart a stopped cluster (e.g. after a reboot) from its saved state."""
        log("the cluster exists but is stopped: starting it again")
        self._kwokctl([str(self.tools.kwokctl), "start", "cluster", "--name", self.name, "--wait", "120s"])

    def delete(self, log: Log) -> list[int]:
        """Delete the cluster; return pids that had to be killed by force (should be none)."""
        pids = self.pids()
        if self.exists():
            log(f"deleting cluster {self.name} (stopping {len(pids)} processes)")
            self._kwokctl([str(self.tools.kwokctl), "delete", "cluster", "--name", self.name,
                           "--kubeconfig", str(self.kubeconfig)], check=False)
        forced = _stop(pids.values())
        if self.kubeconfig.is_file() and "server:" not in self.kubeconfig.read_text():
            self.kubeconfig.unlink()
        self.log_file.unlink(missing_ok=True)
        _remove_if_unused(workspace.work_dir(self.root))
        return forced

    def _kwokctl(self, argv: list[str], *, check: bool = True) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("a") as out:
            out.write(f"\n$ {' '.join(argv)}\n")
            out.flush()
            result = subprocess.run(argv, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, check=False)
        if check and result.returncode != 0:
            tail = "\n".join(self.log_file.read_text().splitlines()[-15:])
            raise KwokError(
                f"kwokctl failed (exit {result.returncode}); last lines of {self.log_file}:\n{tail}\n"
                f"component logs: {self.state_dir / 'logs'}; `trtop dev cluster down --name {self.name}` cleans up"
            )


def with_kubelet_access(kwokctl_yaml: str, pki: Path) -> str:
    """kwokctl.yaml plus how kube-apiserver reaches kubelets: kwokctl's admin pair as client
    certificate, and the node's IP first (the real node's hostname is not in DNS)."""
    config = yaml.safe_load(kwokctl_yaml)
    patches = config.setdefault("componentsPatches", [])
    apiserver = next((p for p in patches if p["name"] == "kube-apiserver"), None)
    if apiserver is None:
        apiserver = {"name": "kube-apiserver", "extraArgs": []}
        patches.append(apiserver)
    apiserver.setdefault("extraArgs", []).extend([
        {"key": "kubelet-client-certificate", "value": str(pki / "admin.crt")},
        {"key": "kubelet-client-key", "value": str(pki / "admin.key")},
        {"key": "kubelet-preferred-address-types", "value": "InternalIP,Hostname"},
    ])
    return str(yaml.safe_dump(config, sort_keys=False))


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def process_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone: it holds no port and no memory.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _stop(pids: Iterable[int], grace: float = 10.0) -> list[int]:
    """Wait for the given pids (ours, from kwokctl's pid files) to exit; SIGKILL stragglers."""
    pids = list(pids)
    remaining = list(pids)
    deadline = time.monotonic() + grace
    while remaining and time.monotonic() < deadline:
        remaining = [p for p in remaining if process_running(p)]
        if remaining:
            time.sleep(0.2)
    for pid in remaining:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # kwokctl detached them (setsid), so init reaps them; wait a moment so `ps` shows none.
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return remaining


def _remove_if_unused(work: Path) -> None:
    """Drop .work/dev-cluster once no cluster of any name is left in it (caches live elsewhere)."""
    clusters = work / "kwok" / "clusters"
    if (clusters.is_dir() and any(clusters.iterdir())) or any(work.glob("*kubeconfig")):
        return
    shutil.rmtree(work, ignore_errors=True)
