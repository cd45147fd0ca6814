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
                    signature, kernel id and owner before anything is unpickled.
    ``store``       where containers live: a path, ``file://`` or fsspec URL, one object per
                    kernel id, atomic writes, traversal-safe keys.
    ``kernelcall``  the ``execute_request`` contents that make a kernel save or restore, and
                    the reading of their replies.

Design: the kernel never holds the key, the gateway verifies before the kernel unpickles
    1. Save. The gateway sends an ``execute_request`` (silent, no history) whose
       ``user_expressions`` entry runs ``collect.kernel_save`` in the kernel. The kernel
       returns the UNSIGNED payload (base64 in the reply, or written to a path the gateway
       gives on a shared volume). The gateway checks its size against ``maxBytes``, then
       seals it with the kernel id and owner from ITS OWN record of the kernel (never from the
       payload) and the signing key, and puts the container in the store. The key is the
       gateway's alone (a Secret mounted only in the gateway's pod): it is never sent to a
       kernel, never in a kernel pod's environment, and never in a log or error message.
    2. Restore. The gateway gets the container from the store and calls ``verify_and_load``
       with the kernel id being started and the authenticated user. A container that was
       modified, signed with another key, not signed at all, or sealed for another user or
       kernel is refused with a clear error, and nothing is unpickled (loading a pickle is
       code execution). Only the resulting ``VerifiedSnapshot`` can be turned into a restore
       request (``kernelcall.restore_request``), which carries the payload to the new kernel,
       where ``collect.kernel_restore`` unpickles it and returns the report line, e.g.
       ``restored 5 variables (x, items, Model, f, df); not restored: gen (generator objects
       cannot be saved)``.
    The gateway itself never unpickles a snapshot; only the owner's own kernel does.

    Why the payload crosses the gateway rather than the kernel writing the store and the
    gateway signing a digest: with a digest, the kernel would need write access to the store
    (credentials in every kernel pod), and the restoring kernel would read the bytes itself,
    after the gateway's check, leaving a window to swap them. Passing the bytes through the
    gateway keeps the store's credentials and the key in the gateway and makes "verified" and
    "given to the kernel" the same bytes. The cost is that the payload travels over ZeroMQ:
    ``maxBytes`` must fit the gateway's ``max_kernel_message_bytes`` (base64: 4/3).

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
from .format import SnapshotRefused, VerifiedSnapshot, seal, verify_and_load
from .kernelcall import (
    RestoreResult,
    SaveResult,
    read_restore_reply,
    read_save_reply,
    restore_request,
    save_request,
)
from .store import FsspecStore, LocalStore, SnapshotStore, open_store

__all__ = [
    "Collected", "FsspecStore", "LocalStore", "PayloadError", "RestoreResult", "Restored",
    "SaveResult", "Skipped", "SnapshotError", "SnapshotRefused", "SnapshotStore",
    "SnapshotTimeout", "SnapshotTooLarge", "Variable", "VerifiedSnapshot",
    "open_store", "read_restore_reply", "read_save_reply", "restore_request",
    "save_request", "seal", "verify_and_load",
]
