"""Fixtures shared by every test directory: the real dev cluster and a namespace per test.

- ``dev_cluster`` (session): a :class:`trtop_dev.devcluster.testing.DevCluster`. Reuses the
  cluster of $TRTOP_TEST_KUBECONFIG / $KUBECONFIG (left running), else starts this
  checkout's ``trtop-test`` kwok cluster once per session and stops it at the end
  ($TRTOP_TEST_KEEP_CLUSTER=1 keeps it for the next run). It has ``kubectl(...)``,
  ``helm(...)``, ``apply(...)``, ``get(...)``, ``add_node(...)``/``delete_node(...)`` and
  ``pools(...)`` to change the GPU types while a test runs.
- ``namespace``: a fresh namespace (default ServiceAccount ready), deleted afterwards.

Any test using ``dev_cluster`` is marked ``e2e``, so ``pytest -m "not e2e"`` needs no cluster.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from trtop_dev.devcluster import testing


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "dev_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def dev_cluster() -> Iterator[testing.DevCluster]:
    session = testing.start_session()
    try:
        yield session
    finally:
        testing.stop_session(session)


@pytest.fixture
def namespace(dev_cluster: testing.DevCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = testing.create_namespace(dev_cluster, request.node.name)
    try:
        yield name
    finally:
        testing.delete_namespace(dev_cluster, name)
