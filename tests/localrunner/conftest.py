"""The ``local_runner`` fixture: a kubelet stand-in for one node of the test cluster (copy it freely).

One runner per test session, on a node of its own (``local-runner-<hex>``, so parallel
pytest runs sharing the cluster do not meet) with the taint
``trtop.io/local-runner=true:NoSchedule`` so no other test's pods land on it by chance.
Put a pod on it with ``**runner.placement()`` in the pod spec (nodeSelector + toleration)
or ``nodeName: runner.node_name``. Logs and per-pod folders go to a pytest temp dir.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from trtop import names
from trtop_dev.devcluster.testing import DevCluster
from trtop_dev.localrunner import LocalRunner, NodeShape

TEST_TAINT = {"key": names.LABEL_LOCAL_RUNNER, "value": "true", "effect": "NoSchedule"}


@pytest.fixture(scope="session")
def local_runner(dev_cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRunner]:
    runner = LocalRunner(dev_cluster.kubeconfig, node_name=f"local-runner-{secrets.token_hex(3)}",
                         work_dir=tmp_path_factory.mktemp("local-runner"), shape=NodeShape(taints=[TEST_TAINT]),
                         env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    with runner:
        yield runner
