"""Is the kernel in a running pod actually answering? One ``kernel_info`` round trip says so.

A pod whose container runs is not yet a kernel: the process may still be importing, or about to
exit on a bad argv. Asking the kernel itself closes that gap without any API traffic, and it
means the kernel is warm when the user's first websocket opens.

Reading is done with bounded polls rather than by awaiting a single wakeup: pyzmq's asyncio
sockets have been seen to miss a wakeup under concurrency (DESIGN §7), and a poll with a timeout
turns such a miss into a few milliseconds' delay instead of a hang.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.session import Session

#: Poll slice: the longest a lost wakeup can delay us.
POLL_SLICE_MS = 50


class KernelNotReady(Exception):
    pass


async def wait_kernel_info(connection_info: dict[str, Any], timeout: float,
                           context: zmq.asyncio.Context | None = None) -> dict[str, Any]:
    """Send ``kernel_info_request`` on the shell channel; return the reply's content."""
    ctx = context or zmq.asyncio.Context.instance()
    key = connection_info["key"]
    session = Session(key=key if isinstance(key, bytes) else str(key).encode(),
                      signature_scheme=connection_info.get("signature_scheme", "hmac-sha256"))
    url = f"{connection_info.get('transport', 'tcp')}://{connection_info['ip']}:" \
          f"{connection_info['shell_port']}"
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    # The kernel binds its ports moments after its container runs (or its pool pod is
    # claimed); the request goes out on the first connect that succeeds. A retry every 20 ms at
    # most: with ZeroMQ's backoff up to 200 ms a start lost up to that much, about half of it on
    # average, to a port that had been listening for a while (a refused connect costs nothing
    # on the pod network).
    sock.setsockopt(zmq.RECONNECT_IVL, 10)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 20)
    sock.connect(url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        request = session.msg("kernel_info_request", {})
        session.send(sock, request)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise KernelNotReady(f"no kernel_info reply within {timeout:.0f}s")
            events = await sock.poll(timeout=min(POLL_SLICE_MS, int(remaining * 1000) + 1))
            if not events:
                continue
            while cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                frames = await sock.recv_multipart()
                _, msg_frames = session.feed_identities(frames)
                msg = session.deserialize(msg_frames)
                if msg["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                    return dict(msg["content"])
    finally:
        sock.close(linger=0)
