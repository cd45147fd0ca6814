"""The gateway's snapshot calls (gateway/lifecycle/suspension.py) on real local kernels.

One ipykernel defines variables; ``Snapshots.save`` has it save its namespace over a client
of its own connection and stores the sealed container; a second kernel gets them back with
``Snapshots.restore``. A snapshot sealed for another user, or modified in the store, is
refused before anything reaches the kernel. The kernels run as local processes: no cluster is
needed for what this module does, only a kernel's ZeroMQ connection.
"""

from __future__ import annotations

import typing as t
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager

from elastic_kernels import snapshot
from elastic_kernels.gateway.lifecycle.suspension import (
    KEY_ENV,
    Snapshots,
    SuspendLimits,
    read_key,
)
from elastic_kernels.snapshot import kernelcall

pytestmark = pytest.mark.timeout(90)

KEY = b"k" * 32
KERNEL_ID = "5a3f8e8e-0b4a-4c43-9d2e-4c8d2a7e1f00"


@pytest.fixture
async def kernels() -> AsyncIterator[list[AsyncKernelManager]]:
    started: list[AsyncKernelManager] = []
    try:
        yield started
    finally:
        for km in started:
            if await km.is_alive():
                await km.shutdown_kernel(now=True)


async def new_kernel(kernels: list[AsyncKernelManager]) -> AsyncKernelManager:
    km = AsyncKernelManager(kernel_name="python3")
    kernels.append(km)
    await km.start_kernel()
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
    finally:
        client.stop_channels()
    return km


async def run(km: AsyncKernelManager, code: str) -> dict[str, t.Any]:
    client = km.client()
    client.start_channels()
    try:
        content = await kernelcall.execute(
            client, {"code": code, "silent": False, "store_history": True,
                     "user_expressions": {}, "allow_stdin": False}, timeout=30)
    finally:
        client.stop_channels()
    assert content["status"] == "ok", content
    return content


async def value(km: AsyncKernelManager, expression: str) -> str:
    client = km.client()
    client.start_channels()
    try:
        content = await kernelcall.execute(
            client, {"code": "", "silent": True, "store_history": False,
                     "user_expressions": {"v": expression}, "allow_stdin": False}, timeout=30)
    finally:
        client.stop_channels()
    result = content["user_expressions"]["v"]
    assert result["status"] == "ok", result
    return str(result["data"]["text/plain"])


async def test_save_then_restore_into_a_new_kernel(
        kernels: list[AsyncKernelManager], tmp_path: Path) -> None:
    snaps = Snapshots(snapshot.open_store(str(tmp_path / "store")), KEY)
    first = await new_kernel(kernels)
    await run(first, "x = 41\nitems = [1, 2, 3]\n"
                     "class Box:\n    def __init__(self, v): self.v = v\n"
                     "def inc(n): return n + 1\nb = Box(inc(x))\ngen = (i for i in items)\n")
    saved = await snaps.save(first, KERNEL_ID, "alice", SuspendLimits(max_bytes=1 << 20,
                                                                      timeout=30))
    assert {"x", "items", "Box", "inc", "b"} <= set(saved.variables)
    assert [name for name, _ in saved.skipped] == ["gen"]
    assert "gen (generator" in saved.summary()
    assert await snaps.exists(KERNEL_ID)
    await first.shutdown_kernel(now=True)

    second = await new_kernel(kernels)
    result = await snaps.restore(second, KERNEL_ID, "alice", timeout=30)
    assert "gen" in result.report and "not restored" in result.report
    assert await value(second, "(x, items, b.v, inc(1), Box(2).v)") == "(41, [1, 2, 3], 42, 2, 2)"
    assert await snaps.discard(KERNEL_ID) and not await snaps.exists(KERNEL_ID)


async def test_another_users_or_a_modified_snapshot_never_reaches_the_kernel(
        kernels: list[AsyncKernelManager], tmp_path: Path) -> None:
    store = snapshot.open_store(str(tmp_path / "store"))
    snaps = Snapshots(store, KEY)
    km = await new_kernel(kernels)
    await run(km, "secret_of_alice = 'plans'")
    await snaps.save(km, KERNEL_ID, "alice", SuspendLimits(max_bytes=1 << 20, timeout=30))
    await run(km, "del secret_of_alice")

    with pytest.raises(snapshot.SnapshotRefused, match="another user"):
        await snaps.restore(km, KERNEL_ID, "bob", timeout=30)
    sealed = store.get(KERNEL_ID)
    assert sealed is not None
    store.put(KERNEL_ID, sealed[:-40] + bytes([sealed[-40] ^ 1]) + sealed[-39:])
    with pytest.raises(snapshot.SnapshotRefused, match="modified"):
        await snaps.restore(km, KERNEL_ID, "alice", timeout=30)
    assert await value(km, "'secret_of_alice' in globals()") == "False"


async def test_a_snapshot_over_max_bytes_is_no_snapshot(
        kernels: list[AsyncKernelManager], tmp_path: Path) -> None:
    snaps = Snapshots(snapshot.open_store(str(tmp_path / "store")), KEY)
    km = await new_kernel(kernels)
    await run(km, "blob = b'x' * 200_000")
    with pytest.raises(snapshot.SnapshotTooLarge, match="maxBytes"):
        await snaps.save(km, KERNEL_ID, "alice", SuspendLimits(max_bytes=100_000, timeout=30))
    assert not await snaps.exists(KERNEL_ID)


def test_the_key_is_checked_and_never_shown(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    short = tmp_path / "short"
    short.write_text("abc123\n")
    with pytest.raises(ValueError, match="holds 6 bytes") as info:
        read_key(str(short))
    assert "abc123" not in str(info.value)
    with pytest.raises(ValueError, match="cannot read"):
        read_key(str(tmp_path / "missing"))
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match="is empty"):
        read_key()
    monkeypatch.setenv(KEY_ENV, "z" * 40)
    assert read_key() == b"z" * 40


@pytest.mark.parametrize("binary", [True, False], ids=["raw-pieces", "base64-replies"])
async def test_save_and_restore_in_many_pieces(
        kernels: list[AsyncKernelManager], tmp_path: Path, binary: bool) -> None:
    """Pieces of 4 KiB (a message bound of 64 KiB would allow ~36 KiB): ~25 pieces of the
    kernel's payload (raw on the stdin channel, or base64 in replies, as a kernel that cannot
    send raw does), sealed as they come, and ~25 binary writes into the new kernel."""
    snaps = Snapshots(snapshot.open_store(str(tmp_path / "store")), KEY, chunk_bytes=4096,
                      message_bytes=64 * 1024, binary=binary)
    assert snaps.chunk_bytes == 4096
    assert Snapshots(snaps.store, KEY, message_bytes=200_000).chunk_bytes < 200_000 * 3 // 4
    first = await new_kernel(kernels)
    await run(first, "import os\nblob = os.urandom(100_000)\ntotal = sum(blob)\n")
    saved = await snaps.save(first, KERNEL_ID, "alice", SuspendLimits(max_bytes=1 << 20,
                                                                      timeout=30))
    assert saved.size > 100_000 and set(saved.variables) == {"blob", "total"}
    await first.shutdown_kernel(now=True)

    second = await new_kernel(kernels)
    result = await snaps.restore(second, KERNEL_ID, "alice", timeout=30)
    assert result.restored == ["blob", "total"]
    assert await value(second, "(len(blob), sum(blob) == total)") == "(100000, True)"
    # The kernel keeps nothing of the transfer once it is over.
    assert await value(second, "__import__('sys').modules['elastic_kernels_snapshot_kernel']"
                               "._TRANSFERS") == "{}"


async def test_a_piece_over_the_message_bound_never_reaches_the_gateways_memory(
        kernels: list[AsyncKernelManager], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The transfer's sockets carry the gateway's message bound: a kernel that sends more than
    asked (here: told to send 300 times the piece, as hostile code could) is cut off by libzmq
    before the message is held, and the save ends with a reason instead of a snapshot."""
    from elastic_kernels.gateway.lifecycle import suspension
    monkeypatch.setattr(suspension, "REPLY_MARGIN_S", 1.0)
    asked = kernelcall.send_request
    monkeypatch.setattr(kernelcall, "send_request",
                        lambda token, offset, length: asked(token, offset, length * 300))
    store = snapshot.open_store(str(tmp_path / "store"))
    snaps = Snapshots(store, KEY, chunk_bytes=4096, message_bytes=64 * 1024)
    assert snaps.message_bytes == 64 * 1024
    km = await new_kernel(kernels)
    await run(km, "import os\nblob = os.urandom(2_000_000)")
    with pytest.raises(snapshot.SnapshotTimeout):
        await snaps.save(km, KERNEL_ID, "alice", SuspendLimits(max_bytes=4 << 20, timeout=2))
    assert not await snaps.exists(KERNEL_ID)
    assert [p.name for p in (tmp_path / "store").iterdir()] == [], "no temporary left"


async def test_a_store_that_cannot_be_written_is_a_reason_not_a_crash(
        kernels: list[AsyncKernelManager], tmp_path: Path) -> None:
    not_a_directory = tmp_path / "store"
    not_a_directory.write_text("a file where the store's directory should be")
    snaps = Snapshots(snapshot.open_store(str(not_a_directory)), KEY)
    km = await new_kernel(kernels)
    await run(km, "x = 1")
    with pytest.raises(snapshot.SnapshotError, match="cannot write the snapshot store"):
        await snaps.save(km, KERNEL_ID, "alice", SuspendLimits(max_bytes=1 << 20, timeout=30))
    with pytest.raises(snapshot.SnapshotError, match="cannot read the snapshot store"):
        await snaps.restore(km, KERNEL_ID, "alice", timeout=30)
