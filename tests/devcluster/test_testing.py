"""The tests' cluster session: one a session made and could not finish does not outlive it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from trtop_dev.devcluster import cluster, testing, workspace


@pytest.fixture
def failing_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr(workspace, "repo_root", lambda: tmp_path)
    for variable in ("TRTOP_TEST_KUBECONFIG", "KUBECONFIG"):
        monkeypatch.delenv(variable, raising=False)

    def up(name: str, **_: object) -> None:
        raise RuntimeError("The CustomResourceDefinition is invalid")
    monkeypatch.setattr(cluster, "up", up)
    downs: list[str] = []
    monkeypatch.setattr(cluster, "down", lambda name, log=None: downs.append(name))
    return downs


def test_a_cluster_the_session_made_and_could_not_finish_goes_down(failing_up: list[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Left up, the next session took it for another user's, never stopped it, and its real node kept the
    # machine's kubelet from every other checkout (CI's included).
    monkeypatch.setattr(cluster, "exists", lambda name: False)
    with pytest.raises(RuntimeError, match="invalid"):
        testing.start_session("t")
    assert failing_up == ["t"]


def test_a_cluster_that_was_there_before_or_still_has_users_stays(failing_up: list[str], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "exists", lambda name: True)
    with pytest.raises(RuntimeError):
        testing.start_session("t")
    monkeypatch.setattr(cluster, "exists", lambda name: False)
    users = workspace.work_dir(tmp_path) / "t.users"
    users.mkdir(parents=True)
    (users / str(os.getppid())).touch()  # another live session (pytest's parent stands in for it)
    with pytest.raises(RuntimeError):
        testing.start_session("t")
    assert failing_up == []
