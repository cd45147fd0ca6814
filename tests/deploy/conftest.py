"""Fixtures: a local cluster that serves the install's kinds, with the kustomize base applied."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from elastic_kernels.localcluster.cluster import LocalCluster
from tests.kubectl import Kubectl, Result

from .manifests import DEPLOY, NAMESPACE, JSON, kustomize

__all__ = ["Kubectl", "Result"]


@pytest.fixture(scope="session")
def base_docs() -> list[JSON]:
    return kustomize(DEPLOY)


@pytest.fixture
def install_cluster_shape() -> tuple[int, int]:
    """Nodes and GPUs per node of ``install_cluster``; a module overrides it."""
    return 2, 2


@pytest_asyncio.fixture
async def install_cluster(tmp_path: Path,
                          install_cluster_shape: tuple[int, int]) -> AsyncIterator[LocalCluster]:
    """A local cluster (2 nodes x 2 GPUs unless the module says otherwise); it serves every
    kind the install creates."""
    nodes, gpus = install_cluster_shape
    cluster = LocalCluster(nodes=nodes, gpus_per_node=gpus, workdir=tmp_path / "cluster",
                           namespace=NAMESPACE, crash_backoff_seconds=0.2)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
def kubectl(install_cluster: LocalCluster, tmp_path: Path) -> Kubectl:
    home = tmp_path / "kubectl-home"
    home.mkdir()
    return Kubectl(install_cluster.kubeconfig_path, home)
