"""Lost ZeroMQ wakeups: reproduced with real sockets, and recovered from.

A ZeroMQ socket's FD only signals that its command mailbox changed; any ZeroMQ call on the socket
processes the mailbox and clears the signal.  Reading ``EVENTS`` behind an event loop's back after
a message arrives therefore reproduces a lost wakeup exactly: the message is queued and the FD
will not become readable again until another message changes the pipe state.
"""

from __future__ import annotations

import asyncio
import os
import resource
import select
import typing as t
import uuid

import pytest
import zmq
import zmq.asyncio
from zmq.eventloop.zmqstream import ZMQStream

from elastic_kernels.gateway.transport.zmqguard import ZMQWakeupGuard, recv_multipart_checked


def fd_readable(sock: zmq.Socket[t.Any]) -> bool:
    poller = select.poll()  # not select(): it cannot take descriptors above 1,023
    poller.register(sock.FD, select.POLLIN)
    return bool(poller.poll(0))


@pytest.fixture
def pair() -> t.Iterator[tuple[zmq.Socket[t.Any], zmq.Socket[t.Any]]]:
    ctx = zmq.Context()
    address = f"inproc://guard-{uuid.uuid4().hex}"
    sender = ctx.socket(zmq.PAIR)
    sender.bind(address)
    receiver = ctx.socket(zmq.PAIR)
    receiver.connect(address)
    try:
        yield sender, receiver
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)
        ctx.term()


def lose_wakeup(sender: zmq.Socket[t.Any], receiver: zmq.Socket[t.Any], payload: bytes) -> None:
    """Send ``payload`` and consume the receiver's wakeup before its event loop sees it."""
    sender.send(payload)
    assert receiver.getsockopt(zmq.EVENTS) & zmq.POLLIN
    assert not fd_readable(receiver), "the wakeup should be gone"


class Listening:
    """A ZMQStream on ``receiver`` that keeps what it receives and signals each arrival."""

    def __init__(self, receiver: zmq.Socket[t.Any]) -> None:
        self.stream = ZMQStream(receiver)
        self.received: list[list[bytes]] = []
        self.arrived = asyncio.Event()
        self.stream.on_recv(self._on_recv)

    def _on_recv(self, msg: list[bytes]) -> None:
        self.received.append(msg)
        self.arrived.set()

    def payloads(self) -> list[list[bytes]]:
        return [[bytes(frame) for frame in msg] for msg in self.received]


@pytest.mark.timeout(20)
async def test_guard_delivers_a_message_whose_wakeup_was_lost(
    pair: tuple[zmq.Socket[t.Any], zmq.Socket[t.Any]],
) -> None:
    sender, receiver = pair
    listening = Listening(receiver)
    stream = listening.stream
    await asyncio.sleep(0)
    try:
        lose_wakeup(sender, receiver, b"stuck")
        # Several loop iterations pass without the stream hearing about its message.
        for _ in range(20):
            await asyncio.sleep(0)
        assert listening.received == []

        guard = ZMQWakeupGuard(lambda: [stream], interval=0)
        assert guard.sweep() == 1
        assert listening.payloads() == [[b"stuck"]]
        assert guard.recovered == 1
        # Ordinary traffic afterwards is delivered by the stream itself.
        listening.arrived.clear()
        sender.send(b"normal")
        await asyncio.wait_for(listening.arrived.wait(), 10)
        assert listening.payloads() == [[b"stuck"], [b"normal"]]
        assert guard.sweep() == 0
        assert guard.recovered == 1
    finally:
        stream.close(linger=0)


@pytest.mark.timeout(20)
async def test_guard_leaves_a_pending_wakeup_to_the_loop(
    pair: tuple[zmq.Socket[t.Any], zmq.Socket[t.Any]],
) -> None:
    """Reading EVENTS would consume the wakeup: the guard must not cause what it recovers."""
    sender, receiver = pair
    listening = Listening(receiver)
    stream = listening.stream
    await asyncio.sleep(0)
    try:
        sender.send(b"normal")
        assert fd_readable(receiver)  # its wakeup is on its way to the loop
        guard = ZMQWakeupGuard(lambda: [stream], interval=0)
        assert guard.sweep() == 0
        assert guard.checked == 1
        assert fd_readable(receiver), "the guard consumed the wakeup"
        await asyncio.wait_for(listening.arrived.wait(), 10)
        assert listening.payloads() == [[b"normal"]]
        assert guard.recovered == 0
    finally:
        stream.close(linger=0)


@pytest.mark.timeout(20)
async def test_periodic_guard_recovers_on_its_own(
    pair: tuple[zmq.Socket[t.Any], zmq.Socket[t.Any]],
) -> None:
    sender, receiver = pair
    listening = Listening(receiver)
    stream = listening.stream
    await asyncio.sleep(0)
    guard = ZMQWakeupGuard(lambda: [stream], interval=0.02)
    guard.start()
    try:
        lose_wakeup(sender, receiver, b"stuck")
        await asyncio.wait_for(listening.arrived.wait(), 10)
        assert guard.recovered == 1
    finally:
        guard.stop()
        stream.close(linger=0)


@pytest.mark.timeout(20)
async def test_guard_never_flushes_a_stream_without_callback(
    pair: tuple[zmq.Socket[t.Any], zmq.Socket[t.Any]],
) -> None:
    sender, receiver = pair
    stream = ZMQStream(receiver)  # no on_recv: flushing would discard the message
    try:
        sender.send(b"keep me")
        guard = ZMQWakeupGuard(lambda: [stream], interval=0)
        receiver.getsockopt(zmq.EVENTS)  # its wakeup is lost too
        assert guard.sweep() == 0
        assert guard.sweep() == 0
        assert receiver.recv(zmq.NOBLOCK) == b"keep me"
    finally:
        stream.close(linger=0)


@pytest.mark.timeout(20)
async def test_recv_multipart_checked() -> None:
    ctx = zmq.asyncio.Context()
    address = f"inproc://checked-{uuid.uuid4().hex}"
    sender = ctx.socket(zmq.PAIR)
    sender.bind(address)
    receiver = ctx.socket(zmq.PAIR)
    receiver.connect(address)
    try:
        # A message whose wakeup was consumed before anyone awaited it.
        await sender.send_multipart([b"a", b"b"])
        assert receiver.getsockopt(zmq.EVENTS) & zmq.POLLIN
        assert await recv_multipart_checked(receiver, timeout=5) == [b"a", b"b"]
        # A message that arrives while we wait.
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: asyncio.ensure_future(sender.send(b"later")))
        assert await recv_multipart_checked(receiver, timeout=5, recheck_interval=0.01) == [
            b"later"
        ]
        with pytest.raises(TimeoutError):
            await recv_multipart_checked(receiver, timeout=0.1, recheck_interval=0.02)
    finally:
        sender.close(linger=0)
        receiver.close(linger=0)
        ctx.term()


# --- active and idle streams -------------------------------------------------------------------


class Loopback:
    """PAIR sockets over TCP on 127.0.0.1, each receiving end wrapped in a ZMQStream."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.senders: list[zmq.Socket[t.Any]] = []
        self.streams: list[ZMQStream] = []
        self.received: dict[int, list[bytes]] = {}

    def add(self) -> tuple[zmq.Socket[t.Any], ZMQStream]:
        sender = self.ctx.socket(zmq.PAIR)
        sender.linger = 0
        port = sender.bind_to_random_port("tcp://127.0.0.1")
        receiver = self.ctx.socket(zmq.PAIR)
        receiver.linger = 0
        receiver.connect(f"tcp://127.0.0.1:{port}")
        stream = ZMQStream(receiver)
        got = self.received.setdefault(id(stream), [])
        stream.on_recv(lambda msg: got.extend(bytes(frame) for frame in msg))
        self.senders.append(sender)
        self.streams.append(stream)
        return sender, stream

    def close(self) -> None:
        for stream in self.streams:
            stream.close(linger=0)
        for sender in self.senders:
            sender.close(linger=0)
        self.ctx.term()


@pytest.fixture
def loopback() -> t.Iterator[Loopback]:
    lb = Loopback()
    try:
        yield lb
    finally:
        lb.close()


def lose_wakeup_tcp(sender: zmq.Socket[t.Any], stream: ZMQStream, payload: bytes) -> None:
    """Like ``lose_wakeup``, over TCP: wait (blocking, bounded) until the message is queued on
    the receiver, consuming its wakeup on the way."""
    sender.send(payload)
    assert stream.socket.poll(10_000, zmq.POLLIN), "the message never arrived"
    assert stream.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN
    assert not fd_readable(stream.socket), "the wakeup should be gone"


@pytest.mark.timeout(30)
async def test_active_stream_is_delivered_within_two_sweeps(loopback: Loopback) -> None:
    idle = [loopback.add()[1] for _ in range(40)]
    sender, hot = loopback.add()
    await asyncio.sleep(0)
    guard = ZMQWakeupGuard(lambda: [*idle, hot], interval=0, active=lambda: [hot],
                           idle_sweeps=1000)
    # Round-robin order puts ``hot`` last of 41 streams in a round of 41 sweeps: only its
    # activity gets it looked at by the next sweep.
    lose_wakeup_tcp(sender, hot, b"hot")
    assert guard.sweep() == 1
    assert loopback.received[id(hot)] == [b"hot"]
    assert guard.recovered == 1


@pytest.mark.timeout(30)
async def test_idle_stream_is_still_rechecked(loopback: Loopback) -> None:
    pairs = [loopback.add() for _ in range(12)]
    await asyncio.sleep(0)
    sender, cold = pairs[7]
    idle_sweeps = 4
    guard = ZMQWakeupGuard(lambda: [stream for _, stream in pairs], interval=0,
                           active=lambda: [], idle_sweeps=idle_sweeps)
    guard.sweep()  # a round is under way when the wakeup is lost
    lose_wakeup_tcp(sender, cold, b"cold")
    sweeps = 0
    while not guard.recovered:
        assert sweeps < 2 * idle_sweeps - 1, "an idle stream must be re-checked within a round"
        guard.sweep()
        sweeps += 1
    assert loopback.received[id(cold)] == [b"cold"]
    # Nothing else was pending, so nothing else was delivered by the guard.
    assert guard.recovered == 1
    assert all(not got for key, got in loopback.received.items() if key != id(cold))


@pytest.mark.timeout(30)
async def test_a_sweep_looks_at_a_bounded_slice_of_idle_streams(loopback: Loopback) -> None:
    pairs = [loopback.add() for _ in range(50)]
    streams = [stream for _, stream in pairs]
    hot = streams[:3]
    calls = 0

    def every() -> list[ZMQStream]:
        nonlocal calls
        calls += 1
        return streams

    guard = ZMQWakeupGuard(every, interval=0, active=lambda: hot, idle_sweeps=10)
    looked: list[int] = []
    for _ in range(20):
        before = guard.checked
        guard.sweep()
        looked.append(guard.checked - before)
    # Each sweep: the 3 active streams plus ceil(50 / 10) = 5 of all streams (fewer when the
    # slice holds active ones, which are looked at once per sweep).
    assert max(looked) <= 3 + 5
    assert min(looked) >= 5
    # Every stream is listed once per round of 10 sweeps, not once per sweep.
    assert calls == 2
    # And over a round every stream was looked at.
    assert guard.checked >= 2 * len(streams)


@pytest.mark.timeout(60)
async def test_gateway_counts_a_kernel_active_from_its_iopub_traffic(gateway: t.Any) -> None:
    """End to end: the gateway's active class follows jupyter_server's activity tracking."""
    from datetime import timedelta

    from jupyter_server._tz import utcnow

    from .support import KERNEL_NAME

    km = gateway.kernel_manager
    kernel_id = await km.start_kernel(kernel_name=KERNEL_NAME)
    kernel = km.get_kernel(kernel_id)
    client = kernel.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=40)
        activity = kernel._activity_stream
        assert activity is not None
        # A kernel quiet for longer than the window is idle: only the slow round sees it.
        old = utcnow() - timedelta(seconds=gateway.zmq_recheck_active_window + 3600)
        kernel.last_activity = old
        assert activity not in gateway._active_kernel_streams()
        assert activity in list(gateway._kernel_streams())
        # Its next iopub messages (an execution's; kernel_info does not count as activity)
        # make it active again.  (Asked again until the activity watcher hears them: its
        # subscription may not have reached the kernel yet, and a PUB socket drops messages for
        # subscribers it does not know.)
        while kernel.last_activity == old:
            await client.execute("pass", reply=True, timeout=30)
            await asyncio.sleep(0.05)
        assert activity in gateway._active_kernel_streams()
        # Guard sweeps over the live gateway deliver nothing spurious.
        for _ in range(gateway._zmq_guard.idle_sweeps + 1):
            assert gateway._zmq_guard.sweep() == 0
    finally:
        client.stop_channels()
        await km.shutdown_kernel(kernel_id, now=True)


@pytest.mark.timeout(20)
async def test_guard_recovers_on_descriptors_above_select_range() -> None:
    """A gateway with many kernels has socket descriptors above 1,023 (select's limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1300
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    fillers: list[int] = []
    ctx = zmq.Context()
    try:
        while True:  # occupy the low descriptors, so the sockets' come above 1,023
            fd = os.open(os.devnull, os.O_RDONLY)
            fillers.append(fd)
            if fd >= 1100:
                break
        address = f"inproc://guard-high-{uuid.uuid4().hex}"
        sender = ctx.socket(zmq.PAIR)
        sender.bind(address)
        receiver = ctx.socket(zmq.PAIR)
        receiver.connect(address)
        assert receiver.FD > 1023
        listening = Listening(receiver)
        await asyncio.sleep(0)
        try:
            lose_wakeup(sender, receiver, b"stuck")
            guard = ZMQWakeupGuard(lambda: [listening.stream], interval=0)
            assert guard.sweep() == 1
            assert listening.payloads() == [[b"stuck"]]
        finally:
            listening.stream.close(linger=0)
            sender.close(linger=0)
    finally:
        for fd in fillers:
            os.close(fd)
        ctx.term()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
