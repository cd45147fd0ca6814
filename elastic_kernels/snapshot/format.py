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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .collect import PayloadError, SnapshotError, SnapshotTooLarge, decode_payload

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
    _check_key(key)
    if max_bytes is not None and len(payload) > max_bytes:
        raise SnapshotTooLarge(f"the snapshot would exceed maxBytes ({max_bytes} bytes)")
    try:
        inner, _ = decode_payload(payload)
    except PayloadError as exc:
        raise SnapshotError(f"the kernel's snapshot of {kernel_id} is unreadable: {exc}") \
            from None
    header = {
        "format": FORMAT,
        "version": VERSION,
        "kernel_id": kernel_id,
        "owner": owner,
        "created": (created or datetime.now(timezone.utc)).isoformat(),
        "payload_size": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "variables": [{"name": v["name"], "type": v["type"], "size": v["size"]}
                      for v in inner["variables"]],
        "skipped": [{"name": s["name"], "reason": s["reason"]}
                    for s in inner["skipped"] if s["kind"] != "internal"],
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join([MAGIC, _LEN.pack(len(raw)), raw, payload])
    return body + _tag(key, body)


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
