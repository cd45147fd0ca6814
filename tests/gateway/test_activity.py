"""The gateway's activity watcher (gateway/lifecycle/activity.py) against jupyter_server's own.

Both watchers subscribe to the same PUB socket standing in for a kernel's IOPub, over real
ZeroMQ on loopback, and see the same messages; after each message their kernels' activity
markers must agree.
"""

from __future__ import annotations

import asyncio
import logging
import typing as t
from collections.abc import Iterator
from datetime import datetime

import pytest
import zmq
from jupyter_client.session import Session
from jupyter_server.services.kernels.kernelmanager import MappingKernelManager
from zmq.eventloop.zmqstream import ZMQStream

from elastic_kernels.gateway.lifecycle.activity import watch_activity

KEY = b"a" * 64


class FakeKernel:
    """The parts of a kernel manager the watchers use."""

    def __init__(self, ctx: zmq.Context[t.Any], url: str) -> None:
        self.session = Session(key=KEY)
        self.execution_state = "starting"
        self.last_activity: datetime | None = None
        self.reason = "x"
        self._ctx = ctx
        self._url = url
        self._activity_stream: ZMQStream | None = None

    def connect_iopub(self) -> ZMQStream:
        sock = self._ctx.socket(zmq.SUB)
        sock.linger = 0
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self._url)
        return ZMQStream(sock)


class FakeManager:
    """A MappingKernelManager's activity-tracking state, for either watcher."""

    untracked_message_types = MappingKernelManager().untracked_message_types
    track_message_type = MappingKernelManager.track_message_type

    def __init__(self, kernel: FakeKernel) -> None:
        self._kernels = {"k": kernel}
        self.log = logging.getLogger("test-activity")
        self.last_kernel_activity: datetime | None = None


@pytest.fixture
def publisher() -> Iterator[tuple[zmq.Context[t.Any], zmq.Socket[t.Any], str]]:
    ctx: zmq.Context[t.Any] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield ctx, pub, f"tcp://127.0.0.1:{port}"
    finally:
        pub.close()
        ctx.destroy(linger=0)


def markers(manager: FakeManager) -> tuple[str, bool, bool]:
    kernel = manager._kernels["k"]
    return (kernel.execution_state, kernel.last_activity is not None,
            manager.last_kernel_activity is not None)


@pytest.mark.timeout(20)
async def test_same_markers_as_upstream(
    publisher: tuple[zmq.Context[t.Any], zmq.Socket[t.Any], str],
) -> None:
    ctx, pub, url = publisher
    ours, theirs = FakeManager(FakeKernel(ctx, url)), FakeManager(FakeKernel(ctx, url))
    watch_activity(ours, "k")  # type: ignore[arg-type]
    MappingKernelManager.start_watching_activity(theirs, "k")  # type: ignore[arg-type]
    for m in (ours, theirs):
        assert m._kernels["k"].reason == ""
        m._kernels["k"].last_activity = None  # from here on, only messages set it
    kernel = Session(key=KEY)
    received = {"ours": 0, "theirs": 0}
    for name, m in (("ours", ours), ("theirs", theirs)):
        stream = m._kernels["k"]._activity_stream
        assert stream is not None
        callback = stream._recv_callback

        def counting(msg: list[bytes], name: str = name, callback: t.Any = callback) -> None:
            callback(msg)
            received[name] += 1

        stream.on_recv(counting)

    async def publish(msg_type: str, content: dict[str, t.Any], parent_type: str | None,
                      sign_with: Session = kernel) -> None:
        parent = kernel.msg(parent_type, {}) if parent_type else {}
        before = dict(received)
        sign_with.send(pub, msg_type, content, parent=parent)
        for _ in range(400):
            if all(received[k] > before[k] for k in received):
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{msg_type} not delivered to both watchers: {received}")

    # Subscriptions take a moment to reach the PUB socket; repeat one harmless message.
    for _ in range(200):
        kernel.send(pub, "status", {"execution_state": "starting"})
        await asyncio.sleep(0.02)
        if received["ours"] and received["theirs"]:
            break
    assert markers(ours) == markers(theirs)

    steps: list[tuple[str, dict[str, t.Any], str | None]] = [
        ("status", {"execution_state": "idle"}, None),  # post-start normalisation
        ("status", {"execution_state": "busy"}, "execute_request"),
        ("stream", {"name": "stdout", "text": "x"}, "execute_request"),
        ("status", {"execution_state": "idle"}, "execute_request"),
        ("status", {"execution_state": "busy"}, "kernel_info_request"),  # untracked parent
        ("status", {"execution_state": "idle"}, "kernel_info_request"),
        ("status", {"execution_state": "busy"}, "comm_msg"),
        ("comm_msg", {"comm_id": "c", "data": {}}, "comm_msg"),
        ("status", {"execution_state": "idle"}, "comm_msg"),
    ]
    for msg_type, content, parent_type in steps:
        await publish(msg_type, content, parent_type)
        assert markers(ours) == markers(theirs), (msg_type, content, parent_type)
    assert ours._kernels["k"].execution_state == "idle"

    # A message signed with another key is ignored by ours (upstream's callback raises on it,
    # so its watcher leaves from here).
    theirs_stream = theirs._kernels["k"]._activity_stream
    assert theirs_stream is not None
    theirs_stream.close()
    del received["theirs"]
    ours._kernels["k"].last_activity = None
    forged = Session(key=b"b" * 64)
    forged.send(pub, "status", {"execution_state": "busy"}, parent=kernel.msg("execute_request"))
    await publish("status", {"execution_state": "idle"}, "kernel_info_request")
    # Had the forged "busy" counted, the state would be "busy" (a status answering an untracked
    # request does not change it) and there would be activity.
    assert ours._kernels["k"].execution_state == "idle"
    assert ours._kernels["k"].last_activity is None
    ours_stream = ours._kernels["k"]._activity_stream
    assert ours_stream is not None
    ours_stream.close()
