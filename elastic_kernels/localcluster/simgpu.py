"""The simulated GPU "library" of local-cluster pods: what a cell does with its GPU, made visible.

Pods on the local cluster get simulated GPUs (``CUDA_VISIBLE_DEVICES`` from the kubelet) that no
code can really use, so nothing would ever make them look busy to the DCGM-exporter stand-in
(:mod:`.dcgm`), and culling by GPU use could not be tried. A kernel marks its GPU busy instead::

    from elastic_kernels.localcluster import simgpu

    with simgpu.busy():                      # the pod's GPUs at 100% while the block runs
        train()
    with simgpu.busy(utilisation=40, memory_mib=2048):
        ...

A marker is a small JSON file in the pod's scratch directory (``$TMPDIR/.simgpu``, which the
kubelet points into the pod's own directory); the exporter stand-in reads the markers of each
pod that holds GPUs at every scrape. Markers of one pod add up: the highest utilisation wins and
memory is summed. A marker lives as long as its block (or until :meth:`Marker.clear`), so a
background thread can hold one while Jupyter shows the kernel idle.

This module runs inside kernels: it imports only the standard library.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The markers' directory, relative to the pod's scratch directory ($TMPDIR).
MARKER_DIR = ".simgpu"
_counter = itertools.count()
_lock = threading.Lock()


def marker_dir(scratch: str | os.PathLike[str] | None = None) -> Path:
    """Where this pod's markers go: ``$TMPDIR/.simgpu`` (the kubelet sets TMPDIR per pod)."""
    base = scratch if scratch is not None else os.environ.get("TMPDIR")
    if not base:
        raise RuntimeError("simgpu runs in local-cluster pods, whose TMPDIR is the pod's "
                           "scratch directory; TMPDIR is not set")
    return Path(base) / MARKER_DIR


class Marker:
    """One "this code uses the GPU" claim, as a file; :meth:`clear` ends it."""

    def __init__(self, utilisation: float = 100.0, memory_mib: float = 0.0,
                 scratch: str | os.PathLike[str] | None = None) -> None:
        if not math.isfinite(utilisation) or not 0 <= utilisation <= 100:
            raise ValueError(f"utilisation is a percentage 0-100, not {utilisation!r}")
        if not math.isfinite(memory_mib) or memory_mib < 0:
            raise ValueError(f"memory_mib must be >= 0, not {memory_mib!r}")
        directory = marker_dir(scratch)
        directory.mkdir(mode=0o700, exist_ok=True)
        with _lock:
            number = next(_counter)
        self.path = directory / f"busy-{os.getpid()}-{number}.json"
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps({"utilisation": float(utilisation),
                                       "memory_mib": float(memory_mib)}))
        os.replace(partial, self.path)  # the exporter never reads half a marker

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


@contextmanager
def busy(utilisation: float = 100.0, memory_mib: float = 0.0) -> Iterator[Marker]:
    """The pod's GPUs show ``utilisation`` percent and ``memory_mib`` used while this runs."""
    marker = Marker(utilisation, memory_mib)
    try:
        yield marker
    finally:
        marker.clear()


def read_markers(scratch: str | os.PathLike[str]) -> tuple[float, float] | None:
    """(utilisation %, memory MiB) the markers under ``scratch`` add up to; None: none.

    Used by the exporter stand-in; a marker that is unreadable or malformed is skipped (a pod
    could write anything there), never trusted.
    """
    directory = Path(scratch) / MARKER_DIR
    try:
        entries = list(directory.glob("busy-*.json"))
    except OSError:
        return None
    utilisation: float | None = None
    memory = 0.0
    for entry in entries:
        try:
            doc = json.loads(entry.read_text())
            util = float(doc["utilisation"])
            mib = float(doc.get("memory_mib", 0.0))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not (math.isfinite(util) and 0 <= util <= 100 and math.isfinite(mib) and mib >= 0):
            continue
        utilisation = util if utilisation is None else max(utilisation, util)
        memory += mib
    return None if utilisation is None else (utilisation, memory)
