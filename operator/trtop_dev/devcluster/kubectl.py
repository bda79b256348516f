"""The built kubectl and helm, always with an explicit kubeconfig (never ~/.kube/config).

Called by ``nodes`` (applying fake nodes), the providers (health checks) and the tests'
helpers in ``testing``.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class KubectlError(RuntimeError):
    """kubectl or helm exited non-zero; the message carries its command and stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"`{' '.join(args)}` failed (exit {returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Kubectl:
    """kubectl (and helm) bound to one kubeconfig."""

    binary: Path
    kubeconfig: Path
    helm_binary: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment entries that point any child process at this cluster."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
        """Run ``kubectl ARGS``; return stdout; raise KubectlError on failure when ``check``."""
        return self._run([str(self.binary), "--kubeconfig", str(self.kubeconfig), *args], input, check, timeout)

    def json(self, *args: str) -> Any:
        """``kubectl ARGS -o json``, parsed."""
        return json.loads(self.run(*args, "-o", "json"))

    def apply(self, manifests: Sequence[dict[str, Any]] | dict[str, Any], *, namespace: str | None = None) -> str:
        """Server-side apply of one manifest or a list of them (field manager ``trtop-dev``)."""
        items = [manifests] if isinstance(manifests, dict) else list(manifests)
        doc = {"apiVersion": "v1", "kind": "List", "items": items}
        ns = ["--namespace", namespace] if namespace else []
        return self.run("apply", "--server-side", "--force-conflicts", "--field-manager", "trtop-dev",
                        *ns, "-f", "-", input=json.dumps(doc))

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run the built ``helm ARGS`` against this cluster."""
        if self.helm_binary is None:
            raise RuntimeError("this Kubectl was made without a helm binary")
        return self._run([str(self.helm_binary), "--kubeconfig", str(self.kubeconfig), *args], None, check, timeout)

    def ready(self) -> bool:
        """Whether the API server answers /readyz."""
        try:
            return self.run("get", "--raw", "/readyz", check=True, timeout=10).strip() == "ok"
        except (KubectlError, subprocess.TimeoutExpired):
            return False

    @staticmethod
    def _run(argv: list[str], input: str | None, check: bool, timeout: float) -> str:
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlError(argv, result.returncode, result.stderr)
        return result.stdout
