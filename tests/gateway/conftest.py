"""Fixtures for the gateway tests: an in-process gateway on 127.0.0.1 with a local ipykernel.

The gateway runs in the test's own event loop (``start_serving`` / ``stop_serving``), so tests
can look at server-side sockets directly.  Jupyter's config, data and runtime paths point at
temporary directories and ``JUPYTER_NO_CONFIG`` is set, so nothing from the machine leaks in.
"""

from __future__ import annotations

import json
import sys
import typing as t
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from elastic_kernels.gateway.app import ElasticGatewayApp

from ..conftest import serving_gateways
from .support import KERNEL_NAME, LOGO, TOKEN


@pytest.fixture
def jupyter_dirs(jupyter_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Private Jupyter paths (conftest's ``jupyter_home``) with one local ipykernel spec named
    ``ek-test-python``."""
    dirs = {name: jupyter_home / name for name in ("config", "data", "runtime", "root")}
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
    # GatewayClient.init_connection_args writes this into os.environ; keep that test-local.
    monkeypatch.setenv("KERNEL_LAUNCH_TIMEOUT", "40")
    return dirs


GatewayFactory = Callable[..., Awaitable[ElasticGatewayApp]]


@pytest.fixture
async def make_gateway(jupyter_dirs: dict[str, Path]) -> AsyncIterator[GatewayFactory]:
    """Start gateways with extra argv/traits; every one is stopped when the test ends."""
    async with serving_gateways(stop_timeout=30) as serve:
        async def make(*argv: str, **traits: t.Any) -> ElasticGatewayApp:
            # The serving layer alone, with local kernels (unless a test brings its own
            # manager); tests/test_end_to_end.py runs the same gateway on the local cluster.
            local_kernels = []
            if "kernel_manager_class" not in traits:
                local_kernels.append("--kernel-manager-class=jupyter_server.services.kernels."
                                     "kernelmanager.AsyncMappingKernelManager")
            if "kernel_spec_manager_class" not in traits:
                local_kernels.append(
                    "--kernel-spec-manager-class=jupyter_client.kernelspec.KernelSpecManager")
            return await serve(ElasticGatewayApp(**traits), [
                "--ip=127.0.0.1",
                "--port=0",
                f"--token={TOKEN}",
                f"--ServerApp.root_dir={jupyter_dirs['root']}",
                "--ElasticGatewayApp.install_signal_handlers=False",
                "--ElasticGatewayApp.zmq_recheck_interval=0.2",
                *local_kernels,
                *argv,
            ])

        yield make


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> ElasticGatewayApp:
    return await make_gateway()


