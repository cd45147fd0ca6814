"""Who holds GPUs, and how much of them they use: the report of ``elastic-kernels cull --report``.

The gateway counts GPU-seconds held and used as they pass (its ``/metrics``, for Prometheus and
dashboards, kept per gateway process). An admin asked "who sits on idle GPUs right now?" needs an
answer that does not depend on a running gateway or on Prometheus having kept a series, so this
report works from the API and the GPU utilisation source alone:

* *held*: for each running GPU kernel (its JupyterKernel record), GPUs times the seconds since
  its pod started (``status.startedAt``; a restart starts a new pod and a new count);
* *utilisation now*: one reading of the source (:mod:`.gpusource`), and whether each kernel's
  GPUs are under its kernelspec's ``gpuIdleThreshold`` (*idle GPUs*);
* *used*: with a Prometheus, one more query averages each pod's utilisation over the age of the
  oldest kernel (the series of a pod exist only while the pod does, so each average covers its
  own kernel's life as far as Prometheus kept it); used = held x average. Without one (scrape
  mode reads only the present), used is unknown and shown as such, never guessed.

Rows are per (user, kernelspec); the kernels behind them are in the JSON output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..kube import resources as R
from .gpusource import GpuReading
from .policy import PolicyBook


@dataclass(frozen=True)
class KernelUsage:
    """One running GPU kernel in the report."""

    kernel_id: str
    user: str
    kernel_spec: str
    pod: str
    gpus: int
    held_seconds: float
    #: Percent, now (None: the reading does not know this pod).
    utilisation: float | None
    #: Under its kernelspec's gpuIdleThreshold now (None: not known).
    gpu_idle: bool | None
    #: Percent, averaged over the pod's life (None: no Prometheus, or no series).
    average: float | None

    @property
    def used_seconds(self) -> float | None:
        if self.average is None:
            return None
        return self.held_seconds * min(100.0, max(0.0, self.average)) / 100.0


@dataclass
class UsageRow:
    """One user's kernels of one kernelspec."""

    user: str
    kernel_spec: str
    kernels: int = 0
    gpus: int = 0
    held_seconds: float = 0.0
    #: None when any kernel's use is unknown: a partial sum would understate it.
    used_seconds: float | None = 0.0
    idle_gpus: int = 0
    #: GPUs whose current use is not known.
    unknown_gpus: int = 0


@dataclass
class UsageReport:
    generated_at: datetime
    kernels: list[KernelUsage] = field(default_factory=list)
    rows: list[UsageRow] = field(default_factory=list)
    #: Why figures are missing (source errors, unreadable records).
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    source_available: bool = False


def kernel_usage(records: Iterable[Mapping[str, Any]], book: PolicyBook, now: datetime,
                 current: GpuReading | None, average: GpuReading | None,
                 warnings: list[str]) -> list[KernelUsage]:
    """The running GPU kernels among ``records`` with their figures; unreadable records are
    skipped with a line in ``warnings``."""
    found: list[KernelUsage] = []
    for obj in records:
        try:
            view = R.KernelView.from_object(obj)
        except ValueError as e:
            warnings.append(f"skipped an unreadable record: {e}")
            continue
        if view.gpus <= 0 or view.phase != R.PHASE_RUNNING or view.started_at is None:
            continue
        held = view.gpus * max(0.0, (now - view.started_at).total_seconds())
        use = current.for_pod(view.namespace, view.pod_name) if current else None
        mean = average.for_pod(view.namespace, view.pod_name) if average else None
        threshold = book.for_spec(view.kernel_spec).gpu_idle_threshold
        found.append(KernelUsage(
            kernel_id=view.kernel_id, user=view.user, kernel_spec=view.kernel_spec,
            pod=view.pod_name, gpus=view.gpus, held_seconds=held,
            utilisation=use.utilisation if use else None,
            gpu_idle=(use.busiest < threshold) if use else None,
            average=mean.utilisation if mean else None))
    return found


def rows_of(kernels: Iterable[KernelUsage]) -> list[UsageRow]:
    """Per (user, kernelspec), the most GPU-seconds held first."""
    rows: dict[tuple[str, str], UsageRow] = {}
    for k in kernels:
        row = rows.setdefault((k.user, k.kernel_spec), UsageRow(k.user, k.kernel_spec))
        row.kernels += 1
        row.gpus += k.gpus
        row.held_seconds += k.held_seconds
        used = k.used_seconds
        row.used_seconds = None if used is None or row.used_seconds is None \
            else row.used_seconds + used
        if k.gpu_idle is None:
            row.unknown_gpus += k.gpus
        elif k.gpu_idle:
            row.idle_gpus += k.gpus
    return sorted(rows.values(), key=lambda r: (-r.held_seconds, r.user, r.kernel_spec))


def oldest_window(kernels: Iterable[KernelUsage]) -> float:
    """Seconds back to the start of the oldest kernel's pod (what one average must cover)."""
    return math.ceil(max((k.held_seconds / k.gpus for k in kernels), default=0.0))
