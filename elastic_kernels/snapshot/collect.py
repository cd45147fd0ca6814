"""The kernel side of a snapshot: choose, pickle and restore the variables of a kernel's namespace.

This module runs INSIDE the kernel process. Kernel images do not carry elastic-kernels, so the
gateway sends this file's source in the execute request (``kernelcall``) and the kernel
``exec``s it into a private namespace; it therefore depends only on the standard library and
``cloudpickle`` (the kernel images' requirements pin it), has no relative imports, and keeps
Python 3.10 syntax. It never sees the gateway's signing key: it produces and consumes the
UNSIGNED payload, and the gateway signs and verifies around it (``format``).

Why cloudpickle and not dill
    Functions and classes defined in a notebook live in ``__main__``, which the restoring
    kernel cannot import: they must be pickled by value. cloudpickle does exactly that and
    pickles everything importable by reference, runs on the C pickler (fast), and is the
    pickler of Dask, Ray and PySpark, so its behaviour is well trodden. dill replaces the
    pickle dispatch globally, runs on the pure-Python pickler, and "succeeds" on things that
    should not be saved (an open file comes back as a different file position or handle).

What is saved, what is skipped
    - IPython's own names are left out silently but recorded (kind ``internal``): ``In``,
      ``Out``, ``get_ipython``, ``exit``, ``quit``, ``_``, ``__``, ``___``, ``_i``, ``_ii``,
      ``_iii``, ``_iN``, ``_N``, ``_oh``, ``_ih``, ``_dh``, ``_exit_code``, dunder names, and
      whatever the shell lists in ``user_ns_hidden``. A user's own ``_private`` name is saved.
    - Modules are skipped (kind ``module``): re-running the imports is cheap and exact.
    - Anything that cannot be pickled (a generator, an open file, a socket, a lock, or an
      object containing one) is skipped with its reason (kind ``unpicklable``), e.g.
      ``gen: generator objects cannot be saved``.

One pickle per group of variables, not one pickle of everything
    Each variable is first pickled on its own (to a counting sink: nothing is kept), so one bad
    variable only skips itself. While doing so the pickler notes the objects each variable
    reaches that could be shared: any variable's value (so ``b = a`` works for an array too),
    lists, dicts, sets, bytearrays and objects with a ``__dict__`` (instances, tensors).
    Variables that reach a common object are then pickled TOGETHER in one blob, so
    ``b = a`` or ``m.items is items`` or tied model weights are still one object after the
    restore, and the object counts once against ``max_bytes``. Trade-offs: every variable is
    pickled twice (a check, then the save; the timeout covers both); immutable objects are not
    tracked (two copies of a tuple cannot be told apart); a group is restored or lost as a
    whole (one blob); objects of different groups never alias after the restore. Classes
    defined in the notebook keep their identity across groups anyway (cloudpickle tracks
    them), so what a class's own ``__dict__`` holds joins nothing, and an instance is still an
    instance of the restored class; a notebook function reached from two groups (``f`` and
    ``handlers = [f]``) is restored as two equal functions with the same globals.

Notebook functions keep the notebook's globals
    cloudpickle gives a by-value function a private copy of the globals it uses. Here the
    kernel's global namespace is pickled as a reference (persistent id) instead, so a restored
    function's ``__globals__`` IS the new kernel's namespace: later assignments to ``x`` are
    seen by ``f`` as before the suspend. (This uses ``cloudpickle.Pickler.globals_ref``, the
    memo of globals dicts cloudpickle keeps; without it functions get the private copy.)
    Likewise ``get_ipython`` and the other IPython objects a function refers to are references
    to the restoring kernel's own.

Device tensors (CUDA): a duck-typed protocol, no torch import
    An object is a device tensor when its TYPE defines ``is_cuda`` (a property, as
    ``torch.Tensor`` does) and the object's ``is_cuda`` is ``True``; it must have ``.device``,
    ``.cpu()`` and ``.to(device)``. It is saved as a CPU copy (``.detach().cpu()`` when it has
    ``detach``, else ``.cpu()``) with ``str(device)``, its type and ``requires_grad``, and
    restored with ``.to(device)``; if that fails (no such GPU in the new pod) it stays on the
    CPU and the report says so. A subclass whose ``.cpu()`` returns the base type (like
    ``torch.nn.Parameter``) is rebuilt as ``cls(tensor, requires_grad)``; otherwise
    ``requires_grad_(True)`` is called when it was set. The tensor is never moved in place, so
    the live kernel is untouched. This works wherever the tensor sits: in a list, a dict, an
    object's attributes, or a ``torch.nn.Module``'s parameters and buffers (a module pickles
    its ``__dict__``), and a tensor reached twice (tied weights) is restored as one tensor.

Bounds
    ``max_bytes`` bounds the payload: pickling stops as soon as the bytes written would pass
    it (nothing larger than the limit is ever held). ``timeout`` bounds the wall time of the
    whole collection; the clock is checked between variables and every few hundred objects
    pickled. An object whose own ``__reduce__`` runs long cannot be interrupted mid-call (no
    signals are used: the user's code may own SIGALRM). Either failure aborts the whole save
    with the reason, and the caller culls the kernel the ordinary way.

Payload (unsigned) layout
    ``MAGIC`` (8 bytes), the header's length (4 bytes, big-endian), the header (UTF-8 JSON),
    then the blobs back to back. The header::

        {"payload_version": 1, "python": "3.12.8", "cloudpickle": "3.1.2",
         "variables": [{"name": "x", "type": "int", "size": 5, "blob": 0}, ...],
         "blobs": [{"size": 12}, ...],
         "skipped": [{"name": "gen", "kind": "unpicklable",
                      "reason": "generator objects cannot be saved"}, ...]}

    Blob ``i`` is a pickle of the tuple of the values of the variables whose ``blob`` is
    ``i``, in their header order.

Entry points in the kernel: ``kernel_save(get_ipython(), ...)`` and
``kernel_restore(get_ipython(), ...)``, each returning a JSON string (see ``kernelcall`` for
the request that calls them).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mmap
import os
import pickle
import platform
import re
import struct
import tempfile
import time
import types
from collections.abc import Callable, Container, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

MAGIC = b"EKNSPAY1"
PAYLOAD_VERSION = 1
_LEN = struct.Struct(">I")
#: Upper bound of the header, so a corrupt length cannot make a reader allocate gigabytes.
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: How many objects the pickler sees between two looks at the clock.
_CLOCK_EVERY = 256
#: Reasons are for people and logs: short, and never a value's repr.
_MAX_REASON = 200

_INTERNAL_NAMES = frozenset({
    "In", "Out", "get_ipython", "exit", "quit", "_oh", "_ih", "_dh", "_exit_code",
    "_", "__", "___", "_i", "_ii", "_iii",
})
#: IPython's objects that restore as a reference to the new kernel's own (``_internal_objects``).
_REFERENCED_NAMES = ("get_ipython", "In", "Out", "exit", "quit", "_ih", "_oh", "_dh")
_INTERNAL_PATTERN = re.compile(r"_i?\d+|__\w*__")

_PID_GLOBALS = "ek.globals"
_PID_NAME = "ek.name"
_PID_DEVICE = "ek.device"

# Objects of these types reach nothing mutable worth tracking for shared references.
_ATOMIC: tuple[type, ...] = (
    type(None), bool, int, float, complex, str, bytes, range, slice, type(Ellipsis),
    type(NotImplemented), types.BuiltinFunctionType, types.ModuleType, type,
)

# Top-level objects refused before any pickling, with the reason people read.
_DIRECT_REASONS: tuple[tuple[type, str], ...] = (
    (types.GeneratorType, "generator objects cannot be saved"),
    (types.CoroutineType, "coroutines cannot be saved"),
    (types.AsyncGeneratorType, "async generators cannot be saved"),
    (types.FrameType, "frames cannot be saved"),
    (types.TracebackType, "tracebacks cannot be saved"),
)

_MEMORY_FILES = (io.BytesIO, io.StringIO)

# Type names in pickle's "cannot pickle 'X' object" errors, and what to tell people.
_TYPE_REASONS: dict[str, str] = {
    "generator": "generator objects cannot be saved",
    "coroutine": "coroutines cannot be saved",
    "async_generator": "async generators cannot be saved",
    "_io.TextIOWrapper": "open files cannot be saved",
    "_io.BufferedReader": "open files cannot be saved",
    "_io.BufferedWriter": "open files cannot be saved",
    "_io.BufferedRandom": "open files cannot be saved",
    "_io.FileIO": "open files cannot be saved",
    "socket": "sockets cannot be saved",
    "_thread.lock": "locks cannot be saved",
    "_thread.RLock": "locks cannot be saved",
    "frame": "frames cannot be saved",
    "traceback": "tracebacks cannot be saved",
}
_CANNOT_PICKLE = re.compile(r"cannot pickle '([\w.]+)' object")


class SnapshotError(Exception):
    """A snapshot cannot be made or read; the message says why, for people and logs."""


class SnapshotTooLarge(SnapshotError):
    """The payload would pass ``max_bytes``."""


class SnapshotTimeout(SnapshotError):
    """Collecting took longer than ``timeout``."""


class PayloadError(SnapshotError):
    """The bytes are not a payload this code can read (truncated, another format or version)."""


@dataclass(frozen=True)
class Skipped:
    """A name that is not in the snapshot, and why."""

    name: str
    kind: str  # "internal", "module", "unpicklable" (save) or "failed" (restore)
    reason: str


@dataclass(frozen=True)
class Variable:
    """A saved variable: its pickled size on its own, and the blob that holds it."""

    name: str
    type: str
    size: int
    blob: int


@dataclass(frozen=True)
class Collected:
    """The result of a save: the payload bytes and what they hold."""

    payload: bytes
    variables: list[Variable]
    skipped: list[Skipped]


@dataclass
class Restored:
    """The result of a restore: names put back, names not, and notes (a tensor left on CPU)."""

    restored: list[str] = field(default_factory=list)
    not_restored: list[Skipped] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        """One line for the user, e.g. ``restored 2 variables (x, f); not restored: gen
        (generator objects cannot be saved)``."""
        count = len(self.restored)
        line = f"restored {count} variable{'' if count == 1 else 's'}"
        if self.restored:
            line += f" ({', '.join(self.restored)})"
        if self.not_restored:
            line += "; not restored: " + ", ".join(f"{s.name} ({s.reason})"
                                                    for s in self.not_restored)
        if self.modules:
            line += "; modules to import again: " + ", ".join(self.modules)
        if self.notes:
            line += "; " + "; ".join(self.notes)
        return line


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON - 3] + "..."


def _type_name(value: object) -> str:
    cls = type(value)
    module = getattr(cls, "__module__", "") or ""
    if module in ("builtins", "__main__"):
        return str(cls.__qualname__)
    return f"{module}.{cls.__qualname__}"


def is_internal(name: str, hidden: Container[str] = ()) -> bool:
    """Whether IPython put ``name`` there (not the user): left out of every snapshot."""
    return (name in _INTERNAL_NAMES or name in hidden
            or _INTERNAL_PATTERN.fullmatch(name) is not None)


def is_device_tensor(obj: object) -> bool:
    """The duck-typed device-tensor protocol (module docstring): ``is_cuda`` defined on the
    type (so no instance ``__getattr__`` runs) and true on the object, plus ``cpu`` and ``to``.
    """
    if isinstance(obj, _ATOMIC) or getattr(type(obj), "is_cuda", None) is None:
        return False
    try:
        return (getattr(obj, "is_cuda", False) is True and callable(getattr(obj, "cpu", None))
                and callable(getattr(obj, "to", None)))
    except Exception:
        return False


def _tracked(obj: object) -> bool:
    """Whether two variables reaching ``obj`` must be restored as one object: a mutable
    container or an object with a ``__dict__`` (besides, every variable's own value)."""
    if isinstance(obj, (list, dict, set, bytearray)):
        return True
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        return False  # notebook functions are copies with the same globals; see the docstring
    return getattr(type(obj), "__dictoffset__", 0) != 0


def _reason(value: object, exc: BaseException) -> str:
    """Why ``value`` could not be pickled, in words (never the value's repr)."""
    match = _CANNOT_PICKLE.search(str(exc))
    if match:
        what = match.group(1)
        reason = _TYPE_REASONS.get(what, f"{what} objects cannot be saved")
        own = type(value)
        if what in (own.__name__, f"{own.__module__}.{own.__qualname__}"):
            return reason
        return f"{reason}; it contains a {what}"
    if isinstance(exc, RecursionError):
        return "too deeply nested to save"
    return _short(f"cannot be saved: {type(exc).__name__}: {exc}")


class _Sink:
    """The file a pickler writes to: it keeps the bytes or only counts them, and refuses to
    pass ``limit`` (raising at once, so a variable larger than the limit is never held)."""

    def __init__(self, limit: int, keep: bool, check_clock: Callable[[], None]) -> None:
        self.limit = limit
        self.size = 0
        self.keep = keep
        self.check_clock = check_clock
        self.buffer = io.BytesIO() if keep else None

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self.size += n
        if self.size > self.limit:
            raise SnapshotTooLarge("")
        self.check_clock()
        if self.buffer is not None:
            self.buffer.write(data)
        return n


class _Clock:
    """The deadline of a collection; ``check`` raises SnapshotTimeout past it."""

    def __init__(self, timeout: float, clock: Callable[[], float]) -> None:
        self.timeout = timeout
        self.clock = clock
        self.deadline = clock() + timeout

    def check(self) -> None:
        if self.clock() > self.deadline:
            raise SnapshotTimeout(f"the snapshot took longer than its timeout ({self.timeout:g} s)")


class _Pickler(cloudpickle.Pickler):
    """cloudpickle with three persistent ids (the kernel's globals, IPython's objects, device
    tensors), the clock, and optionally a record of the mutable objects reached."""

    def __init__(self, sink: _Sink, clock: _Clock, global_ns: dict[str, Any] | None,
                 internals: Mapping[int, str], values: Container[int] | None) -> None:
        super().__init__(sink, protocol=pickle.HIGHEST_PROTOCOL)
        self._clock = clock
        self._global_ns = global_ns
        self._internals = internals
        self._calls = 0
        # With ``values`` (the ids of all variables' values) the pickler records what it
        # reaches: the objects themselves, so their ids are not reused while grouping.
        self._values = values
        self.reached: dict[int, object] | None = {} if values is not None else None
        self._ignored: dict[int, object] = {}
        # The device pid of each tensor (by id) and the tensor, kept alive: a tensor reached
        # twice gives the same pid object, which pickle memoizes, so tied weights stay tied.
        self._devices: dict[int, tuple[tuple[Any, ...], Any]] = {}

    def persistent_id(self, obj: Any) -> Any:
        self._calls += 1
        if self._calls % _CLOCK_EVERY == 0:
            self._clock.check()
        if isinstance(obj, type) and self.reached is not None and obj.__module__ == "__main__":
            # A notebook class is one class after the restore anyway (cloudpickle tracks it):
            # what its own __dict__ holds (methods, pickle's cached __slotnames__) joins
            # nothing.
            for part in vars(obj).values():
                self._ignored[id(part)] = part
        if isinstance(obj, _ATOMIC):
            return None
        if isinstance(obj, types.FunctionType) and self.reached is not None:
            # A function's own dicts are reached by every pickle of the function (a notebook
            # class's methods, by each of its instances): not a shared value of the user's.
            for part in (obj.__dict__, obj.__kwdefaults__, obj.__annotations__):
                if part is not None:
                    self._ignored[id(part)] = part
        if self._global_ns is not None and type(obj) is dict:
            refs = getattr(self, "globals_ref", None)
            if isinstance(refs, dict) and obj is refs.get(id(self._global_ns)):
                return (_PID_GLOBALS,)
        name = self._internals.get(id(obj))
        if name is not None:
            return (_PID_NAME, name)
        if self.reached is not None and self._values is not None and (
                id(obj) in self._values or _tracked(obj)) and id(obj) not in self._ignored:
            self.reached[id(obj)] = obj
        if is_device_tensor(obj):
            seen = self._devices.get(id(obj))
            if seen is None:
                detach = getattr(obj, "detach", None)
                cpu = (detach() if callable(detach) else obj).cpu()
                seen = ((_PID_DEVICE, str(obj.device), type(obj),
                         bool(getattr(obj, "requires_grad", False)), cpu), obj)
                self._devices[id(obj)] = seen
            return seen[0]
        return None

    def reducer_override(self, obj: Any) -> Any:
        # cloudpickle saves a file open for reading as a StringIO of its contents: a different
        # object that only looks restored. A file is not saved, alone or inside anything.
        if isinstance(obj, io.IOBase) and not isinstance(obj, _MEMORY_FILES):
            cls = type(obj)
            raise TypeError(f"cannot pickle '{cls.__module__}.{cls.__qualname__}' object")
        return super().reducer_override(obj)


class _ViewReader:
    """A read-only file over a buffer, without copying it (``io.BytesIO`` copies what it is
    given: a GB blob would be held twice). The unpickler reads a big ``bytes`` with one
    ``readinto`` straight into the new object, and the rest frame by frame with ``read``."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def read(self, n: int | None = -1) -> bytes:
        size = len(self._view)
        end = size if n is None or n < 0 else min(size, self._pos + n)
        out = bytes(self._view[self._pos:end])
        self._pos = end
        return out

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        n = min(target.nbytes, len(self._view) - self._pos)
        target[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def readline(self) -> bytes:
        start = end = self._pos
        while end < len(self._view):
            piece = bytes(self._view[end:end + 4096])
            found = piece.find(b"\n")
            if found >= 0:
                end += found + 1
                break
            end += len(piece)
        self._pos = end
        return bytes(self._view[start:end])


class _Unpickler(pickle.Unpickler):
    """Resolves the persistent ids of ``_Pickler`` in the restoring kernel."""

    def __init__(self, data: bytes | memoryview, namespace: Mapping[str, Any],
                 global_ns: dict[str, Any], notes: list[str]) -> None:
        super().__init__(_ViewReader(data))
        self._namespace = namespace
        self._global_ns = global_ns
        self._notes = notes
        self._devices: dict[int, tuple[Any, Any]] = {}

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError("unknown persistent id")
        if pid[0] == _PID_GLOBALS:
            return self._global_ns
        if pid[0] == _PID_NAME and len(pid) == 2:
            if pid[1] not in self._namespace:
                raise pickle.UnpicklingError(f"this kernel has no {pid[1]}")
            return self._namespace[pid[1]]
        if pid[0] == _PID_DEVICE and len(pid) == 5:
            seen = self._devices.get(id(pid))
            if seen is not None and seen[0] is pid:
                return seen[1]
            tensor = _to_device(*pid[1:], notes=self._notes)
            self._devices[id(pid)] = (pid, tensor)
            return tensor
        raise pickle.UnpicklingError("unknown persistent id")


def _to_device(device: str, cls: Any, requires_grad: bool, cpu: Any, *,
               notes: list[str]) -> Any:
    """A saved CPU copy back on its device (or left on the CPU, with a note)."""
    try:
        tensor = cpu.to(device)
    except Exception as exc:
        notes.append(_short(f"a tensor stays on the CPU ({device} is not available here: "
                            f"{type(exc).__name__})"))
        tensor = cpu
    if isinstance(cls, type) and cls is not type(tensor) and issubclass(cls, type(tensor)):
        return cls(tensor, requires_grad)
    if requires_grad and callable(getattr(tensor, "requires_grad_", None)):
        tensor.requires_grad_(True)
    return tensor


class _Groups:
    """Union-find over variable indexes: variables reaching a common object join one group."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def collect(namespace: Mapping[str, Any], *, max_bytes: int, timeout: float,
            hidden: Container[str] = (), global_ns: dict[str, Any] | None = None,
            clock: Callable[[], float] = time.monotonic) -> Collected:
    """Pickle the user's variables of ``namespace`` into one payload (module docstring).

    ``hidden`` names IPython's own variables (``shell.user_ns_hidden``); ``global_ns`` is the
    dict notebook functions use as globals (``shell.user_global_ns``; defaults to
    ``namespace`` when it is a dict). Raises SnapshotTooLarge or SnapshotTimeout: the caller
    then culls the ordinary way.
    """
    if max_bytes <= 0:
        raise SnapshotTooLarge(f"the snapshot would exceed maxBytes ({max_bytes} bytes)")
    deadline = _Clock(timeout, clock)
    deadline.check()
    if global_ns is None and isinstance(namespace, dict):
        global_ns = namespace
    skipped: list[Skipped] = []
    candidates: list[tuple[str, Any]] = []
    internals = _internal_objects(namespace, hidden)
    for name, value in list(namespace.items()):
        if is_internal(name, hidden):
            skipped.append(Skipped(name, "internal", "IPython's own"))
        elif isinstance(value, types.ModuleType):
            skipped.append(Skipped(name, "module", "modules are not saved (re-run the import)"))
        else:
            direct = next((r for t, r in _DIRECT_REASONS if isinstance(value, t)), None)
            if isinstance(value, io.IOBase) and not isinstance(value, _MEMORY_FILES):
                direct = "open files cannot be saved"
            if direct is not None:
                skipped.append(Skipped(name, "unpicklable", direct))
            else:
                candidates.append((name, value))

    def too_large() -> SnapshotTooLarge:
        return SnapshotTooLarge(f"the snapshot would exceed maxBytes ({max_bytes} bytes)")

    def out_of_memory(names: str) -> SnapshotError:
        # Not a skip: a variable that pickles but does not fit in memory now would be lost
        # without the user ever being told (a 1 GB array on a full kernel). No snapshot.
        return SnapshotError(f"the kernel ran out of memory saving {_short(names)}")

    # Pass 1: each variable on its own, counted not kept; note the mutable objects it reaches.
    good: list[tuple[str, Any, int]] = []
    owner: dict[int, int] = {}
    alive: list[object] = []  # what pass 1 reached, so no id is reused before grouping ends
    values = {id(value) for _, value in candidates}
    groups = _Groups(len(candidates))
    for name, value in candidates:
        deadline.check()
        sink = _Sink(max_bytes, keep=False, check_clock=deadline.check)
        pickler = _Pickler(sink, deadline, global_ns, internals, values)
        try:
            pickler.dump(value)
        except SnapshotTooLarge:
            raise too_large() from None
        except SnapshotTimeout:
            raise
        except MemoryError:
            raise out_of_memory(name) from None
        except Exception as exc:
            skipped.append(Skipped(name, "unpicklable", _reason(value, exc)))
            continue
        index = len(good)
        good.append((name, value, sink.size))
        reached = pickler.reached or {}
        alive.append(reached)
        for obj_id in reached:
            if obj_id in owner:
                groups.union(owner[obj_id], index)
            else:
                owner[obj_id] = index

    # Pass 2: one blob per group, kept, against the remaining budget.
    members: dict[int, list[int]] = {}
    for index in range(len(good)):
        members.setdefault(groups.find(index), []).append(index)
    blob_of: dict[int, int] = {}
    blobs: list[bytes] = []
    used = 0
    for root in sorted(members):
        deadline.check()
        indexes = members[root]
        sink = _Sink(max_bytes - used, keep=True, check_clock=deadline.check)
        try:
            _Pickler(sink, deadline, global_ns, internals, None).dump(
                tuple(good[i][1] for i in indexes))
        except SnapshotTooLarge:
            raise too_large() from None
        except SnapshotTimeout:
            raise
        except MemoryError:
            raise out_of_memory(", ".join(good[i][0] for i in indexes)) from None
        except Exception as exc:  # pickled alone, not together (rare: state changed between)
            for i in indexes:
                skipped.append(Skipped(good[i][0], "unpicklable", _reason(good[i][1], exc)))
            continue
        assert sink.buffer is not None
        for i in indexes:
            blob_of[i] = len(blobs)
        blobs.append(sink.buffer.getvalue())
        used += sink.size
    variables = [Variable(name, _type_name(value), size, blob_of[i])
                 for i, (name, value, size) in enumerate(good) if i in blob_of]
    payload = encode_payload(variables, skipped, blobs)
    if len(payload) > max_bytes:
        raise too_large()
    deadline.check()
    del alive
    return Collected(payload, variables, skipped)


def _internal_objects(namespace: Mapping[str, Any], hidden: Container[str]) -> dict[int, str]:
    """IPython's objects a notebook function may refer to (``get_ipython``, ``In``, ``Out``,
    ...), by id: pickled as a reference to the restoring kernel's own, not by value. Only the
    shell's own objects (a hidden name still bound to its original value), never the output
    caches ``_``, ``_N``: those are the user's values under another name."""
    found: dict[int, str] = {}
    originals = hidden if isinstance(hidden, Mapping) else {}
    for name in _REFERENCED_NAMES:
        if name not in namespace:
            continue
        value = namespace[name]
        if isinstance(value, _ATOMIC):
            continue
        if originals and name in originals and originals[name] is not value:
            continue
        found.setdefault(id(value), name)
    return found


def encode_payload(variables: list[Variable], skipped: list[Skipped],
                   blobs: list[bytes]) -> bytes:
    """The payload bytes: magic, header length, JSON header, blobs."""
    header = {
        "payload_version": PAYLOAD_VERSION,
        "python": platform.python_version(),
        "cloudpickle": getattr(cloudpickle, "__version__", "?"),
        "variables": [{"name": v.name, "type": v.type, "size": v.size, "blob": v.blob}
                      for v in variables],
        "blobs": [{"size": len(b)} for b in blobs],
        "skipped": [{"name": s.name, "kind": s.kind, "reason": s.reason} for s in skipped],
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([MAGIC, _LEN.pack(len(raw)), raw, *blobs])


def payload_header_size(prefix: bytes | bytearray | memoryview) -> int | None:
    """How many bytes of a payload its framing and header take, from its first bytes (None:
    too few to say); PayloadError for bytes that are no payload or a header past the bound."""
    if len(prefix) < len(MAGIC) + _LEN.size:
        return None
    if bytes(prefix[:len(MAGIC)]) != MAGIC:
        raise PayloadError("not an elastic-kernels snapshot payload")
    (length,) = _LEN.unpack_from(prefix, len(MAGIC))
    if length > MAX_HEADER_BYTES:
        raise PayloadError("snapshot payload is truncated")
    return len(MAGIC) + _LEN.size + int(length)


def read_payload_header(head: bytes | bytearray | memoryview,
                        size: int) -> tuple[dict[str, Any], int]:
    """The checked header of a payload of ``size`` bytes whose first bytes are ``head`` (at
    least :func:`payload_header_size` of them), and where its blobs start. JSON only."""
    start = len(MAGIC) + _LEN.size
    end = payload_header_size(head)
    if end is None or end > len(head) or end > size:
        raise PayloadError("snapshot payload is truncated")
    try:
        header = json.loads(bytes(head[start:end]))
    except ValueError:
        raise PayloadError("snapshot payload has an unreadable header") from None
    _check_header(header, end, size)
    return header, end


def _check_header(header: Any, offset: int, size: int) -> None:
    if not isinstance(header, dict) or header.get("payload_version") != PAYLOAD_VERSION:
        raise PayloadError("snapshot payload has an unknown version")
    try:
        sizes = [int(b["size"]) for b in header["blobs"]]
        variables = header["variables"]
        skipped = header["skipped"]
        ok = (all(s >= 0 for s in sizes) and isinstance(variables, list)
              and isinstance(skipped, list)
              and all(isinstance(v["name"], str) and isinstance(v["type"], str)
                      and isinstance(v["size"], int) and isinstance(v["blob"], int)
                      and 0 <= v["blob"] < len(sizes) for v in variables)
              and all(isinstance(s["name"], str) and isinstance(s["kind"], str)
                      and isinstance(s["reason"], str) for s in skipped))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise PayloadError("snapshot payload has a malformed header")
    if offset + sum(sizes) != size:
        raise PayloadError("snapshot payload's blobs do not match its header")


def decode_payload(payload: bytes | bytearray | mmap.mmap
                   ) -> tuple[dict[str, Any], list[bytes | memoryview]]:
    """The header and the blobs of a payload, checked for shape. JSON only: nothing here
    unpickles, so the gateway may call it on bytes it does not trust."""
    if len(payload) < len(MAGIC) + _LEN.size or payload[:len(MAGIC)] != MAGIC:
        raise PayloadError("not an elastic-kernels snapshot payload")
    (length,) = _LEN.unpack_from(payload, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if length > MAX_HEADER_BYTES or start + length > len(payload):
        raise PayloadError("snapshot payload is truncated")
    try:
        header = json.loads(payload[start:start + length])
    except ValueError:
        raise PayloadError("snapshot payload has an unreadable header") from None
    offset = start + length
    _check_header(header, offset, len(payload))
    sizes = [int(b["size"]) for b in header["blobs"]]
    # A received buffer (bytearray, mmap) is sliced without copying: a GB payload is not held
    # twice.
    whole: bytes | memoryview = payload if isinstance(payload, bytes) else memoryview(payload)
    blobs: list[bytes | memoryview] = []
    for size in sizes:
        blobs.append(whole[offset:offset + size])
        offset += size
    return header, blobs


def restore(payload: bytes | bytearray | mmap.mmap, namespace: MutableMapping[str, Any], *,
            global_ns: dict[str, Any] | None = None) -> Restored:
    """Unpickle a payload into ``namespace``, group by group: a group that fails (a module
    missing from this image, say) is reported and the others are still restored.

    The payload must come from the gateway after it verified the signature: unpickling runs
    code. ``global_ns`` is the dict restored notebook functions get as globals (defaults to
    ``namespace`` when it is a dict).
    """
    header, blobs = decode_payload(payload)
    if global_ns is None:
        if not isinstance(namespace, dict):
            raise TypeError("restore needs global_ns when namespace is not a dict")
        global_ns = namespace
    result = Restored()
    if header.get("cloudpickle") != getattr(cloudpickle, "__version__", "?"):
        result.notes.append(f"saved with cloudpickle {header.get('cloudpickle')}, "
                            f"restored with {getattr(cloudpickle, '__version__', '?')}")
    by_blob: dict[int, list[str]] = {}
    for entry in header["variables"]:
        by_blob.setdefault(entry["blob"], []).append(entry["name"])
    values: dict[str, Any] = {}
    failed: dict[str, str] = {}
    builtins_before = global_ns.get("__builtins__")
    for index, names in sorted(by_blob.items()):
        try:
            loaded = _Unpickler(blobs[index], namespace, global_ns, result.notes).load()
            if not isinstance(loaded, tuple) or len(loaded) != len(names):
                raise pickle.UnpicklingError("blob does not hold its variables")
        except Exception as exc:
            reason = _short(f"{type(exc).__name__}: {exc}")
            if isinstance(exc, ImportError) and getattr(exc, "name", None):
                reason = f"needs module {exc.name}, which this kernel cannot import"
            failed.update((name, reason) for name in names)
            continue
        values.update(zip(names, loaded))
    if "__builtins__" in global_ns and builtins_before is not None:
        global_ns["__builtins__"] = builtins_before  # cloudpickle sets its own on functions
    for entry in header["variables"]:
        name = entry["name"]
        if name in values:
            namespace[name] = values[name]
            result.restored.append(name)
        else:
            result.not_restored.append(Skipped(name, "failed", failed.get(name, "not restored")))
    result.not_restored[:0] = [Skipped(s["name"], s["kind"], s["reason"])
                               for s in header["skipped"]
                               if s["kind"] not in ("internal", "module")]
    result.modules = [s["name"] for s in header["skipped"] if s["kind"] == "module"]
    return result


# --- entry points in the kernel: called by the expressions kernelcall sends -----------------


def _shell_parts(shell: Any) -> tuple[dict[str, Any], dict[str, Any], Container[str]]:
    namespace = shell.user_ns
    global_ns = getattr(shell, "user_global_ns", namespace)
    hidden = getattr(shell, "user_ns_hidden", {})
    return namespace, global_ns, hidden


def _names(entries: Iterable[Any]) -> list[str]:
    return [e.name for e in entries]


def kernel_save(shell: Any, max_bytes: int, timeout: float, path: str | None = None) -> str:
    """Collect the shell's namespace; a JSON string for the gateway.

    ``{"ok": true, "size": N, "sha256": HEX, "payload_b64": B64 | "path": PATH,
    "variables": [...], "skipped": [{"name", "reason"}...]}`` or ``{"ok": false,
    "error": REASON}``. With ``path`` the payload is written there (atomically, mode 0600) and
    not returned inline. Never raises: the gateway reads the reason (and ``"kind":
    "SnapshotTooLarge"`` or ``"SnapshotTimeout"`` for the bounds).
    """
    try:
        namespace, global_ns, hidden = _shell_parts(shell)
        got = collect(namespace, max_bytes=max_bytes, timeout=timeout, hidden=hidden,
                      global_ns=global_ns)
        reply: dict[str, Any] = {
            "ok": True, "size": len(got.payload),
            "sha256": hashlib.sha256(got.payload).hexdigest(),
            "variables": _names(got.variables),
            "skipped": [{"name": s.name, "reason": s.reason} for s in got.skipped
                        if s.kind != "internal"],
        }
        if path is None:
            reply["payload_b64"] = base64.b64encode(got.payload).decode("ascii")
        else:
            write_atomically(path, got.payload)
            reply["path"] = path
        return json.dumps(reply)
    except SnapshotError as exc:
        return json.dumps({"ok": False, "error": str(exc), "kind": type(exc).__name__})
    except Exception as exc:
        return json.dumps({"ok": False, "error": _short(f"{type(exc).__name__}: {exc}")})


def kernel_restore(shell: Any, payload_b64: str | None = None, path: str | None = None) -> str:
    """Restore a verified payload (inline base64, or a file the gateway wrote) into the shell's
    namespace; a JSON string ``{"ok": true, "report": LINE, "restored": [...],
    "not_restored": [{"name", "reason"}...]}`` or ``{"ok": false, "error": REASON}``."""
    try:
        if payload_b64 is not None:
            payload = base64.b64decode(payload_b64, validate=True)
        elif path is not None:
            with open(path, "rb") as f:
                payload = f.read()
        else:
            raise SnapshotError("no payload given")
        namespace, global_ns, _ = _shell_parts(shell)
        result = restore(payload, namespace, global_ns=global_ns)
        return json.dumps({
            "ok": True, "report": result.report(), "restored": result.restored,
            "not_restored": [{"name": s.name, "reason": s.reason} for s in result.not_restored],
            "modules": result.modules, "notes": result.notes,
        })
    except Exception as exc:
        message = str(exc) if isinstance(exc, SnapshotError) else f"{type(exc).__name__}: {exc}"
        return json.dumps({"ok": False, "error": _short(message)})


# --- chunked transfer: the gateway streams a payload in bounded pieces (kernelcall) ------------
#
# A payload of hundreds of MB does not fit one kernel message (the gateway bounds them, and a
# single reply would be held whole, several times over, on both sides). So the gateway asks in
# steps, each a silent execute_request on ITS OWN shell connection (replies on shell go only
# to the asker, never to a notebook's websocket, unlike a comm's messages on iopub):
#   save:    kernel_save_begin (collect; keep the payload here) -> kernel_send(offset, n) ...
#            (each piece raw, in a message on the stdin channel to the asker only, as input()'s
#            prompt goes; kernel_read, base64 in the reply, where that is not possible) ->
#            kernel_transfer_end
#   restore: kernel_restore_begin(size) -> kernel_write ... (raw bytes in the REQUEST's binary
#            buffers, read from the parent message: no base64, no copy into source code) ->
#            kernel_restore_commit (unpickle) or kernel_transfer_end (discard)
# The state lives in this module, which later steps reach through ``sys.modules`` (kernelcall
# sends the source only with the first step). One transfer at a time: a begin drops any other,
# so an abandoned transfer (the gateway died mid-way) holds memory only until the next.
# Nothing received is unpickled before the commit, which the gateway sends only after the
# signature checked over exactly the bytes it sent (format.RestoreStream).

_TRANSFERS: dict[str, Any] = {}


def _new_transfer(value: Any) -> str:
    _TRANSFERS.clear()
    token = os.urandom(12).hex()
    _TRANSFERS[token] = value
    return token


def _transfer(token: str, kind: type) -> Any:
    value = _TRANSFERS.get(token)
    if not isinstance(value, kind):
        raise SnapshotError("no such snapshot transfer in this kernel (it was restarted, or "
                            "another transfer replaced it)")
    return value


def _can_send(shell: Any) -> bool:
    """Whether this kernel can send a piece raw (:func:`kernel_send`): ipykernel 6 or later."""
    kernel = getattr(shell, "kernel", None)
    return (callable(getattr(kernel, "get_parent", None))
            and getattr(kernel, "stdin_socket", None) is not None
            and getattr(kernel, "session", None) is not None)


def kernel_save_begin(shell: Any, max_bytes: int, timeout: float) -> str:
    """Collect the shell's namespace and keep the payload for :func:`kernel_send` (or
    :func:`kernel_read`); a JSON string like :func:`kernel_save`'s, with ``"token"`` instead of
    the payload and ``"binary"``: whether :func:`kernel_send` works here."""
    try:
        _TRANSFERS.clear()  # before collecting: an earlier payload must not count twice
        namespace, global_ns, hidden = _shell_parts(shell)
        got = collect(namespace, max_bytes=max_bytes, timeout=timeout, hidden=hidden,
                      global_ns=global_ns)
        return json.dumps({
            "ok": True, "token": _new_transfer(got.payload), "size": len(got.payload),
            "binary": _can_send(shell),
            "sha256": hashlib.sha256(got.payload).hexdigest(),
            "variables": _names(got.variables),
            "skipped": [{"name": s.name, "reason": s.reason} for s in got.skipped
                        if s.kind != "internal"],
        })
    except SnapshotError as exc:
        return json.dumps({"ok": False, "error": str(exc), "kind": type(exc).__name__})
    except MemoryError:
        return json.dumps({"ok": False, "error": "the kernel ran out of memory saving"})
    except Exception as exc:
        return json.dumps({"ok": False, "error": _short(f"{type(exc).__name__}: {exc}")})


def kernel_read(token: str, offset: int, length: int) -> str:
    """Bytes ``offset`` to ``offset + length`` of the kept payload, base64 (ASCII: its repr in
    the reply is the text between two quotes). Raises (an error reply) for an unknown token."""
    payload = _transfer(token, bytes)
    return base64.b64encode(memoryview(payload)[offset:offset + length]).decode("ascii")


#: The message that carries a piece of a payload, raw, to the client that asked.
PIECE_MSG_TYPE = "elastic_snapshot_piece"


def kernel_send(shell: Any, token: str, offset: int, length: int) -> int:
    """Send bytes ``offset`` to ``offset + length`` of the kept payload RAW, as the binary
    buffer of a message on the stdin channel, to the client whose request this is (as
    ``input()`` sends its prompt: the stdin socket routes by the asker's identity, which
    jupyter_client sets to its session id; no other client sees it). Returns the bytes sent."""
    payload = _transfer(token, bytes)
    kernel = shell.kernel
    parent = kernel.get_parent("shell")
    piece = memoryview(payload)[offset:offset + length]
    kernel.session.send(kernel.stdin_socket, PIECE_MSG_TYPE,
                        {"offset": offset, "length": piece.nbytes}, parent,
                        ident=[str(parent["header"]["session"]).encode()], buffers=[piece])
    return piece.nbytes


def kernel_restore_begin(size: int) -> str:
    """Start receiving a payload of ``size`` bytes; the token for the next steps."""
    if size < 0:
        raise SnapshotError("a payload's size cannot be negative")
    return _new_transfer(_Incoming(size))


class _Incoming:
    """A payload being received into a buffer of the announced size, refusing more. The buffer
    is anonymous memory (``mmap``): allocated once, so nothing is copied as it fills, and not
    zeroed up front (a GB ``bytearray`` costs half a second of memset before the first byte)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: bytearray | mmap.mmap = mmap.mmap(-1, size) if size else bytearray()
        self.filled = 0


def kernel_write(shell: Any, token: str) -> int:
    """Append the binary buffers of the request being executed to the transfer; the bytes
    received so far."""
    incoming = _transfer(token, _Incoming)
    parent = shell.kernel.get_parent("shell")
    buffers = parent.get("buffers") or []
    if not buffers:
        raise SnapshotError("the request carries no snapshot bytes (binary buffers)")
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        if incoming.filled + view.nbytes > incoming.size:
            _TRANSFERS.clear()
            raise SnapshotError("more snapshot bytes than announced")
        incoming.data[incoming.filled:incoming.filled + view.nbytes] = view
        incoming.filled += view.nbytes
    return incoming.filled


def kernel_restore_commit(shell: Any, token: str) -> str:
    """Restore the received payload (the gateway verified it); :func:`kernel_restore`'s JSON."""
    try:
        incoming = _transfer(token, _Incoming)
        _TRANSFERS.clear()
        if incoming.filled != incoming.size:
            raise SnapshotError(f"the snapshot arrived incomplete ({incoming.filled} of "
                                f"{incoming.size} bytes)")
        namespace, global_ns, _ = _shell_parts(shell)
        result = restore(incoming.data, namespace, global_ns=global_ns)
        del incoming
        return json.dumps({
            "ok": True, "report": result.report(), "restored": result.restored,
            "not_restored": [{"name": s.name, "reason": s.reason} for s in result.not_restored],
            "modules": result.modules, "notes": result.notes,
        })
    except Exception as exc:
        message = str(exc) if isinstance(exc, SnapshotError) else f"{type(exc).__name__}: {exc}"
        return json.dumps({"ok": False, "error": _short(message)})


def kernel_transfer_end(token: str) -> bool:
    """Drop a transfer (the save is stored, or a restore was refused); whether it existed."""
    return _TRANSFERS.pop(token, None) is not None


def write_atomically(path: str, data: bytes, prefix: str = ".ek-snapshot-") -> None:
    """Write to a private temporary file beside ``path``, fsync, then rename: readers never
    see half a file. (Also the store's writer: this module is the stdlib-only one.)"""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = [
    "MAGIC", "PAYLOAD_VERSION", "Collected", "PayloadError", "Restored", "Skipped",
    "SnapshotError", "SnapshotTimeout", "SnapshotTooLarge", "Variable", "collect",
    "decode_payload", "encode_payload", "is_device_tensor", "is_internal", "kernel_restore",
    "PIECE_MSG_TYPE", "kernel_read", "kernel_restore_begin", "kernel_send",
    "kernel_restore_commit", "kernel_save",
    "kernel_save_begin", "kernel_transfer_end", "kernel_write", "payload_header_size",
    "read_payload_header", "restore",
]
