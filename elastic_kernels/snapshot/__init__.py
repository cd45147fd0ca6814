"""Kernel-namespace snapshots: suspend a kernel instead of deleting it (issue 15).

On an idle cull or a reclaim of a kernel whose kernelspec says ``onCull: Suspend``, the
gateway has the kernel save its namespace; a new pod started later under the same kernel id
restores it. This package is the library for that; the gateway wires it in.

Modules
    ``collect``     the KERNEL side (stdlib + cloudpickle only; sent to the kernel as source):
                    choose the user's variables, pickle them (skips with reasons, shared
                    references kept, CUDA tensors via CPU copies, ``maxBytes`` and
                    ``timeout``), the unsigned payload format, and the restore with its
                    one-line report.
    ``format``      the GATEWAY side: :func:`~.format.seal` a payload into a versioned,
                    HMAC-SHA256-signed container; :func:`~.format.verify_and_load` checks
                    signature, kernel id and owner before anything is unpickled; the same
                    piece by piece (:class:`~.format.SealStream`,
                    :class:`~.format.RestoreStream`).
    ``store``       where containers live: a path, ``file://`` or fsspec URL, one object per
                    kernel id, atomic writes, traversal-safe keys.
    ``kernelcall``  the ``execute_request`` contents that make a kernel save or restore (in
                    one message, or streamed in pieces), and the reading of their replies.

Design: the kernel never holds the key, the gateway verifies before the kernel unpickles
    1. Save. The gateway sends an ``execute_request`` (silent, no history) whose
       ``user_expressions`` entry runs ``collect.kernel_save_begin`` in the kernel, which
       keeps the UNSIGNED payload; the gateway reads it in pieces, checks its size against
       ``maxBytes``, and seals it as it streams with the kernel id and owner from ITS OWN
       record of the kernel (never from the payload) and the signing key, into the store. The
       key is the gateway's alone (a Secret mounted only in the gateway's pod): it is never
       sent to a kernel, never in a kernel pod's environment, and never in a log or error.
    2. Restore. The gateway reads the container from the store with the kernel id being
       started and the authenticated user (``format.RestoreStream``; ``verify_and_load`` for
       a container in memory). A container that was modified, signed with another key, not
       signed at all, or sealed for another user or kernel is refused with a clear error, and
       nothing is unpickled (loading a pickle is code execution). The kernel buffers what it
       is sent and unpickles only on ``kernelcall.restore_commit_request``, which takes only
       the ``VerifiedTransfer`` the stream yields when the tag checked over exactly the bytes
       sent; ``collect.kernel_restore_commit`` returns the report line, e.g.
       ``restored 5 variables (x, items, Model, f, df); not restored: gen (generator objects
       cannot be saved)``.
    The gateway itself never unpickles a snapshot; only the owner's own kernel does.

    Why the payload crosses the gateway rather than the kernel writing the store and the
    gateway signing a digest: with a digest, the kernel would need write access to the store
    (credentials in every kernel pod), and the restoring kernel would read the bytes itself,
    after the gateway's check, leaving a window to swap them. Passing the bytes through the
    gateway keeps the store's credentials and the key in the gateway and makes "verified" and
    "given to the kernel" the same bytes. The payload travels over ZeroMQ in bounded pieces
    (``kernelcall``: on save, raw pieces the kernel sends on the stdin channel to the asking
    connection, or base64 in replies for a kernel that cannot; on restore, binary buffers of
    requests), sealed and verified as it streams (``format.SealStream``,
    ``format.RestoreStream``), so ``maxBytes`` is independent of the gateway's
    ``max_kernel_message_bytes`` and the gateway holds a few pieces, never the whole snapshot.

The functions of the kernel side stay in their module (``collect.collect``,
``collect.restore``): this package's names are the gateway's.

Failure is always an ordinary cull: a save that exceeds ``maxBytes`` or its ``timeout``, or
fails in any way, raises :class:`~.collect.SnapshotError` with the reason, and the caller
deletes the kernel as it would without ``onCull: Suspend``.
"""

from .collect import (
    Collected,
    PayloadError,
    Restored,
    Skipped,
    SnapshotError,
    SnapshotTimeout,
    SnapshotTooLarge,
    Variable,
)
from .format import (
    RestoreStream,
    SealStream,
    SnapshotRefused,
    VerifiedSnapshot,
    VerifiedTransfer,
    seal,
    verify_and_load,
)
from .kernelcall import (
    RestoreResult,
    SaveResult,
    read_restore_reply,
    read_save_reply,
    restore_request,
    save_request,
)
from .store import FsspecStore, LocalStore, SnapshotStore, SnapshotWriter, open_store

__all__ = [
    "Collected", "FsspecStore", "LocalStore", "PayloadError", "RestoreResult", "RestoreStream",
    "Restored", "SaveResult", "SealStream", "Skipped", "SnapshotError", "SnapshotRefused",
    "SnapshotStore", "SnapshotTimeout", "SnapshotTooLarge", "SnapshotWriter", "Variable",
    "VerifiedSnapshot", "VerifiedTransfer",
    "open_store", "read_restore_reply", "read_save_reply", "restore_request",
    "save_request", "seal", "verify_and_load",
]
