"""A day of GPU notebook sessions: static allocation against elastic kernels (issue 15, item 4).

Run ``.venv/bin/python -m bench.bench_day [--gpus G] [--trace FILE] [--json OUT] [--seed N]``.
It is a discrete-event simulation on a virtual clock, so a day takes seconds, not a day.

**The workload model** (``make_sessions``; each user's sessions come from their own seeded random
stream, so a larger population keeps the smaller one as its first users):

* a workday of 10 hours (``DAY`` seconds); each user has 3 sessions, one starting in each of the
  morning, midday and afternoon windows (30 users give the reference day of 90 sessions);
* a session lasts a log-normal time (median 75 min, clipped to 20 min - 3 h) and starts at least
  10 minutes after the user's previous one ended; it asks for 1 GPU;
* inside a session the kernel is busy in bursts: think time before each burst is exponential
  (mean 11 min), a burst is log-normal (median 2 min, clipped to 5 s - 45 min). The kernel is
  then busy about 22 % of the session time (the run prints the measured share: 23.0 % for the
  reference day);
* **holding a GPU without using it** (issue 16; ``Workload``, drawn from a second seeded stream
  per user, so the timelines above do not depend on it): a busy kernel is busy in Jupyter, and
  its GPU is busy only for part of that. 15 % of sessions never use their GPU at all
  (``--unused-gpu-sessions``: someone on the GPU kernelspec for pandas and plots, or out of
  habit); in the other sessions 30 % of bursts are CPU-only (``--cpu-bursts``: loading data,
  pandas, plotting), and a GPU burst starts with CPU work (reading a batch, moving it to the
  device) of a uniform share of up to 20 % of the burst (``--cpu-lead``), the GPU busy for the
  rest. The GPU is then busy about 14 % of session time (13.8 % on the reference day; the
  run prints it), against 23 % for the kernel. These are round figures, not measurements; all
  three at 0 give the model before issue 16, GPU busy whenever the kernel is. The issue's "GPU
  busy about 22 %" was that model's; the kernel's activity, which drives the queue and
  the Jupyter-idle culling, is still the same day.

A GPU is never busy while Jupyter shows its kernel idle (a training loop in a background
thread): a wait or a loss of the kernel would move or cut that work, and this model does not say
how. The culling policy's protection of such a kernel is the gateway's tests' to show.

A trace (``--trace FILE``) replaces the model: one session per JSON line,
``{"user": "u1", "start": 3600.0, "end": 14400.0, "gpus": 1, "active": [[3650.0, 3900.0]],
"gpu_active": [[3700.0, 3900.0]]}`` (seconds from the day's start; ``active``: periods the kernel
is busy in Jupyter; ``gpu_active``: periods its GPU is busy, each inside one ``active`` period;
``[]``: never). Without ``gpu_active`` the GPU is busy whenever the kernel is, so a trace written
before the field replays as it did. ``--write-trace FILE`` writes the model in that form (with
``gpu_active`` where it differs from ``active``), and replaying it gives the same figures.

**A wait delays the rest of its session**: a session whose kernel is not ready when the user
needs it (at the session's start, or at a burst after its kernel was culled or reclaimed) starts
the rest of its timeline (bursts, think times, end) when the kernel is ready.

**The policies**, each on the same G GPUs (pods are simulated at the capacity level: a pod needs
a free GPU to bind, and nothing else takes time unless stated):

* ``static``: a GPU is held for the whole session, as Kubeflow notebooks or KubeSpawner with a
  GPU profile do; a session that finds no free GPU waits for one, first come first served (the
  default scheduler's order for equal pods).
* ``elastic``: each session's kernel is a pod holding a GPU from its start to the session's end,
  unless culled or reclaimed. Starts go through the gateway's real
  :class:`~elastic_kernels.gateway.lifecycle.gpuqueue.GpuQueue` (gated pods behind waiters,
  fair order, reclaim for unschedulable waiters), whose reclaim candidates are the culling
  policy's own :func:`~elastic_kernels.culling.policy.reclaim_candidates`, and the culler's
  passes apply :func:`~elastic_kernels.culling.policy.decide` every ``--interval`` seconds, all
  on the virtual clock through the narrow interfaces (callables and an injected clock). The
  policy comes from a JupyterKernelSpec's ``spec.culling`` read by
  :class:`~elastic_kernels.culling.policy.PolicyBook`: ``reclaimAfter`` (default 1m),
  ``idleTimeout`` (default 30m), ``cullConnected: true`` (an open tab does not keep a GPU),
  ``cullBusy: false`` (never a busy kernel). A kernel culled or reclaimed while its session goes
  on has lost its state (``states_lost``); the next burst starts a new kernel through the queue.
* ``elastic_suspend``: the same, for a kernelspec with ``onCull: Suspend`` (modelled at the
  capacity level): a culled or reclaimed kernel keeps its state in a
  snapshot, releases its GPU ``--suspend-delay`` seconds later (default 10 s: the snapshot is
  written while the GPU is still held), and its next burst resumes it through the same queue,
  ready ``--resume-delay`` seconds after its pod binds (default 30 s: about 5 s to start a pod on
  a node with the image cached, plus about 20 s to read and restore a few GB of snapshot at
  ~200 MB/s, rounded up). The resume delay counts as waiting, and the GPU is held meanwhile.
* ``elastic_suspend_gpu_idle``: ``elastic_suspend`` plus ``gpuIdleTimeout`` (``--gpu-idle-timeout``,
  default 10m; ``gpuIdleThreshold`` ``--gpu-idle-threshold``, default 5 %). Every elastic policy
  has a GPU utilisation source, as the gateway's culler uses it: at each pass one reading of
  every running kernel's GPU (100 % if its GPU is busy at that instant, else 0 %: what a direct
  dcgm-exporter scrape sees), followed across passes by the policy's own
  :func:`~elastic_kernels.culling.policy.track_gpu` and given to ``decide`` and
  ``reclaim_candidates`` through :func:`~elastic_kernels.culling.policy.with_gpu_activity`,
  as ``GatewayCuller`` does. Without ``gpuIdleTimeout`` the readings change nothing here (the
  GPU is busy only while the kernel is). With it, a kernel whose GPU stayed idle that long is
  suspended even when a client is connected; one running CPU code is suspended when its cell
  ends (the policy waits for it: a namespace cannot be saved while code runs). A kernelspec that
  culls busy kernels (``cullBusy: true``) could still take one mid-cell; the gateway's save is
  then an execute request queued behind the cell, and the whole save, that wait included, must
  end within ``suspend.timeout`` (60 s) plus ``REPLY_MARGIN_S`` (10 s); a cell that ends sooner
  is followed by the save, else the kernel is culled as with Delete (``states_lost``), its cell
  dying with it (``cells_lost``; the session goes on, and the cell is not run again: run again,
  it would die again).

**GPU flavors** (issue 16): ``--flavors nvidia.com/gpu=8,nvidia.com/mig-1g.10gb=16`` replaces
``--gpus`` with devices of several flavors (whole GPUs, MIG slices, time-sliced shares), and
``--flavor-mix nvidia.com/gpu=1,nvidia.com/mig-1g.10gb=3`` gives each user a flavor (all their
sessions), drawn with those weights from the user's own seeded stream (default: every user on
the first flavor). Each flavor is its own capacity: ``static`` serves each flavor first come
first served, ``elastic`` goes through the real queue with one queue per flavor and reclaim of
kernels of the waiter's flavor only. Figures then also come ``by_flavor`` (p95 wait, held, busy
and used device-seconds), and users per GPU are per device of any flavor. A trace line may carry
``"resource": "nvidia.com/mig-1g.10gb"``.

**Figures** per policy: ``p50_wait_s``/``p95_wait_s`` over every time a session needed a kernel
(start, restart, resume; 0 when it was ready at once; resumes include the resume delay),
``gpu_seconds_held`` (GPUs times the seconds a pod had them bound), ``gpu_seconds_used`` (GPUs
times the seconds their GPU was busy, exactly, from the sessions' ``gpu_active``; not the
sampled readings), ``gpu_utilization`` defined as ``gpu_seconds_used / gpu_seconds_held``
(before issue 16 it was Jupyter-busy seconds over held: the same figure when the GPU is busy
whenever the kernel is; ``busy_gpu_s`` is still the held seconds while the kernel was busy in
Jupyter), ``allocations`` (pods bound), ``states_lost``, ``resumes``, ``gpu_idle_culls``
(GpuIdleTimeout decisions carried out) and ``cells_lost``. ``users_per_gpu`` is the largest
population (users of the model; for a trace, its users cycled with their sessions shifted by
up to ±30 min) whose p95 wait is at most 2 minutes, divided by G; its ``elastic`` is elastic
kernels with Suspend (the issue's comparison), ``elastic_without_suspend`` the same search
without it, ``elastic_suspend_gpu_idle`` with Suspend and gpuIdleTimeout.

The issue 15 claim, on the model with issue 16's GPU use (seed 1, 16 GPUs): elastic with
Suspend serves 57 users against static's 18 (3.56 against 1.12 users per GPU, 3.17x) at p95
wait <= 2 min with ``states_lost`` 0, under ``reclaimAfter: 1m``, ``idleTimeout: 30m``,
``cullConnected: true``, ``cullBusy: false``, ``onCull: Suspend``, no ``gpuIdleTimeout``, culler
every 15 s: the same figures as before the GPU use was modelled, since that policy looks only at
Jupyter's activity, which the model kept. Adding ``gpuIdleTimeout: 10m`` serves 59 (3.69 per
GPU) and holds a fifth fewer GPU-hours (88.7 against 109.7 on the reference day, for the same
17.8 used), also with ``states_lost`` 0: a kernel running a CPU cell is suspended when the cell
ends (see ``elastic_suspend_gpu_idle``).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from elastic_kernels.culling.policy import (CullDecision, CullReason, GpuTrack, KernelFacts,
                                            Policy, PolicyBook, decide, reclaim_candidates,
                                            track_gpu, with_gpu_activity)
from elastic_kernels.gateway.lifecycle.gpuqueue import GpuQueue, Waiter
from elastic_kernels.gateway.lifecycle.suspension import REPLY_MARGIN_S
from elastic_kernels.kube import resources as R

JSON = dict[str, Any]

DAY = 10 * 3600.0
#: The day's start on the virtual clock (any fixed instant: only differences matter).
EPOCH = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc).timestamp()
#: The wait the population search allows at p95.
WAIT_GOAL = 120.0
POLICIES = ("static", "elastic", "elastic_suspend", "elastic_suspend_gpu_idle")


# --- sessions --------------------------------------------------------------------------------


Period = tuple[float, float]


def _ordered(periods: Sequence[Period]) -> bool:
    return all(a <= b for a, b in periods) and all(
        b1 <= a2 for (_, b1), (a2, _) in zip(periods, periods[1:]))


@dataclass(frozen=True)
class Session:
    user: str
    start: float
    end: float
    gpus: int
    active: tuple[Period, ...]
    #: The GPU flavor (extended resource) the session's kernel asks for.
    resource: str = R.GPU_RESOURCE
    #: When the kernel's GPU is busy, each inside one of ``active`` (None: all of ``active``,
    #: as traces written before the distinction say).
    gpu_active: tuple[Period, ...] | None = None

    @property
    def gpu_periods(self) -> tuple[Period, ...]:
        return self.active if self.gpu_active is None else self.gpu_active

    def gpu_in_bursts(self) -> tuple[tuple[Period, ...], ...]:
        """Per burst, its GPU-busy periods as offsets from the burst's start: a wait shifts a
        burst, and its GPU use moves with it."""
        out: list[list[Period]] = [[] for _ in self.active]
        for ga, gb in self.gpu_periods:
            i = next(i for i, (a, b) in enumerate(self.active) if a <= ga <= gb <= b)
            a = self.active[i][0]
            out[i].append((ga - a, gb - a))
        return tuple(tuple(x) for x in out)

    def to_json(self) -> JSON:
        out: JSON = {"user": self.user, "start": self.start, "end": self.end, "gpus": self.gpus,
                     "active": [list(p) for p in self.active]}
        if self.resource != R.GPU_RESOURCE:
            out["resource"] = self.resource
        if self.gpu_active is not None and self.gpu_active != self.active:
            out["gpu_active"] = [list(p) for p in self.gpu_active]
        return out

    @classmethod
    def from_json(cls, obj: JSON) -> Session:
        active = tuple((float(a), float(b)) for a, b in obj.get("active") or [])
        start, end = float(obj["start"]), float(obj["end"])
        if end < start or any(not start <= a <= b <= end for a, b in active) or not _ordered(
                active):
            raise ValueError(f"session of {obj.get('user')!r} at {start}: its active periods "
                             "must be ordered, disjoint and inside [start, end]")
        gpu: tuple[Period, ...] | None = None
        if obj.get("gpu_active") is not None:
            gpu = tuple((float(a), float(b)) for a, b in obj["gpu_active"])
            if not _ordered(gpu) or any(not any(a <= ga <= gb <= b for a, b in active)
                                        for ga, gb in gpu):
                raise ValueError(f"session of {obj.get('user')!r} at {start}: its gpu_active "
                                 "periods must be ordered, disjoint and each inside one of its "
                                 "active periods (background GPU work is not modelled)")
        return cls(str(obj["user"]), start, end, int(obj.get("gpus", 1)), active,
                   str(obj.get("resource") or R.GPU_RESOURCE), gpu)


@dataclass(frozen=True)
class Workload:
    """How the model's kernels use their GPU while busy (module docstring); all 0: always."""

    #: Share of sessions whose kernel never uses its GPU (CPU work on a GPU kernelspec).
    unused_gpu_sessions: float = 0.15
    #: In the other sessions, the share of bursts that are CPU-only (loading, pandas, plots).
    cpu_bursts: float = 0.3
    #: A GPU burst starts with CPU work (reading a batch, moving data to the device) of up to
    #: this share of the burst, drawn uniformly.
    cpu_lead: float = 0.2

    def __post_init__(self) -> None:
        for name in ("unused_gpu_sessions", "cpu_bursts", "cpu_lead"):
            value = getattr(self, name)
            if not 0 <= value <= 1 or (name == "cpu_lead" and value >= 1):
                end = ")" if name == "cpu_lead" else "]"
                raise ValueError(f"{name} must be a share in [0, 1{end}, not {value!r}")

    def gpu_use(self, active: Sequence[Period], rng: random.Random) -> tuple[Period, ...]:
        """The GPU-busy periods of a session with these bursts, drawn from ``rng``."""
        if rng.random() < self.unused_gpu_sessions:
            return ()
        out: list[Period] = []
        for a, b in active:
            if rng.random() < self.cpu_bursts:
                continue
            out.append((min(b, round(a + rng.uniform(0.0, self.cpu_lead) * (b - a), 3)), b))
        return tuple(out)


def _user_sessions(user: str, rng: random.Random, gpu_rng: random.Random,
                   workload: Workload) -> list[Session]:
    sessions: list[Session] = []
    free_at = 0.0
    for window in (0.0, 3.5 * 3600, 6.5 * 3600):
        start = max(free_at + 600.0, window + rng.uniform(0.0, 1.5 * 3600))
        length = min(3 * 3600.0, max(1200.0, rng.lognormvariate(math.log(75 * 60.0), 0.45)))
        end = start + length
        active: list[Period] = []
        t = start
        while True:
            t += rng.expovariate(1 / 660.0)
            burst = min(2700.0, max(5.0, rng.lognormvariate(math.log(120.0), 1.0)))
            if t + burst > end:
                break
            active.append((round(t, 3), round(t + burst, 3)))
            t += burst
        gpu = workload.gpu_use(active, gpu_rng)
        sessions.append(Session(user, round(start, 3), round(end, 3), 1, tuple(active),
                                gpu_active=None if gpu == tuple(active) else gpu))
        free_at = end
    return sessions


def make_sessions(users: int, seed: int = 1, workload: Workload | None = None) -> list[Session]:
    """The model's day for ``users`` users (see the module docstring). GPU use comes from a
    stream of its own per user, so the sessions' timelines do not depend on ``workload``."""
    out: list[Session] = []
    for i in range(users):
        out += _user_sessions(f"u{i + 1}", random.Random(f"{seed}:{i}"),
                              random.Random(f"{seed}:gpu:{i}"), workload or Workload())
    return sorted(out, key=lambda s: (s.start, s.user))


def scale_trace(sessions: Sequence[Session], users: int, seed: int = 1) -> list[Session]:
    """A population of ``users`` from a trace: its users cycled, each copy after the first
    shifted by a seeded offset of up to ±30 minutes."""
    by_user: dict[str, list[Session]] = {}
    for s in sessions:
        by_user.setdefault(s.user, []).append(s)
    names = list(by_user)
    out: list[Session] = []
    for i in range(users):
        base = names[i % len(names)]
        copy = i // len(names)
        shift = random.Random(f"{seed}:trace:{i}").uniform(-1800, 1800) if copy else 0.0
        for s in by_user[base]:
            out.append(Session(base if not copy else f"{base}~{copy}", s.start + shift,
                               s.end + shift, s.gpus,
                               tuple((a + shift, b + shift) for a, b in s.active), s.resource,
                               None if s.gpu_active is None else
                               tuple((a + shift, b + shift) for a, b in s.gpu_active)))
    return sorted(out, key=lambda s: (s.start, s.user))


def parse_counts(text: str, what: str) -> dict[str, float]:
    """``RESOURCE=NUMBER,...`` (``--flavors``, ``--flavor-mix``); raises ValueError naming the
    bad item."""
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or "/" not in name or number < 0 or name in out:
            raise ValueError(f"{what}: {item.strip()!r} is not RESOURCE=NUMBER (a resource "
                             "like nvidia.com/mig-1g.10gb, given once, and a number >= 0)")
        out[name] = number
    if not any(out.values()):
        raise ValueError(f"{what}: nothing is greater than 0")
    return out


def assign_flavors(sessions: Sequence[Session], mix: dict[str, float],
                   seed: int = 1) -> list[Session]:
    """Each user's sessions on one flavor, drawn with ``mix``'s weights from the user's own
    seeded stream (so a larger population keeps the smaller one's flavors)."""
    names, weights = list(mix), list(mix.values())
    chosen: dict[str, str] = {}
    out = []
    for s in sessions:
        if s.user not in chosen:
            chosen[s.user] = random.Random(f"{seed}:flavor:{s.user}").choices(names, weights)[0]
        out.append(replace(s, resource=chosen[s.user]))
    return out


Capacity = dict[str, int]


def as_capacity(gpus: int | Capacity) -> Capacity:
    """Devices per flavor (an int: that many whole GPUs)."""
    return {R.GPU_RESOURCE: gpus} if isinstance(gpus, int) else dict(gpus)


def read_trace(path: Path) -> list[Session]:
    sessions = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                sessions.append(Session.from_json(json.loads(line)))
            except (KeyError, TypeError, ValueError) as e:
                raise SystemExit(f"{path}:{n}: not a session: {e}") from None
    return sessions


def write_trace(sessions: Sequence[Session], path: Path) -> None:
    path.write_text("".join(json.dumps(s.to_json()) + "\n" for s in sessions))


# --- results ----------------------------------------------------------------------------------


@dataclass
class Tally:
    waits: list[float] = field(default_factory=list)
    #: GPU-seconds held while the kernel was busy in Jupyter, and while its GPU was busy.
    busy: float = 0.0
    used: float = 0.0
    held: float = 0.0
    allocations: int = 0
    states_lost: int = 0
    resumes: int = 0
    sessions_done: int = 0
    max_in_use: int = 0
    #: Per flavor: the waits, held and busy device-seconds.
    flavor_waits: dict[str, list[float]] = field(default_factory=dict)
    flavor_held: dict[str, float] = field(default_factory=dict)
    flavor_busy: dict[str, float] = field(default_factory=dict)
    flavor_used: dict[str, float] = field(default_factory=dict)
    #: Culls for gpuIdleTimeout (GpuIdleTimeout decisions carried out).
    gpu_idle_culls: int = 0
    #: Cells that died with their kernel (a GPU-idle cull of a kernel running CPU code).
    cells_lost: int = 0

    def wait(self, resource: str, seconds: float) -> None:
        self.waits.append(seconds)
        self.flavor_waits.setdefault(resource, []).append(seconds)

    def hold(self, resource: str, seconds: float) -> None:
        self.held += seconds
        self.flavor_held[resource] = self.flavor_held.get(resource, 0.0) + seconds

    def use(self, resource: str, seconds: float) -> None:
        self.busy += seconds
        self.flavor_busy[resource] = self.flavor_busy.get(resource, 0.0) + seconds

    def gpu(self, resource: str, seconds: float) -> None:
        self.used += seconds
        self.flavor_used[resource] = self.flavor_used.get(resource, 0.0) + seconds

    def result(self) -> JSON:
        waits = sorted(self.waits)
        flavors = {*self.flavor_waits, *self.flavor_held}
        by_flavor = {} if flavors <= {R.GPU_RESOURCE} else {"by_flavor": {
            r: {"p95_wait_s": round(_percentile(sorted(self.flavor_waits.get(r, [])), 95), 3),
                "held_gpu_s": round(self.flavor_held.get(r, 0.0), 3),
                "busy_gpu_s": round(self.flavor_busy.get(r, 0.0), 3),
                "used_gpu_s": round(self.flavor_used.get(r, 0.0), 3)}
            for r in sorted(flavors)}}
        return {**by_flavor,
            "p50_wait_s": round(_percentile(waits, 50), 3),
            "p95_wait_s": round(_percentile(waits, 95), 3),
            "max_wait_s": round(waits[-1], 3) if waits else 0.0,
            "gpu_utilization": round(self.used / self.held, 4) if self.held else 0.0,
            "gpu_seconds_held": round(self.held, 3),
            "gpu_seconds_used": round(self.used, 3),
            "allocations": self.allocations,
            "states_lost": self.states_lost,
            "resumes": self.resumes,
            "gpu_idle_culls": self.gpu_idle_culls,
            "cells_lost": self.cells_lost,
            "busy_gpu_s": round(self.busy, 3),
            "held_gpu_s": round(self.held, 3),
            "sessions_served": self.sessions_done,
            "max_gpus_in_use": self.max_in_use,
        }


def _percentile(data: Sequence[float], p: float) -> float:
    """Nearest rank, as bench/common.py's percentile."""
    if not data:
        return 0.0
    rank = max(1, min(len(data), int(round(p / 100.0 * len(data) + 0.4999))))
    return data[rank - 1]


class OverAllocated(AssertionError):
    """More GPUs bound than exist: a bug in the simulation, never a result."""


# --- static ------------------------------------------------------------------------------------


def run_static(sessions: Sequence[Session], gpus: int | Capacity) -> JSON:
    """A GPU per session for the whole session; FIFO (per flavor) when none is free."""
    tally = Tally()
    capacity = as_capacity(gpus)
    free = dict(capacity)
    waiting: dict[str, list[Session]] = {}
    events: list[tuple[float, int, str, Session]] = []
    seq = itertools.count()
    for s in sessions:
        heapq.heappush(events, (s.start, next(seq), "arrive", s))
    while events:
        now, _, kind, s = heapq.heappop(events)
        if kind == "arrive":
            waiting.setdefault(s.resource, []).append(s)
        else:
            free[s.resource] += s.gpus
            tally.sessions_done += 1
        for resource, queue in waiting.items():
            while queue and queue[0].gpus <= free.get(resource, 0):
                s = queue.pop(0)
                free[resource] -= s.gpus
                tally.max_in_use = max(tally.max_in_use,
                                       sum(capacity.values()) - sum(free.values()))
                tally.allocations += 1
                tally.wait(resource, now - s.start)
                tally.hold(resource, (s.end - s.start) * s.gpus)
                tally.use(resource, sum(b - a for a, b in s.active) * s.gpus)
                tally.gpu(resource, sum(b - a for a, b in s.gpu_periods) * s.gpus)
                heapq.heappush(events, (now + s.end - s.start, next(seq), "end", s))
        for resource, left in free.items():
            if left < 0 or left > capacity[resource]:
                raise OverAllocated(f"{capacity[resource] - left} {resource} bound of "
                                    f"{capacity[resource]}")
    return tally.result()


# --- elastic -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The elastic policy (a GPU kernelspec's ``spec.culling``) and the Suspend model."""

    reclaim_after: str = "1m"
    idle_timeout: str = "30m"
    interval: float = 15.0
    resume_delay: float = 30.0
    suspend_delay: float = 10.0
    #: ``gpuIdleTimeout`` of the ``elastic_suspend_gpu_idle`` policy (the others: none).
    gpu_idle_timeout: str = "10m"
    gpu_idle_threshold: float = 5.0

    def kernelspec(self, suspend: bool = False, gpu_idle: bool = False) -> JSON:
        """The JupyterKernelSpec whose ``spec.culling`` the PolicyBook reads."""
        culling: JSON = {"idleTimeout": self.idle_timeout, "reclaimAfter": self.reclaim_after,
                         "cullConnected": True, "cullBusy": False,
                         "gpuIdleThreshold": self.gpu_idle_threshold}
        if suspend:
            culling["onCull"] = R.ON_CULL_SUSPEND
        if gpu_idle:
            culling["gpuIdleTimeout"] = self.gpu_idle_timeout
        return {"apiVersion": R.API_VERSION, "kind": R.KERNELSPEC_KIND,
                "metadata": {"name": "gpu", "namespace": "sim"},
                "spec": {"displayName": "GPU", "language": "python",
                         "argv": ["python", "-m", "ipykernel_launcher", "-f",
                                  "{connection_file}"],
                         "image": "sim", "gpus": 1, "culling": culling}}


@dataclass
class Kernel:
    """One session's kernel (a new one after each loss of state)."""

    kernel_id: str
    session: SessionRun
    phase: str = "waiting"  # waiting (pod pending), starting (bound, not ready), running,
    #                         saving (a suspension waits for the running cell), suspending
    #                         (snapshot, GPU still held), gone
    gated: bool = False
    unschedulable: bool = False
    bound_at: float = 0.0
    created_at: float = 0.0
    last_activity: float = 0.0
    busy: bool = False
    resume: bool = False
    #: When the current burst started (GPU use is read against it).
    burst_started: float = 0.0
    #: What the culler's GPU readings said so far (as the gateway keeps per kernel).
    track: GpuTrack | None = None
    #: While saving: whether the save ends within the suspend timeout.
    save_ok: bool = False


@dataclass
class SessionRun:
    session: Session
    index: int
    shift: float = 0.0
    next_burst: int = 0
    kernel: Kernel | None = None
    suspended: bool = False
    blocked_since: float | None = None
    started: bool = False
    done: bool = False
    #: The current burst's generation: the end a burst cut short by its kernel's loss had
    #: scheduled must not count.
    burst_token: int = 0
    #: A burst came due while the kernel was being saved: it runs once there is a kernel.
    waiting_on_save: bool = False
    #: Per burst, its GPU-busy periods as offsets from the burst's start.
    gpu: tuple[tuple[Period, ...], ...] = ()


class ElasticDay:
    """The elastic policies on a virtual clock, through the real GPU queue and culling policy."""

    def __init__(self, sessions: Sequence[Session], gpus: int | Capacity, settings: Settings,
                 suspend: bool, gpu_idle: bool = False) -> None:
        self.runs = [SessionRun(s, i, gpu=s.gpu_in_bursts()) for i, s in enumerate(sessions)]
        self.capacity = as_capacity(gpus)
        self.free = dict(self.capacity)
        self.settings = settings
        self.suspend = suspend
        self.now = 0.0
        self.tally = Tally()
        self.book = PolicyBook.from_objects(Policy(), [settings.kernelspec(suspend, gpu_idle)])
        if self.book.problems:
            raise ValueError("; ".join(self.book.problems))
        self.policy = self.book.for_spec("gpu")
        self.kernels: dict[str, Kernel] = {}  # pods that exist, by kernel id, in creation order
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._flavor: dict[str, str] = {}  # kernel id -> the flavor its session asks for
        self.queue = GpuQueue(reclaim_candidates=self._candidates, reclaim=self._reclaim,
                              ungate=self._ungate, report=self._report, clock=self.clock,
                              victim_flavor=lambda d: self._flavor[d.kernel.kernel_id])

    # -- the clock and the event list ----------------------------------------------------------

    def clock(self) -> float:
        return EPOCH + self.now

    def _moment(self, t: float) -> datetime:
        return datetime.fromtimestamp(EPOCH + t, timezone.utc)

    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (t, next(self._seq), fn, args))

    async def run(self) -> JSON:
        for run in self.runs:
            self.at(run.session.start, self._session_start, run)
        self.at(self.settings.interval, self._culler_pass)
        while self._events and not all(r.done for r in self.runs):
            t, _, fn, args = heapq.heappop(self._events)
            self.now = t
            fn(*args)
            await self._settle()
        await self.queue.stop()
        return self.tally.result()

    async def _settle(self) -> None:
        """Let the queue act, then the scheduler, until neither has anything left to do."""
        while True:
            await self.queue.settled()
            if not self._schedule():
                return

    # -- the scheduler (capacity only) ------------------------------------------------------------

    def _schedule(self) -> bool:
        """Bind pending ungated pods in creation order while GPUs are free; tell the queue
        about pods that do not fit (the provisioner's reading of the scheduler's verdict)."""
        changed = False
        for k in list(self.kernels.values()):
            if k.phase != "waiting" or k.gated:
                continue
            gpus, resource = k.session.session.gpus, k.session.session.resource
            if gpus <= self.free.get(resource, 0):
                self.free[resource] -= gpus
                self.tally.max_in_use = max(self.tally.max_in_use, sum(self.capacity.values())
                                            - sum(self.free.values()))
                if self.free[resource] < 0:
                    raise OverAllocated(f"{self.capacity[resource] - self.free[resource]} "
                                        f"{resource} bound of {self.capacity[resource]}")
                self.tally.allocations += 1
                k.phase, k.bound_at = "starting", self.now
                self.queue.leave(k.kernel_id)  # bound: the next may go
                delay = self.settings.resume_delay if k.resume else 0.0
                self.at(self.now + delay, self._ready, k)
                changed = True
            elif not k.unschedulable:
                k.unschedulable = True
                self.queue.unschedulable(k.kernel_id, k.session.session.user, gpus, "sim",
                                         f"pod-{k.kernel_id}", "0/1 nodes are available: "
                                         f"Insufficient {resource}.", resource)
                changed = True
        return changed

    def _release(self, k: Kernel) -> None:
        session = k.session.session
        self.free[session.resource] += session.gpus
        self.tally.hold(session.resource, (self.now - k.bound_at) * session.gpus)
        k.phase = "gone"
        self.kernels.pop(k.kernel_id, None)

    # -- the queue's callables ----------------------------------------------------------------

    def _facts(self, k: Kernel) -> KernelFacts:
        """What the gateway's culler knows: the record, Jupyter's live state and, as in
        ``GatewayCuller._held``, what the GPU readings add (:func:`with_gpu_activity`)."""
        return with_gpu_activity(KernelFacts(
            name=f"kernel-{k.kernel_id}", namespace="sim", kernel_id=k.kernel_id,
            user=k.session.session.user, kernel_spec="gpu",
            phase=R.PHASE_RUNNING if k.phase == "running" else R.PHASE_STARTING,
            gpus=k.session.session.gpus, created_at=self._moment(k.created_at),
            started_at=self._moment(k.bound_at), last_activity=self._moment(k.last_activity),
            execution_state=R.EXECUTION_BUSY if k.busy else R.EXECUTION_IDLE, connections=1,
            deleting=k.phase in ("saving", "suspending", "gone")), k.track)

    def _candidates(self) -> list[CullDecision]:
        return reclaim_candidates((self._facts(k) for k in self.kernels.values()
                                   if k.phase == "running"), self.book, self._moment(self.now))

    async def _reclaim(self, decision: CullDecision) -> bool:
        k = self.kernels.get(decision.kernel.kernel_id)
        if k is None or k.phase != "running":
            return False
        self._cull(k, decision)
        return True

    async def _ungate(self, waiter: Waiter) -> bool:
        k = self.kernels.get(waiter.kernel_id)
        if k is None:
            return False
        k.gated = False
        return True

    async def _report(self, waiter: Waiter, status: JSON) -> None:
        return None  # the record's message; nothing to simulate

    # -- kernels ---------------------------------------------------------------------------------

    def _request(self, run: SessionRun, resume: bool) -> None:
        """The session needs its kernel: create its pod as the provisioner would."""
        kernel_id = f"k{next(self._ids)}"
        k = Kernel(kernel_id, run, created_at=self.now, resume=resume)
        run.kernel = k
        run.blocked_since = self.now
        self.kernels[kernel_id] = k
        self._flavor[kernel_id] = run.session.resource
        if self.queue.has_waiting(run.session.resource):
            k.gated = True  # behind the others; the queue lifts the gate in fair order
            self.queue.enqueue(kernel_id, run.session.user, run.session.gpus, "sim",
                               f"pod-{kernel_id}", gated=True, resource=run.session.resource)

    def _ready(self, k: Kernel) -> None:
        if k.phase != "starting":
            return
        run = k.session
        k.phase = "running"
        k.last_activity = self.now
        if k.resume:
            self.tally.resumes += 1
        assert run.blocked_since is not None
        wait = self.now - run.blocked_since
        self.tally.wait(run.session.resource, wait)
        run.shift += wait
        run.blocked_since = None
        run.suspended = False
        if not run.started:
            run.started = True
            self._next(run, run.session.start)
        else:
            self._burst(run)

    def _cull(self, k: Kernel, decision: CullDecision) -> None:
        """An idle cull, a GPU-idle cull or a reclaim: the kernel goes; Suspend keeps its state.

        Only a cull of a policy that takes busy kernels (``cullBusy``, or a GPU-idle cull
        without Suspend) takes a kernel whose cell runs. The
        gateway's save is then an execute request queued behind that cell, and the whole save,
        wait included, must end within the kernelspec's ``suspend.timeout`` plus the reply
        margin (``Snapshots.save``): it works when the cell ends soon enough, else the kernel
        is culled as with Delete, and the cell's work is lost with it (``cells_lost``).
        Without Suspend the cell dies at once.
        """
        if decision.reason == CullReason.GPU_IDLE:
            self.tally.gpu_idle_culls += 1
        run = k.session
        if k.busy:
            if not self.suspend:
                self._lose(k)
                return
            a, b = run.session.active[run.next_burst]
            left = k.burst_started + (b - a) - self.now
            window = self.policy.suspend_timeout + REPLY_MARGIN_S
            k.phase = "saving"
            k.save_ok = left + self.settings.suspend_delay <= window
            if not k.save_ok:
                self.at(self.now + window, self._save_failed, k)
            return
        run.kernel = None
        if self.suspend:
            run.suspended = True
            k.phase = "suspending"
            self.at(self.now + self.settings.suspend_delay, self._suspended, k)
        else:
            self.tally.states_lost += 1  # the session goes on (its end shuts it down)
            self._release(k)

    def _suspended(self, k: Kernel) -> None:
        self._release(k)

    def _save_failed(self, k: Kernel) -> None:
        if k.phase == "saving":  # not gone with its session's end
            self._lose(k)

    def _lose(self, k: Kernel) -> None:
        """The kernel goes without a snapshot while its session goes on. A cell it was running
        dies with it and is not run again: run again, a CPU cell longer than gpuIdleTimeout
        would die again at every try. The session goes on from there (its next burst starts a
        new kernel)."""
        run = k.session
        self.tally.states_lost += 1
        cut: float | None = None
        if k.busy:
            self._account(run, k)
            self.tally.cells_lost += 1
            k.busy = False
            run.burst_token += 1
            cut = run.session.active[run.next_burst][0] + self.now - k.burst_started
            run.next_burst += 1
        self._release(k)
        if run.kernel is k:
            run.kernel = None
        needed, run.suspended, run.waiting_on_save = run.waiting_on_save, False, False
        if needed:
            self._request(run, resume=False)
        elif cut is not None:
            self._next(run, cut)

    # -- sessions ---------------------------------------------------------------------------

    def _session_start(self, run: SessionRun) -> None:
        self._request(run, resume=False)

    def _next(self, run: SessionRun, after: float) -> None:
        """Schedule what follows ``after`` (a time of the session's own timeline)."""
        s = run.session
        if run.next_burst < len(s.active):
            a, _ = s.active[run.next_burst]
            self.at(self.now + (a - after), self._burst_due, run)
        else:
            self.at(self.now + (s.end - after), self._session_end, run)

    def _burst_due(self, run: SessionRun) -> None:
        k = run.kernel
        if k is not None and k.phase == "running":
            self._burst(run)
        elif k is None:
            self._request(run, resume=run.suspended)
        elif k.phase == "saving":
            run.waiting_on_save = True  # a save that fails leaves no kernel: then a new one
        # else: its kernel is starting; _ready runs the burst

    def _burst(self, run: SessionRun) -> None:
        k = run.kernel
        assert k is not None
        a, b = run.session.active[run.next_burst]
        k.busy, k.last_activity, k.burst_started = True, self.now, self.now
        self.at(self.now + (b - a), self._burst_end, run, run.burst_token)

    def _gpu_busy(self, k: Kernel) -> bool:
        """Whether the kernel's GPU is busy now (what dcgm-exporter would read)."""
        if not k.busy:
            return False
        offset = self.now - k.burst_started
        return any(ga <= offset < gb for ga, gb in k.session.gpu[k.session.next_burst])

    def _account(self, run: SessionRun, k: Kernel) -> None:
        """Busy and GPU-busy GPU-seconds of the current burst, up to now."""
        offset = self.now - k.burst_started
        gpus, resource = run.session.gpus, run.session.resource
        self.tally.use(resource, offset * gpus)
        self.tally.gpu(resource, sum(max(0.0, min(gb, offset) - ga)
                                     for ga, gb in run.gpu[run.next_burst]) * gpus)

    def _burst_end(self, run: SessionRun, token: int) -> None:
        if token != run.burst_token:
            return  # that run of the burst was cut short with its kernel
        k = run.kernel
        assert k is not None  # a busy kernel is taken only through _lose, which moves on
        self._account(run, k)
        k.busy, k.last_activity = False, self.now
        _, b = run.session.active[run.next_burst]
        run.next_burst += 1
        if k.phase == "saving" and k.save_ok:  # the queued save runs now, and succeeds
            run.kernel = None
            run.suspended = True
            k.phase = "suspending"
            self.at(self.now + self.settings.suspend_delay, self._suspended, k)
        self._next(run, b)

    def _session_end(self, run: SessionRun) -> None:
        k = run.kernel
        if k is not None:
            run.kernel = None
            self._release(k)
        run.done = True
        self.tally.sessions_done += 1

    # -- the culler's pass ------------------------------------------------------------------------

    def _culler_pass(self) -> None:
        """As ``GatewayCuller.run_once``: one GPU reading for every running kernel (its GPU at
        100 % or 0 % at this instant, as a direct scrape sees it), each kernel's idle spell
        followed with :func:`track_gpu`, then :func:`decide` on each."""
        now = self._moment(self.now)
        running = [k for k in self.kernels.values() if k.phase == "running"]
        for k in running:
            k.track = track_gpu(k.track, 100.0 if self._gpu_busy(k) else 0.0,
                                self.policy.gpu_idle_threshold, now)
        for k in running:
            if k.phase != "running":
                continue
            facts = self._facts(k)
            decision = decide(facts, self.book(facts), now)
            if decision is not None:
                self._cull(k, decision)
        self.queue.poke()  # idle kernels crossed their reclaimAfter: the queue looks again
        self.at(self.now + self.settings.interval, self._culler_pass)


def run_elastic(sessions: Sequence[Session], gpus: int | Capacity, settings: Settings,
                suspend: bool, gpu_idle: bool = False) -> JSON:
    return asyncio.run(ElasticDay(sessions, gpus, settings, suspend, gpu_idle).run())


def run_policy(name: str, sessions: Sequence[Session], gpus: int | Capacity,
               settings: Settings) -> JSON:
    if name == "static":
        return run_static(sessions, gpus)
    return run_elastic(sessions, gpus, settings, suspend=name.startswith("elastic_suspend"),
                       gpu_idle=name == "elastic_suspend_gpu_idle")


# --- the population search -----------------------------------------------------------------------


def most_users(policy: str, population: Callable[[int], list[Session]], gpus: int | Capacity,
               settings: Settings, limit: int) -> int:
    """The largest population whose p95 wait is at most WAIT_GOAL (exponential, then binary
    search; 0 when even one user waits longer)."""
    def ok(users: int) -> bool:
        return bool(run_policy(policy, population(users), gpus, settings)["p95_wait_s"]
                    <= WAIT_GOAL)

    if not ok(1):
        return 0
    good, bad = 1, None
    step = max(1, sum(as_capacity(gpus).values()))
    while bad is None:
        trial = min(limit, good + step)
        if ok(trial):
            good = trial
            if good >= limit:
                return good
            step *= 2
        else:
            bad = trial
    while bad - good > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


# --- the run -------------------------------------------------------------------------------------


def simulate(sessions: Sequence[Session], gpus: int | Capacity, settings: Settings,
             population: Callable[[int], list[Session]] | None, limit: int) -> JSON:
    devices = sum(as_capacity(gpus).values())
    result: JSON = {name: run_policy(name, sessions, gpus, settings) for name in POLICIES}
    session_time = sum(s.end - s.start for s in sessions)
    result["model"] = {
        "sessions": len(sessions), "users": len({s.user for s in sessions}),
        "busy_share": round(sum(b - a for s in sessions for a, b in s.active)
                            / session_time, 4) if session_time else 0.0,
        "gpu_busy_share": round(sum(b - a for s in sessions for a, b in s.gpu_periods)
                                / session_time, 4) if session_time else 0.0,
        "sessions_without_gpu_use": sum(1 for s in sessions if not s.gpu_periods),
    }
    if population is not None:
        users = {name: most_users(name, population, gpus, settings, limit) for name in POLICIES}
        # "elastic" is elastic kernels with Suspend, the comparison (without Suspend the
        # same population loses kernel state; its figure is given beside it).
        result["users_per_gpu"] = {"static": users["static"] / devices,
                                   "elastic": users["elastic_suspend"] / devices,
                                   "elastic_without_suspend": users["elastic"] / devices,
                                   "elastic_suspend_gpu_idle":
                                       users["elastic_suspend_gpu_idle"] / devices}
        result["users_served"] = users
    return result


def report(result: JSON) -> list[str]:
    cfg = result["config"]
    m = result["model"]
    lines = [f"{m['sessions']} sessions of {m['users']} users on {cfg['gpus']} GPUs "
             f"({cfg['source']}); kernel busy {m['busy_share'] * 100:.1f} % of session time, "
             f"GPU busy {m.get('gpu_busy_share', m['busy_share']) * 100:.1f} %; "
             f"{m.get('sessions_without_gpu_use', 0)} sessions never use their GPU"]
    for name in POLICIES:
        r = result[name]
        lines.append(f"  {name:24s} p50 wait {r['p50_wait_s']:6.1f} s, p95 "
                     f"{r['p95_wait_s']:6.1f} s, allocations {r['allocations']}, states lost "
                     f"{r['states_lost']}, resumes {r['resumes']}, GPU-idle culls "
                     f"{r['gpu_idle_culls']}")
        lines.append(f"  {'':24s} GPU-hours held {r['gpu_seconds_held'] / 3600:6.1f}, used "
                     f"{r['gpu_seconds_used'] / 3600:5.1f}: GPU utilization (used / held) "
                     f"{r['gpu_utilization'] * 100:5.1f} %")
        for flavor, f in (r.get("by_flavor") or {}).items():
            used = f["used_gpu_s"] / f["held_gpu_s"] if f["held_gpu_s"] else 0.0
            lines.append(f"    {flavor:30s} p95 wait {f['p95_wait_s']:6.1f} s, held "
                         f"{f['held_gpu_s'] / 3600:6.1f} h, used {f['used_gpu_s'] / 3600:5.1f} h "
                         f"({used * 100:5.1f} %)")
    upg = result.get("users_per_gpu")
    if upg:
        ratio = upg["elastic"] / upg["static"] if upg["static"] else float("inf")
        served = result["users_served"]
        lines.append(f"users per GPU at p95 wait <= {WAIT_GOAL:.0f} s: static {upg['static']:.2f}, "
                     f"elastic with Suspend {upg['elastic']:.2f} ({ratio:.2f}x; "
                     f"{served['elastic_suspend']} vs {served['static']} users; without Suspend "
                     f"{upg.get('elastic_without_suspend', float('nan')):.2f}, losing state; "
                     f"with Suspend and gpuIdleTimeout "
                     f"{upg.get('elastic_suspend_gpu_idle', float('nan')):.2f})")
    s = cfg["settings"]
    lines.append(f"policy: reclaimAfter {s['reclaim_after']}, idleTimeout {s['idle_timeout']}, "
                 f"cullConnected true, cullBusy false, culler interval {s['interval']:g} s; "
                 f"Suspend: suspend delay {s['suspend_delay']:g} s, resume delay "
                 f"{s['resume_delay']:g} s; elastic_suspend_gpu_idle adds gpuIdleTimeout "
                 f"{s.get('gpu_idle_timeout', '-')} (threshold "
                 f"{s.get('gpu_idle_threshold', 5.0):g} %); seed {cfg['seed']}; simulated in "
                 f"{result['wall_s']:.1f} s")
    w = cfg.get("workload")
    if w:
        lines.append(f"workload: {w['unused_gpu_sessions'] * 100:g} % of sessions never use "
                     f"the GPU, {w['cpu_bursts'] * 100:g} % of the others' bursts are CPU-only, "
                     f"a GPU burst starts with up to {w['cpu_lead'] * 100:g} % CPU work")
    return lines


def chart(result: JSON, path: Path) -> Path | None:
    """Users per GPU, p95 wait, and GPU-hours held against used per policy (matplotlib, the
    bench extra)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    labels = ["static", "elastic (loses state)", "elastic + Suspend",
              "elastic + Suspend + gpuIdleTimeout"]
    colours = ["#969696", "#6caadc", "#1f77b4", "#2ca02c"]
    # Results saved before issue 16 have three policies and no GPU-seconds used (their GPU was
    # busy whenever the kernel was).
    names = [p for p in POLICIES if p in result]
    labels, colours = labels[:len(names)], colours[:len(names)]
    n = len(names)
    panels: list[tuple[str, list[float]]] = [
        ("p95 wait (s), reference day", [result[p]["p95_wait_s"] for p in names]),
    ]
    upg = result.get("users_per_gpu")
    if upg:
        panels.insert(0, (f"Users per GPU at p95 wait <= {WAIT_GOAL:.0f} s",
                          [upg["static"], upg.get("elastic_without_suspend", float("nan")),
                           upg["elastic"], upg.get("elastic_suspend_gpu_idle", float("nan"))][:n]))
    held = [result[p].get("gpu_seconds_held", result[p]["held_gpu_s"]) / 3600 for p in names]
    used = [result[p].get("gpu_seconds_used", result[p]["busy_gpu_s"]) / 3600 for p in names]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(10, 1.9 * (len(panels) + 1) + 0.6),
                             squeeze=False)
    try:
        for ax, (title, values) in zip(axes[:, 0], panels):
            shown = [v if v == v else 0.0 for v in values]
            ax.barh(range(n), shown, color=colours)
            ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
            top = max(shown) or 1.0
            ax.set_xlim(0, top * 1.18)
            for y, v in enumerate(values):
                ax.text((v if v == v else 0) + top * 0.01, y, f"{v:.2f}" if v == v else "-",
                        va="center", fontsize=9)
        ax = axes[-1, 0]
        ax.barh(range(n), held, color="#d9d9d9", label="held")
        ax.barh(range(n), used, color=colours, height=0.5, label="used (GPU busy)")
        ax.set_title("GPU-hours held (grey) and used (GPU busy), reference day", loc="left",
                     fontsize=11, fontweight="bold")
        top = max(held) or 1.0
        ax.set_xlim(0, top * 1.45)
        for y, (h, u) in enumerate(zip(held, used)):
            share = u / h * 100 if h else 0.0
            ax.text(h + top * 0.01, y, f"{h:.0f} h held, {u:.0f} h used ({share:.0f} %)",
                    va="center", fontsize=9)
        for ax in axes[:, 0]:
            ax.set_yticks(range(n), labels)
            ax.invert_yaxis()
            ax.spines[["top", "right"]].set_visible(False)
        fig.text(0.01, 0.005, f"bench_day: {result['config']['gpus']} GPUs, simulated day; "
                 "see bench/REPORT.md", fontsize=9, color="#5a5a5a")
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> JSON:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_day",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=16, help="GPUs in the cluster (default 16)")
    parser.add_argument("--users", type=int, default=30,
                        help="users of the model's reference day (default 30: 90 sessions)")
    parser.add_argument("--flavors", metavar="RESOURCE=N,...",
                        help="devices per GPU flavor instead of --gpus, e.g. "
                        "nvidia.com/gpu=8,nvidia.com/mig-1g.10gb=16")
    parser.add_argument("--flavor-mix", metavar="RESOURCE=WEIGHT,...",
                        help="each user's flavor, drawn with these weights (default: the first "
                        "of --flavors for everyone)")
    parser.add_argument("--trace", type=Path, help="replay this JSONL trace instead of the model")
    parser.add_argument("--write-trace", type=Path, help="write the day's sessions as a trace")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reclaim-after", default=Settings.reclaim_after)
    parser.add_argument("--idle-timeout", default=Settings.idle_timeout)
    parser.add_argument("--interval", type=float, default=Settings.interval,
                        help="seconds between the culler's passes (CullingDefaults.interval)")
    parser.add_argument("--resume-delay", type=float, default=Settings.resume_delay)
    parser.add_argument("--suspend-delay", type=float, default=Settings.suspend_delay)
    parser.add_argument("--gpu-idle-timeout", default=Settings.gpu_idle_timeout,
                        help="gpuIdleTimeout of elastic_suspend_gpu_idle (default 10m)")
    parser.add_argument("--gpu-idle-threshold", type=float, default=Settings.gpu_idle_threshold,
                        help="gpuIdleThreshold, percent (default 5)")
    parser.add_argument("--unused-gpu-sessions", type=float,
                        default=Workload.unused_gpu_sessions,
                        help="model: share of sessions that never use their GPU (default 0.15)")
    parser.add_argument("--cpu-bursts", type=float, default=Workload.cpu_bursts,
                        help="model: share of the other sessions' bursts that are CPU-only "
                        "(default 0.3)")
    parser.add_argument("--cpu-lead", type=float, default=Workload.cpu_lead,
                        help="model: a GPU burst starts with CPU work of up to this share of "
                        "it (default 0.2); all three 0: the GPU is busy whenever the kernel is")
    parser.add_argument("--max-users", type=int, default=0,
                        help="upper bound of the population search (default 20 per GPU)")
    parser.add_argument("--no-search", action="store_true",
                        help="skip the users-per-GPU search (users_per_gpu is then absent)")
    parser.add_argument("--quick", action="store_true", help="same as the default (it is quick)")
    parser.add_argument("--no-save", action="store_true",
                        help="do not write bench/results/day.json")
    args = parser.parse_args(argv)
    # The queue logs each reclaim at WARNING, as the gateway should; here they are the point.
    logging.getLogger("elastic_kernels").setLevel(logging.ERROR)
    if args.gpus < 1:
        parser.error("--gpus must be at least 1")
    gpus: int | Capacity = args.gpus
    mix: dict[str, float] | None = None
    try:
        workload = Workload(args.unused_gpu_sessions, args.cpu_bursts, args.cpu_lead)
        if args.flavors:
            gpus = {r: int(n) for r, n in parse_counts(args.flavors, "--flavors").items()}
            if any(float(n) != int(n) for n in parse_counts(args.flavors, "--flavors").values()):
                parser.error("--flavors: device counts must be whole numbers")
        if args.flavor_mix:
            mix = parse_counts(args.flavor_mix, "--flavor-mix")
            unknown = sorted(set(mix) - set(as_capacity(gpus)))
            if unknown:
                parser.error(f"--flavor-mix: {', '.join(unknown)} has no devices (--flavors)")
    except ValueError as e:
        parser.error(str(e))

    def flavored(day: list[Session]) -> list[Session]:
        return assign_flavors(day, mix, args.seed) if mix else [
            replace(s, resource=next(iter(as_capacity(gpus)))) if args.flavors else s
            for s in day]
    settings = Settings(args.reclaim_after, args.idle_timeout, args.interval, args.resume_delay,
                        args.suspend_delay, args.gpu_idle_timeout, args.gpu_idle_threshold)
    try:
        for gpu_idle in (False, True):
            problems = PolicyBook.from_objects(
                Policy(), [settings.kernelspec(True, gpu_idle)]).problems
            if problems:
                raise ValueError("; ".join(problems))
    except ValueError as e:
        parser.error(str(e))
    population: Callable[[int], list[Session]]
    if args.trace:
        trace = read_trace(args.trace)
        if not trace:
            parser.error(f"{args.trace} holds no session")
        sessions = trace

        def population(users: int) -> list[Session]:
            return scale_trace(trace, users, args.seed) if not mix else flavored(
                scale_trace(trace, users, args.seed))
        source = f"trace {args.trace.name}"
    else:
        sessions = flavored(make_sessions(args.users, args.seed, workload))

        def population(users: int) -> list[Session]:
            return flavored(make_sessions(users, args.seed, workload))
        source = "the model"
    if args.write_trace:
        write_trace(sessions, args.write_trace)
    t0 = time.perf_counter()
    if mix and args.trace:
        sessions = flavored(sessions)
    missing = sorted({x.resource for x in sessions} - set(as_capacity(gpus)))
    if missing:
        parser.error(f"sessions ask for {', '.join(missing)}, which has no devices "
                     "(--flavors, --flavor-mix)")
    devices = sum(as_capacity(gpus).values())
    result = simulate(sessions, gpus, settings, None if args.no_search else population,
                      args.max_users or 20 * devices)
    result["wall_s"] = time.perf_counter() - t0
    result["config"] = {"gpus": devices, "seed": args.seed, "source": source,
                        **({"flavors": as_capacity(gpus)} if args.flavors else {}),
                        **({"flavor_mix": mix} if mix else {}),
                        "users": args.users if not args.trace else None,
                        **({"workload": asdict(workload)} if not args.trace else {}),
                        "settings": asdict(settings)}
    result["lines"] = report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.no_save:
        from . import common as C
        C.save_results("day", result)
    print("\n".join(result["lines"]))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
