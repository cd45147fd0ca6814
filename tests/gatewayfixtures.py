"""Gateways on the local cluster with several users, for the ownership, secrets and input tests.

``users_gateway`` starts an ``ElasticGatewayApp`` in the test's event loop against the ``cluster``
fixture, with an admin token (``--token``) and a users file holding alice (plaintext token), bob
(only the token's SHA-256) and ops (an admin, by hash). Every gateway it starts is stopped, with
its kernels, when the test ends.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.auth import hash_token
from elastic_kernels.kube.client import KubeClient
from elastic_kernels.kube.config import load_cluster_config
from elastic_kernels.localcluster.cluster import LocalCluster

ADMIN_TOKEN = "admin-token-" + uuid.uuid4().hex
ALICE_TOKEN = "alice-token-" + uuid.uuid4().hex
BOB_TOKEN = "bob-token-" + uuid.uuid4().hex
OPS_TOKEN = "ops-token-" + uuid.uuid4().hex
ALL_TOKENS = (ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN, OPS_TOKEN)

USERS_DOC: dict[str, Any] = {
    "tokens": [
        {"user": "alice", "token": ALICE_TOKEN},
        {"user": "bob", "tokenSha256": hash_token(BOB_TOKEN)},
        {"user": "ops", "tokenSha256": hash_token(OPS_TOKEN), "admin": True},
    ]
}

GatewayFactory = Callable[..., Awaitable[ElasticGatewayApp]]


@pytest.fixture
def jupyter_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private Jupyter paths, so nothing installed on the machine leaks into the gateway."""
    home = tmp_path / "jupyter"
    for name in ("config", "data", "runtime", "root"):
        (home / name).mkdir(parents=True)
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(home / "runtime"))
    monkeypatch.setenv("JUPYTER_NO_CONFIG", "1")
    for name in ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "ELASTIC_KERNELS_TOKEN", "JUPYTER_PATH"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(json.dumps(USERS_DOC))
    return path


@pytest_asyncio.fixture
async def make_users_gateway(cluster: LocalCluster, jupyter_home: Path,
                             users_file: Path) -> AsyncIterator[GatewayFactory]:
    """Start gateways on the local cluster (extra argv appended); all stopped at the end."""
    apps: list[ElasticGatewayApp] = []

    async def make(*argv: str, users: Path | None = users_file,
                   token: str | None = ADMIN_TOKEN) -> ElasticGatewayApp:
        app = ElasticGatewayApp()
        app.initialize(argv=[
            "--ip=127.0.0.1", "--port=0",
            *([f"--token={token}"] if token else []),
            *([f"--users-file={users}"] if users else []),
            f"--kubeconfig={cluster.kubeconfig_path}",
            f"--ServerApp.root_dir={jupyter_home / 'root'}",
            "--ElasticGatewayApp.install_signal_handlers=False",
            # Tests stop the gateway with kernels in it; don't leave their pods to the cluster.
            "--ElasticMappingKernelManager.shutdown_kernels_on_exit=True",
            *argv,
        ])
        apps.append(app)
        await app.start_serving()
        return app

    try:
        yield make
    finally:
        for app in reversed(apps):
            await asyncio.wait_for(app.stop_serving(), 60)


@pytest_asyncio.fixture
async def users_gateway(make_users_gateway: GatewayFactory) -> ElasticGatewayApp:
    return await make_users_gateway()


@pytest_asyncio.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[KubeClient]:
    cfg = load_cluster_config(cluster.kubeconfig_path)
    client = KubeClient(cfg.api_client, cfg.namespace)
    try:
        yield client
    finally:
        await client.close()


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20.0,
                     interval: float = 0.05) -> Any:
    """Retry an async check until it returns something truthy (bounded, for HTTP views)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
