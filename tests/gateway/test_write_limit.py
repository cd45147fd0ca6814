"""The write bound as a user sees it: a notice in the cell that lost output, and a client that
reads nothing at all disconnected, the kernel unharmed (through an in-process gateway and a real
websocket; the memory figures are in tests/test_slow_reader.py).

The order of events is fixed by files, not delays: the kernel writes ``done`` once its output
is out, and only then does the client start reading.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import typing as t
from pathlib import Path

import pytest

from jupyter_client.session import DELIM, Session

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.transport.writelimit import (
    MemoryReleaser,
    OutputLimit,
    Verdict,
    notice_frame,
    pending_bytes,
)

from ..gatewayproc import wait_until
from .support import KernelWS, start_kernel

pytestmark = pytest.mark.timeout(60)

GatewayFactory = t.Callable[..., t.Awaitable[ElasticGatewayApp]]
BOUND = 256 * 1024
PRINTED = 8 * 1024 * 1024


def small_socket_buffers(gateway: ElasticGatewayApp, ws: KernelWS) -> None:
    """Small TCP buffers on both ends of the websocket, so that what the client does not read
    piles up in the gateway, not in the loopback's socket buffers (several MB)."""
    for handler in gateway.open_websockets:
        handler.ws_connection.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                       16384)
    ws.ws.protocol.stream.socket.setsockopt(  # type: ignore[union-attr]
        socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)


async def test_output_past_the_bound_is_dropped_with_a_notice_in_its_cell(
        make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gateway = await make_gateway(f"--ElasticChannelsConnection.max_pending_bytes={BOUND}")
    kernel = await start_kernel(gateway.url)
    ws = await KernelWS.open(gateway.url, kernel["id"])
    done = tmp_path / "done"
    try:
        assert (await ws.execute("import sys"))["reply"]["status"] == "ok"
        small_socket_buffers(gateway, ws)
        msg_id = ws.send("execute_request", {"silent": False, "code": (
            f"for i in range({PRINTED // 65536}):\n"
            "    sys.stdout.write('y' * 65536)\n"
            "    sys.stdout.flush()\n"
            f"open({str(done)!r}, 'w').close()\n")})
        # The client reads nothing until the kernel has written everything.
        await wait_until(done.exists, "the cell finished", timeout=30)
        got, notices = 0, []
        while True:
            msg = await ws.recv()
            assert msg is not None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                got += len(msg["content"]["text"])
            elif msg["msg_type"] == "stream":
                notices.append(msg["content"]["text"])
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        # Some output arrived, not all of it, and the cell was told, before it went idle: at
        # its first loss, and once more for what it lost after (the loopback's socket buffers
        # take some output in between, so the client may fall behind many times).
        assert 0 < got < PRINTED
        assert 1 <= len(notices) <= 2, notices
        for notice in notices:
            assert "of output" in notice and "not shown" in notice and "256.0 KiB" in notice
        assert all("more of output" in notice for notice in notices[1:]), "\n".join(notices)
        # The client keeps its connection and the kernel its state.
        assert (await ws.execute("print(i)"))["stdout"] == f"{PRINTED // 65536 - 1}\n"
    finally:
        ws.close()


async def test_a_client_that_reads_nothing_at_all_is_closed_with_1008(
        make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(f"--ElasticChannelsConnection.max_pending_bytes={BOUND}")
    kernel = await start_kernel(gateway.url)
    ws = await KernelWS.open(gateway.url, kernel["id"])
    try:
        assert (await ws.execute("pass"))["reply"]["status"] == "ok"
        (handler,) = gateway.open_websockets
        limit = handler.connection._output_limit
        # Replies and status messages are never dropped; a client that asks for them without
        # ever reading is disconnected once twice the bound is queued.
        small_socket_buffers(gateway, ws)
        for _ in range(200):
            queued = pending_bytes(handler) or 0
            for _ in range(50):
                ws.send("kernel_info_request", {})
            # Let the kernel answer part of each batch before the next, so that its backlog
            # stays small: the check below would otherwise wait behind thousands of requests
            # (more than 20 s on a loaded 2-core machine).
            for _ in range(40):
                await asyncio.sleep(0.025)
                if handler.ws_connection is None or (pending_bytes(handler) or 0) > queued:
                    break
            if handler.ws_connection is None:
                break
        await wait_until(lambda: not gateway.open_websockets, "the gateway closed it",
                         timeout=30)
        assert limit.kept_while_behind > BOUND
    finally:
        ws.close()
    # The kernel is unharmed.
    again = await KernelWS.open(gateway.url, kernel["id"])
    try:
        assert (await again.execute("print('fine')"))["stdout"] == "fine\n"
    finally:
        again.close()


class _Stream:
    def __init__(self) -> None:
        self._write_buffer = b""
        self._write_futures: list[object] = []


class _Protocol:
    def __init__(self) -> None:
        self.stream = _Stream()
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class _Handler:
    def __init__(self) -> None:
        self.ws_connection = _Protocol()

    def queue(self, n: int) -> None:
        self.ws_connection.stream._write_buffer = b"x" * n


def _message(msg_type: str, parent: str = "cell-1", size: int = 100,
             content: bytes = b"") -> list[bytes]:
    header = json.dumps({"msg_type": msg_type, "msg_id": "m"}).encode()
    parent_header = json.dumps({"msg_id": parent, "msg_type": "execute_request"}).encode()
    return [b"topic", DELIM, b"sig", header, parent_header, b"{}", content or b"x" * size]


def test_output_limit_decisions() -> None:
    limit = OutputLimit(100_000, logging.getLogger("test-write-limit"), "k")
    handler = _Handler()
    # Fits: sent without parsing anything.
    assert limit.check(handler, "iopub", _message("stream")) is Verdict.SEND
    # One output message larger than the bound: dropped, even with nothing queued.
    assert limit.check(handler, "iopub", _message("stream", size=200_000)) is Verdict.DROP
    assert not limit.behind
    # Behind: output is dropped until the client is back under half the bound...
    handler.queue(99_000)
    assert limit.check(handler, "iopub", _message("display_data", "cell-2")) is Verdict.DROP
    handler.queue(60_000)
    assert limit.check(handler, "iopub", _message("stream", "cell-2")) is Verdict.DROP
    # ...while status and replies still go, preceded by one notice per cell.
    assert limit.check(handler, "iopub", _message("status", "cell-2")) is Verdict.SEND
    notices = limit.take_notices()
    assert [parent["msg_id"] for parent, _text in notices] == ["cell-1", "cell-2"]
    assert "1 message" in notices[0][1] and "2 messages" in notices[1][1]
    assert not limit.has_notices
    handler.queue(40_000)
    assert limit.check(handler, "iopub", _message("stream", "cell-2")) is Verdict.SEND
    # A client over the bound that keeps getting replies it never reads is closed.
    handler.queue(150_000)
    verdicts = [limit.check(handler, "shell", _message("kernel_info_reply", size=10_000))
                for _ in range(10)]
    assert verdicts[-1] is Verdict.CLOSE and Verdict.SEND in verdicts
    # Closing: nothing more is queued.
    handler.ws_connection.closing = True
    assert limit.check(handler, "shell", _message("execute_reply")) is Verdict.DROP


def test_a_cell_that_falls_behind_again_and_again_is_told_once_then_at_its_end() -> None:
    limit = OutputLimit(100_000, logging.getLogger("test-write-limit"), "k")
    handler = _Handler()
    notices: list[str] = []
    for _stretch in range(5):  # behind, dropped, caught up, output flows again: five times
        handler.queue(99_000)
        assert limit.check(handler, "iopub", _message("stream", "cell-1")) is Verdict.DROP
        handler.queue(0)
        resumed = _message("stream", "cell-1")
        assert limit.check(handler, "iopub", resumed) is Verdict.SEND
        notices += [text for _parent, text in limit.take_notices(resumed)]
    # Neither another cell's end nor cell-1's reply (on shell, ahead of output) ends cell-1.
    for other in (_message("status", "cell-2", content=b'{"execution_state": "idle"}'),
                  _message("execute_reply", "cell-1", content=b'{"status": "ok"}')):
        assert limit.check(handler, "iopub", other) is Verdict.SEND
        assert limit.take_notices(other) == [] and limit.has_notices
    idle = _message("status", "cell-1", content=b'{"execution_state": "idle"}')
    assert limit.check(handler, "iopub", idle) is Verdict.SEND
    notices += [text for _parent, text in limit.take_notices(idle)]
    assert len(notices) == 2, notices
    assert "(1 message)" in notices[0] and "more" not in notices[0]
    assert "more of output (4 messages)" in notices[1]
    assert not limit.has_notices
    # The cell ended: a later request with the same id (a client's retry) is told at once again.
    handler.queue(99_000)
    assert limit.check(handler, "iopub", _message("stream", "cell-1")) is Verdict.DROP
    assert "more" not in limit.take_notices()[0][1]


def test_notice_frames_of_both_protocols() -> None:
    session = Session(username="test")
    parent = {"msg_id": "cell-1", "msg_type": "execute_request"}
    text, binary = notice_frame(session, False, parent, "dropped\n")
    msg = json.loads(text)
    assert not binary and msg["channel"] == "iopub" and msg["msg_type"] == "stream"
    assert msg["parent_header"]["msg_id"] == "cell-1"
    assert msg["content"] == {"name": "stderr", "text": "dropped\n"}
    frame, binary = notice_frame(session, True, parent, "dropped\n")
    assert binary and isinstance(frame, bytes) and b"iopub" in frame and b"cell-1" in frame


def test_a_limit_knows_a_flood_short_of_the_bound() -> None:
    limit = OutputLimit(100_000, logging.getLogger("test"), "k")
    handler = _Handler()
    handler.queue(20_000)
    assert limit.check(handler, "iopub", _message("stream", "cell-1")) is Verdict.SEND
    assert not limit.flooded  # a fifth of the bound: ordinary
    handler.queue(30_000)
    assert limit.check(handler, "iopub", _message("stream", "cell-1")) is Verdict.SEND
    assert limit.flooded and not limit.hit  # over a quarter: worth a trim when it closes


class _CountingGlibc:
    def __init__(self) -> None:
        self.trims = 0
        self.trim: t.Callable[[int], int] | None = self._trim

    def _trim(self, _pad: int) -> int:
        self.trims += 1
        return 1

    def free_bytes(self) -> int:
        return 0


@pytest.mark.timeout(20)
async def test_a_second_flood_is_trimmed_without_waiting_out_the_interval() -> None:
    releaser = MemoryReleaser()
    glibc = _CountingGlibc()
    releaser._glibc = glibc  # type: ignore[assignment]
    releaser.interval = 3600.0  # the periodic look never comes within the test
    try:
        releaser.kick()
        await wait_until(lambda: glibc.trims == 1, "the first trim", timeout=10)
        releaser.kick()  # another flooded connection closed while the releaser runs
        await wait_until(lambda: glibc.trims == 2, "the second trim", timeout=10)
    finally:
        if releaser._task is not None:
            releaser._task.cancel()
