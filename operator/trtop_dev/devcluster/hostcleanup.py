"""What the real node leaves on the host, found and undone: mounts, cgroups, iptables rules,
the CNI bridge and the sysctls the kubelet changed.

The parsing (mountinfo, iptables-save) is pure and tested apart; the rest applies it.
Called by ``trtop_dev.devcluster.realnode`` on ``down`` (and before a start, after a crash).
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
# Chains the kubelet (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...), kube-proxy (KUBE-SERVICES, ...)
# and the CNI plugins (CNI-<hash> for NAT, CNI-HOSTPORT-*, CNI-DN-*) create.
OWNED_CHAIN = re.compile(r"^(KUBE-|CNI-)")
_MNT_DETACH = 2


def mounts_under(mountinfo: str, prefixes: Sequence[Path]) -> list[str]:
    """Mount points (from /proc/self/mountinfo text) at or below any prefix, deepest first."""
    roots = [str(p).rstrip("/") for p in prefixes]
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if any(point == r or point.startswith(r + "/") for r in roots):
            found.append(point)
    # Later mounts may sit on earlier ones: undo in reverse order of mounting.
    return list(reversed(found))


def strip_owned_rules(save: str) -> tuple[str, int]:
    """``iptables-save`` output without the chains we own and the rules that jump to them.

    Returns the text for ``iptables-restore`` and how many chains/rules were dropped.
    Tables are restored whole (the tables present are flushed and rewritten), so every
    other rule stays exactly as it was.
    """
    out, dropped = [], 0
    for line in save.splitlines():
        if line.startswith(":") and OWNED_CHAIN.match(line[1:]):
            dropped += 1
            continue
        if line.startswith("-A ") and _touches_owned_chain(line):
            dropped += 1
            continue
        out.append(line)
    return "\n".join(out) + "\n", dropped


def _touches_owned_chain(rule: str) -> bool:
    words = rule.split()
    chain = words[1]
    targets = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g", "--jump", "--goto")]
    return bool(OWNED_CHAIN.match(chain)) or any(OWNED_CHAIN.match(t) for t in targets)


def unmount_all(prefixes: Sequence[Path]) -> list[str]:
    """Lazily unmount every mount at or below ``prefixes``; return what was unmounted."""
    libc = ctypes.CDLL(None, use_errno=True)
    done = []
    for _ in range(3):  # a lazy unmount can reveal a mount that was below it
        points = mounts_under(Path("/proc/self/mountinfo").read_text(), prefixes)
        if not points:
            break
        for point in points:
            if libc.umount2(point.encode(), _MNT_DETACH) == 0:
                done.append(point)
    return done


def cgroup_dirs(relative: str) -> list[Path]:
    """``relative`` (e.g. "trtop") in every cgroup hierarchy (v1: one per controller; v2: one)."""
    if (CGROUP_FS / "cgroup.controllers").is_file():
        return [CGROUP_FS / relative]
    # v1 and hybrid: runc's cgroupfs manager uses every mounted hierarchy (named ones too).
    return [h / relative for h in sorted(CGROUP_FS.iterdir()) if h.is_dir() and not h.is_symlink()]


def make_cgroups(relative: str) -> None:
    for path in cgroup_dirs(relative):
        path.mkdir(exist_ok=True)
        if path.parent.name == "cpuset":  # a v1 cpuset child starts empty: inherit the parent's
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (path / name).is_file() and not (path / name).read_text().strip():
                    (path / name).write_text((path.parent / name).read_text())
    if (CGROUP_FS / "cgroup.controllers").is_file():
        wanted = (CGROUP_FS / "cgroup.subtree_control").read_text().split()
        control = CGROUP_FS / relative / "cgroup.subtree_control"
        for controller in wanted:
            try:
                control.write_text(f"+{controller}")
            except OSError:
                pass


def kill_cgroup_processes(relative: str, timeout: float = 10) -> int:
    """SIGKILL every process in the cgroup trees ``relative`` (the pods' containers)."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids: set[int] = set()
        for root in cgroup_dirs(relative):
            for procs in root.rglob("cgroup.procs") if root.is_dir() else []:
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except OSError:
                    pass
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, 9)
                killed.add(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    return len(killed)


def remove_cgroups(relative: str) -> list[Path]:
    """rmdir the cgroup trees ``relative``, deepest first; return what is left (should be none)."""
    left = []
    for root in cgroup_dirs(relative):
        if not root.is_dir():
            continue
        for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [root]:
            for _ in range(20):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)  # a killed process leaves its cgroup a moment later
            else:
                left.append(path)
    return left


def remove_owned_iptables_rules() -> int:
    """Drop the KUBE-*/CNI-* chains and rules of iptables and ip6tables; return how many."""
    total = 0
    for family in ("iptables", "ip6tables"):
        save = subprocess.run([f"{family}-save"], capture_output=True, text=True, check=False)
        if save.returncode or not save.stdout:
            continue
        text, dropped = strip_owned_rules(save.stdout)
        if dropped:
            subprocess.run([f"{family}-restore"], input=text, text=True, check=True, capture_output=True)
            total += dropped
    return total


def delete_link(name: str) -> bool:
    if not Path(f"/sys/class/net/{name}").exists():
        return False
    subprocess.run(["ip", "link", "delete", name], check=True, capture_output=True)
    return True


def read_sysctls(names: Iterable[str]) -> dict[str, str]:
    return {name: _sysctl_path(name).read_text().strip() for name in names if _sysctl_path(name).exists()}


def restore_sysctls(saved_file: Path) -> dict[str, str]:
    """Write back the values saved in ``saved_file``; return those that had changed."""
    if not saved_file.is_file():
        return {}
    saved: dict[str, str] = json.loads(saved_file.read_text())
    changed = {}
    for name, value in saved.items():
        path = _sysctl_path(name)
        if path.exists() and path.read_text().strip() != value:
            path.write_text(value)
            changed[name] = value
    return changed


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)
