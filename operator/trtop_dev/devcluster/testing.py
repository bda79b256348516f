"""Pytest helpers for tests against a real cluster: the session cluster and per-test namespaces.

``start_session`` reuses the cluster named by $TRTOP_TEST_KUBECONFIG or $KUBECONFIG (never
tearing it down), else brings up the dev cluster ``trtop-test`` of this checkout (or joins
it when another pytest run already has it up), with this machine's real node unless
$TRTOP_TEST_REAL_NODE=0 or another cluster holds it. ``stop_session`` tears it down when a test
session created it and no other live session uses it ($TRTOP_TEST_KEEP_CLUSTER=1 keeps it
for the next run). Called by tests/conftest.py.
"""
from __future__ import annotations

import fcntl
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from trtop import names
from trtop_dev.devcluster import cluster, workspace
from trtop_dev.devcluster.kubectl import Kubectl, KubectlError
from trtop_dev.devcluster.kwok import process_running
from trtop_dev.devcluster.nodes import NodesResult, apply_pools
from trtop_dev.devcluster.pools import Pool, build_node, read_pools
from trtop_dev.devcluster.tools import ensure_tools

TEST_CLUSTER = "trtop-test"
T = TypeVar("T")


class KubectlResult(str):
    """kubectl's stdout as a string, with ``returncode``, ``stdout`` and ``stderr`` beside it."""

    returncode: int
    stdout: str
    stderr: str

    def __new__(cls, stdout: str, stderr: str, returncode: int) -> KubectlResult:
        result = super().__new__(cls, stdout)
        result.stdout, result.stderr, result.returncode = stdout, stderr, returncode
        return result


@dataclass
class DevCluster:
    """The cluster a test session talks to, with the built kubectl and helm bound to it."""

    kubeconfig: str
    client: Kubectl
    name: str | None  # our dev cluster's name; None for one given by $KUBECONFIG
    created: bool

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, for child processes (the operator, scripts)."""
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> KubectlResult:
        """Run the built kubectl; raise on failure unless ``check=False`` (then read ``.returncode``)."""
        return self._run([str(self.client.binary), "--kubeconfig", self.kubeconfig, *args], input, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> KubectlResult:
        """Run the built helm against this cluster."""
        assert self.client.helm_binary is not None
        return self._run([str(self.client.helm_binary), "--kubeconfig", self.kubeconfig, *args], None, check, timeout)

    def apply(self, manifests: list[dict[str, Any]] | dict[str, Any], namespace: str | None = None) -> str:
        """Server-side apply of manifests (dicts)."""
        return self.client.apply(manifests, namespace=namespace)

    def get(self, *args: str) -> Any:
        """``kubectl get ARGS -o json``, parsed."""
        return self.client.json("get", *args)

    def apply_pools(self, pools: list[Pool], *, prune: bool = True) -> NodesResult:
        """Make the pool nodes match ``pools`` (waits until they are Ready)."""
        result = apply_pools(self.client, pools, prune=prune)
        ready = [n for p in pools for n in p.node_names()]
        if ready:
            self.kubectl("wait", "--for=condition=Ready", "--timeout=60s", *(f"node/{n}" for n in ready))
        return result

    def reset_pools(self) -> NodesResult:
        """Back to the default pools (trtop_dev/devcluster/pools.yaml)."""
        return self.apply_pools(read_pools())

    @contextmanager
    def pools(self, pools: list[Pool]) -> Iterator[NodesResult]:
        """Run a block with exactly ``pools``; the default pools come back afterwards."""
        try:
            yield self.apply_pools(pools)
        finally:
            self.reset_pools()

    def add_node(self, name: str, labels: Mapping[str, str], *, gpus: int = 0, cpu: str = "32",
                 memory: str = "128Gi") -> None:
        """One more fake (kwok) node with these labels and ``gpus`` x nvidia.com/gpu; Ready on return."""
        node = build_node(Pool(name=name, count=1, cpu=cpu, memory=memory, labels=dict(labels)), 0)
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        if gpus:
            for key in ("capacity", "allocatable"):
                node["status"][key][names.GPU_RESOURCE] = str(gpus)
        self.client.apply(node)
        self.kubectl("wait", "--for=condition=Ready", "--timeout=60s", f"node/{name}")

    def delete_node(self, name: str) -> None:
        self.kubectl("delete", "node", name, "--ignore-not-found", "--wait=false")

    @staticmethod
    def _run(argv: list[str], input: str | None, check: bool, timeout: float) -> KubectlResult:
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise KubectlError(argv, done.returncode, done.stderr)
        return KubectlResult(done.stdout, done.stderr, done.returncode)


def start_session(name: str = TEST_CLUSTER, log: Callable[[str], None] | None = None) -> DevCluster:
    """The cluster for this test session (see the module docstring for which one)."""
    root = workspace.repo_root()
    given = os.environ.get("TRTOP_TEST_KUBECONFIG") or os.environ.get("KUBECONFIG")
    if given:
        tools = ensure_tools(root)
        kubeconfig = given.split(os.pathsep)[0]
        client = Kubectl(tools.kubectl, Path(kubeconfig), tools.helm)
        if not client.ready():
            raise RuntimeError(f"the cluster of KUBECONFIG={given} does not answer /readyz; start it "
                               "(`trtop dev cluster up`) or unset KUBECONFIG to let the tests start their own")
        cluster.install_crds(client, root, log or cluster.progress_log("test-cluster"))
        return DevCluster(kubeconfig, client, None, False)
    with _lock(root, name):
        existed = cluster.exists(name)
        try:
            info = cluster.up(name, log=log or cluster.progress_log("test-cluster"),
                              real_node=os.environ.get("TRTOP_TEST_REAL_NODE", "1") != "0")
        except BaseException:
            # A cluster this session made and then failed to finish (a CRD the API server refused, a real node
            # that did not start) goes now. Left up, the next session found it running, took it for another
            # user's and never stopped it, and its real node kept the machine's kubelet from every other checkout.
            if not existed and not _live_users(root, name):
                cluster.down(name, log=log or cluster.progress_log("test-cluster"))
            raise
        assert info is not None
        users = _users(root, name)
        users.mkdir(parents=True, exist_ok=True)
        (users / str(os.getpid())).touch()
        if info.created:
            (users / "created-by-tests").touch()
    return DevCluster(str(info.kubeconfig), info.kubectl, name, info.created)


def stop_session(session: DevCluster) -> None:
    """Tear the cluster down if this session created it and no other live session still uses it."""
    if session.name is None:
        return
    root = workspace.repo_root()
    with _lock(root, session.name):
        users = _users(root, session.name)
        (users / str(os.getpid())).unlink(missing_ok=True)
        others = _live_users(root, session.name)
        made_by_tests = (users / "created-by-tests").is_file()
        if made_by_tests and not others and os.environ.get("TRTOP_TEST_KEEP_CLUSTER") != "1":
            cluster.down(session.name, log=cluster.progress_log("test-cluster"))


def create_namespace(session: DevCluster, hint: str, timeout: float = 30) -> str:
    """A fresh namespace named after the test; returns once its default ServiceAccount exists."""
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40].strip("-") or "t"
    name = f"{slug}-{secrets.token_hex(3)}"
    session.kubectl("create", "namespace", name)
    # Pods created before the ServiceAccount exists are rejected by the admission plugin.
    wait_for(f"ServiceAccount default in namespace {name}",
             lambda: session.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
             timeout=timeout)
    return name


def delete_namespace(session: DevCluster, name: str) -> None:
    session.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def wait_for(what: str, check: Callable[[], T], timeout: float = 60, interval: float = 0.3,
             retry_on: tuple[type[BaseException], ...] = (KubectlError, subprocess.TimeoutExpired)) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and the last value.
    ``retry_on``: the errors that count as "not yet" (kubectl's by default)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except retry_on as err:
            last = err
        else:
            if value:
                return value
            last = value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def _users(root: Path, name: str) -> Path:
    return workspace.work_dir(root) / f"{name}.users"


def _live_users(root: Path, name: str) -> list[Path]:
    """The pid files of the test sessions using cluster ``name`` whose process still runs."""
    users = _users(root, name)
    return [p for p in users.glob("*") if p.name.isdigit() and process_running(int(p.name))] if users.is_dir() else []


@contextmanager
def _lock(root: Path, name: str) -> Iterator[None]:
    # .work/ itself, not .work/dev-cluster: `down` may remove the latter while we hold the lock.
    path = root / ".work" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


