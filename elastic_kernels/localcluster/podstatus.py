"""Pod phase and conditions computed from container statuses, with the kubelet's own rules.

Kept pure so the rules that clients depend on (when a pod is Running, Succeeded or Failed; what
``Ready`` says and why) can be checked without processes.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from collections.abc import Mapping, Sequence

JSON = dict[str, Any]


def pod_phase(spec: Mapping[str, Any], statuses: Sequence[Mapping[str, Any]],
              pod_is_terminal: bool = False) -> str:
    """kubelet ``getPhase`` for regular containers."""
    by_name = {s.get("name"): s for s in statuses}
    unknown = running = waiting = stopped = succeeded = 0
    for container in spec.get("containers") or []:
        status = by_name.get(container.get("name"))
        if status is None:
            unknown += 1
            continue
        state = status.get("state") or {}
        if state.get("running") is not None:
            running += 1
        elif state.get("terminated") is not None:
            stopped += 1
            if state["terminated"].get("exitCode") == 0:
                succeeded += 1
        elif state.get("waiting") is not None:
            if (status.get("lastState") or {}).get("terminated") is not None:
                stopped += 1
            else:
                waiting += 1
        else:
            unknown += 1
    policy = spec.get("restartPolicy") or "Always"
    if waiting > 0:
        return "Pending"
    if running > 0 and unknown == 0:
        return "Running"
    if running == 0 and stopped > 0 and unknown == 0:
        if pod_is_terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def _go_list(names: Sequence[str]) -> str:
    return "[" + " ".join(names) + "]"


def readiness_condition(ctype: str, spec: Mapping[str, Any],
                        statuses: Sequence[Mapping[str, Any]], phase: str) -> JSON:
    """``ContainersReady`` / ``Ready`` as GenerateContainersReadyCondition words them."""
    by_name = {s.get("name"): s for s in statuses}
    unknown, unready = [], []
    for container in spec.get("containers") or []:
        status = by_name.get(container.get("name"))
        if status is None:
            unknown.append(container.get("name", ""))
        elif not status.get("ready"):
            unready.append(container.get("name", ""))
    if phase == "Succeeded" and not unknown:
        return {"type": ctype, "status": "False", "reason": "PodCompleted"}
    if phase == "Failed":
        return {"type": ctype, "status": "False", "reason": "PodFailed"}
    messages = []
    if unknown:
        messages.append(f"containers with unknown status: {_go_list(unknown)}")
    if unready:
        messages.append(f"containers with unready status: {_go_list(unready)}")
    if messages:
        return {"type": ctype, "status": "False", "reason": "ContainersNotReady",
                "message": ", ".join(messages)}
    return {"type": ctype, "status": "True"}


def merge_conditions(current: Sequence[Mapping[str, Any]], wanted: Sequence[Mapping[str, Any]],
                     now: str) -> list[JSON]:
    """Replace the conditions we own, keeping others (PodScheduled) and unchanged timestamps."""
    by_type = {c.get("type"): c for c in current}
    out: list[JSON] = []
    wanted_types = {w["type"] for w in wanted}
    for w in wanted:
        old = by_type.get(w["type"])
        cond: JSON = {"type": w["type"], "status": w["status"], "lastProbeTime": None}
        same = old is not None and old.get("status") == w["status"]
        cond["lastTransitionTime"] = old.get("lastTransitionTime") if same and old else now
        if w.get("reason"):
            cond["reason"] = w["reason"]
        if w.get("message"):
            cond["message"] = w["message"]
        out.append(cond)
    # Conditions written by others (the scheduler's PodScheduled, DisruptionTarget) stay.
    out.extend(dict(c) for c in current if c.get("type") not in wanted_types)
    order = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady",
             "PodScheduled"]
    out.sort(key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))
    return out


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()``: ``10s``, ``1m20s``, ``5m0s``, ``250ms``."""
    if seconds <= 0:
        return "0s"
    total = Decimal(str(round(seconds, 9)))
    if total < 1:
        ms = total * 1000
        if ms >= 1:
            return f"{_trim(ms)}ms"
        return f"{_trim(ms * 1000)}µs"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{_trim(secs)}s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


def _trim(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def crash_backoff(runs: int, base: float, cap: float) -> float:
    """Delay before restart number ``runs`` (1-based count of finished runs).

    Like the kubelet's back-off: the first restart is immediate, then ``base`` doubling up to
    ``cap`` (10s, 20s, 40s, ... 5m0s with the real defaults).
    """
    if runs <= 1:
        return 0.0
    return min(cap, base * (2 ** (runs - 2)))
