"""The signed snapshot container: the gateway seals a kernel's payload and verifies it before use.

Runs in the gateway only; the key never leaves it. Nothing here unpickles: the container's
header and the payload's framing are JSON and lengths, and the payload goes to the restoring
kernel only inside a :class:`VerifiedSnapshot`, which only :func:`verify_and_load` makes.

Layout (all lengths big-endian)::

    MAGIC (8 bytes, "EKSNAP01")
    header length (4 bytes)
    header (UTF-8 JSON)
    payload (the kernel's unsigned payload, verbatim: collect.encode_payload)
    tag (32 bytes): HMAC-SHA256(key, everything above)

The header::

    {"format": "elastic-kernels-snapshot", "version": 1, "kernel_id": "...",
     "owner": "alice", "created": "2024-05-01T12:00:00+00:00",
     "payload_size": 1234, "payload_sha256": "...",
     "variables": [{"name": "x", "type": "int", "size": 5}, ...],
     "skipped": [{"name": "gen", "reason": "generator objects cannot be saved"}, ...]}

What the signature proves: this gateway (whoever holds the key) sealed these bytes for this
kernel id and this owner. It does not make the pickles harmless; they are the owner's own
variables and are only ever unpickled in the owner's kernel. It stops someone who can write
the store (a shared bucket, a volume) from planting a pickle that would run in another user's
kernel, and stops one user's snapshot being restored into another user's kernel.
Verification happens in this order, before anything is unpickled: length and magic, the tag
(constant-time), then the header's version, kernel id and owner.

Streaming (snapshots of hundreds of MB): :class:`SealStream` seals a payload that arrives in
pieces and :class:`RestoreStream` verifies a stored container while its payload goes to the
kernel, each holding one piece at a time. Both produce and read exactly the layout above
(``seal`` is a SealStream fed once). A streamed restore checks the unsigned header first (a
foreign or old snapshot is refused before a byte is sent), sends the payload to the kernel,
which only buffers it, and yields a :class:`VerifiedTransfer` (the only thing
``kernelcall.restore_commit_request`` takes, i.e. the only way the kernel unpickles) when the
tag checks over exactly the bytes sent. So there is one read of the store, and no window
between "verified" and "given to the kernel". Bytes of a container that then fails the check
were in the owner's kernel's memory (never unpickled, dropped at once); whoever could plant them
could read the store anyway.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .collect import (
    PayloadError,
    SnapshotError,
    SnapshotTooLarge,
    payload_header_size,
    read_payload_header,
)

MAGIC = b"EKSNAP01"
FORMAT = "elastic-kernels-snapshot"
VERSION = 1
TAG_BYTES = 32
#: Shorter keys are refused: HMAC-SHA256 wants at least its output size of secret.
MIN_KEY_BYTES = 32
_LEN = struct.Struct(">I")
_MAX_HEADER_BYTES = 16 * 1024 * 1024


class SnapshotRefused(SnapshotError):
    """A stored snapshot must not be restored: modified, unsigned, foreign or unreadable."""


@dataclass(frozen=True)
class VerifiedSnapshot:
    """A snapshot whose signature, kernel id and owner were checked: the only way to get a
    payload to hand to a kernel's restore (``kernelcall.restore_request``)."""

    kernel_id: str
    owner: str
    created: str
    variables: tuple[dict[str, Any], ...]
    skipped: tuple[dict[str, str], ...]
    payload: bytes


def _check_key(key: bytes) -> None:
    # The message names the length rule, never the key.
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the snapshot signing key must be at least {MIN_KEY_BYTES} bytes")


def _tag(key: bytes, signed: bytes) -> bytes:
    return hmac.new(bytes(key), signed, hashlib.sha256).digest()


def seal(payload: bytes, *, key: bytes, kernel_id: str, owner: str,
         max_bytes: int | None = None, created: datetime | None = None) -> bytes:
    """The signed container for a kernel's payload, for the store.

    The payload comes from the kernel, so it is checked like any input: its framing (JSON
    only), and ``max_bytes`` again (the kernel was asked to stay under it; the gateway does not
    take its word). ``kernel_id`` and ``owner`` come from the gateway's own record of the
    kernel, never from the payload.
    """
    stream = SealStream(key=key, kernel_id=kernel_id, owner=owner, size=len(payload),
                        sha256=hashlib.sha256(payload).hexdigest(), max_bytes=max_bytes,
                        created=created)
    body = stream.feed(payload)
    return body + stream.finish()


class SealStream:
    """Seal a payload that arrives in pieces, in order: :meth:`feed` returns what to append to
    the stored container, :meth:`finish` the tag. Only the payload's header is ever held.

    ``size`` and ``sha256`` are what the kernel announced; the pieces must add up to them (a
    transfer that lost or repeated a piece is no snapshot). ``max_bytes`` is checked against
    ``size`` at once and against what arrives.
    """

    def __init__(self, *, key: bytes, kernel_id: str, owner: str, size: int, sha256: str,
                 max_bytes: int | None = None, created: datetime | None = None) -> None:
        _check_key(key)
        if size < 0 or (max_bytes is not None and size > max_bytes):
            raise SnapshotTooLarge(f"the snapshot would exceed maxBytes ({max_bytes} bytes)")
        self.kernel_id = kernel_id
        self.owner = owner
        self.size = size
        self.sha256 = sha256
        self.created = created or datetime.now(timezone.utc)
        self.received = 0
        self._head = bytearray()
        self._started = False
        self._mac = hmac.new(bytes(key), digestmod=hashlib.sha256)
        self._digest = hashlib.sha256()

    def _unreadable(self, exc: Exception) -> SnapshotError:
        return SnapshotError(f"the kernel's snapshot of {self.kernel_id} is unreadable: {exc}")

    def feed(self, piece: bytes | bytearray | memoryview) -> bytes:
        """Take the next piece of the payload; the container bytes to store for it (the
        container's header comes out with the first pieces, once the payload's header is in)."""
        n = memoryview(piece).nbytes
        self.received += n
        if self.received > self.size:
            raise SnapshotError("the kernel sent more snapshot bytes than it announced")
        self._digest.update(piece)
        if self._started:
            self._mac.update(piece)
            return bytes(piece)
        self._head += piece
        try:
            end = payload_header_size(self._head)
            if end is None or len(self._head) < end:
                if self.received < self.size:
                    return b""
                raise PayloadError("snapshot payload is truncated")
            inner, _ = read_payload_header(self._head, self.size)
        except PayloadError as exc:
            raise self._unreadable(exc) from None
        header = {
            "format": FORMAT,
            "version": VERSION,
            "kernel_id": self.kernel_id,
            "owner": self.owner,
            "created": self.created.isoformat(),
            "payload_size": self.size,
            "payload_sha256": self.sha256,
            "variables": [{"name": v["name"], "type": v["type"], "size": v["size"]}
                          for v in inner["variables"]],
            "skipped": [{"name": s["name"], "reason": s["reason"]}
                        for s in inner["skipped"] if s["kind"] != "internal"],
        }
        raw = json.dumps(header, separators=(",", ":")).encode()
        out = b"".join([MAGIC, _LEN.pack(len(raw)), raw, self._head])
        self._head = bytearray()
        self._started = True
        self._mac.update(out)
        return out

    def finish(self) -> bytes:
        """The tag that ends the container, once all the payload arrived and matches its
        digest; SnapshotError otherwise (the caller then drops what it stored)."""
        if self.received != self.size or not self._started:
            raise SnapshotError(f"the kernel's snapshot arrived incomplete ({self.received} of "
                                f"{self.size} bytes)")
        if not hmac.compare_digest(self._digest.hexdigest(), str(self.sha256)):
            raise SnapshotError("the kernel's snapshot does not match its digest")
        return self._mac.digest()


@dataclass(frozen=True)
class VerifiedTransfer:
    """A container streamed to a kernel whose tag, kernel id and owner checked over exactly
    the bytes sent: the only thing ``kernelcall.restore_commit_request`` accepts."""

    kernel_id: str
    owner: str
    created: str
    size: int
    variables: tuple[dict[str, Any], ...]
    skipped: tuple[dict[str, str], ...]


class RestoreStream:
    """Read a stored container in pieces, checking it as it goes (module docstring).

    ``read(n)`` is the container's file's read (blocking: call these methods in a thread).
    :meth:`open` reads and checks the header (before any byte goes to a kernel); :meth:`piece`
    gives the payload in pieces; :meth:`finish` reads the tag and returns the
    :class:`VerifiedTransfer`, or raises SnapshotRefused.
    """

    def __init__(self, read: Callable[[int], bytes], *, key: bytes, kernel_id: str,
                 owner: str) -> None:
        _check_key(key)
        self._read = read
        self.kernel_id = kernel_id
        self.owner = owner
        self._mac = hmac.new(bytes(key), digestmod=hashlib.sha256)
        self.header: dict[str, Any] = {}
        self.size = 0
        self.sent = 0

    def _modified(self) -> SnapshotRefused:
        return SnapshotRefused(
            f"snapshot {self.kernel_id} was modified or not signed by this gateway")

    def _exactly(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) != n:
            raise self._modified()
        self._mac.update(data)
        return data

    def open(self) -> dict[str, Any]:
        """Read the header; refuse a container that is not one, of another version, user or
        kernel. The header is not yet verified: refusals here are only ever stricter."""
        start = self._exactly(len(MAGIC) + _LEN.size)
        if start[:len(MAGIC)] != MAGIC:
            raise self._modified()
        (length,) = _LEN.unpack_from(start, len(MAGIC))
        if length > _MAX_HEADER_BYTES:
            raise self._modified()
        try:
            header = json.loads(self._exactly(length))
        except ValueError:
            raise self._modified() from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise self._modified()
        if header.get("version") != VERSION:
            raise SnapshotRefused(f"snapshot {self.kernel_id} has format version "
                                  f"{header.get('version')!r}; this gateway reads {VERSION}")
        if header.get("owner") != self.owner:
            raise SnapshotRefused(f"snapshot {self.kernel_id} belongs to another user")
        if header.get("kernel_id") != self.kernel_id:
            raise SnapshotRefused(f"snapshot {self.kernel_id} belongs to another kernel")
        size = header.get("payload_size")
        if not isinstance(size, int) or size < 0:
            raise self._modified()
        self.header, self.size = header, size
        return header

    def piece(self, limit: int) -> bytes:
        """The next piece of the payload (at most ``limit`` bytes; empty at its end)."""
        n = min(limit, self.size - self.sent)
        if n <= 0:
            return b""
        data = self._exactly(n)
        self.sent += n
        return data

    def finish(self) -> VerifiedTransfer:
        """Check the tag over everything read (the whole payload must have been read)."""
        if self.sent != self.size:
            raise self._modified()
        tag = self._read(TAG_BYTES)
        if len(tag) != TAG_BYTES or self._read(1) or \
                not hmac.compare_digest(self._mac.digest(), tag):
            raise self._modified()
        return VerifiedTransfer(
            kernel_id=self.kernel_id, owner=self.owner,
            created=str(self.header.get("created", "")), size=self.size,
            variables=tuple(self.header.get("variables") or ()),
            skipped=tuple(self.header.get("skipped") or ()))


def verify_and_load(data: bytes, *, key: bytes, kernel_id: str, owner: str) -> VerifiedSnapshot:
    """Check a stored container and return its payload for the restore, or raise
    SnapshotRefused. Nothing is unpickled here or before the checks pass.

    ``kernel_id`` and ``owner`` are what the gateway expects (the kernel being started and its
    authenticated user).
    """
    _check_key(key)
    modified = SnapshotRefused(
        f"snapshot {kernel_id} was modified or not signed by this gateway")
    if len(data) < len(MAGIC) + _LEN.size + TAG_BYTES or data[:len(MAGIC)] != MAGIC:
        raise modified
    body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    if not hmac.compare_digest(_tag(key, body), tag):
        raise modified
    # Signed by this gateway: what follows guards against our own bugs and old versions.
    (length,) = _LEN.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if length > _MAX_HEADER_BYTES or start + length > len(body):
        raise modified
    try:
        header = json.loads(body[start:start + length])
    except ValueError:
        raise modified from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise modified
    if header.get("version") != VERSION:
        raise SnapshotRefused(f"snapshot {kernel_id} has format version "
                              f"{header.get('version')!r}; this gateway reads {VERSION}")
    if header.get("owner") != owner:
        raise SnapshotRefused(f"snapshot {kernel_id} belongs to another user")
    if header.get("kernel_id") != kernel_id:
        raise SnapshotRefused(f"snapshot {kernel_id} belongs to another kernel")
    payload = body[start + length:]
    if (header.get("payload_size") != len(payload)
            or header.get("payload_sha256") != hashlib.sha256(payload).hexdigest()):
        raise modified
    return VerifiedSnapshot(
        kernel_id=kernel_id, owner=owner, created=str(header.get("created", "")),
        variables=tuple(header.get("variables") or ()),
        skipped=tuple(header.get("skipped") or ()), payload=payload)


def read_header(data: bytes) -> dict[str, Any]:
    """The UNVERIFIED header of a container, for listing and debugging only (sizes, names):
    never a basis for restoring."""
    if len(data) < len(MAGIC) + _LEN.size or data[:len(MAGIC)] != MAGIC:
        raise SnapshotRefused("not an elastic-kernels snapshot")
    (length,) = _LEN.unpack_from(data, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    try:
        header = json.loads(data[start:start + min(length, _MAX_HEADER_BYTES)])
    except ValueError:
        raise SnapshotRefused("snapshot header is unreadable") from None
    if not isinstance(header, dict):
        raise SnapshotRefused("snapshot header is unreadable")
    return header
