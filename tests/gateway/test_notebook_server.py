"""The real path: a plain jupyter_server started with --gateway-url, talking to our gateway.

The notebook server runs as a subprocess on 127.0.0.1 with its own private Jupyter directories;
the gateway runs in the test's event loop.  Everything the test does goes through the notebook
server's REST API and websocket, as JupyterLab would.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.testing import free_port

from .support import KERNEL_NAME, TOKEN, KernelWS, api, json_of

NODELAY_CLASS = "elastic_kernels.notebook.NoDelayGatewayWebSocketConnection"


@dataclass
class NotebookServer:
    url: str
    token: str
    log: Path



async def wait_until_ready(
    server: NotebookServer, proc: asyncio.subprocess.Process, timeout: float
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc.returncode is not None:
            raise AssertionError(
                f"notebook server exited with {proc.returncode}:\n{server.log.read_text()[-3000:]}"
            )
        try:
            response = await api(server.url, "GET", "/api/status", token=server.token)
            if response.code == 200:
                return
        except OSError:
            pass  # not listening yet
        if loop.time() > deadline:
            raise AssertionError(
                f"notebook server not ready in {timeout} s:\n{server.log.read_text()[-3000:]}"
            )
        await asyncio.sleep(0.1)


async def run_notebook_server(
    gateway: ElasticGatewayApp, tmp_path: Path, extra_args: list[str], *,
    gateway_token: str = TOKEN, extra_env: dict[str, str] | None = None,
) -> AsyncIterator[NotebookServer]:
    home = tmp_path / f"notebook-{uuid.uuid4().hex[:8]}"
    dirs = {name: home / name for name in ("config", "data", "runtime", "root")}
    for path in dirs.values():
        path.mkdir(parents=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER", "ELASTIC_KERNELS", "KERNEL_"))
    }
    env.update(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTER_NO_CONFIG="1",
        **(extra_env or {}),
    )
    port = free_port()
    server = NotebookServer(f"http://127.0.0.1:{port}", "nb-" + uuid.uuid4().hex, home / "log")
    args = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={dirs['root']}",
        f"--IdentityProvider.token={server.token}",
        f"--gateway-url={gateway.url}",
        f"--GatewayClient.auth_token={gateway_token}",
        *extra_args,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--ServerApp.allow_root=True")  # CI containers run as root
    with server.log.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
    try:
        await wait_until_ready(server, proc, timeout=40)
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except (TimeoutError, asyncio.TimeoutError):
                proc.kill()
                await proc.wait()


@pytest.fixture
async def notebook_server(
    gateway: ElasticGatewayApp, tmp_path: Path
) -> AsyncIterator[NotebookServer]:
    async for server in run_notebook_server(
        gateway, tmp_path, [f"--ServerApp.kernel_websocket_connection_class={NODELAY_CLASS}"]
    ):
        yield server


async def exercise(server: NotebookServer, gateway: ElasticGatewayApp) -> None:
    """Kernel specs, start, execute, shut down: all through the notebook server."""
    specs = json_of(await api(server.url, "GET", "/api/kernelspecs", token=server.token))
    assert KERNEL_NAME in specs["kernelspecs"], specs
    assert specs["kernelspecs"][KERNEL_NAME]["spec"]["display_name"] == "Elastic test Python"

    started = await api(
        server.url, "POST", "/api/kernels", {"name": KERNEL_NAME}, token=server.token
    )
    assert started.code == 201, started.body
    kernel_id = json_of(started)["id"]
    assert kernel_id in gateway.kernel_manager.list_kernel_ids()

    ws = await KernelWS.open(server.url, kernel_id, token=server.token)
    try:
        result = await ws.execute("print(1+1)")
        assert result["reply"]["status"] == "ok"
        assert result["stdout"] == "2\n"
        # The notebook server's relay is the gateway's websocket client, without Nagle.
        (handler,) = gateway.open_websockets
        sock = handler.ws_connection.stream.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        ws.close()

    deleted = await api(server.url, "DELETE", f"/api/kernels/{kernel_id}", token=server.token)
    assert deleted.code == 204, deleted.body
    assert kernel_id not in gateway.kernel_manager.list_kernel_ids()


@pytest.mark.timeout(60)
async def test_notebook_server_through_gateway(
    gateway: ElasticGatewayApp, notebook_server: NotebookServer
) -> None:
    """Configured with --ServerApp.kernel_websocket_connection_class."""
    await exercise(notebook_server, gateway)


@pytest.mark.timeout(60)
async def test_notebook_server_with_extension(
    gateway: ElasticGatewayApp, tmp_path: Path
) -> None:
    """Configured with the server extension, which also makes gateway errors readable."""
    hub_token = "hub-" + uuid.uuid4().hex
    async for server in run_notebook_server(
        gateway,
        tmp_path,
        ["--ServerApp.jpserver_extensions=elastic_kernels.notebook=True"],
        extra_env={"JUPYTERHUB_API_TOKEN": hub_token},
    ):
        await exercise(server, gateway)
        # A session's start: jupyter_server logs its arguments, this server's environment too.
        session = await api(server.url, "POST", "/api/sessions", {
            "path": "a.ipynb", "type": "notebook", "kernel": {"name": KERNEL_NAME}},
            token=server.token)
        assert session.code == 201, session.body
        kernel_id = json_of(session)["kernel"]["id"]
        assert (await api(server.url, "DELETE", f"/api/kernels/{kernel_id}",
                          token=server.token)).code == 204
        missing = await api(
            server.url, "POST", "/api/kernels", {"name": "no-such-spec"}, token=server.token
        )
        assert missing.code == 404
        assert "No such kernel spec: no-such-spec" in json_of(missing)["message"]
        assert gateway.kernel_manager.list_kernel_ids() == []
    log = server.log.read_text()
    assert "kernel websockets use " + NODELAY_CLASS in log
    assert "JUPYTERHUB_API_TOKEN': '[redacted]'" in log, "the start's environment was logged"
    for secret in (hub_token, TOKEN, server.token):
        assert secret not in log
