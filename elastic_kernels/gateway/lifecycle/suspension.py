"""Suspend and resume: a kernel's namespace saved before its pod goes, restored into the next.

A kernelspec with ``culling.onCull: Suspend`` asks that an idle cull or a reclaim keep the
user's work: the gateway has the kernel save its namespace (``elastic_kernels.snapshot``),
seals the payload with a key only the gateway holds, stores it, and only then lets the pod and
its GPU go. The JupyterKernel stays (phase ``Suspended``); a websocket connect or an execute
starts a new pod under the same kernel id and :meth:`Snapshots.restore` gives the saved
variables back. Any failure to save (too big, too slow, the kernel gone) is an ordinary cull
with that reason: this module raises, the caller deletes.

:class:`Snapshots` is the gateway's side of it: one store, one key, and the calls made over a
kernel client of the kernel's own connection (a fresh ``AsyncKernelClient``, so that no client
websocket sees these requests: shell replies go only to the asker). Who calls: the kernel
manager's suspend (the culler's) and ``resume_kernel`` (``lifecycle/kernelmanager.py``).
Configuration: ``snapshot_store``, the key file and ``snapshot_chunk_bytes`` on the kernel
manager.

Streaming, so that a snapshot of a GB costs the gateway a few pieces
    A save is a sequence of silent execute_requests (``snapshot.kernelcall``): the kernel
    collects and keeps its payload, then the gateway asks for it piece by piece
    (``chunk_bytes``, two requests ahead) and the kernel sends each piece raw, as the binary
    buffer of a message on the stdin channel, which routes to the asking connection only (as
    ``input()``'s prompt does; a kernel that cannot returns base64 in the reply instead, a
    piece then cut to fit ``max_kernel_message_bytes``). The gateway seals each piece as it
    comes (``format.SealStream``: HMAC and SHA-256 updated per piece) and appends it to a
    temporary object of the store, renamed over the snapshot only when the whole payload
    arrived and matched the kernel's digest. A restore reads the container piece by piece
    (``format.RestoreStream``), refuses a foreign or malformed header before sending anything,
    sends each piece as a request's binary buffer (one at a time, reading the next meanwhile),
    and tells the kernel to unpickle only when the tag checked over exactly those bytes.
    Hashing and file I/O run in a thread; the event loop only moves messages. The transfer's
    client opens only shell and stdin, on a ZeroMQ context of its own whose sockets carry the
    gateway's message bound. Why not a comm: a comm's messages from the kernel go out on
    iopub, to every websocket of the kernel.

Failures: anything that stops a save (``maxBytes``, ``timeout``, a kernel that dies or sends
what it did not announce) raises SnapshotError with the reason, nothing is left in the store,
and the kernel is culled with that reason. ``timeout`` bounds the whole save, collection and
transfer (plus :data:`REPLY_MARGIN_S`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import typing as t
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.asyncio

from elastic_kernels import snapshot
from elastic_kernels.snapshot import collect, kernelcall

__all__ = ["KEY_ENV", "SavedSnapshot", "Snapshots", "SuspendLimits", "read_key"]

#: Where the gateway reads the snapshot signing key when no file is configured (a Secret's
#: value mounted into the gateway's pod only; never into a kernel's).
KEY_ENV = "ELASTIC_KERNELS_SNAPSHOT_KEY"
MIN_KEY_BYTES = 32
#: Beyond the kernel's own ``timeout``: the request's round trip and the reply's transfer.
REPLY_MARGIN_S = 10.0
#: Default bytes of payload per request. Each request costs a few ms in the kernel besides its
#: bytes: measured (1 GB restore, local kernel) 5.0 s in 1 MiB pieces, 3.5 s in 4 MiB, 2.2 s
#: in 16 MiB. The gateway holds about three pieces per transfer in progress.
CHUNK_BYTES = 16 << 20
#: Requests of a save in flight at once: the kernel sends one piece while the gateway seals
#: and writes the other; the gateway holds at most this many pieces plus one.
WINDOW = 2
#: A restore has one request in flight (reading the next piece meanwhile). Measured (1 GB,
#: ipykernel 7.4): a second write arriving while the kernel copies the first made the restore
#: 2.5x slower.
#: What a reply carries besides a piece's base64 (header, JSON, signatures).
_REPLY_OVERHEAD = 16 << 10


@dataclass(frozen=True)
class SuspendLimits:
    """``culling.suspend`` of a kernelspec: the most a snapshot may take, in bytes and time."""

    max_bytes: int = 1 << 30
    timeout: float = 60.0


@dataclass(frozen=True)
class SavedSnapshot:
    """What a suspend saved: shown to the user in the kernel's status and logged (names only)."""

    size: int
    variables: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]

    def summary(self) -> str:
        """One line: "saved 5 variables (x, df, ...); not saved: gen (generator objects ...)"."""
        names = ", ".join(self.variables[:8]) + (", ..." if len(self.variables) > 8 else "")
        text = f"saved {len(self.variables)} variable{'s' if len(self.variables) != 1 else ''}"
        if self.variables:
            text += f" ({names})"
        if self.skipped:
            text += "; not saved: " + ", ".join(f"{n} ({why})" for n, why in self.skipped[:5])
            if len(self.skipped) > 5:
                text += ", ..."
        return text


def read_key(path: str = "") -> bytes:
    """The signing key from ``path`` (a mounted Secret item) or ``$ELASTIC_KERNELS_SNAPSHOT_KEY``.

    Raises ValueError saying what is wrong, never showing the key.
    """
    if path:
        try:
            key = Path(path).read_bytes().strip()
        except OSError as e:
            raise ValueError(f"cannot read the snapshot key file {path}: {e.strerror}") from None
        where = f"the snapshot key file {path}"
    else:
        key = os.environ.get(KEY_ENV, "").strip().encode()
        where = f"${KEY_ENV}"
    if not key:
        raise ValueError(f"{where} is empty")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{where} holds {len(key)} bytes; a snapshot key needs at least "
                         f"{MIN_KEY_BYTES} (e.g. `openssl rand -hex 32`)")
    return key


class _Channel:
    """A kernel client of the kernel's own connection, for the requests of one transfer.

    Several requests may be in flight (a save asks :data:`WINDOW` pieces ahead, so the kernel
    sends one while the gateway seals and writes the other); one reader per channel hands each
    reply to the request it answers. It waits for replies with a bounded poll (re-checked each
    second): pyzmq's asyncio sockets have been seen to lose a wakeup (DESIGN.md, section 9),
    which must cost a second, not the save.
    """

    def __init__(self, kernel_manager: t.Any, max_message_bytes: int = 0) -> None:
        # Only shell and stdin: nothing is read from iopub, which would queue the kernel's
        # output meanwhile. The sockets get their own context so that they can carry a message
        # bound (libzmq applies it from before connect): what the kernel sends them, even from
        # a user's thread, costs the gateway at most that per message.
        self._context = zmq.asyncio.Context()
        if max_message_bytes > 0:
            self._context.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.client = kernel_manager.client(context=self._context)
        self.client.start_channels(shell=True, iopub=False, stdin=True, hb=False,
                                   control=False)
        self._waiting: dict[str, asyncio.Future[dict[str, t.Any]]] = {}
        self._pieces: dict[str, asyncio.Future[t.Any]] = {}
        self._readers: list[asyncio.Task[None]] = []

    async def _read(self, get: t.Callable[..., t.Awaitable[dict[str, t.Any]]],
                    waiting: dict[str, asyncio.Future[t.Any]],
                    result: t.Callable[[dict[str, t.Any]], t.Any]) -> None:
        """Hand each message of one channel to the request it answers."""
        try:
            while True:
                try:
                    msg = await get(timeout=1.0)
                except queue.Empty:
                    continue
                waiter = waiting.pop(msg.get("parent_header", {}).get("msg_id"), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(result(msg))
        except Exception as e:  # noqa: BLE001 - every waiter hears why
            for waiter in waiting.values():
                if not waiter.done():
                    waiter.set_exception(snapshot.SnapshotError(
                        f"the kernel's connection failed: {type(e).__name__}: {e}"))
            waiting.clear()

    @staticmethod
    def _piece(msg: dict[str, t.Any]) -> t.Any:
        buffers = msg.get("buffers") or []
        if msg.get("msg_type") != collect.PIECE_MSG_TYPE or len(buffers) != 1:
            return None
        return buffers[0]

    def send(self, content: dict[str, t.Any], buffers: list[bytes] | None = None,
             piece: bool = False) -> tuple[asyncio.Future[dict[str, t.Any]],
                                           asyncio.Future[t.Any] | None]:
        """Send one execute_request (with ``buffers`` as its binary parts). Returns its
        reply's content, when it comes, and with ``piece`` the binary buffer the kernel sends
        for it on the stdin channel."""
        if not self._readers:
            self._readers = [
                asyncio.ensure_future(self._read(self.client.get_shell_msg, self._waiting,
                                                 lambda m: dict(m["content"]))),
                asyncio.ensure_future(self._read(self.client.get_stdin_msg, self._pieces,
                                                 self._piece))]
        if buffers:
            session = self.client.session
            msg = session.msg("execute_request", content)
            session.send(self.client.shell_channel.socket, msg, buffers=buffers)
            msg_id = msg["header"]["msg_id"]
        else:
            msg_id = self.client.execute(**content)
        loop = asyncio.get_running_loop()
        waiter = self._waiting[msg_id] = loop.create_future()
        raw: asyncio.Future[t.Any] | None = None
        if piece:
            raw = self._pieces[msg_id] = loop.create_future()
        return waiter, raw

    @staticmethod
    async def reply(waiter: asyncio.Future[t.Any], timeout: float) -> t.Any:
        """The reply's content; SnapshotTimeout past ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(waiter, max(timeout, 0.001))
        except asyncio.TimeoutError:
            raise snapshot.SnapshotTimeout(
                "the kernel did not answer a snapshot request in time") from None

    async def call(self, content: dict[str, t.Any], timeout: float,
                   buffers: list[bytes] | None = None) -> dict[str, t.Any]:
        """One request and its reply's content."""
        waiter, _ = self.send(content, buffers)
        return t.cast(dict[str, t.Any], await self.reply(waiter, timeout))

    def close(self) -> None:
        for reader in self._readers:
            reader.cancel()
        for waiter in [*self._waiting.values(), *self._pieces.values()]:
            waiter.cancel()
        self._waiting.clear()
        self._pieces.clear()
        self.client.stop_channels()
        self._context.destroy(linger=0)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = asyncio.get_running_loop().time() + seconds
        self.seconds = seconds

    def left(self) -> float:
        left = self.at - asyncio.get_running_loop().time()
        if left <= 0:
            raise snapshot.SnapshotTimeout(
                f"the snapshot took longer than its timeout ({self.seconds:g} s)")
        return left


class Snapshots:
    """Save, restore and discard kernels' snapshots in one store under one key, streamed in
    pieces of ``chunk_bytes`` (module docstring); ``message_bytes`` is the gateway's bound on
    one kernel message (0: none), which each piece must fit (as base64, for a kernel that
    cannot send raw pieces). ``binary=False`` makes saves use base64 replies only."""

    def __init__(self, store: snapshot.SnapshotStore, key: bytes,
                 log: logging.Logger | logging.LoggerAdapter[t.Any] | None = None, *,
                 chunk_bytes: int = CHUNK_BYTES, message_bytes: int = 0,
                 binary: bool = True) -> None:
        self.store = store
        #: Saves take raw pieces from kernels that can send them (else base64 in replies).
        self.binary = binary
        self._key = key
        self.log = log or logging.getLogger(__name__)
        chunk = max(1, int(chunk_bytes))
        if message_bytes > 0:
            chunk = min(chunk, max(1024, (message_bytes - _REPLY_OVERHEAD) * 3 // 4))
        self.chunk_bytes = chunk
        #: The bound on one message to the transfer's sockets: the gateway's, and at least
        #: what a piece takes (base64, for a kernel that cannot send raw pieces).
        self.message_bytes = max(message_bytes, chunk * 4 // 3 + _REPLY_OVERHEAD) \
            if message_bytes > 0 else 0

    async def save(self, kernel_manager: t.Any, kernel_id: str, owner: str,
                   limits: SuspendLimits) -> SavedSnapshot:
        """Have the kernel save its namespace; seal and store it as it streams in. Raises
        SnapshotError with the reason when there is no snapshot (the caller then culls as
        usual); nothing is left in the store then."""
        deadline = _Deadline(limits.timeout + REPLY_MARGIN_S)
        channel = _Channel(kernel_manager, self.message_bytes)
        token = ""
        try:
            begun = kernelcall.read_save_begin_reply(
                await channel.call(kernelcall.save_begin_request(
                    max_bytes=limits.max_bytes, timeout=limits.timeout), deadline.left()),
                max_bytes=limits.max_bytes)
            token = begun.token
            sealer = snapshot.SealStream(key=self._key, kernel_id=kernel_id, owner=owner,
                                         size=begun.size, sha256=begun.sha256,
                                         max_bytes=limits.max_bytes)
            writer = await asyncio.to_thread(self.store.open_write, kernel_id)
            try:
                binary = begun.binary and self.binary
                offset = 0
                asked: deque[tuple[int, asyncio.Future[t.Any], asyncio.Future[t.Any] | None]]
                asked = deque()
                while offset < begun.size or asked:
                    while offset < begun.size and len(asked) < WINDOW:
                        length = min(self.chunk_bytes, begun.size - offset)
                        ask = (kernelcall.send_request if binary else kernelcall.read_request)
                        asked.append((length, *channel.send(ask(token, offset, length),
                                                            piece=binary)))
                        offset += length
                    length, waiter, raw = asked.popleft()
                    reply = await channel.reply(waiter, deadline.left())
                    if raw is None:
                        piece = await asyncio.to_thread(kernelcall.read_piece_reply, reply,
                                                        length)
                    else:
                        sent = kernelcall.read_count_reply(reply)
                        piece = await channel.reply(raw, deadline.left())
                        if piece is None or sent != length or memoryview(piece).nbytes != length:
                            raise snapshot.SnapshotError(
                                f"the kernel sent a malformed snapshot piece ({sent} of "
                                f"{length} bytes)")
                    await asyncio.to_thread(self._store_piece, piece, sealer, writer)
                    del piece
                tag = sealer.finish()
                await asyncio.to_thread(self._commit, writer, tag)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(writer.abort))
                raise
        except OSError as e:  # the store: full, gone, not writable
            raise snapshot.SnapshotError(f"cannot write the snapshot store: {e}") from None
        finally:
            if token:
                await self._end(channel, token)
            channel.close()
        return SavedSnapshot(
            size=begun.size, variables=tuple(begun.variables),
            skipped=tuple((str(s.get("name", "?")), str(s.get("reason", "")))
                          for s in begun.skipped if s.get("kind") != "internal"))

    @staticmethod
    def _store_piece(piece: bytes, sealer: snapshot.SealStream,
                     writer: snapshot.SnapshotWriter) -> None:
        """Seal and write one piece (in a thread: hashing and writing MBs)."""
        out = sealer.feed(piece)
        if out:
            writer.write(out)

    @staticmethod
    def _commit(writer: snapshot.SnapshotWriter, tag: bytes) -> None:
        writer.write(tag)
        writer.commit()

    async def _end(self, channel: _Channel, token: str) -> None:
        """Free the kernel's side of a transfer; a kernel that does not answer is let be
        (its pod goes, or the next transfer replaces it)."""
        try:
            await channel.call(kernelcall.transfer_end_request(token), REPLY_MARGIN_S)
        except (snapshot.SnapshotError, OSError) as e:
            self.log.info("Could not end a snapshot transfer in the kernel: %s", e)

    async def restore(self, kernel_manager: t.Any, kernel_id: str, owner: str,
                      timeout: float) -> kernelcall.RestoreResult:
        """Stream the stored snapshot into the kernel now running under ``kernel_id``, and
        have it restored once its signature, kernel id and owner checked. Raises
        SnapshotRefused for a snapshot that does not check (nothing is unpickled then),
        SnapshotError for any other failure."""
        deadline = _Deadline(timeout + REPLY_MARGIN_S)
        try:
            reader = await asyncio.to_thread(self.store.open_read, kernel_id)
        except OSError as e:
            raise snapshot.SnapshotError(f"cannot read the snapshot store: {e}") from None
        if reader is None:
            raise snapshot.SnapshotError(f"no snapshot of kernel {kernel_id} is stored")
        channel: _Channel | None = None
        try:
            stream = snapshot.RestoreStream(reader.read, key=self._key, kernel_id=kernel_id,
                                            owner=owner)
            await asyncio.to_thread(stream.open)  # a foreign header: refused before sending
            channel = _Channel(kernel_manager, self.message_bytes)
            token = kernelcall.read_token_reply(await channel.call(
                kernelcall.restore_begin_request(stream.size), deadline.left()))
            try:
                ahead = asyncio.ensure_future(asyncio.to_thread(stream.piece, self.chunk_bytes))
                try:
                    while piece := await ahead:
                        expected = stream.sent
                        waiter, _ = channel.send(kernelcall.write_request(token),
                                                 buffers=[piece])
                        del piece
                        # One piece in flight; the next is read and hashed meanwhile.
                        ahead = asyncio.ensure_future(
                            asyncio.to_thread(stream.piece, self.chunk_bytes))
                        held = kernelcall.read_count_reply(
                            await channel.reply(waiter, deadline.left()))
                        if held != expected:
                            raise snapshot.SnapshotError(
                                f"the kernel holds {held} snapshot bytes of {expected} sent")
                finally:
                    await asyncio.gather(ahead, return_exceptions=True)  # before reader.close
                verified = await asyncio.to_thread(stream.finish)
            except BaseException:
                await asyncio.shield(self._end(channel, token))
                raise
            content = await channel.call(kernelcall.restore_commit_request(verified, token),
                                         deadline.left())
            return kernelcall.read_restore_reply(content)
        except OSError as e:
            raise snapshot.SnapshotError(f"cannot read the snapshot store: {e}") from None
        finally:
            await asyncio.to_thread(reader.close)
            if channel is not None:
                channel.close()

    async def discard(self, kernel_id: str) -> bool:
        """Delete a kernel's snapshot (shut down, restarted fresh, or restored)."""
        try:
            return await asyncio.to_thread(self.store.delete, kernel_id)
        except (OSError, ValueError) as e:
            self.log.warning("Kernel %s: cannot delete its snapshot: %s", kernel_id, e)
            return False

    async def exists(self, kernel_id: str) -> bool:
        return await asyncio.to_thread(self.store.exists, kernel_id)
