"""Where the dev cluster keeps its state: the repository's ``.work/dev-cluster`` folder.

Nothing outside it is written (never ``~/.kube/config``); caches of built binaries live in
``~/.cache/trtop`` (``trtop_dev.devcluster.tools``). Called by the providers, the CLI and tests.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_NAME = "trtop-dev"
_MARKER = Path("hack") / "versions.env"


class WorkspaceError(RuntimeError):
    """No trtop checkout to work in."""


def repo_root() -> Path:
    """The trtop checkout: $TRTOP_REPO, else the one holding this package, else one above the cwd."""
    env = os.environ.get("TRTOP_REPO")
    if env:
        root = Path(env).resolve()
        if not (root / _MARKER).is_file():
            raise WorkspaceError(f"TRTOP_REPO={env} has no {_MARKER}; point it at a trtop checkout")
        return root
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for candidate in (start, *start.parents):
            if (candidate / _MARKER).is_file():
                return candidate
    raise WorkspaceError(
        f"the dev cluster needs a trtop checkout ({_MARKER} pins the tool versions); "
        "run inside one or set TRTOP_REPO"
    )


def work_dir(root: Path) -> Path:
    """``<repo>/.work/dev-cluster``: kubeconfigs, kwok's state and logs (git-ignored)."""
    return root / ".work" / "dev-cluster"


def kwok_workdir(root: Path) -> Path:
    """KWOK_WORKDIR: kwokctl keeps each cluster under ``clusters/<name>`` here."""
    return work_dir(root) / "kwok"


def kubeconfig_path(root: Path, name: str = DEFAULT_NAME) -> Path:
    """The kubeconfig of cluster ``name``: ``.work/dev-cluster/kubeconfig`` for the default one."""
    if name == DEFAULT_NAME:
        return work_dir(root) / "kubeconfig"
    return work_dir(root) / f"{name}.kubeconfig"
