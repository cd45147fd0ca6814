"""Shared fixtures: a running local cluster with our CRDs and kernelspecs, a connection and a
client for it, private Jupyter paths, and gateways on the cluster (in-process and as processes).

Every fixture that starts something stops it in ``finally``, so a failing test leaves no process
behind.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.kube.apply import apply_manifests, load_manifests
from elastic_kernels.kube.client import KubeClient
from elastic_kernels.kube.config import load_cluster_config
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.localcluster.store import Store

from .gateway.support import TOKEN
from .gatewayproc import LEAKY_ENV, Gateways, private_jupyter_dirs

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO / "deploy" / "crds"
KERNELSPECS = REPO / "kernelspecs"


GatewayFactory = Callable[..., Awaitable[ElasticGatewayApp]]


@pytest.fixture(autouse=True)
def no_leftover_cluster_connection() -> None:
    """Each test starts without the process-wide ClusterConnection of an earlier one.

    A gateway's ``init_configurables`` configures that singleton only when it creates it; one
    left by an earlier test (say, created unconfigured by a callback that ran after its
    gateway had reset it) would point the next gateway at ``~/.kube/config``. Under
    ``pytest -n`` the tests before a given one differ from run to run, so this must not depend
    on which ran first. Its informers died with that test's event loop; dropping it is enough.
    """
    if ClusterConnection.initialized():
        ClusterConnection.clear_instance()


async def apply_files(kubeconfig: Path, paths: list[Path]) -> list[str]:
    """Apply manifest files or directories with the credentials of ``kubeconfig``."""
    cfg = load_cluster_config(kubeconfig)
    client = KubeClient(cfg.api_client, cfg.namespace)
    try:
        return await apply_manifests(client, load_manifests(paths))
    finally:
        await client.close()


@asynccontextmanager
async def running_cluster(tmp_path: Path, *, store: Store | None = None,
                          **options: Any) -> AsyncIterator[LocalCluster]:
    """A started local cluster with the CRDs and the example kernelspecs applied, stopped on
    exit. A module that needs another shape overrides ``cluster`` with this and ``options``
    (LocalCluster's arguments; ``store`` replaces its store, e.g. for a smaller watch window).

    The manifests go in over HTTP through the cluster's kubeconfig, as an admin's kubectl would
    put them: the local cluster knows nothing of this project's resources."""
    settings: dict[str, Any] = {"nodes": 2, "gpus_per_node": 2, "crash_backoff_seconds": 0.2,
                                "workdir": tmp_path / "cluster"}
    c = LocalCluster(**{**settings, **options})
    if store is not None:
        c.store = store
    await c.start()
    try:
        await apply_files(c.kubeconfig_path, [CRDS, KERNELSPECS])
        yield c
    finally:
        await c.stop()


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """A local cluster (2 nodes x 2 GPUs) with the CRDs and the example kernelspecs applied."""
    async with running_cluster(tmp_path) as c:
        yield c


@pytest_asyncio.fixture
async def conn(cluster: LocalCluster) -> AsyncIterator[ClusterConnection]:
    """The process-wide cluster connection, pointed at the test cluster."""
    await ClusterConnection.reset()
    connection = ClusterConnection.instance(kubeconfig=str(cluster.kubeconfig_path))
    try:
        yield connection
    finally:
        await ClusterConnection.reset()


@asynccontextmanager
async def kube_client(kubeconfig: Path) -> AsyncIterator[KubeClient]:
    """A client from a kubeconfig, closed on exit."""
    cfg = load_cluster_config(kubeconfig)
    client = KubeClient(cfg.api_client, cfg.namespace)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[KubeClient]:
    """A client of the test cluster, from its kubeconfig (independent of the gateway's)."""
    async with kube_client(cluster.kubeconfig_path) as client:
        yield client


@pytest.fixture
def jupyter_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private Jupyter paths, so nothing installed on the machine leaks into the gateway."""
    home = tmp_path / "jupyter"
    for name, value in private_jupyter_dirs(home).items():
        monkeypatch.setenv(name, value)
    for name in LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


GatewayServer = Callable[[ElasticGatewayApp, list[str]], Awaitable[ElasticGatewayApp]]


@asynccontextmanager
async def serving_gateways(stop_timeout: float) -> AsyncIterator[GatewayServer]:
    """Yields ``serve(app, argv)``, which initialises an in-process gateway and starts serving
    it; on exit every gateway served is stopped (newest first), whatever happened."""
    apps: list[ElasticGatewayApp] = []

    async def serve(app: ElasticGatewayApp, argv: list[str]) -> ElasticGatewayApp:
        app.initialize(argv=argv)
        apps.append(app)
        await app.start_serving()
        return app

    try:
        yield serve
    finally:
        for app in reversed(apps):
            await asyncio.wait_for(app.stop_serving(), stop_timeout)


@pytest_asyncio.fixture
async def make_cluster_gateway(cluster: LocalCluster,
                               jupyter_home: Path) -> AsyncIterator[GatewayFactory]:
    """Start in-process gateways on the local cluster (extra argv appended; ``token=None`` for
    none); every one is stopped, with its kernels, when the test ends."""
    async with serving_gateways(stop_timeout=60) as serve:
        async def make(*argv: str, token: str | None = TOKEN) -> ElasticGatewayApp:
            return await serve(ElasticGatewayApp(), [
                "--ip=127.0.0.1", "--port=0",
                *([f"--token={token}"] if token else []),
                f"--kubeconfig={cluster.kubeconfig_path}",
                f"--ServerApp.root_dir={jupyter_home / 'root'}",
                "--ElasticGatewayApp.install_signal_handlers=False",
                # Tests stop the gateway with kernels in it; don't leave their pods to the cluster.
                "--ElasticMappingKernelManager.shutdown_kernels_on_exit=True",
                *argv,
            ])

        yield make


@pytest.fixture
def gateway_process_args() -> tuple[str, ...]:
    """Extra argv for every gateway process of ``gateways``; a module overrides it."""
    return ()


@pytest_asyncio.fixture
async def gateways(cluster: LocalCluster, tmp_path: Path,
                   gateway_process_args: tuple[str, ...]) -> AsyncIterator[Gateways]:
    """Gateway processes on the local cluster, all stopped when the test ends."""
    found = Gateways(cluster, tmp_path, *gateway_process_args)
    try:
        yield found
    finally:
        await found.stop_all()


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
