"""The gateway's forks of jupyter_server logic, each against upstream's own behaviour.

As ``test_activity.py`` does for the activity watcher, these run ours and upstream's side by side
on the same input and compare what comes out:

* the offline buffer (``gateway/transport/offlinebuffer.py``: upstream's ``start_buffering``
  followed by our ``bound_buffering``) against ``MappingKernelManager``'s plain one, over real
  ZeroMQ on loopback, with PUB sockets standing in for a kernel's iopub and shell;
* the readiness nudge (``ElasticChannelsConnection.nudge``) against
  ``ZMQChannelsWebsocketConnection.nudge``, on a real local ipykernel started by jupyter_client's
  ``AsyncIOLoopKernelManager`` (no Kubernetes).

Where ours deliberately differs, the test asserts the difference and says why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import typing as t
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import zmq
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from jupyter_client.session import Session
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from jupyter_server.services.kernels.kernelmanager import MappingKernelManager
from zmq.eventloop.zmqstream import ZMQStream

from elastic_kernels.gateway.lifecycle.activity import watch_activity
from elastic_kernels.gateway.transport.connection import ElasticChannelsConnection
from elastic_kernels.gateway.transport.offlinebuffer import OfflineBuffer, bound_buffering

from .support import KERNEL_NAME

KEY = b"a" * 64
KERNEL_ID = "k"
SESSION_KEY = f"{KERNEL_ID}:client-session"
LOGGER = "test-forked-upstream"

Message = tuple[str, list[bytes]]


async def until(condition: Callable[[], bool], what: str, tries: int = 3000) -> None:
    """Wait (bounded: 30 s, for a loaded CI machine) until ``condition()`` holds."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not reached: {what}")


# -- the offline buffer ----------------------------------------------------------------------


class FakeKernelPorts:
    """A kernel's iopub and shell as two publishers on 127.0.0.1.

    XPUB (a PUB that also reports subscriptions, with every one reported) so that a test knows
    when all subscribers are connected instead of publishing until something arrives: from
    then on, every message published reaches every subscriber, and both managers buffer
    exactly the same messages.
    """

    CHANNELS = ("iopub", "shell")

    def __init__(self) -> None:
        self.ctx: zmq.Context[t.Any] = zmq.Context()
        self.session = Session(key=KEY)
        self.pubs: dict[str, zmq.Socket[t.Any]] = {}
        self.urls: dict[str, str] = {}
        self._subscribers = 0
        for channel in self.CHANNELS:
            pub = self.ctx.socket(zmq.XPUB)
            pub.linger = 0
            pub.setsockopt(zmq.XPUB_VERBOSE, 1)
            port = pub.bind_to_random_port("tcp://127.0.0.1")
            self.pubs[channel] = pub
            self.urls[channel] = f"tcp://127.0.0.1:{port}"
        self.streams: list[ZMQStream] = []

    def channels(self) -> dict[str, ZMQStream]:
        """A new set of subscriber streams, as a client connection's channels."""
        streams = {}
        for channel, url in self.urls.items():
            sock = self.ctx.socket(zmq.SUB)
            sock.linger = 0
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(url)
            streams[channel] = stream = ZMQStream(sock)
            self.streams.append(stream)
        self._subscribers += 1
        return streams

    async def subscribed(self) -> None:
        """Wait until every subscriber made so far is subscribed on every publisher."""
        for channel, pub in self.pubs.items():
            seen = 0
            for _ in range(1000):
                try:
                    event = pub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    if seen >= self._subscribers:
                        break
                    await asyncio.sleep(0.01)
                    continue
                seen += event[:1] == b"\x01"
            assert seen >= self._subscribers, (channel, seen)
        # Later calls count only the subscribers made after this one.
        self._subscribers = 0

    def close(self) -> None:
        for stream in self.streams:
            if not stream.closed():
                stream.close()
        for pub in self.pubs.values():
            pub.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def ports() -> Iterator[FakeKernelPorts]:
    kernel = FakeKernelPorts()
    try:
        yield kernel
    finally:
        kernel.close()


def mapping_manager(buffering: bool = True) -> MappingKernelManager:
    """jupyter_server's kernel table and buffering state, with one (stand-in) kernel."""
    manager = MappingKernelManager(buffer_offline_messages=buffering)
    manager.log = logging.getLogger(LOGGER)
    manager._kernels[KERNEL_ID] = object()  # buffering only checks that the kernel is known
    return manager


def start_theirs(manager: MappingKernelManager, channels: dict[str, ZMQStream]) -> None:
    manager.start_buffering(KERNEL_ID, SESSION_KEY, channels)


def start_ours(manager: MappingKernelManager, channels: dict[str, ZMQStream], *,
               max_bytes: int = 1 << 20, max_seconds: float = 0) -> None:
    """What the gateway's kernel manager does: upstream's start, then our bounds."""
    manager.start_buffering(KERNEL_ID, SESSION_KEY, channels)
    bound_buffering(manager, KERNEL_ID, max_bytes, max_seconds)


def received(manager: MappingKernelManager) -> int:
    """Messages the manager's buffer took in so far, kept or dropped."""
    buffer = manager._kernel_buffers[KERNEL_ID]["buffer"]
    return len(buffer) + getattr(buffer, "dropped", 0)


def size(parts: list[bytes]) -> int:
    return sum(len(p) for p in parts)


async def publish(ports: FakeKernelPorts, managers: list[MappingKernelManager],
                  count: int) -> list[tuple[str, dict[str, t.Any]]]:
    """Publish ``count`` messages of growing size, alternating iopub and shell, one at a time
    (each reaches every manager before the next is sent, so the order is the same for all)."""
    sent: list[tuple[str, dict[str, t.Any]]] = []
    for i in range(count):
        channel = ports.CHANNELS[i % 2]
        content: dict[str, t.Any]
        if channel == "iopub":
            msg_type, content = "stream", {"name": "stdout", "text": f"{i}:" + "x" * (40 * i)}
        else:
            msg_type, content = "execute_reply", {"status": "ok", "execution_count": i}
        before = [received(m) for m in managers]
        ports.session.send(ports.pubs[channel], msg_type, content)
        sent.append((channel, content))

        def arrived(before: list[int] = before) -> bool:
            return all(received(m) > n for m, n in zip(managers, before))

        await until(arrived, f"message {i} buffered by every manager")
    return sent


def contents(buffer: t.Iterable[Message]) -> list[tuple[str, dict[str, t.Any]]]:
    return [(channel, json.loads(parts[-1])) for channel, parts in buffer]


def streams_closed(channels: dict[str, ZMQStream]) -> bool:
    return all(stream.closed() for stream in channels.values())


@pytest.mark.timeout(45)
async def test_offline_buffer_replays_as_upstream(ports: FakeKernelPorts) -> None:
    theirs, ours = mapping_manager(), mapping_manager()
    their_channels, our_channels = ports.channels(), ports.channels()
    await ports.subscribed()
    start_theirs(theirs, their_channels)
    start_ours(ours, our_channels)
    assert isinstance(ours._kernel_buffers[KERNEL_ID]["buffer"], OfflineBuffer)

    sent = await publish(ports, [theirs, ours], 12)

    their_info = theirs.get_buffer(KERNEL_ID, SESSION_KEY)
    our_info = ours.get_buffer(KERNEL_ID, SESSION_KEY)
    assert their_info is not None and our_info is not None
    # Under the bound: the same messages, byte for byte, in the order they were published.
    assert list(our_info["buffer"]) == list(their_info["buffer"])
    assert contents(their_info["buffer"]) == sent
    # Both hand the same channels back to the reconnecting client, still open, and forget them.
    assert our_info["channels"] is our_channels and their_info["channels"] is their_channels
    assert not any(s.closed() for s in [*our_channels.values(), *their_channels.values()])
    assert KERNEL_ID not in ours._kernel_buffers and KERNEL_ID not in theirs._kernel_buffers


@pytest.mark.timeout(45)
async def test_offline_buffer_other_session_as_upstream(ports: FakeKernelPorts) -> None:
    theirs, ours = mapping_manager(), mapping_manager()
    their_channels, our_channels = ports.channels(), ports.channels()
    await ports.subscribed()
    start_theirs(theirs, their_channels)
    start_ours(ours, our_channels, max_seconds=60)
    await publish(ports, [theirs, ours], 3)

    # Another session gets nothing, and buffering stops: the streams are closed, and the
    # buffer is gone for the original session too.
    for manager, channels in ((theirs, their_channels), (ours, our_channels)):
        assert manager.get_buffer(KERNEL_ID, f"{KERNEL_ID}:other-session") is None
        assert KERNEL_ID not in manager._kernel_buffers
        assert streams_closed(channels)
        assert manager.get_buffer(KERNEL_ID, SESSION_KEY) is None


@pytest.mark.timeout(45)
async def test_offline_buffer_byte_bound_differs(ports: FakeKernelPorts,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    max_bytes = 2500
    theirs, ours = mapping_manager(), mapping_manager()
    their_channels, our_channels = ports.channels(), ports.channels()
    await ports.subscribed()
    start_theirs(theirs, their_channels)
    start_ours(ours, our_channels, max_bytes=max_bytes)
    count = 12
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        sent = await publish(ports, [theirs, ours], count)

    their_info = theirs.get_buffer(KERNEL_ID, SESSION_KEY)
    our_info = ours.get_buffer(KERNEL_ID, SESSION_KEY)
    assert their_info is not None and our_info is not None
    all_messages = list(their_info["buffer"])
    # Upstream keeps everything (an unbounded list: its own TODO says so).
    assert contents(all_messages) == sent
    assert sum(size(parts) for _, parts in all_messages) > max_bytes
    # Ours keeps the most recent messages that fit in max_bytes, dropping the oldest first:
    # the longest suffix of what upstream kept whose size is within the bound. That is the
    # fork's purpose: a disconnected kernel that keeps printing must not grow the gateway's
    # memory without limit.
    kept: list[Message] = []
    total = 0
    for channel, parts in reversed(all_messages):
        if total + size(parts) > max_bytes:
            break
        kept.insert(0, (channel, parts))
        total += size(parts)
    assert 0 < len(kept) < count
    buffer = our_info["buffer"]
    assert list(buffer) == kept
    assert buffer.bytes == total <= max_bytes
    assert buffer.dropped == count - len(kept)
    # The drop is logged once per disconnection, not once per dropped message.
    warnings = [r for r in caplog.records if r.name == LOGGER and f"passed {max_bytes}" in
                r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.timeout(45)
async def test_offline_buffer_time_bound_differs(ports: FakeKernelPorts) -> None:
    theirs, ours = mapping_manager(), mapping_manager()
    their_channels, our_channels = ports.channels(), ports.channels()
    await ports.subscribed()
    start_theirs(theirs, their_channels)
    start_ours(ours, our_channels, max_seconds=0.05)
    # Ours stops buffering after max_seconds without a reconnect: its streams (the kernel
    # sockets of a client that may never come back) are closed and the buffer is gone; a
    # client reconnecting later finds the kernel as it is.
    await until(lambda: streams_closed(our_channels), "our buffering streams closed")
    assert KERNEL_ID not in ours._kernel_buffers
    assert ours.get_buffer(KERNEL_ID, SESSION_KEY) is None
    # Upstream buffers for ever: its streams are still open and still buffering.
    assert not any(s.closed() for s in their_channels.values())
    sent = await publish(ports, [theirs], 1)
    their_info = theirs.get_buffer(KERNEL_ID, SESSION_KEY)
    assert their_info is not None and contents(their_info["buffer"]) == sent

    # A reconnect before the time is up keeps the channels, and the expired timer must not
    # stop a later buffering of the same kernel (ours only: upstream has no timer).
    again = mapping_manager()
    first, second = ports.channels(), ports.channels()
    start_ours(again, first, max_seconds=0.05)
    assert again.get_buffer(KERNEL_ID, SESSION_KEY) is not None  # reconnected at once
    start_ours(again, second, max_seconds=0)  # disconnected again, no time bound this time
    loop = asyncio.get_running_loop()
    later = loop.create_future()
    # Timers fire in deadline order: once this one has, the first buffering's has too.
    loop.call_later(0.2, later.set_result, None)
    await later
    assert KERNEL_ID in again._kernel_buffers
    assert not any(s.closed() for s in [*first.values(), *second.values()])
    again.stop_buffering(KERNEL_ID)
    assert streams_closed(second)


@pytest.mark.timeout(45)
async def test_offline_buffer_off_as_upstream(ports: FakeKernelPorts) -> None:
    theirs, ours = mapping_manager(buffering=False), mapping_manager(buffering=False)
    their_channels, our_channels = ports.channels(), ports.channels()
    start_theirs(theirs, their_channels)
    start_ours(ours, our_channels, max_bytes=100, max_seconds=0.05)
    # buffer_offline_messages=False: nothing is buffered and the streams are closed, in both.
    for manager, channels in ((theirs, their_channels), (ours, our_channels)):
        assert streams_closed(channels)
        assert KERNEL_ID not in manager._kernel_buffers
        assert manager.get_buffer(KERNEL_ID, SESSION_KEY) is None


# -- the nudge ---------------------------------------------------------------------------------


class LocalKernel:
    """A local ipykernel under jupyter_server's kernel table, with the gateway's activity
    watcher, and the transient sockets each nudge opens recorded."""

    def __init__(self, mkm: MappingKernelManager, km: AsyncIOLoopKernelManager) -> None:
        self.mkm = mkm
        # Typed loosely: jupyter_server adds execution_state and _activity_stream to it.
        self.km: t.Any = km
        self.transient: list[ZMQStream] = []
        self.connections: list[ZMQChannelsWebsocketConnection] = []
        for name in ("connect_shell", "connect_control"):
            original = getattr(km, name)

            def recording(*args: t.Any, original: t.Any = original, **kwargs: t.Any
                          ) -> ZMQStream:
                stream = original(*args, **kwargs)
                if not kwargs.get("identity"):  # the nudge's; a client's has its session's
                    self.transient.append(stream)
                return stream

            setattr(km, name, recording)

    def connection(self, cls: type[ZMQChannelsWebsocketConnection]
                   ) -> ZMQChannelsWebsocketConnection:
        """A websocket connection as jupyter_server builds one (its parent is the kernel's
        manager, whose parent is the kernel table), with its channels created."""
        conn = cls(parent=self.km, session=Session(key=self.km.session.key))
        conn.create_stream()
        self.connections.append(conn)
        return conn

    async def nudge(self, conn: ZMQChannelsWebsocketConnection) -> None:
        """Run ``conn``'s nudge to completion; its transient sockets are closed afterwards."""
        opened = len(self.transient)
        await asyncio.wait_for(conn.nudge(), 30)
        mine = self.transient[opened:]
        assert len(mine) == 2  # a transient shell and control, as upstream
        await until(lambda: all(s.closed() for s in mine), "transient sockets closed")


@pytest.fixture
async def kernel(jupyter_dirs: dict[str, Path]) -> AsyncIterator[LocalKernel]:
    mkm = MappingKernelManager()
    mkm.log = logging.getLogger(LOGGER)
    local = LocalKernel(mkm, AsyncIOLoopKernelManager(parent=mkm, kernel_name=KERNEL_NAME,
                                                      kernel_id=KERNEL_ID))
    km = local.km
    try:
        await km.start_kernel()
        mkm._kernels[KERNEL_ID] = km
        km.execution_state = "starting"  # as jupyter_server's start_kernel sets it
        watch_activity(mkm, KERNEL_ID)  # the gateway's watcher (same rules as upstream's)
        yield local
    finally:
        for conn in local.connections:
            for stream in conn.channels.values():
                if not stream.closed():
                    stream.close()
        for stream in [*local.transient, getattr(km, "_activity_stream", None)]:
            if stream is not None and not stream.closed():
                stream.close()
        try:
            if km.has_kernel:
                await km.shutdown_kernel(now=True)
        finally:
            km.context.destroy(linger=0)


def execute_content(code: str, allow_stdin: bool = False) -> dict[str, t.Any]:
    return {"code": code, "silent": False, "store_history": False, "user_expressions": {},
            "allow_stdin": allow_stdin, "stop_on_error": True}


async def run_print(conn: ZMQChannelsWebsocketConnection, text: str
                    ) -> tuple[list[dict[str, t.Any]], list[dict[str, t.Any]]]:
    """Execute ``print(text)`` through the connection's own shell channel, with its iopub
    paused until the reply has come; returns the iopub messages answering that request and
    every message the connection's shell received."""
    session = conn.session
    iopub, shell = conn.channels["iopub"], conn.channels["shell"]
    iopub_msgs: list[dict[str, t.Any]] = []
    shell_msgs: list[dict[str, t.Any]] = []

    def collect(into: list[dict[str, t.Any]]) -> Callable[[list[bytes]], None]:
        def on_recv(parts: list[bytes]) -> None:
            _idents, msg_list = session.feed_identities(parts)
            into.append(session.deserialize(msg_list))
        return on_recv

    shell.on_recv(collect(shell_msgs))
    request = session.send(shell, "execute_request", execute_content(f"print({text!r})"))
    assert request is not None
    msg_id = request["header"]["msg_id"]
    await until(lambda: bool(shell_msgs), "execute_reply")
    # Only now start reading iopub: what the kernel published meanwhile must be queued, not
    # lost (busy, execute_input and the output all precede the reply).
    iopub.on_recv(collect(iopub_msgs))

    def answered() -> list[dict[str, t.Any]]:
        return [m for m in iopub_msgs if m["parent_header"].get("msg_id") == msg_id]

    await until(lambda: any(m["msg_type"] == "status"
                            and m["content"]["execution_state"] == "idle" for m in answered()),
                "idle after the execution")
    iopub.stop_on_recv()
    shell.stop_on_recv()
    return answered(), shell_msgs


async def assert_iopub_live(conn: ZMQChannelsWebsocketConnection, text: str) -> None:
    """The contract after a nudge: the connection's own iopub subscription is live, so a
    print's every iopub message reaches it, and no nudge reply leaked into its shell."""
    answered, shell_msgs = await run_print(conn, text)
    kinds = [m["msg_type"] for m in answered]
    assert kinds[0] == "status" and answered[0]["content"]["execution_state"] == "busy", kinds
    assert kinds[1] == "execute_input", kinds
    assert kinds[-1] == "status" and kinds[2:-1] and set(kinds[2:-1]) == {"stream"}, kinds
    assert "".join(m["content"]["text"] for m in answered[2:-1]) == text + "\n"
    assert [m["msg_type"] for m in shell_msgs] == ["execute_reply"]


@pytest.mark.timeout(60)
async def test_nudge_contract_as_upstream(kernel: LocalKernel) -> None:
    km = kernel.km
    ours = kernel.connection(ElasticChannelsConnection)
    theirs = kernel.connection(ZMQChannelsWebsocketConnection)

    # A fresh kernel, still "starting" for the activity watcher: ours first.
    assert km.execution_state == "starting"
    await kernel.nudge(ours)
    # Both wait until the activity watcher (another iopub subscriber) has seen the kernel
    # leave "starting".
    assert km.execution_state == "idle"
    # Both leave iopub without a handler when done (forwarding is the caller's to resume:
    # connect()'s subscribe, renudge_connections' forward).
    assert not ours.channels["iopub"].receiving()
    await assert_iopub_live(ours, "ours")

    # Upstream's on the same kernel, as the watcher sees a kernel that has just (re)started.
    km.execution_state = "starting"
    await kernel.nudge(theirs)
    assert km.execution_state == "idle"
    assert not theirs.channels["iopub"].receiving()
    await assert_iopub_live(theirs, "theirs")

    # A busy kernel is not nudged by either: kernel_info requests would queue behind the
    # execution. input() keeps the kernel busy until we answer, without any timing.
    shell, stdin = ours.channels["shell"], ours.channels["stdin"]
    stdin_msgs: list[list[bytes]] = []
    shell_msgs: list[list[bytes]] = []
    stdin.on_recv(stdin_msgs.append)
    shell.on_recv(shell_msgs.append)
    ours.session.send(shell, "execute_request", execute_content("input()", allow_stdin=True))
    await until(lambda: bool(stdin_msgs) and km.execution_state == "busy", "kernel busy")
    opened = len(kernel.transient)
    their_nudge = theirs.nudge()
    our_nudge = ours.nudge()
    # Upstream hands back a future that is already resolved; ours is a task that returns at
    # its first step (nudge() is one coroutine for every case), so one turn of the loop later.
    assert their_nudge.done() and their_nudge.result() is None
    await asyncio.sleep(0)
    assert our_nudge.done() and our_nudge.result() is None
    assert len(kernel.transient) == opened  # neither opened a socket nor sent a request
    _idents, request = ours.session.feed_identities(stdin_msgs[0])
    ours.session.send(stdin, "input_reply", {"value": "x"},
                      parent=ours.session.deserialize(request)["header"])
    await until(lambda: bool(shell_msgs) and km.execution_state == "idle", "input answered")
    stdin.stop_on_recv()
    shell.stop_on_recv()


@pytest.mark.timeout(60)
async def test_nudge_time_bound_differs(kernel: LocalKernel,
                                        caplog: pytest.LogCaptureFixture) -> None:
    km = kernel.km
    ours = kernel.connection(ElasticChannelsConnection)
    theirs = kernel.connection(ZMQChannelsWebsocketConnection)
    await kernel.nudge(ours)  # the kernel is up and idle
    assert km.execution_state == "idle"

    # Without an activity watcher, a kernel marked "starting" never leaves that state for
    # either nudge (both wait for the watcher), so neither can finish within
    # kernel_info_timeout. Upstream's future then fails with TimeoutError (and
    # jupyter_server's websocket open() with it); ours gives up with a warning and opens anyway:
    # the kernel answered and the client's iopub saw a message, only the watcher's view is
    # missing, and a failed open would cost the client a reconnect.
    watcher = km._activity_stream
    watcher.close()
    km.execution_state = "starting"
    for conn in (ours, theirs):
        conn.kernel_info_timeout = 0.3
    opened = len(kernel.transient)

    async def outcome(nudge: Awaitable[None]) -> BaseException | None:
        try:
            await asyncio.wait_for(nudge, 30)
        except (TimeoutError, asyncio.TimeoutError) as e:
            return e
        return None

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        our_result, their_result = await asyncio.gather(outcome(ours.nudge()),
                                                        outcome(theirs.nudge()))
    assert our_result is None
    assert isinstance(their_result, (TimeoutError, asyncio.TimeoutError))
    assert any("not ready within" in r.getMessage() for r in caplog.records
               if r.name == LOGGER)
    # Either way the transient sockets are closed and the state is untouched.
    mine = kernel.transient[opened:]
    assert len(mine) == 4
    await until(lambda: all(s.closed() for s in mine), "transient sockets closed")
    assert km.execution_state == "starting"
    # The retry schedule (ours: 10 ms doubling to 250 ms; upstream: every 500 ms) is the
    # other deliberate difference; it is only visible as timing, so it is not asserted here.
