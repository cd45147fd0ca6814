"""Fixtures for the gateway tests: an in-process gateway on 127.0.0.1 with a local ipykernel.

The gateway runs in the test's own event loop (``start_serving`` / ``stop_serving``), so tests
can look at server-side sockets directly.  Jupyter's config, data and runtime paths point at
temporary directories and ``JUPYTER_NO_CONFIG`` is set, so nothing from the machine leaks in.
"""

from __future__ import annotations

import asyncio
import json
import sys
import typing as t
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from elastic_kernels.gateway.app import ElasticGatewayApp

from .support import KERNEL_NAME, LOGO, TOKEN


@pytest.fixture
def jupyter_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Private Jupyter paths with one local ipykernel spec named ``ek-test-python``."""
    dirs = {name: tmp_path / name for name in ("config", "data", "runtime", "root")}
    for path in dirs.values():
        path.mkdir()
    spec_dir = dirs["data"] / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Elastic test Python",
                "language": "python",
                "interrupt_mode": "signal",
            }
        )
    )
    (spec_dir / "logo-64x64.png").write_bytes(LOGO)
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(dirs["config"]))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(dirs["data"]))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(dirs["runtime"]))
    monkeypatch.setenv("JUPYTER_NO_CONFIG", "1")
    for name in ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "ELASTIC_KERNELS_TOKEN", "JUPYTER_PATH"):
        monkeypatch.delenv(name, raising=False)
    # GatewayClient.init_connection_args writes this into os.environ; keep that test-local.
    monkeypatch.setenv("KERNEL_LAUNCH_TIMEOUT", "40")
    return dirs


GatewayFactory = Callable[..., Awaitable[ElasticGatewayApp]]


@pytest.fixture
async def make_gateway(jupyter_dirs: dict[str, Path]) -> AsyncIterator[GatewayFactory]:
    """Start gateways with extra argv/traits; every one is stopped when the test ends."""
    apps: list[ElasticGatewayApp] = []

    async def make(*argv: str, **traits: t.Any) -> ElasticGatewayApp:
        app = ElasticGatewayApp(**traits)
        # The serving layer alone, with local kernels (unless a test brings its own manager);
        # tests/test_end_to_end.py runs the same gateway against the local cluster.
        local_kernels = []
        if "kernel_manager_class" not in traits:
            local_kernels.append("--kernel-manager-class=jupyter_server.services.kernels."
                                 "kernelmanager.AsyncMappingKernelManager")
        if "kernel_spec_manager_class" not in traits:
            local_kernels.append(
                "--kernel-spec-manager-class=jupyter_client.kernelspec.KernelSpecManager")
        app.initialize(
            argv=[
                "--ip=127.0.0.1",
                "--port=0",
                f"--token={TOKEN}",
                f"--ServerApp.root_dir={jupyter_dirs['root']}",
                "--ElasticGatewayApp.install_signal_handlers=False",
                "--ElasticGatewayApp.zmq_recheck_interval=0.2",
                *local_kernels,
                *argv,
            ]
        )
        apps.append(app)
        await app.start_serving()
        return app

    try:
        yield make
    finally:
        for app in reversed(apps):
            await asyncio.wait_for(app.stop_serving(), 30)


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> ElasticGatewayApp:
    return await make_gateway()


