"""Shared fixtures: a running local cluster with our CRDs and kernelspecs, and a connection to it.

Every fixture that starts something stops it in ``finally``, so a failing test leaves no process
behind.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_asyncio
import yaml

from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.localcluster.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO / "deploy" / "crds"
KERNELSPECS = REPO / "kernelspecs"


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """A local cluster (2 nodes x 2 GPUs) with the CRDs and the example kernelspecs applied."""
    c = LocalCluster(nodes=2, gpus_per_node=2, workdir=tmp_path / "cluster",
                     manifests=[CRDS, KERNELSPECS], crash_backoff_seconds=0.2)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest_asyncio.fixture
async def conn(cluster: LocalCluster) -> AsyncIterator[ClusterConnection]:
    """The process-wide cluster connection, pointed at the test cluster."""
    await ClusterConnection.reset()
    connection = ClusterConnection.instance(kubeconfig=str(cluster.kubeconfig_path))
    try:
        yield connection
    finally:
        await ClusterConnection.reset()


def example_kernelspec(name: str = "python-cpu") -> dict[str, Any]:
    """A fresh copy of one of the shipped JupyterKernelSpec CRs, to derive test specs from."""
    for path in KERNELSPECS.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "JupyterKernelSpec" and doc["metadata"]["name"] == name:
                return copy.deepcopy(doc)
    raise LookupError(f"no JupyterKernelSpec {name} in {KERNELSPECS}")


def derived_kernelspec(base: str, name: str, **spec_changes: Any) -> dict[str, Any]:
    """A kernelspec CR named ``name`` that differs from a shipped one by ``spec_changes``."""
    doc = example_kernelspec(base)
    doc["metadata"] = {"name": name}
    doc["spec"].update(spec_changes)
    return doc


@pytest.fixture
def kernelspec_factory() -> Any:
    return derived_kernelspec
