"""Reading a kernel pod's state the way a person would, to fail fast with the cluster's own words.

Peers wait out a start timeout while a pod sits in ImagePullBackOff. Every pod event instead goes
through :func:`assess_pod`, which says whether the kernel is up, still coming, waiting for GPU
capacity (the one case worth waiting for), or never going to start, and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from elastic_kernels.kube import resources as R

JSON = dict[str, Any]

#: Container waiting reasons that will not fix themselves: the start fails at once.
FATAL_WAITING_REASONS = frozenset({
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "StartError",
})

# "Insufficient nvidia.com/gpu.shared." ends a sentence: the name stops before a comma or the end.
_INSUFFICIENT_RE = re.compile(r"Insufficient ([^\s,]+?)\.?(?=[\s,]|$)")


class Progress(Enum):
    PENDING = "pending"
    WAITING_FOR_CAPACITY = "waiting_for_capacity"
    RUNNING = "running"
    FAILED = "failed"
    GONE = "gone"


@dataclass(frozen=True)
class PodAssessment:
    progress: Progress
    reason: str = ""
    message: str = ""
    exit_code: int | None = None

    @property
    def done(self) -> bool:
        return self.progress in (Progress.RUNNING, Progress.FAILED, Progress.GONE)


def assess_pod(pod: JSON | None) -> PodAssessment:
    """Classify a pod (or its absence) for a kernel that is starting or running."""
    if pod is None:
        return PodAssessment(Progress.GONE, "PodDeleted", "the kernel pod was deleted", 1)
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return PodAssessment(Progress.GONE, "PodTerminating", "the kernel pod is being deleted", 1)

    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting")
        if waiting and waiting.get("reason") in FATAL_WAITING_REASONS:
            reason = str(waiting["reason"])
            detail = str(waiting.get("message") or "").strip()
            return PodAssessment(Progress.FAILED, reason,
                                 f"{reason}: {detail}" if detail else reason)
        terminated = state.get("terminated")
        if terminated:
            return _terminated(terminated, cs)

    phase = status.get("phase")
    if phase in ("Failed", "Succeeded"):
        reason = str(status.get("reason") or ("Completed" if phase == "Succeeded" else "Failed"))
        message = str(status.get("message") or f"the kernel pod {phase.lower()}")
        return PodAssessment(Progress.FAILED, reason, message, 0 if phase == "Succeeded" else 1)

    for cond in status.get("conditions") or []:
        if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"):
            message = str(cond.get("message") or "the pod cannot be scheduled")
            if waiting_resources(message):
                return PodAssessment(Progress.WAITING_FOR_CAPACITY, "Unschedulable", message)
            return PodAssessment(Progress.FAILED, "Unschedulable", message)

    ip = status.get("podIP")
    statuses = status.get("containerStatuses") or []
    if ip and statuses and all((cs.get("state") or {}).get("running") for cs in statuses):
        return PodAssessment(Progress.RUNNING, "Running", "")

    reason = "Pending"
    for cs in statuses:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            reason = str(waiting["reason"])
    return PodAssessment(Progress.PENDING, reason, "")


def _terminated(terminated: JSON, container_status: JSON) -> PodAssessment:
    code = terminated.get("exitCode")
    reason = str(terminated.get("reason") or "Error")
    message = str(terminated.get("message") or "").strip()
    text = f"the kernel container exited with code {code} ({reason})"
    if message:
        text += f": {message}"
    return PodAssessment(Progress.FAILED, "ContainerExited", text,
                         int(code) if isinstance(code, int) else 1)


def waiting_resources(message: str) -> list[str]:
    """Which GPU flavors a scheduler message says are short: the only shortage worth waiting
    out (in the GPU queue); any other, cpu or memory included, fails the start at once."""
    return R.gpu_flavors().of(dict.fromkeys(_INSUFFICIENT_RE.findall(message)))
