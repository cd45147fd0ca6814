"""Lost ZeroMQ wakeups: reproduced with real sockets, and recovered from.

A ZeroMQ socket's FD only signals that its command mailbox changed; any ZeroMQ call on the socket
processes the mailbox and clears the signal.  Reading ``EVENTS`` behind an event loop's back after
a message arrives therefore reproduces a lost wakeup exactly: the message is queued and the FD
will not become readable again until another message changes the pipe state.
"""

from __future__ import annotations

import asyncio
import select
import typing as t
import uuid

import pytest
import zmq
import zmq.asyncio
from zmq.eventloop.zmqstream import ZMQStream

from elastic_kernels.gateway.zmqguard import ZMQWakeupGuard, recv_multipart_checked


def fd_readable(sock: zmq.Socket[t.Any]) -> bool:
    readable, _, _ = select.select([sock.FD], [], [], 0)
    return bool(readable)


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


@pytest.mark.timeout(20)
async def test_guard_delivers_a_message_whose_wakeup_was_lost(
    pair: tuple[zmq.Socket[t.Any], zmq.Socket[t.Any]],
) -> None:
    sender, receiver = pair
    stream = ZMQStream(receiver)
    received: list[list[bytes]] = []
    stream.on_recv(received.append)
    await asyncio.sleep(0)
    try:
        lose_wakeup(sender, receiver, b"stuck")
        # Several loop iterations pass without the stream hearing about its message.
        for _ in range(20):
            await asyncio.sleep(0)
        assert received == []

        guard = ZMQWakeupGuard(lambda: [stream], interval=0)
        # First sight of pending input might be an ordinary wakeup not yet handled: no flush.
        assert guard.sweep() == 0
        assert guard.sweep() == 1
        assert [bytes(frame) for frame in received[0]] == [b"stuck"]
        assert guard.recovered == 1
        # Ordinary traffic afterwards is delivered by the stream itself.
        arrived = asyncio.Event()
        stream.on_recv(lambda msg: (received.append(msg), arrived.set()))
        sender.send(b"normal")
        await asyncio.wait_for(arrived.wait(), 10)
        assert guard.sweep() == 0
        assert guard.recovered == 1
    finally:
        stream.close(linger=0)


@pytest.mark.timeout(20)
async def test_periodic_guard_recovers_on_its_own(
    pair: tuple[zmq.Socket[t.Any], zmq.Socket[t.Any]],
) -> None:
    sender, receiver = pair
    stream = ZMQStream(receiver)
    arrived = asyncio.Event()
    stream.on_recv(lambda _msg: arrived.set())
    await asyncio.sleep(0)
    guard = ZMQWakeupGuard(lambda: [stream], interval=0.02)
    guard.start()
    try:
        lose_wakeup(sender, receiver, b"stuck")
        await asyncio.wait_for(arrived.wait(), 10)
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
