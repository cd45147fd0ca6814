"""The kernel activity watcher, reading only the message parts it needs.

jupyter_server keeps each kernel's ``last_activity`` and ``execution_state`` (the culler, the
GPU reclaim and ``GET /api/kernels`` depend on them) with one extra IOPub subscriber per kernel.
Its callback (``MappingKernelManager.start_watching_activity``) deserializes every message with
a full ``Session.deserialize`` (ISO dates parsed into ``datetime`` objects, metadata unpacked),
and status messages twice. It runs on the gateway's one event loop for every IOPub message of
every kernel, in line with the client's own copy of the same message, so it adds to every round
trip: measured here at about as much as relaying the message to the client.

This watcher keeps upstream's rules exactly (which message types count as activity, when the
execution state is taken from a status message, the "starting" normalisation) and its signature
check, but parses only the header, the parent header's type and, for status messages, the
content. A message it cannot read is ignored, as upstream's callback would fail on it.

When its socket drops an oversized message (gateway/transport/msgsize.py), the status messages that
followed it are lost too, so a kernel would stay "busy" for ever (never idle-culled). The
watcher then re-learns the state: it sends ``kernel_info_request`` on a transient shell socket;
the kernel answers only once everything queued before it has run, so at the reply it is idle.
"""

from __future__ import annotations

import json
import typing as t

from jupyter_client.session import Session
from elastic_kernels.upstream import managed_kernels, set_activity_stream, utcnow

from elastic_kernels.gateway.transport.wsjson import signed_parts

if t.TYPE_CHECKING:
    from jupyter_server.services.kernels.kernelmanager import MappingKernelManager

__all__ = ["watch_activity"]


def _object(part: bytes) -> dict[str, t.Any]:
    try:
        value = json.loads(part)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def watch_activity(manager: MappingKernelManager, kernel_id: str) -> None:
    """Subscribe to ``kernel_id``'s IOPub and keep its activity markers (upstream's contract)."""
    manager.log.debug("Watching kernel activity: %s", kernel_id)
    kernel = managed_kernels(manager)[kernel_id]
    kernel.reason = ""
    kernel.last_activity = utcnow()
    stream = kernel.connect_iopub()
    set_activity_stream(kernel, stream)
    # Its own Session, as upstream: the kernel's session keeps a replay history of its own.
    session = Session(config=kernel.session.config, key=kernel.session.key)
    tracked = manager.track_message_type

    def record_activity(msg_list: list[bytes]) -> None:
        signed = signed_parts(session, msg_list)
        if signed is None:
            return
        parts = signed[1]
        msg_type = _object(parts[0]).get("msg_type")
        parent_msg_type = _object(parts[1]).get("msg_type")
        if tracked(msg_type) or tracked(parent_msg_type) or kernel.execution_state == "busy":
            manager.last_kernel_activity = kernel.last_activity = utcnow()
        if msg_type != "status":
            manager.log.debug("activity on %s: %s", kernel_id, msg_type)
            return
        execution_state = _object(parts[3]).get("execution_state")
        if not isinstance(execution_state, str):
            return
        if getattr(kernel, "suspended", False):
            # The status of the suspend's own last request can arrive after the kernel was
            # marked suspended (its pod is being released): it must not read "idle" again.
            return
        if tracked(parent_msg_type):
            kernel.execution_state = execution_state
        elif kernel.execution_state == "starting" and execution_state != "starting":
            # As upstream: after "starting", the state is "idle" unless a tracked request
            # of ours caused the status.
            kernel.execution_state = "idle"
        manager.log.debug("activity on %s: %s (%s)", kernel_id, msg_type, kernel.execution_state)

    stream.on_recv(record_activity)
    listen = getattr(kernel, "on_message_dropped", None)
    if listen is not None:
        listen(stream.socket, lambda _channel, _limit: _resync(manager, kernel))


def _resync(manager: MappingKernelManager, kernel: t.Any) -> None:
    """Learn that ``kernel`` is idle again after the watcher lost messages (module docstring)."""
    if getattr(kernel, "_elastic_resync", None) is not None or not kernel.has_kernel:
        return  # one at a time; the pending one answers for this drop too
    shell = kernel._elastic_resync = kernel.connect_shell()

    def answered(_msg: list[bytes]) -> None:
        shell.close()
        kernel._elastic_resync = None
        if kernel.execution_state == "busy":
            manager.log.info("Kernel %s is idle again (after a dropped message)",
                             kernel.kernel_id)
            kernel.execution_state = "idle"
            manager.last_kernel_activity = kernel.last_activity = utcnow()

    shell.on_recv(answered)
    kernel.session.send(shell, "kernel_info_request")
