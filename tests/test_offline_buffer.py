"""A disconnected client's output: replayed on reconnect, bounded in bytes and in time.

Through the gateway on the local cluster: a client starts a cell that waits for a file, goes
away, the cell prints more than the bound, and the same session reconnects. The kernel waits for
the file, not for a delay, so the order of events is fixed: the file is written only once the
gateway buffers for the departed client.
"""

from __future__ import annotations

import typing as t
import uuid
from pathlib import Path

import pytest

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.transport.offlinebuffer import OfflineBuffer

from .conftest import GatewayFactory
from .gateway.support import KernelWS, api, json_of
from .gatewayproc import eventually

pytestmark = pytest.mark.timeout(90)

BOUND = 8000
LINE = "x" * 200


def test_buffer_keeps_the_most_recent_bytes() -> None:
    drops: list[int] = []
    buffer = OfflineBuffer(100, lambda: drops.append(1))
    for i in range(10):
        buffer.add("iopub", [b"h", f"{i:02d}".encode() + b"." * 27])  # 30 bytes each
    assert [parts[1][:2] for _channel, parts in buffer] == [b"07", b"08", b"09"]
    assert buffer.bytes == 90 and buffer.dropped == 7 and drops == [1]  # logged once
    buffer.add("shell", [b"y" * 500])  # larger than the bound on its own: not kept either
    assert len(buffer) == 0 and buffer.bytes == 0


async def start(gateway: ElasticGatewayApp) -> str:
    response = await api(gateway.url, "POST", "/api/kernels", {"name": "python-cpu"})
    assert response.code == 201, response.body
    return str(json_of(response)["id"])


async def leave_while_printing(gateway: ElasticGatewayApp, kernel_id: str, session: str,
                               go: Path, lines: int) -> str:
    """Start a cell that prints ``lines`` lines once ``go`` exists, disconnect, then let it go."""
    ws = await KernelWS.open(gateway.url, kernel_id, session_id=session)
    try:
        assert (await ws.execute("import os, time"))["reply"]["status"] == "ok"
        msg_id = ws.send("execute_request", {"code": (
            f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
            f"for i in range({lines}): print(f'line {{i:03d}} {LINE}', flush=True)\n"),
            "silent": False})
        await ws.wait_for(lambda m: m["msg_type"] == "status"
                          and m["parent_header"].get("msg_id") == msg_id)
    finally:
        ws.close()
    manager = gateway.kernel_manager

    async def buffering() -> bool:
        return kernel_id in manager._kernel_buffers

    await eventually(buffering)
    go.write_text("go")
    return msg_id


async def test_output_is_replayed_within_its_bound(
        make_cluster_gateway: GatewayFactory, tmp_path: Path) -> None:
    gateway = await make_cluster_gateway(
        f"--ElasticMappingKernelManager.offline_buffer_max_bytes={BOUND}")
    kernel_id = await start(gateway)
    session = uuid.uuid4().hex
    msg_id = await leave_while_printing(gateway, kernel_id, session, tmp_path / "go", 100)
    info = gateway.kernel_manager._kernel_buffers[kernel_id]
    buffer = t.cast(OfflineBuffer, info["buffer"])

    async def finished() -> bool:
        return any(b'"idle"' in parts[-1] and msg_id.encode() in parts[-3]
                   for channel, parts in list(buffer) if channel == "iopub")

    await eventually(finished)
    assert buffer.bytes <= BOUND and buffer.dropped > 0  # 100 lines of ~230 bytes did not fit

    ws = await KernelWS.open(gateway.url, kernel_id, session_id=session)
    try:
        printed = ""
        while True:
            msg = await ws.recv()
            assert msg is not None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                printed += msg["content"]["text"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        lines = printed.splitlines()
        assert lines and lines[-1].startswith("line 099 ")  # the most recent output...
        assert not any(line.startswith("line 000 ") for line in lines)  # ...not the oldest
        assert len(printed.encode()) < BOUND
        # The replayed client is a live client again.
        assert (await ws.execute("print('back')"))["stdout"] == "back\n"
    finally:
        ws.close()


async def test_buffering_ends_when_no_one_comes_back(
        make_cluster_gateway: GatewayFactory, tmp_path: Path) -> None:
    gateway = await make_cluster_gateway(
        "--ElasticMappingKernelManager.offline_buffer_max_seconds=0.5")
    kernel_id = await start(gateway)
    await leave_while_printing(gateway, kernel_id, uuid.uuid4().hex, tmp_path / "go", 3)
    channels = gateway.kernel_manager._kernel_buffers[kernel_id]["channels"]

    async def stopped() -> bool:
        return kernel_id not in gateway.kernel_manager._kernel_buffers

    await eventually(stopped)
    assert all(stream.closed() for stream in channels.values())  # its sockets are released
    ws = await KernelWS.open(gateway.url, kernel_id)  # the kernel itself is fine
    try:
        assert (await ws.execute("print(1)"))["stdout"] == "1\n"
    finally:
        ws.close()
