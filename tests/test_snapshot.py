"""Kernel-namespace snapshots (elastic_kernels.snapshot): the kernel side, the signed container,
the store, and a save and restore between two real local ipykernels.

Unit tests run the kernel side on plain dicts (a notebook's namespace is one); the clock is a
fake one (no timing thresholds). The device-tensor protocol is tested with FakeTensor, a
stand-in with torch's shape of API, since there is neither torch nor a GPU here.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import sys
import threading
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager

from elastic_kernels.snapshot import collect as C
from elastic_kernels.snapshot import format as F
from elastic_kernels.snapshot import kernelcall as K
from elastic_kernels.snapshot import store as S

pytestmark = pytest.mark.timeout(60)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
KID = "0b7e6f0c-3f7a-4e58-9a51-0d3c6c0c1e11"


def notebook(code: str) -> dict[str, Any]:
    """A namespace as a notebook leaves it: code run with ``__name__ == "__main__"``."""
    ns: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(code, "<cell>", "exec"), ns)
    return ns


def save(ns: dict[str, Any], **kw: Any) -> C.Collected:
    kw.setdefault("max_bytes", 10_000_000)
    kw.setdefault("timeout", 60.0)
    return C.collect(ns, **kw)


def reasons(got: C.Collected) -> dict[str, str]:
    return {s.name: s.reason for s in got.skipped if s.kind != "internal"}


# --- what is saved and skipped --------------------------------------------------------------


def test_variables_functions_and_classes_survive_by_value() -> None:
    ns = notebook(
        "x = 3\nitems = [1, 2, 3]\n"
        "class Model:\n    def __init__(self, n): self.n = n\n"
        "    def total(self): return self.n + x\n"
        "m = Model(4)\n"
        "def f(a): return a * x + len(items)\n")
    got = save(ns)
    assert [v.name for v in got.variables] == ["x", "items", "Model", "m", "f"]
    assert {v.name: v.type for v in got.variables}["m"] == "Model"
    new: dict[str, Any] = {"__name__": "__main__"}
    result = C.restore(got.payload, new)
    assert result.report() == "restored 5 variables (x, items, Model, m, f)"
    assert new["f"](2) == 9 and new["m"].total() == 7
    assert isinstance(new["m"], new["Model"]) and new["Model"](1).total() == 4


def test_restored_functions_use_the_new_namespace_as_globals() -> None:
    """A notebook function sees later assignments, as before the suspend."""
    ns = notebook("x = 1\ndef f(): return x\nclass A:\n    def g(self): return x\n")
    new: dict[str, Any] = {"__name__": "__main__"}
    C.restore(save(ns).payload, new)
    assert new["f"].__globals__ is new
    new["x"] = 42
    assert new["f"]() == 42 and new["A"]().g() == 42


def test_skips_have_reasons_and_one_bad_variable_does_not_lose_the_rest() -> None:
    ns = notebook("import os\nx = 1\ngen = (i for i in range(3))\n"
                  "async def co(): pass\nc = co()\n")
    lock = threading.Lock()
    sock = socket.socket()
    with open(os.devnull) as fh, sock:
        ns.update(fh=fh, sock=sock, lock=lock, rlock=threading.RLock(),
                  holder={"inner": [lock]}, y=[1, 2])
        got = save(ns)
        ns["c"].close()
    assert [v.name for v in got.variables] == ["x", "co", "y"]
    assert reasons(got) == {
        "os": "modules are not saved (re-run the import)",
        "gen": "generator objects cannot be saved",
        "c": "coroutines cannot be saved",
        "fh": "open files cannot be saved",
        "sock": "sockets cannot be saved",
        "lock": "locks cannot be saved",
        "rlock": "locks cannot be saved",
        "holder": "locks cannot be saved; it contains a _thread.lock",
    }
    report = C.restore(got.payload, {"__name__": "__main__"}).report()
    assert report.startswith("restored 3 variables (x, co, y); not restored: "
                             "gen (generator objects cannot be saved), ")
    assert report.endswith("; modules to import again: os")


def test_a_file_inside_a_value_is_refused_not_saved_as_its_contents(tmp_path: Path) -> None:
    """cloudpickle alone would turn a file open for reading into a StringIO of its text."""
    (tmp_path / "t.txt").write_text("hello")
    with open(tmp_path / "t.txt") as fh:
        got = save({"__name__": "__main__", "cfg": {"log": fh}, "ok": 1})
    assert reasons(got) == {"cfg": "open files cannot be saved; it contains a _io.TextIOWrapper"}


def test_ipython_names_are_left_out_but_a_users_private_name_is_saved() -> None:
    items = [1, 2]
    ns: dict[str, Any] = {
        "__name__": "__main__", "__builtins__": __builtins__, "__doc__": None,
        "In": ["", "x = 1"], "Out": {1: items}, "_oh": {}, "_ih": [], "_dh": [],
        "_": items, "__": "", "___": "", "_i": "", "_ii": "", "_iii": "", "_i1": "x = 1",
        "_1": items, "_exit_code": 0, "get_ipython": lambda: None, "exit": object(),
        "quit": object(), "hidden_by_shell": 5, "_cache": {"a": 1}, "items": items,
    }
    got = C.collect(ns, max_bytes=10**6, timeout=60, hidden={"hidden_by_shell": 5})
    assert [v.name for v in got.variables] == ["_cache", "items"]
    internal = {s.name for s in got.skipped if s.kind == "internal"}
    assert internal == set(ns) - {"_cache", "items"}
    new: dict[str, Any] = {"__name__": "__main__", "_": ""}
    C.restore(got.payload, new)
    # `_` aliased `items` in the old kernel: items comes back as itself, not as the new `_`.
    assert new["items"] == [1, 2] and new["_"] == ""


def test_functions_refer_to_the_restoring_kernels_ipython_objects() -> None:
    class Shell:  # not picklable: holds a lock, like the real shell
        def __init__(self, tag: str) -> None:
            self.lock, self.tag = threading.Lock(), tag

    old = Shell("old")
    ns = notebook("def where(): return get_ipython().tag\n")
    ns["get_ipython"] = lambda: old
    got = C.collect(ns, max_bytes=10**6, timeout=60, hidden={"get_ipython": ns["get_ipython"]})
    new_shell = Shell("new")
    new: dict[str, Any] = {"__name__": "__main__", "get_ipython": lambda: new_shell}
    C.restore(got.payload, new)
    assert new["where"]() == "new"


def test_shared_references_are_kept_and_counted_once() -> None:
    ns = notebook("a = list(range(20000))\nb = a\nd = {'a': a}\n"
                  "class Box:\n    pass\nbox = Box()\nbox.items = a\nlone = [1]\n")
    alone = save({"__name__": "__main__", "a": ns["a"]}).payload
    # Four names reach one big list: it fits in less than twice its own size.
    got = save(ns, max_bytes=len(alone) * 3 // 2)
    blobs = {v.name: v.blob for v in got.variables}
    assert blobs["a"] == blobs["b"] == blobs["d"] == blobs["box"] != blobs["lone"]
    new: dict[str, Any] = {"__name__": "__main__"}
    C.restore(got.payload, new)
    assert new["a"] is new["b"] is new["d"]["a"] is new["box"].items
    assert isinstance(new["box"], new["Box"])


def test_instances_of_a_notebook_class_are_grouped_only_by_shared_data() -> None:
    """A notebook class's methods are reached by every instance; that alone joins nothing."""
    ns = notebook("class P:\n    def __init__(self, v): self.v = v\n"
                  "p = P([1])\nq = P([2])\n")
    got = save(ns)
    blobs = {v.name: v.blob for v in got.variables}
    assert len({blobs["P"], blobs["p"], blobs["q"]}) == 3
    new: dict[str, Any] = {"__name__": "__main__"}
    C.restore(got.payload, new)
    assert type(new["p"]) is type(new["q"]) is new["P"]


def test_a_group_that_cannot_be_restored_is_reported_and_the_rest_restored() -> None:
    module = types.ModuleType("ek_snapshot_gone")
    exec("class Thing:\n    pass\n", module.__dict__)
    sys.modules["ek_snapshot_gone"] = module
    try:
        got = save({"__name__": "__main__", "t": module.Thing(), "x": 1})
    finally:
        del sys.modules["ek_snapshot_gone"]
    result = C.restore(got.payload, {"__name__": "__main__"})
    assert result.restored == ["x"]
    assert result.report() == ("restored 1 variable (x); not restored: t (needs module "
                               "ek_snapshot_gone, which this kernel cannot import)")


# --- bounds ---------------------------------------------------------------------------------


def test_max_bytes_fails_the_whole_save_with_the_reason() -> None:
    ns = {"__name__": "__main__", "small": 1, "big": bytes(100_000)}
    with pytest.raises(C.SnapshotTooLarge, match=r"would exceed maxBytes \(50000 bytes\)"):
        save(ns, max_bytes=50_000)
    with pytest.raises(C.SnapshotTooLarge):
        save({"__name__": "__main__", "a": bytes(30_000), "b": bytes(30_000)}, max_bytes=50_000)
    assert len(save(ns, max_bytes=101_000).payload) <= 101_000


class FakeClock:
    """Each reading is ``step`` seconds after the previous one."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_timeout_fails_the_whole_save_with_the_reason() -> None:
    ns = {"__name__": "__main__", "x": list(range(10_000))}
    with pytest.raises(C.SnapshotTimeout, match=r"longer than its timeout \(30 s\)"):
        save(ns, timeout=30, clock=FakeClock(step=7))
    # Checked inside a variable's pickling too, not only between variables.
    clock = FakeClock(step=0)
    with pytest.raises(C.SnapshotTimeout):
        class Slow:
            def __reduce__(self) -> Any:
                clock.step = 100
                return (list, ([1] * 1000,))
        save({"__name__": "__main__", "s": [Slow(), *range(2000)]}, timeout=30, clock=clock)
    assert save(ns, timeout=30, clock=FakeClock(step=0.001)).variables


# --- device tensors: the duck-typed protocol with a stand-in --------------------------------

AVAILABLE = {"cpu", "cuda:0"}


class FakeTensor:
    """torch.Tensor's shape of API: ``is_cuda`` property, device, cpu(), to(), detach(),
    requires_grad. It refuses to be pickled while on the GPU, as a real CUDA tensor cannot
    be restored on a pod without that GPU."""

    def __init__(self, data: list[float], device: str = "cpu", requires_grad: bool = False):
        self.data, self.device, self.requires_grad = list(data), device, requires_grad

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def cpu(self) -> FakeTensor:
        return FakeTensor(self.data, "cpu", self.requires_grad)

    def detach(self) -> FakeTensor:
        return FakeTensor(self.data, self.device)

    def to(self, device: str) -> FakeTensor:
        if device not in AVAILABLE:
            raise RuntimeError(f"no device {device}")
        return FakeTensor(self.data, device, self.requires_grad)

    def requires_grad_(self, flag: bool) -> FakeTensor:
        self.requires_grad = flag
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        if self.is_cuda:
            raise TypeError("a CUDA tensor cannot be pickled here")
        return (FakeTensor, (self.data, self.device, self.requires_grad))


class FakeParameter(FakeTensor):
    """Like torch.nn.Parameter: ``cpu()`` and ``to()`` return the base type."""

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        if isinstance(data, FakeTensor):
            super().__init__(data.data, data.device, requires_grad)
        else:
            super().__init__(data, "cpu", requires_grad)

    def __reduce_ex__(self, protocol: Any) -> Any:
        if self.is_cuda:
            raise TypeError("a CUDA tensor cannot be pickled here")
        return (FakeParameter, (FakeTensor(self.data), self.requires_grad))


class FakeModule:
    """A module: parameters and buffers in dicts of its ``__dict__``."""

    def __init__(self, weight: FakeParameter) -> None:
        self.params = {"weight": weight, "tied": weight}
        self.buffers = {"running": FakeTensor([0.5], "cuda:0")}


def test_cuda_tensors_are_saved_on_the_cpu_and_restored_to_their_device() -> None:
    w = FakeParameter(FakeTensor([1.0, 2.0], "cuda:0"))
    t = FakeTensor([3.0], "cuda:0", requires_grad=True)
    ns = {"__name__": "__main__", "t": t, "nested": [{"t": t}], "model": FakeModule(w),
          "on_cpu": FakeTensor([4.0])}
    got = save(ns)
    assert t.device == "cuda:0" and w.device == "cuda:0", "the live tensors are not moved"
    new: dict[str, Any] = {"__name__": "__main__"}
    result = C.restore(got.payload, new)
    assert result.restored == ["t", "nested", "model", "on_cpu"] and not result.notes
    assert new["t"].device == "cuda:0" and new["t"].requires_grad and new["t"].data == [3.0]
    assert new["nested"][0]["t"] is new["t"]
    weight = new["model"].params["weight"]
    assert type(weight) is FakeParameter and weight.device == "cuda:0" and weight.requires_grad
    assert new["model"].params["tied"] is weight, "tied weights stay one tensor"
    assert new["model"].buffers["running"].device == "cuda:0"
    assert new["on_cpu"].device == "cpu"


def test_a_tensor_whose_gpu_is_missing_stays_on_the_cpu_with_a_note() -> None:
    got = save({"__name__": "__main__", "t": FakeTensor([1.0], "cuda:3")})
    new: dict[str, Any] = {"__name__": "__main__"}
    result = C.restore(got.payload, new)
    assert new["t"].device == "cpu" and new["t"].data == [1.0]
    assert result.report() == ("restored 1 variable (t); a tensor stays on the CPU (cuda:3 is "
                               "not available here: RuntimeError)")


def test_is_device_tensor_asks_the_type_first() -> None:
    class Proxy:  # answers every attribute: must not be taken for a tensor
        def __getattr__(self, name: str) -> Any:
            return True

    assert not C.is_device_tensor(Proxy()) and not C.is_device_tensor(FakeTensor([1.0]))
    assert C.is_device_tensor(FakeTensor([1.0], "cuda:0"))


# --- the signed container -------------------------------------------------------------------

TRIPPED: list[str] = []


def _trip(tag: str) -> str:
    TRIPPED.append(tag)
    return tag


class Tripwire:
    """Unpickling it calls _trip: proof of whether anything was unpickled."""

    def __reduce__(self) -> Any:
        return (_trip, ("unpickled",))


@pytest.fixture
def sealed() -> Iterator[bytes]:
    TRIPPED.clear()
    payload = save({"__name__": "__main__", "x": 1, "wire": Tripwire()}).payload
    yield F.seal(payload, key=KEY, kernel_id=KID, owner="alice")
    TRIPPED.clear()


def test_a_sealed_snapshot_verifies_and_restores(sealed: bytes) -> None:
    snap = F.verify_and_load(sealed, key=KEY, kernel_id=KID, owner="alice")
    assert (snap.kernel_id, snap.owner) == (KID, "alice")
    assert [v["name"] for v in snap.variables] == ["x", "wire"]
    header = F.read_header(sealed)
    assert header["version"] == F.VERSION and header["format"] == "elastic-kernels-snapshot"
    assert header["created"] and header["variables"][0] == {"name": "x", "type": "int",
                                                            "size": snap.variables[0]["size"]}
    assert TRIPPED == []
    new: dict[str, Any] = {"__name__": "__main__"}
    C.restore(snap.payload, new)
    assert new["wire"] == "unpickled" and TRIPPED == ["unpickled"], "the tripwire works"


def test_every_modified_byte_is_refused_before_anything_is_unpickled(sealed: bytes) -> None:
    # Every byte of the header, a stride through the payload, and every byte of the tag.
    (length,) = F._LEN.unpack_from(sealed, len(F.MAGIC))
    header_end = len(F.MAGIC) + F._LEN.size + length
    positions = [*range(header_end), *range(header_end, len(sealed) - 32, 7),
                 *range(len(sealed) - 32, len(sealed))]
    for i in positions:
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(F.SnapshotRefused,
                           match=f"snapshot {KID} was modified or not signed by this gateway"):
            F.verify_and_load(bytes(tampered), key=KEY, kernel_id=KID, owner="alice")
    for cut in (sealed[:-1], sealed[:10], b"", sealed + b"x"):
        with pytest.raises(F.SnapshotRefused, match="was modified or not signed"):
            F.verify_and_load(cut, key=KEY, kernel_id=KID, owner="alice")
    assert TRIPPED == []


def test_another_key_an_unsigned_payload_another_user_or_kernel_is_refused(
        sealed: bytes) -> None:
    with pytest.raises(F.SnapshotRefused, match="was modified or not signed by this gateway"):
        F.verify_and_load(sealed, key=OTHER_KEY, kernel_id=KID, owner="alice")
    (length,) = F._LEN.unpack_from(sealed, len(F.MAGIC))
    payload = sealed[len(F.MAGIC) + F._LEN.size + length:-32]
    with pytest.raises(F.SnapshotRefused, match="was modified or not signed"):
        F.verify_and_load(payload, key=KEY, kernel_id=KID, owner="alice")
    with pytest.raises(F.SnapshotRefused, match=f"snapshot {KID} belongs to another user"):
        F.verify_and_load(sealed, key=KEY, kernel_id=KID, owner="mallory")
    with pytest.raises(F.SnapshotRefused, match="belongs to another kernel"):
        F.verify_and_load(sealed, key=KEY, kernel_id="another-kernel", owner="alice")
    assert TRIPPED == []


def test_keys_are_checked_and_never_shown() -> None:
    weak = b"secret-but-short"
    payload = save({"__name__": "__main__", "x": 1}).payload
    for call in (lambda: F.seal(payload, key=weak, kernel_id=KID, owner="a"),
                 lambda: F.verify_and_load(b"", key=weak, kernel_id=KID, owner="a")):
        with pytest.raises(ValueError, match="at least 32 bytes") as info:
            call()
        assert weak.decode() not in str(info.value)


def test_seal_checks_the_kernels_payload() -> None:
    payload = save({"__name__": "__main__", "x": bytes(1000)}).payload
    with pytest.raises(C.SnapshotTooLarge, match="maxBytes"):
        F.seal(payload, key=KEY, kernel_id=KID, owner="a", max_bytes=100)
    with pytest.raises(C.SnapshotError, match="unreadable"):
        F.seal(b"garbage", key=KEY, kernel_id=KID, owner="a")
    with pytest.raises(C.PayloadError):
        C.restore(payload[:-1], {})


# --- the store ------------------------------------------------------------------------------


def exercise(store: Any) -> None:
    assert store.get(KID) is None and not store.exists(KID) and not store.delete(KID)
    store.put(KID, b"one")
    store.put(KID, b"two")
    assert store.exists(KID) and store.get(KID) == b"two"
    assert store.delete(KID) and store.get(KID) is None
    for bad in ("../etc/passwd", "a/b", "..", ".hidden", "", "a..b", "x" * 200, "a\x00b",
                "/abs"):
        for call in (lambda bad=bad: store.put(bad, b"x"), lambda bad=bad: store.get(bad),
                     lambda bad=bad: store.exists(bad), lambda bad=bad: store.delete(bad)):
            with pytest.raises(ValueError, match="kernel id"):
                call()


def test_local_store_writes_atomically_and_privately(tmp_path: Path) -> None:
    root = tmp_path / "snaps"
    exercise(S.open_store(str(root)))
    store = S.open_store(f"file://{root}")
    assert isinstance(store, S.LocalStore) and store.directory == root
    store.put(KID, b"data")
    assert sorted(p.name for p in root.iterdir()) == [f"{KID}.eksnap"], "no temporary left"
    assert (root / f"{KID}.eksnap").stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o777 == 0o700

    def fail(*args: Any) -> None:
        raise OSError("disk full")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", fail)
        with pytest.raises(OSError):
            store.put(KID, b"new")
    assert store.get(KID) == b"data"
    assert sorted(p.name for p in root.iterdir()) == [f"{KID}.eksnap"]
    with pytest.raises(ValueError, match="must be local"):
        S.open_store("file://elsewhere/x")


def test_fsspec_store() -> None:
    pytest.importorskip("fsspec")
    store = S.open_store("memory://ek-snapshot-test/snaps")
    assert isinstance(store, S.FsspecStore)
    exercise(store)
    store.put(KID, b"data")
    assert store.fs.ls("/ek-snapshot-test/snaps", detail=False) == [
        f"/ek-snapshot-test/snaps/{KID}.eksnap"]
    store.delete(KID)


def test_unfinished_saves_are_removed_once_old_and_only_they(tmp_path: Path) -> None:
    """What a gateway killed mid-save leaves (a temporary object nothing else would remove)
    goes once older than the age given; finished snapshots and a save under way stay."""
    root = tmp_path / "snaps"
    store = S.open_store(str(root))
    store.put(KID, b"finished")
    writer = store.open_write("other-kernel")
    writer.write(b"a save under way")
    dead = root / ".tmp-abandoned.eksnap"
    dead.write_bytes(b"half a snapshot")
    two_hours_ago = dead.stat().st_mtime - 7200
    os.utime(dead, (two_hours_ago, two_hours_ago))
    assert store.remove_unfinished(3600) == [dead.name]
    assert not dead.exists() and store.get(KID) == b"finished"
    writer.commit()  # the save under way was left alone
    assert store.get("other-kernel") == b"a save under way"
    assert store.remove_unfinished(0) == []
    assert S.open_store(str(tmp_path / "never-written")).remove_unfinished(0) == []


def test_fsspec_store_removes_unfinished_saves() -> None:
    pytest.importorskip("fsspec")
    store = S.open_store("memory://ek-snapshot-sweep/snaps")
    assert isinstance(store, S.FsspecStore)
    store.put(KID, b"finished")
    store.fs.pipe_file("/ek-snapshot-sweep/snaps/.tmp-abandoned.eksnap", b"half")
    assert store.remove_unfinished(3600) == []  # written just now
    assert store.remove_unfinished(-60) == [".tmp-abandoned.eksnap"]
    assert store.fs.ls("/ek-snapshot-sweep/snaps", detail=False) == [
        f"/ek-snapshot-sweep/snaps/{KID}.eksnap"]
    store.delete(KID)


# --- the kernel call ------------------------------------------------------------------------


def reply_with(result: Any) -> dict[str, Any]:
    return {"status": "ok", "user_expressions": {K.RESULT_KEY: {
        "status": "ok", "data": {"text/plain": repr(result)}, "metadata": {}}}}


def test_replies_are_read_strictly() -> None:
    payload = save({"__name__": "__main__", "x": 1}).payload
    good = {"ok": True, "size": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
            "payload_b64": base64.b64encode(payload).decode(), "variables": ["x"],
            "skipped": []}

    assert K.read_save_reply(reply_with(json.dumps(good)), max_bytes=10**6).payload == payload
    with pytest.raises(C.SnapshotTooLarge):
        K.read_save_reply(reply_with(json.dumps(good)), max_bytes=10)
    with pytest.raises(C.SnapshotError, match="does not match its digest"):
        K.read_save_reply(reply_with(json.dumps({**good, "sha256": "0" * 64})), max_bytes=10**6)
    with pytest.raises(C.SnapshotTimeout, match="longer than its timeout"):
        K.read_save_reply(reply_with(json.dumps({
            "ok": False, "kind": "SnapshotTimeout",
            "error": "the snapshot took longer than its timeout (5 s)"})), max_bytes=5)
    with pytest.raises(C.SnapshotError, match="unreadable"):
        K.read_save_reply(reply_with("__import__('os')"), max_bytes=10**6)
    with pytest.raises(C.SnapshotError, match="NameError"):
        K.read_save_reply({"status": "ok", "user_expressions": {K.RESULT_KEY: {
            "status": "error", "ename": "NameError", "evalue": "x"}}}, max_bytes=10**6)
    with pytest.raises(TypeError, match="VerifiedSnapshot"):
        K.restore_request(payload)  # type: ignore[arg-type]


# --- end to end: two real kernels -----------------------------------------------------------


@contextlib.asynccontextmanager
async def kernel(tmp_path: Path) -> AsyncIterator[Any]:
    """A local ipykernel and a started client; both stopped however the test ends."""
    km = AsyncKernelManager(kernel_name="python3")
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}
    await km.start_kernel(cwd=str(tmp_path), env=env)
    client = km.client()
    try:
        client.start_channels()
        await client.wait_for_ready(timeout=60)
        yield client
    finally:
        client.stop_channels()
        await km.shutdown_kernel(now=True)


async def run(client: Any, code: str, **expressions: str) -> dict[str, Any]:
    content = {"code": code, "silent": False, "store_history": True,
               "user_expressions": expressions, "allow_stdin": False, "stop_on_error": True}
    reply = await K.execute(client, content, timeout=30)
    assert reply["status"] == "ok", reply
    return {k: v["data"]["text/plain"] for k, v in reply["user_expressions"].items()}


@pytest.mark.timeout(120)
async def test_a_namespace_survives_from_one_kernel_to_a_fresh_one(tmp_path: Path) -> None:
    store = S.open_store(str(tmp_path / "store"))
    async with kernel(tmp_path) as first:
        await run(first, "import math\nx = 3\nratio = 0.5\nitems = [1, 2, 3]\nalias = items")
        await run(first, "class Model:\n    def __init__(self, n): self.n = n\n"
                         "    def scaled(self): return self.n * x\n")
        await run(first, "def f(a): return a * x + len(items)\nm = Model(4)\n"
                         "gen = (i for i in range(3))\nm")
        before = await run(first, "", count="get_ipython().execution_count", names="len(dir())")
        reply = await K.execute(first, K.save_request(max_bytes=1_000_000, timeout=30),
                                timeout=60)
        saved = K.read_save_reply(reply, max_bytes=1_000_000)
        assert saved.payload is not None
        assert saved.variables == ["x", "ratio", "items", "alias", "Model", "f", "m"]
        assert saved.skipped == [
            {"name": "math", "reason": "modules are not saved (re-run the import)"},
            {"name": "gen", "reason": "generator objects cannot be saved"}]
        after = await run(first, "", count="get_ipython().execution_count", names="len(dir())")
        assert after == before, "the save leaves no name, history or count behind"
        store.put(KID, F.seal(saved.payload, key=KEY, kernel_id=KID, owner="alice"))

    snapshot = F.verify_and_load(store.get(KID) or b"", key=KEY, kernel_id=KID, owner="alice")
    async with kernel(tmp_path) as second:
        reply = await K.execute(second, K.restore_request(snapshot), timeout=60)
        restored = K.read_restore_reply(reply)
        assert restored.report == (
            "restored 7 variables (x, ratio, items, alias, Model, f, m); not restored: "
            "gen (generator objects cannot be saved); modules to import again: math")
        checks = await run(
            second,
            "assert f(2) == 9 and Model(5).scaled() == 15 and m.scaled() == 12\n"
            "assert isinstance(m, Model) and alias is items and ratio == 0.5\n"
            "x = 10\nassert f(1) == 13 and m.scaled() == 40\n"
            "assert 'gen' not in dir() and 'math' not in dir()",
            ok="'passed'")
        assert checks == {"ok": "'passed'"}


@pytest.mark.timeout(120)
async def test_a_kernel_reports_a_save_over_max_bytes(tmp_path: Path) -> None:
    async with kernel(tmp_path) as client:
        await run(client, "blob = bytes(200_000)")
        reply = await K.execute(client, K.save_request(max_bytes=100_000, timeout=30),
                                timeout=60)
        with pytest.raises(C.SnapshotTooLarge,
                           match=r"would exceed maxBytes \(100000 bytes\)"):
            K.read_save_reply(reply, max_bytes=100_000)
        out = tmp_path / "payload.bin"
        reply = await K.execute(client, K.save_request(max_bytes=1_000_000, timeout=30,
                                                       path=str(out)), timeout=60)
        saved = K.read_save_reply(reply, max_bytes=1_000_000)
        assert saved.payload is None and saved.path == str(out)
        assert hashlib.sha256(out.read_bytes()).hexdigest() == saved.sha256


# --- streaming: sealing and verifying in pieces (the gateway's suspend and resume) ----------


def sealed_in_pieces(payload: bytes, step: int, **kw: Any) -> bytes:
    stream = F.SealStream(key=KEY, kernel_id=KID, owner="alice", size=len(payload),
                          sha256=hashlib.sha256(payload).hexdigest(), **kw)
    out = b"".join(stream.feed(payload[i:i + step]) for i in range(0, len(payload), step))
    return out + stream.finish()


def restored_in_pieces(container: bytes, step: int, owner: str = "alice"
                       ) -> tuple[bytes, F.VerifiedTransfer]:
    import io
    stream = F.RestoreStream(io.BytesIO(container).read, key=KEY, kernel_id=KID, owner=owner)
    stream.open()
    pieces = []
    while piece := stream.piece(step):
        assert len(piece) <= step
        pieces.append(piece)
    return b"".join(pieces), stream.finish()


@pytest.mark.parametrize("step", [1, 7, 1000, 1 << 20])
def test_a_container_sealed_in_pieces_is_the_container_seal_makes(step: int) -> None:
    from datetime import datetime, timezone
    created = datetime(2026, 1, 2, tzinfo=timezone.utc)
    payload = save({"__name__": "__main__", "x": os.urandom(5000), "y": [1, 2]}).payload
    whole = F.seal(payload, key=KEY, kernel_id=KID, owner="alice", created=created)
    assert sealed_in_pieces(payload, step, created=created) == whole
    got, verified = restored_in_pieces(whole, step)
    assert got == payload
    assert verified.size == len(payload) and verified.owner == "alice"
    assert {v["name"] for v in verified.variables} == {"x", "y"}
    assert F.verify_and_load(whole, key=KEY, kernel_id=KID, owner="alice").payload == payload


def test_a_streamed_seal_refuses_what_the_kernel_did_not_announce() -> None:
    payload = save({"__name__": "__main__", "x": bytes(3000)}).payload
    digest = hashlib.sha256(payload).hexdigest()

    def stream(**kw: Any) -> F.SealStream:
        args: dict[str, Any] = {"size": len(payload), "sha256": digest, **kw}
        return F.SealStream(key=KEY, kernel_id=KID, owner="alice", **args)

    with pytest.raises(C.SnapshotTooLarge, match="maxBytes"):
        stream(max_bytes=len(payload) - 1)
    more = stream(size=len(payload) - 10)
    with pytest.raises(C.SnapshotError, match="more snapshot bytes than it announced"):
        more.feed(payload)
    short = stream()
    short.feed(payload[:-1])
    with pytest.raises(C.SnapshotError, match="incomplete"):
        short.finish()
    changed = stream()
    changed.feed(payload[:-1] + bytes([payload[-1] ^ 1]))
    with pytest.raises(C.SnapshotError, match="does not match its digest"):
        changed.finish()
    with pytest.raises(C.SnapshotError, match="unreadable"):
        F.SealStream(key=KEY, kernel_id=KID, owner="alice", size=20,
                     sha256="0" * 64).feed(b"not a payload at all")


def test_a_streamed_restore_refuses_foreign_headers_first_and_changed_bytes_last() -> None:
    payload = save({"__name__": "__main__", "x": os.urandom(4000)}).payload
    container = F.seal(payload, key=KEY, kernel_id=KID, owner="alice")
    import io

    # Another user's: refused at open, before any piece would be sent.
    with pytest.raises(F.SnapshotRefused, match="another user"):
        F.RestoreStream(io.BytesIO(container).read, key=KEY, kernel_id=KID,
                        owner="bob").open()
    # A changed payload byte, a changed tag, a truncation, trailing bytes, another key: the
    # pieces come out (the kernel only buffers them) and finish refuses.
    flipped = bytearray(container)
    flipped[len(flipped) // 2] ^= 1
    for bad in (bytes(flipped), container[:-1] + bytes([container[-1] ^ 1]),
                container + b"x"):
        with pytest.raises(F.SnapshotRefused, match="modified or not signed"):
            restored_in_pieces(bad, 999)
    with pytest.raises(F.SnapshotRefused, match="modified or not signed"):
        restored_in_pieces(container[:-100], 999)
    other = F.seal(payload, key=b"o" * 32, kernel_id=KID, owner="alice")
    with pytest.raises(F.SnapshotRefused, match="modified or not signed"):
        restored_in_pieces(other, 999)
    # Only a VerifiedTransfer makes the kernel unpickle.
    with pytest.raises(TypeError):
        K.restore_commit_request(F.verify_and_load(container, key=KEY, kernel_id=KID,
                                                   owner="alice"), "t")  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["dir", "memory"])
def test_a_store_writes_in_pieces_atomically(tmp_path: Path, url: str) -> None:
    if url == "memory":
        pytest.importorskip("fsspec")
        store: Any = S.open_store(f"memory://ek-{os.urandom(4).hex()}")
    else:
        store = S.open_store(str(tmp_path / "store"))
    store.put(KID, b"old")
    writer = store.open_write(KID)
    writer.write(b"new ")
    writer.write(b"bytes")
    assert store.get(KID) == b"old", "invisible until committed"
    writer.abort()
    assert store.get(KID) == b"old"
    writer = store.open_write(KID)
    writer.write(b"new bytes")
    writer.commit()
    reader = store.open_read(KID)
    assert reader is not None
    with reader:
        assert reader.read() == b"new bytes"
    assert store.delete(KID) and store.open_read(KID) is None
    if url == "dir":
        assert [p.name for p in (tmp_path / "store").iterdir()] == [], "no temporary left"


def test_the_transfer_requests_carry_the_source_once() -> None:
    begin = K.save_begin_request(max_bytes=100, timeout=5)
    read = K.read_request("ab12", 4096, 1024)
    assert "kernel_save_begin" in begin["user_expressions"][K.RESULT_KEY]
    expression = read["user_expressions"][K.RESULT_KEY]
    assert "kernel_read('ab12', 4096, 1024)" in expression and len(expression) < 200
    assert K.read_piece_reply({"status": "ok", "user_expressions": {K.RESULT_KEY: {
        "status": "ok", "data": {"text/plain": repr(base64.b64encode(b"abc").decode())}}}},
        3) == b"abc"
    with pytest.raises(C.SnapshotError, match="3 asked"):
        K.read_piece_reply({"status": "ok", "user_expressions": {K.RESULT_KEY: {
            "status": "ok", "data": {"text/plain": repr(base64.b64encode(b"ab").decode())}}}},
            3)
