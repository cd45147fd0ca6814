"""Suspend and resume: a kernel's namespace saved before its pod goes, restored into the next.

A kernelspec with ``culling.onCull: Suspend`` asks that an idle cull or a reclaim keep the
user's work: the gateway has the kernel save its namespace (``elastic_kernels.snapshot``),
seals the payload with a key only the gateway holds, stores it, and only then lets the pod and
its GPU go. The JupyterKernel stays (phase ``Suspended``); a websocket connect or an execute
starts a new pod under the same kernel id and :meth:`Snapshots.restore` gives the saved
variables back. Any failure to save (too big, too slow, the kernel gone) is an ordinary cull
with that reason: this module raises, the caller deletes.

:class:`Snapshots` is the gateway's side of it: one store, one key, and the two calls made over
a kernel client of the kernel's own connection (a fresh ``AsyncKernelClient``, so that no
client websocket sees these requests). Who calls: the kernel manager's ``suspend_kernel`` and
``resume_kernel`` (``lifecycle/kernelmanager.py``). Configuration: ``snapshot_store`` and the
key file on the kernel manager.
"""

from __future__ import annotations

import asyncio
import logging
import os
import typing as t
from dataclasses import dataclass
from pathlib import Path

from elastic_kernels import snapshot
from elastic_kernels.snapshot import kernelcall

__all__ = ["KEY_ENV", "SavedSnapshot", "Snapshots", "SuspendLimits", "read_key"]

#: Where the gateway reads the snapshot signing key when no file is configured (a Secret's
#: value mounted into the gateway's pod only; never into a kernel's).
KEY_ENV = "ELASTIC_KERNELS_SNAPSHOT_KEY"
MIN_KEY_BYTES = 32
#: Beyond the kernel's own ``timeout``: the request's round trip and the reply's transfer.
REPLY_MARGIN_S = 10.0


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


class Snapshots:
    """Save, restore and discard kernels' snapshots in one store under one key."""

    def __init__(self, store: snapshot.SnapshotStore, key: bytes,
                 log: logging.Logger | logging.LoggerAdapter[t.Any] | None = None) -> None:
        self.store = store
        self._key = key
        self.log = log or logging.getLogger(__name__)

    async def save(self, kernel_manager: t.Any, kernel_id: str, owner: str,
                   limits: SuspendLimits) -> SavedSnapshot:
        """Have the kernel save its namespace; seal and store it. Raises SnapshotError with
        the reason when there is no snapshot (the caller then culls as usual)."""
        content = await self._call(kernel_manager, kernelcall.save_request(
            max_bytes=limits.max_bytes, timeout=limits.timeout), limits.timeout)
        result = kernelcall.read_save_reply(content, max_bytes=limits.max_bytes)
        if result.payload is None:
            raise snapshot.SnapshotError("the kernel wrote its snapshot to a path; only inline "
                                         "snapshots are supported")
        sealed = snapshot.seal(result.payload, key=self._key, kernel_id=kernel_id, owner=owner,
                               max_bytes=limits.max_bytes)
        await asyncio.to_thread(self.store.put, kernel_id, sealed)
        return SavedSnapshot(
            size=len(result.payload), variables=tuple(result.variables),
            skipped=tuple((str(s.get("name", "?")), str(s.get("reason", "")))
                          for s in result.skipped if s.get("kind") != "internal"))

    async def restore(self, kernel_manager: t.Any, kernel_id: str, owner: str,
                      timeout: float) -> kernelcall.RestoreResult:
        """Check the stored snapshot (signature, kernel id, owner) and restore it into the
        kernel now running under ``kernel_id``. Raises SnapshotRefused for a snapshot that
        does not check (nothing is unpickled then), SnapshotError for any other failure."""
        data = await asyncio.to_thread(self.store.get, kernel_id)
        if data is None:
            raise snapshot.SnapshotError(f"no snapshot of kernel {kernel_id} is stored")
        verified = snapshot.verify_and_load(data, key=self._key, kernel_id=kernel_id,
                                            owner=owner)
        content = await self._call(kernel_manager, kernelcall.restore_request(verified), timeout)
        return kernelcall.read_restore_reply(content)

    async def discard(self, kernel_id: str) -> bool:
        """Delete a kernel's snapshot (shut down, restarted fresh, or restored)."""
        try:
            return await asyncio.to_thread(self.store.delete, kernel_id)
        except (OSError, ValueError) as e:
            self.log.warning("Kernel %s: cannot delete its snapshot: %s", kernel_id, e)
            return False

    async def exists(self, kernel_id: str) -> bool:
        return await asyncio.to_thread(self.store.exists, kernel_id)

    async def _call(self, kernel_manager: t.Any, content: dict[str, t.Any],
                    timeout: float) -> dict[str, t.Any]:
        """One execute_request over a kernel client of our own, closed afterwards."""
        client = kernel_manager.client()
        client.start_channels()
        try:
            return await kernelcall.execute(client, content, timeout=timeout + REPLY_MARGIN_S)
        except TimeoutError:
            raise snapshot.SnapshotTimeout(
                f"the kernel did not answer the snapshot request within "
                f"{timeout + REPLY_MARGIN_S:.0f} s") from None
        finally:
            client.stop_channels()
