"""This machine's containerd: shared by the real node's kubelet and by image builds.

There is one per machine (its image store lives in the tool cache, so built images survive
``down``; its run state in ``/run/trtop/containerd``). Whoever needs it ``acquire``s it under
a holder name with a pid that stays alive while it is needed (the kubelet's, a build's);
it is started by the first holder and stopped by ``release`` when no live holder is left.
The pause image (sandbox of every pod) is imported from the binary hack/build-tools.sh
made. Called by ``trtop_dev.devcluster.realnode`` and ``trtop_dev.devcluster.images``; also
``python -m trtop_dev.devcluster.containerd acquire|release HOLDER [PID]`` for shell scripts.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trtop_dev.devcluster import ociarchive
from trtop_dev.devcluster.kwok import process_running
from trtop_dev.devcluster.nodeconfig import ContainerdLayout, render_containerd_config
from trtop_dev.devcluster.tools import NodeTools, cache_dir, node_tools_for, read_versions

Log = Callable[[str], None]
RUN_DIR = Path("/run/trtop")
NAMESPACE = "k8s.io"  # the CRI's namespace: images built or imported there are the kubelet's


class ContainerdError(RuntimeError):
    """containerd did not start, or a ctr command failed."""


@dataclass(frozen=True)
class Containerd:
    tools: NodeTools
    cache: Path
    run_dir: Path = RUN_DIR

    @property
    def layout(self) -> ContainerdLayout:
        return ContainerdLayout(
            root=self.cache / "containerd",
            state=self.run_dir / "containerd",
            cni_conf_dir=self.run_dir / "cni" / "net.d",
            cni_bin_dir=self.tools.cni_bin_dir,
            runc=self.tools.runc,
            pause_image=self.pause_image,
        )

    @property
    def pause_image(self) -> str:
        return f"localhost/trtop/pause:{self.tools.kubernetes_version}"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "containerd.pid"

    @property
    def holders_dir(self) -> Path:
        return self.run_dir / "containerd.holders"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "containerd.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if process_running(pid) else None

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        argv = [str(self.tools.ctr), "--address", str(self.layout.socket), "-n", NAMESPACE, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode:
            raise ContainerdError(f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        return done.stdout

    def answers(self) -> bool:
        """Whether containerd serves its socket (`ctr version` prints the client's even when not)."""
        if not self.layout.socket.exists():
            return False
        argv = [str(self.tools.ctr), "--address", str(self.layout.socket), "version"]
        return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0

    def acquire(self, holder: str, pid: int, log: Log) -> None:
        """Start containerd unless it runs; record ``holder`` (alive while ``pid`` runs)."""
        with self._lock():
            self.holders_dir.mkdir(parents=True, exist_ok=True)
            (self.holders_dir / holder).write_text(str(pid))
            if self.pid() is None:
                self._start(log)
        self._ensure_pause_image(log)

    def release(self, holder: str, log: Log) -> bool:
        """Drop ``holder``; stop containerd if no live holder is left. True when it was stopped."""
        with self._lock():
            (self.holders_dir / holder).unlink(missing_ok=True)
            if self.live_holders():
                return False
            pid = self.pid()
            if pid is not None:
                log(f"stopping containerd (pid {pid}): no other user")
                terminate(pid)
            self.pid_file.unlink(missing_ok=True)
            return True

    def live_holders(self) -> list[str]:
        holders = []
        for path in self.holders_dir.glob("*") if self.holders_dir.is_dir() else []:
            try:
                alive = process_running(int(path.read_text()))
            except (OSError, ValueError):
                alive = False
            if alive:
                holders.append(path.name)
            else:
                path.unlink(missing_ok=True)
        return holders

    def _start(self, log: Log) -> None:
        layout = self.layout
        for path in (layout.root, layout.state, layout.cni_conf_dir):
            path.mkdir(parents=True, exist_ok=True)
        config = self.run_dir / "containerd.toml"
        config.write_text(render_containerd_config(layout))
        log(f"starting containerd {self.tools.containerd_version} (log: {self.log_file})")
        # The shim and runc are found next to containerd / on PATH.
        env = {**os.environ, "PATH": os.pathsep.join([str(self.tools.containerd.parent), str(self.tools.runc.parent),
                                                      os.environ.get("PATH", "")])}
        proc = spawn_detached([str(self.tools.containerd), "--config", str(config)], env, self.log_file)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + 60
        while not self.answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.log_file.read_text().splitlines()[-15:])
                raise ContainerdError(f"containerd did not start; last lines of {self.log_file}:\n{tail}")
            time.sleep(0.2)

    def _ensure_pause_image(self, log: Log) -> None:
        if self.pause_image in self.ctr("images", "ls", "-q").split():
            return
        archive = self.cache / "images" / f"pause-{self.tools.kubernetes_version}.oci.tar"
        if not archive.is_file():
            archive.parent.mkdir(parents=True, exist_ok=True)
            ociarchive.write_single_file_archive(self.tools.pause, self.pause_image, archive,
                                                 entrypoint=["/pause"], user="65535:65535", env={})
        log(f"importing the sandbox image {self.pause_image}")
        self.ctr("images", "import", str(archive))

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "containerd.lock").open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield


# Daemons outlive the call that started them (and often this process): their Popen objects
# are kept here so that collecting one never warns "subprocess ... is still running".
_DETACHED: list[subprocess.Popen[bytes]] = []


def spawn_detached(argv: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session, output appended to ``log_file``."""
    with log_file.open("a") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _DETACHED.append(proc)
    return proc


def terminate(pid: int, grace: float = 15) -> None:
    """SIGTERM a daemon we started; SIGKILL it after ``grace`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while process_running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_running(pid):
        os.kill(pid, signal.SIGKILL)


def for_checkout(root: Path) -> Containerd:
    return Containerd(node_tools_for(read_versions(root), cache_dir()), cache_dir())


def main(argv: list[str]) -> int:
    """``acquire HOLDER [PID]`` / ``release HOLDER`` / ``socket``: for hack/build-images.sh."""
    from trtop_dev.devcluster import workspace

    daemon = for_checkout(workspace.repo_root())
    log: Log = lambda message: print(f"[containerd] {message}", file=sys.stderr, flush=True)  # noqa: E731
    if argv[:1] == ["acquire"] and len(argv) in (2, 3):
        daemon.acquire(argv[1], int(argv[2]) if len(argv) == 3 else os.getppid(), log)
    elif argv[:1] == ["release"] and len(argv) == 2:
        daemon.release(argv[1], log)
    elif argv == ["socket"]:
        print(daemon.layout.socket)
    elif argv == ["holders"]:
        print(json.dumps(daemon.live_holders()))
    else:
        print("usage: python -m trtop_dev.devcluster.containerd acquire HOLDER [PID] | release HOLDER | socket",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
