"""What one kernel websocket may have queued for a client that does not read it, bounded.

Why: tornado queues every websocket frame in the connection's write buffer, without limit, and
nothing slows the writer down; the gateway reads a kernel's ZeroMQ sockets as fast as they
deliver. A client that runs ``while True: sys.stdout.write('y' * 65536)`` and stops reading (a
hostile one, or a tab the browser froze) grew a gateway replica by over 2 GiB in 20 s, enough for
its memory limit to kill it with every user's websockets on it.

**Output is dropped, not the connection.** Kernel *output* on iopub (``stream``,
``display_data``, ``update_display_data``, ``execute_result``, ``error``, ``comm_msg``) is queued
for a client only if it fits within ``max_pending_bytes`` together with what is already queued;
otherwise it is dropped for that client (so is one output message larger than the bound on its
own), and so is all its output until it has caught up to half the bound. Everything else still
goes out: status, ``execute_input``, the replies on shell and control, stdin's
``input_request``; a frontend that lost those would show a cell busy for ever or wait for a
prompt that never comes. If a further ``max_pending_bytes`` of those pile up while
the client is past the bound, it reads nothing at all, and it is closed with 1008 (policy
violation) and a reason. Why not close at the first bound: a slow link or a throttled background
tab is a legitimate client that reads late. Closed, JupyterLab reconnects, gets the replay
(bounded by the offline buffer), falls behind again: the user sees "connection lost" over and
over and loses the output anyway. jupyter_server's own IOPub rate limit drops output with a
notice for the same reason. The kernel is never slowed down or stopped.

**The user is told, in the right cell, at most twice.** A cell (parent header) that loses output
gets a stderr ``stream`` message saying how much was dropped and why, sent just before the next
message that does reach the client. A long cell can fall behind, catch up and fall behind again
many times (how often depends on the socket buffers and the client's pace); what it loses after
its first notice is summed up in one more notice, sent just before the cell's idle status, while
JupyterLab still routes the cell's messages to it (it forgets a cell once its idle status and its
``execute_reply`` arrived). The idle status, not the reply: it comes on iopub after all of the
cell's output, while the reply, on shell, may overtake output still on its way. A notice per
stretch filled a busy cell with identical lines.

**What is counted**: the bytes in tornado's write buffer, plus 2 KiB per frame not written yet
(the Future and the Task that tornado's ``write_message`` wraps around each frame: 1.5 to 1.9 KiB
measured), so a flood of small messages is bounded too. A websocket therefore holds at most
about ``2 × max_pending_bytes``: output up to the bound, then other messages up to the bound
again before the client is closed. Deciding costs a length check per message; a message's
header is parsed only when it does not fit.

Not bounded here: one kernel message passes through the gateway whole, once per ZeroMQ
subscriber (the activity watcher, each client's iopub socket), whether or not anyone reads it.
ipykernel sends a cell's output every 0.2 s in one message, so a cell printing in a tight loop
without flushing makes messages of hundreds of MB, which cost the gateway that much memory for
the moment they pass, then are dropped here.

**Memory is given back after a flood.** What a flood allocated is freed when its client goes, but
glibc keeps freed heap memory in its arenas (the 64 KiB messages are below its mmap threshold, and
ZeroMQ's I/O thread allocates from an arena of its own): measured, two clients that never read left
the gateway at 3.5 times its idle RSS after they and their kernels had stopped, and
``malloc_trim(0)`` brought it back to 1.2 times. So once a connection that hit the bound, or had a
quarter of it queued at some point, closes, :func:`release_memory_soon` has glibc return free memory
to the system, a second later (so the close's own frees count), in a worker thread (it walks the
heap, which takes milliseconds). While the kernel keeps writing, its messages still pass through the
gateway (into the offline buffer), so it looks again every 10 s and trims while more than 32 MiB is
free, until a minute passes with nothing to give back (:class:`MemoryReleaser`). Nothing happens on
a C library without ``malloc_trim``.

Private names: tornado's IOStream tells only whether it is writing (``writing()``), not how
much; ``_write_buffer`` (a sized buffer) and ``_write_futures`` are read here and nowhere else.
This can go when tornado exposes the size of its write buffer.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import enum
import json
import logging
import typing as t
from elastic_kernels.upstream import queued_write

from jupyter_client.jsonutil import json_default
from jupyter_client.session import DELIM, Session
from jupyter_server.services.kernels.connection.base import serialize_msg_to_ws_v1

__all__ = ["FRAME_OVERHEAD", "OUTPUT_TYPES", "OutputLimit", "Verdict", "notice_frame",
           "MemoryReleaser", "pending_bytes", "release_memory_soon", "retrieve_exception"]

FRAME_OVERHEAD = 2048
"""Bytes counted for each frame tornado has not finished writing, besides the frame itself."""

OUTPUT_TYPES = frozenset({"stream", "display_data", "update_display_data", "execute_result",
                          "error", "comm_msg"})
"""iopub message types a client behind on its reading may lose (with a notice)."""

MAX_NOTICE_CELLS = 16
"""Cells remembered for notices between two messages sent; later drops go to the last one."""

MAX_NOTIFIED_CELLS = 64
"""Cells remembered as told once, whose further losses wait for the cell's end; past this many
running cells, the oldest is forgotten (its next loss is told at once again)."""

_MAX_PARENT_BYTES = 4096
"""A parent header larger than this is not kept for the notice (it is the kernel's to size)."""


class Verdict(enum.Enum):
    """What to do with one outgoing kernel message."""

    SEND = "send"
    DROP = "drop"
    CLOSE = "close"


def pending_bytes(handler: t.Any) -> int | None:
    """Bytes the handler's websocket has queued (see the module docstring), or None once it is
    closing, when nothing more can reach the client."""
    ws = getattr(handler, "ws_connection", None)
    if ws is None or ws.is_closing():
        return None
    stream = getattr(ws, "stream", None)
    if stream is None:
        return 0
    queued, futures = queued_write(stream)
    return queued + FRAME_OVERHEAD * futures


def retrieve_exception(written: asyncio.Future[t.Any]) -> None:
    """Done callback for the future of a websocket write: its error is expected (the client
    went away) and must not be logged. Otherwise asyncio logs "Task exception was never
    retrieved", with a traceback, for every frame still queued when a connection closes:
    tens of thousands of lines when a client that did not read goes away."""
    if not written.cancelled():
        written.exception()


def _delim_index(msg_list: t.Sequence[t.Any]) -> int | None:
    """Where a raw kernel message's header parts start (the delimiter's index), or None."""
    for i, part in enumerate(msg_list):
        if part == DELIM:
            return i if len(msg_list) >= i + 4 else None
    return None


def _split(msg_list: t.Sequence[t.Any]) -> tuple[bytes, bytes] | None:
    """The header and parent header parts of a raw kernel message, or None."""
    i = _delim_index(msg_list)
    if i is None:
        return None
    return bytes(msg_list[i + 2]), bytes(msg_list[i + 3])


def _msg_type(header: bytes) -> str | None:
    try:
        value = json.loads(header)
    except ValueError:
        return None
    kind = value.get("msg_type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"


class OutputLimit:
    """The bound for one websocket connection; the connection asks it about every message."""

    def __init__(self, max_pending: int, log: logging.Logger | logging.LoggerAdapter[t.Any],
                 kernel_id: str) -> None:
        self.max_pending = max_pending
        self.log = log
        self.kernel_id = kernel_id
        #: Output is dropped until the client is less than half the bound behind again.
        self.behind = False
        #: Bytes of other messages queued since the client was last less than half the bound
        #: behind; past the bound, the client reads nothing at all.
        self.kept_while_behind = 0
        self.dropped_bytes = 0
        self.dropped_messages = 0
        #: The most bytes ever queued for the client (what its flood may have left allocated).
        self.peak_pending = 0
        #: the cell's msg_id ("" for none) -> its loss not yet reported to the client.
        self._unreported: dict[str, _Loss] = {}
        #: msg_ids of cells told once, whose later losses are reported when the cell ends.
        self._notified: dict[str, None] = {}

    @property
    def close_reason(self) -> str:
        return f"client not reading: over {_size(2 * self.max_pending)} of messages queued"

    def check(self, handler: t.Any, channel: str | None, msg_list: t.Sequence[t.Any]) -> Verdict:
        if self.max_pending <= 0:
            return Verdict.SEND
        pending = pending_bytes(handler)
        if pending is None:
            return Verdict.DROP  # closing: the client gets nothing more anyway
        if pending > self.peak_pending:
            self.peak_pending = pending
        if pending <= self.max_pending // 2:
            self.behind = False
            self.kept_while_behind = 0
        size = sum(len(p) for p in msg_list) + FRAME_OVERHEAD
        if not self.behind and pending + size <= self.max_pending:
            return Verdict.SEND  # fits: the common case, decided without parsing anything
        if channel == "iopub":
            parts = _split(msg_list)
            if parts is not None and _msg_type(parts[0]) in OUTPUT_TYPES:
                # Once behind, output stays off until the client has caught up to half the
                # bound: else every message that happens to fit would carry its own notice.
                self.behind = self.behind or pending > 0
                self._drop(parts[1], size, pending)
                return Verdict.DROP
        if pending > self.max_pending:
            self.kept_while_behind += size
            if self.kept_while_behind > self.max_pending:
                self.log.warning("Kernel %s: websocket client is %s behind and reads nothing; "
                                 "closing it (1008)", self.kernel_id, _size(pending))
                return Verdict.CLOSE
        return Verdict.SEND

    def _drop(self, parent: bytes, size: int, pending: int) -> None:
        if not self.dropped_messages:
            why = (f"the client is {_size(pending)} behind" if pending
                   else f"one message of {_size(size)}")
            self.log.warning("Kernel %s: dropping output for a websocket client that cannot take "
                             "it (%s; max_pending_bytes %s)", self.kernel_id, why,
                             _size(self.max_pending))
        self.dropped_bytes += size
        self.dropped_messages += 1
        # By msg_id, not by the raw parent header: ipykernel does not always serialize one
        # request's header to the same bytes (its last flush of a cell's output differs).
        header = _parent_of(parent) if len(parent) <= _MAX_PARENT_BYTES else {}
        msg_id = str(header.get("msg_id", ""))
        entry = self._unreported.get(msg_id)
        if entry is None:
            if len(self._unreported) >= MAX_NOTICE_CELLS:
                entry = next(reversed(self._unreported.values()))
            else:
                entry = self._unreported[msg_id] = _Loss(header)
        entry.size += size
        entry.count += 1

    @property
    def hit(self) -> bool:
        """Whether the bound ever mattered for this connection (output dropped, or replies
        queued past it)."""
        return bool(self.dropped_messages or self.kept_while_behind)

    @property
    def flooded(self) -> bool:
        """Whether so much was queued for the client at some point (a quarter of the bound)
        that the allocator likely kept it after it was sent: worth a trim when it closes."""
        return self.hit or self.peak_pending > self.max_pending // 4

    @property
    def has_notices(self) -> bool:
        """Whether a notice may be due (a cell's later losses wait for its idle status)."""
        return bool(self._unreported)

    def take_notices(self, msg_list: t.Sequence[t.Any] = ()) -> list[tuple[dict[str, t.Any], str]]:
        """``(parent header, text)`` for each cell to tell before ``msg_list`` is sent: a cell's
        first loss, and the sum of its later ones when ``msg_list`` ends the cell."""
        ending = _ending_cell(msg_list)
        notices = []
        for msg_id, loss in list(self._unreported.items()):
            told = msg_id in self._notified
            if told and msg_id != ending:
                continue  # summed up when the cell ends
            del self._unreported[msg_id]
            if msg_id == ending:
                self._notified.pop(msg_id, None)
            elif msg_id:
                self._remember_told(msg_id)
            size, count = loss.size, loss.count
            noun = "message" if count == 1 else "messages"
            more = "more " if told else ""
            notices.append((loss.header, (
                f"[elastic-kernels] {_size(size)} {more}of output ({count} {noun}) not shown: "
                f"the gateway holds at most {_size(self.max_pending)} of output that a client "
                "has not read yet. The kernel kept running.\n")))
        return notices

    def _remember_told(self, msg_id: str) -> None:
        self._notified[msg_id] = None
        while len(self._notified) > MAX_NOTIFIED_CELLS:
            del self._notified[next(iter(self._notified))]


class _Loss:
    """What one cell lost and was not told yet."""

    __slots__ = ("header", "size", "count")

    def __init__(self, header: dict[str, t.Any]) -> None:
        self.header = header
        self.size = 0
        self.count = 0


def _parent_of(raw: bytes) -> dict[str, t.Any]:
    """A dropped message's parent header, or ``{}`` when it names no request."""
    try:
        header = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(header, dict) or not isinstance(header.get("msg_id"), str):
        return {}
    return header


def _ending_cell(msg_list: t.Sequence[t.Any]) -> str | None:
    """The msg_id of the request whose idle status ``msg_list`` is, or None. Parsed only while
    notices wait, never on the common path."""
    i = _delim_index(msg_list)
    if i is None or len(msg_list) < i + 6 or _msg_type(bytes(msg_list[i + 2])) != "status":
        return None  # the content (a status's is tiny) is looked at only for a status
    if b'"idle"' not in bytes(msg_list[i + 5]):
        return None
    msg_id = _parent_of(bytes(msg_list[i + 3])).get("msg_id")
    return msg_id if isinstance(msg_id, str) else None


def notice_frame(session: Session, v1: bool, parent: dict[str, t.Any],
                 text: str) -> tuple[bytes | str, bool]:
    """A stderr ``stream`` message on iopub for ``parent``'s cell, as a websocket frame of
    either protocol: ``(payload, binary)``."""
    msg = session.msg("stream", content={"name": "stderr", "text": text}, parent=parent)
    if v1:
        return serialize_msg_to_ws_v1(msg, "iopub", session.pack), True
    msg["channel"] = "iopub"
    return json.dumps(msg, default=json_default), False


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


class _Glibc:
    """glibc's ``malloc_trim`` and ``mallinfo2``, or nothing on another C library."""

    def __init__(self) -> None:
        self.trim: t.Callable[[int], int] | None = None
        self.info: t.Callable[[], _MallInfo2] | None = None
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
        except OSError:
            libc = None
        if libc is None:
            return
        self.trim = getattr(libc, "malloc_trim", None)
        info = getattr(libc, "mallinfo2", None)  # glibc >= 2.33
        if info is not None:
            info.restype = _MallInfo2
            self.info = info

    def free_bytes(self) -> int:
        """Free bytes held in the heap arenas (all of them), or -1 if unknown."""
        return int(self.info().fordblks) if self.info is not None else -1


class MemoryReleaser:
    """Hands free heap memory back to the system after floods (see the module docstring).

    Started by :meth:`kick` when a flooded connection closes (``OutputLimit.flooded``): trims
    once a second later, then every ``interval`` looks at the free heap and trims when more
    than ``threshold`` is free (the kernel may still be writing, now into the offline buffer, and
    its messages still pass through the gateway), and stops after ``quiet_checks`` looks in a
    row found little to give back. The work runs in a worker thread.

    A kick while it runs (another flooded connection closed) brings the next trim forward to a
    second later: waiting out the rest of an ``interval`` left tens of MB held for up to ten
    seconds after a second flood ended (tests/test_slow_reader.py saw the gateway settle at
    twice its idle size).
    """

    interval = 10.0
    threshold = 32 * 1024 * 1024
    quiet_checks = 6

    def __init__(self) -> None:
        self._glibc: _Glibc | None = None
        self._task: asyncio.Task[None] | None = None
        self._kicked: asyncio.Event | None = None
        self.trims = 0

    @property
    def glibc(self) -> _Glibc:
        if self._glibc is None:
            self._glibc = _Glibc()
        return self._glibc

    def kick(self) -> None:
        if self.glibc.trim is None:
            return
        if self._task is not None and not self._task.done() and self._kicked is not None:
            self._kicked.set()
            return
        self._kicked = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(self._kicked))

    def _trim(self) -> None:
        assert self.glibc.trim is not None
        self.glibc.trim(0)
        self.trims += 1

    async def _run(self, kicked: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1.0)
        await loop.run_in_executor(None, self._trim)
        quiet = 0
        while quiet < self.quiet_checks:
            try:
                await asyncio.wait_for(kicked.wait(), self.interval)
            except (TimeoutError, asyncio.TimeoutError):
                pass
            else:
                kicked.clear()
                await asyncio.sleep(1.0)
                await loop.run_in_executor(None, self._trim)
                quiet = 0
                continue
            free = await loop.run_in_executor(None, self.glibc.free_bytes)
            if free < 0 or free > self.threshold:
                await loop.run_in_executor(None, self._trim)
                quiet = 0
            else:
                quiet += 1


_releaser = MemoryReleaser()


def release_memory_soon() -> None:
    """A flooded connection closed: give what its flood allocated back soon."""
    _releaser.kick()
