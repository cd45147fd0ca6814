"""The gateway's websocket <-> ZeroMQ bridge for one client connection.

It is jupyter_server's ``ZMQChannelsWebsocketConnection`` with two changes.

**The readiness nudge does not cost half a second.**  When a websocket opens, jupyter_server
creates a fresh iopub SUB socket for it and, before letting the client proceed, "nudges" the
kernel with ``kernel_info_request`` on transient shell and control sockets until a reply *and*
at least one iopub message have arrived on that new socket.  That proves the SUB subscription
has reached the kernel's PUB socket; without it the client could miss the first output of its
first execution.  Upstream (``services/kernels/connection/channels.py``, ``nudge``) sends the
first request at once but retries only every 0.5 s.  When the first request overtakes the new
subscription (which happens on roughly a quarter of opens: both travel on brand-new TCP
connections), the iopub status messages for it are dropped by the PUB socket and the open waits
the full 0.5 s for the second attempt.  Here retries start after ``nudge_initial_interval``
(10 ms) and back off exponentially to ``nudge_max_interval``, bounded overall by
``kernel_info_timeout``, so a lost race costs a few milliseconds.  The purpose is unchanged: the
open completes only once an iopub message has been seen on the client's own iopub socket and the
kernel has answered (or when the kernel is busy, as upstream, because then requests queue behind
the execution).  As upstream, the nudge also continues until the kernel manager's activity
watcher (another iopub subscriber, with the same subscription race) has seen the kernel leave the
"starting" state; it learns that only from iopub traffic, so it needs the nudge's requests too
(about 1 kernel start in 30 here loses that race on the first request).  That state is checked
at each retry (10 ms doubling to 250 ms), and observed at once where the kernel manager has an
``execution_state`` trait (jupyter_server's kernel managers set it as a plain attribute, so in
the gateway a late change is seen at the next retry, up to 250 ms later; upstream polls every
50 ms). ``tests/gateway/test_forked_upstream.py`` compares this nudge with upstream's.

While waiting, any input pending on the nudge's sockets is re-checked at every retry, so a lost
ZeroMQ wakeup (see :mod:`elastic_kernels.gateway.transport.zmqguard`) cannot stall an open either.

**JSON clients get the kernel's own JSON.**  For clients of the JSON protocol (no websocket
subprotocol, e.g. a notebook server with ``--gateway-url``), upstream deserializes each kernel
message and dumps it again; :mod:`~elastic_kernels.gateway.transport.wsjson` splices the
verified parts into the frame instead, about three times cheaper per message, and hands anything
unusual back to upstream's path.  Clients of ``v1.kernel.websocket.jupyter.org`` (JupyterLab 4)
already get the raw parts from upstream.

**What a client that does not read can cost is bounded.**  Past ``max_pending_bytes`` queued for
it, its output is dropped with a notice in the cell, and a client that reads nothing at all is
closed with 1008 (:mod:`~elastic_kernels.gateway.transport.writelimit`); every message of either
protocol, replayed ones included, passes that check first.

**A malformed client frame is dropped, not fatal.**  Upstream lets a JSON or framing error
escape ``on_message``, and tornado then aborts the websocket.  We log the error type (never the
payload, which may hold user data) and keep the connection.
"""

from __future__ import annotations

import asyncio
import json
import typing as t

from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from tornado.websocket import WebSocketClosedError
from traitlets import Float, HasTraits, Integer, default
from zmq.eventloop.zmqstream import ZMQStream

from elastic_kernels.gateway.transport.msgsize import drop_notice
from elastic_kernels.gateway.transport.writelimit import (
    OutputLimit,
    Verdict,
    notice_frame,
    release_memory_soon,
)
from elastic_kernels.gateway.transport.wsframes import V1_PROTOCOL, FrameError, deliver
from elastic_kernels.gateway.transport.wsjson import json_frame
from elastic_kernels.gateway.transport.zmqguard import recheck_stream

__all__ = ["ElasticChannelsConnection"]


class ElasticChannelsConnection(ZMQChannelsWebsocketConnection):
    """Websocket connection with a fast readiness nudge (see the module docstring)."""

    @default("limit_rate")
    def _default_limit_rate(self) -> bool:
        # The notebook server in front of the gateway limits IOPub towards the browser; a second
        # limit here only drops output twice (measured: a third of 20,000 printed lines lost).
        return False

    nudge_initial_interval = Float(
        0.01,
        config=True,
        help="Seconds before the first kernel_info retry while a websocket opens.",
    )
    nudge_max_interval = Float(
        0.25,
        config=True,
        help="Upper bound of the exponentially growing kernel_info retry interval.",
    )

    max_pending_bytes = Integer(
        16 * 1024 * 1024,
        config=True,
        help="Bytes queued for a websocket client that is not reading, past which its kernel "
        "output is dropped (with a notice in the cell) until it catches up; a client over "
        "twice this reads nothing and is closed with 1008 (0: no bound).",
    )

    _output_limit: OutputLimit | None = None

    def connect(self) -> asyncio.Future[None] | None:  # type: ignore[override]  # as upstream
        connected = super().connect()
        # Tell this client when one of its sockets (new, or restored from the offline buffer)
        # drops an oversized kernel message; the kernel manager re-connects the socket
        # (gateway/transport/msgsize.py).
        listen = getattr(self.kernel_manager, "on_message_dropped", None)
        if connected is not None and listen is not None:
            for stream in self.channels.values():
                listen(stream.socket, self._message_dropped)
        return connected

    def _message_dropped(self, channel: str, max_bytes: int) -> None:
        """One notice per drop, without a parent (the dropped message's parent is unknown):
        JupyterLab shows it in the last cell or console."""
        payload, binary = notice_frame(self.session, self.subprotocol == V1_PROTOCOL, {},
                                       drop_notice(max_bytes))
        try:
            self.write_message(payload, binary=binary)
        except WebSocketClosedError:
            return  # gone (or buffering offline): nobody to tell
        self.log.warning("Kernel %s: a %s message over %d bytes was dropped; client told",
                         self.kernel_id, channel, max_bytes)

    def nudge(self) -> asyncio.Future[None]:
        return asyncio.ensure_future(self._nudge())

    async def _nudge(self) -> None:
        km = self.kernel_manager
        if getattr(km, "execution_state", None) == "busy":
            # As upstream: requests would queue behind the running execution, and a busy kernel
            # has long finished setting up its sockets.
            self.log.debug("Nudge: not nudging busy kernel %s", self.kernel_id)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.kernel_info_timeout
        iopub = self.channels["iopub"]
        shell = km.connect_shell()
        control = km.connect_control()
        ports = list(km.ports)
        progress = asyncio.Event()
        state = {"replied": False, "iopub": False}

        def on_reply(_msg: t.Any) -> None:
            state["replied"] = True
            progress.set()

        def on_iopub(_msg: t.Any) -> None:
            # One message proves the subscription; leave the rest queued for the client, whose
            # handler is attached when the nudge completes.
            iopub.stop_on_recv()
            state["iopub"] = True
            progress.set()

        def on_state(change: t.Any) -> None:
            progress.set()

        def done() -> bool:
            # Like upstream, also wait until the kernel manager's activity watcher (a separate
            # iopub subscriber with the same subscription race) has seen the kernel leave
            # "starting"; it only learns that from iopub traffic, so keep nudging until then.
            return (
                state["replied"]
                and state["iopub"]
                and getattr(km, "execution_state", None) != "starting"
            )

        shell.on_recv(on_reply)
        control.on_recv(on_reply)
        iopub.on_recv(on_iopub)
        observing = isinstance(km, HasTraits) and km.has_trait("execution_state")
        if observing:
            km.observe(on_state, names="execution_state")
        interval = self.nudge_initial_interval
        next_send = loop.time()
        attempt = 0
        try:
            while not done():
                reason = self._nudge_abort_reason(ports, shell, control)
                if reason:
                    self.log.debug("Nudge: giving up on %s: %s", self.kernel_id, reason)
                    return
                now = loop.time()
                if now >= deadline:
                    self.log.warning(
                        "Nudge: kernel %s not ready within %.0f s; opening anyway",
                        self.kernel_id,
                        self.kernel_info_timeout,
                    )
                    return
                if now >= next_send:
                    attempt += 1
                    log = self.log.warning if attempt % 20 == 0 else self.log.debug
                    log("Nudge: attempt %d on kernel %s", attempt, self.kernel_id)
                    self.session.send(shell, "kernel_info_request")
                    self.session.send(control, "kernel_info_request")
                    next_send = now + interval
                    interval = min(interval * 2, self.nudge_max_interval)
                progress.clear()
                if done():
                    break
                try:
                    await asyncio.wait_for(
                        progress.wait(), max(0.0, min(next_send, deadline) - loop.time())
                    )
                except (TimeoutError, asyncio.TimeoutError):
                    # Nothing arrived in time: make sure that is not a lost ZeroMQ wakeup.
                    for stream in (iopub, shell, control):
                        recheck_stream(stream)
            self.log.debug("Nudge: kernel %s ready after %d attempt(s)", self.kernel_id, attempt)
        finally:
            if observing:
                km.unobserve(on_state, names="execution_state")
            for stream in (shell, control):
                if not stream.closed():
                    stream.close()
            if not iopub.closed():
                iopub.stop_on_recv()

    def _nudge_abort_reason(self, ports: list[int], shell: ZMQStream, control: ZMQStream) -> str:
        if self.kernel_id not in self.multi_kernel_manager:
            return "kernel stopped"
        if list(self.kernel_manager.ports) != ports:
            # A restart with new ports: the transient sockets talk to a dead peer.
            return "kernel ports changed"
        iopub = self.channels.get("iopub")
        if shell.closed() or control.closed() or iopub is None or iopub.closed():
            return "sockets closed"
        return ""

    def handle_outgoing_message(
        self, stream: str | ZMQStream, outgoing_msg: list[t.Any]
    ) -> None:
        zmq_stream = self.channels[stream] if isinstance(stream, str) else stream
        channel = getattr(zmq_stream, "channel", None)
        if not self._admit(channel, outgoing_msg):
            return
        if self.subprotocol == V1_PROTOCOL or self.limit_rate:
            # v1 passes the raw parts already; the rate limit needs upstream's parsed message.
            super().handle_outgoing_message(stream, outgoing_msg)  # type: ignore[arg-type]
            return
        built = json_frame(self.session, outgoing_msg, channel)
        if built is None or (
            channel == "iopub"
            and built[1].get("msg_type") == "error"
            and not self.multi_kernel_manager.allow_tracebacks
        ):
            # Upstream's path: unusual messages, and tracebacks it must replace.
            super().handle_outgoing_message(stream, outgoing_msg)  # type: ignore[arg-type]
            return
        if zmq_stream.closed():
            # As upstream's _on_zmq_reply: the close is scheduled but has not run yet.
            self.log.warning("zmq message arrived on closed channel")
            self.disconnect()
            return
        try:
            self.write_message(built[0], binary=False)
        except WebSocketClosedError as e:
            self.log.warning(str(e))

    def disconnect(self) -> None:  # type: ignore[override]  # upstream's is not async
        super().disconnect()
        if self._output_limit is not None and self._output_limit.flooded:
            release_memory_soon()  # what its flood allocated, glibc would keep (writelimit)

    def _admit(self, channel: str | None, msg_list: list[t.Any]) -> bool:
        """Whether a kernel message goes to the client (see writelimit); first, the notices
        for cells whose output was dropped, so that they arrive before the cell ends."""
        limit = self._output_limit
        if limit is None:
            limit = self._output_limit = OutputLimit(self.max_pending_bytes, self.log,
                                                     self.kernel_id)
        verdict = limit.check(self.websocket_handler, channel, msg_list)
        if verdict is Verdict.CLOSE:
            self.websocket_handler.close(1008, limit.close_reason)
            return False
        if verdict is Verdict.DROP:
            return False
        if limit.has_notices:
            v1 = self.subprotocol == V1_PROTOCOL
            for parent, text in limit.take_notices(msg_list):
                payload, binary = notice_frame(self.session, v1, parent, text)
                self.write_message(payload, binary=binary)
        return True

    # -- a suspended kernel (gateway/lifecycle/suspension.py) ------------------------------------

    #: Client messages held while the kernel resumes (None: not resuming through this socket).
    _held: list[t.Any] | None = None

    def _pending_report(self) -> str:
        """The resume's one line for the user, not yet shown (set by the handler or below)."""
        return str(getattr(self.websocket_handler, "resume_report", "") or "")

    def _show_report(self, incoming_msg: t.Any) -> None:
        """Show the resume's line in the cell of the first execute_request after the resume."""
        header = _header_of(incoming_msg)
        if header.get("msg_type") != "execute_request":
            return
        report = self._pending_report()
        handler: t.Any = self.websocket_handler
        handler.resume_report = ""
        payload, binary = notice_frame(self.session, self.subprotocol == V1_PROTOCOL, header,
                                       report)
        try:
            self.write_message(payload, binary=binary)
        except WebSocketClosedError:
            pass

    async def _resume_then_deliver(self) -> None:
        """The kernel was suspended while this client stayed connected: resume it (through the
        GPU queue) with the client's frames held, then deliver them in order."""
        try:
            report = await self.multi_kernel_manager.resume_kernel(self.kernel_id)
        except Exception as e:  # noqa: BLE001 - the client is told; the kernel stays suspended
            self.log.warning("Kernel %s could not be resumed: %s", self.kernel_id, e)
            self._held = None
            self.websocket_handler.close(4000, f"ResumeFailed: {e}".encode()[:123].decode(
                errors="ignore"))
            return
        if report:
            handler: t.Any = self.websocket_handler
            handler.resume_report = report
        held, self._held = self._held or [], None
        for frame in held:
            if self._pending_report():
                self._show_report(frame)
            try:
                deliver(self, frame)
            except FrameError as e:
                self.log.warning("Dropped websocket message for kernel %s: %s", self.kernel_id,
                                 e)

    def hold_if_suspended(self, frame: t.Any) -> bool:
        """Called with each client frame before it is delivered: True if it is held (the
        kernel is suspended, or resuming for this client), and the resume is started."""
        if self._held is not None:
            self._held.append(frame)
            return True
        if getattr(self.kernel_manager, "suspended", False):
            self._held = [frame]
            asyncio.ensure_future(self._resume_then_deliver())
            return True
        if self._pending_report():
            self._show_report(frame)
        return False

    def handle_incoming_message(self, incoming_msg: str) -> None:
        try:
            super().handle_incoming_message(incoming_msg)
        except Exception as e:  # noqa: BLE001 - a bad frame must not kill the connection
            self.log.warning(
                "Dropped malformed websocket message for kernel %s: %s",
                self.kernel_id,
                type(e).__name__,
            )


def _header_of(incoming_msg: t.Any) -> dict[str, t.Any]:
    """A client message's header, of either protocol ({} if unreadable)."""
    try:
        if isinstance(incoming_msg, bytes):
            _channel, parts = deserialize_msg_from_ws_v1(incoming_msg)
            header = json.loads(parts[0])
        else:
            header = json.loads(incoming_msg).get("header")
    except (ValueError, IndexError, AttributeError, TypeError):
        return {}
    return header if isinstance(header, dict) else {}
