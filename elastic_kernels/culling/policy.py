"""The idle policy: when a kernel should be shut down, and why. Shared by the gateway and the cron.

Two deciders look at the same kernels with different knowledge:

* **The gateway** holds the kernels. It knows each one's live activity (jupyter_server's last
  message time), its execution state and its open connections, so it can apply the whole policy
  exactly, including ``cullBusy`` and ``cullConnected``. It builds :class:`KernelFacts` with those
  fields filled in and calls :func:`decide` (idle culling) and :func:`reclaim_candidates` (GPU
  pressure) with ``activity_slack=0``.
* **The cron** (``elastic-kernels cull``) sees only the JupyterKernel records, the Leases and the
  kernelspecs. The gateway therefore mirrors onto each record it holds what the policy needs and
  the cron cannot see, each written only when it changes (:func:`status_to_mirror`), never
  periodically for a kernel whose state stays the same:

  - ``status.connections``: the gateway's open client websockets to the kernel, written at the
    next culler pass when the count changed. The 0 -> n transition is written as the websocket
    opens when a cron run before that pass could cull the kernel (someone reopened a long-idle
    kernel; see ``GatewayCuller.connected``); a fresh kernel's first client waits for the pass;
  - ``status.executionState``: ``busy`` or ``idle`` as sampled at each culler pass. A kernel
    flips on every execution, so flips between two passes are not written; a busy spell that
    spans a pass is, so a long silent computation is protected;
  - ``status.lastActivity``: the real last activity, at most once per :data:`MIRROR_INTERVAL`
    when it moved on (and along with any other write). An idle kernel with a client connected
    therefore costs no write at all in steady state.

  The cron applies the same :func:`decide` to the record's values. Consequences, by design:

  - what reaches the record at a culler pass may be up to one pass old (and lastActivity up to
    :data:`MIRROR_INTERVAL` behind), so the cron adds that as slack (``activity_slack``): it
    never culls a kernel the gateway would still keep, and may cull up to that slack plus its
    own schedule *later* than the gateway would. It is a safety net (for kernels whose gateway
    is gone, or a gateway whose culler is off), not the primary culler;
  - the recorded connections and execution state are only the view of the gateway that claims
    the kernel (``spec.gateway``), and only as good as that gateway is alive: a record that
    names no gateway has them ignored (:meth:`KernelFacts.from_view`), and an orphan (its
    gateway's Lease expired past the grace) is culled whatever they say (rule 2 of
    :func:`decide`). A gateway that holds the kernel afterwards (restart, adoption) writes its
    own view at its next pass, so a stale count protects the kernel for at most one pass;
  - only the claiming gateway writes them (another replica that merely serves the kernel does
    not), so connections through another replica are not counted, as in the claimant's own
    culler;
  - only the cron judges orphans (:attr:`CullReason.ORPHANED`): a gateway does not ask whether
    its own lease is live.

Terms, all in seconds, "0 disables the rule" as in jupyter_server's culler:

* *idle* is ``now - last activity``; without recorded activity it counts from the pod's start
  (``status.startedAt``), and without that from the record's creation;
* *age* is ``now - metadata.creationTimestamp`` of the JupyterKernel: the API server sets it, a
  restart (a new pod, same kernel) does not reset it, and nobody can make a kernel look younger.
  ``maxAge`` therefore bounds a whole kernel session, restarts included.

The module is pure: dataclasses and functions over them, and every decision takes ``now`` as an
argument, so it runs as well on a virtual clock (``bench/bench_day.py`` replays a day with it).
Carrying a decision out through the Kubernetes API is :mod:`elastic_kernels.culling.actions`;
``.importlinter`` keeps this module from importing the client.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from traitlets import Bool, Float, TraitError, validate
from traitlets.config import Configurable

from ..kube import resources as R

#: A status body (plain JSON), as the gateway writes it.
JSON = dict[str, Any]

#: The gateway writes ``status.lastActivity`` at most this often per kernel (DESIGN §4).
MIRROR_INTERVAL = 60.0

EXECUTION_BUSY = R.EXECUTION_BUSY

#: Phases in which a kernel is still starting: its launch timeout governs it, not idleness.
STARTING_PHASES = frozenset({R.PHASE_PENDING, R.PHASE_STARTING})


class CullReason(str, enum.Enum):
    """Why a kernel was shut down; the value is the status reason and the Event reason."""

    IDLE_TIMEOUT = "IdleTimeout"
    MAX_AGE = "MaxAge"
    RECLAIMED = "ReclaimedForWaitingKernel"
    ORPHANED = "Orphaned"
    LAUNCH_ABANDONED = "LaunchAbandoned"
    GPU_IDLE = "GpuIdleTimeout"

    def __str__(self) -> str:
        return self.value


#: Every status reason a culler writes; a record carrying one is already being culled.
CULL_REASONS = frozenset(r.value for r in CullReason)


# --- policy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """An effective culling policy: every field resolved, durations in seconds, 0 = off."""

    idle_timeout: float = 0.0
    cull_connected: bool = False
    cull_busy: bool = False
    max_age: float = 0.0
    reclaim_after: float = 0.0
    #: The kernelspec's launchTimeout (else the gateway's default); 0: pod-less records of
    #: this kernelspec are not judged (see :func:`launch_abandoned_message`).
    launch_timeout: float = 0.0
    #: What an idle cull or a reclaim does (``R.ON_CULL``), and Suspend's save limits.
    on_cull: str = R.ON_CULL_DELETE
    suspend_max_bytes: int = 1 << 30
    suspend_timeout: float = 60.0
    #: Cull a GPU kernel whose GPUs stayed under ``gpu_idle_threshold`` percent this long
    #: (0: never), connected or busy with CPU work alike; see :func:`gpu_idle_message`.
    gpu_idle_timeout: float = 0.0
    #: Utilisation (percent) under which a GPU counts as idle, at or over which as busy.
    gpu_idle_threshold: float = 5.0

    @property
    def suspends(self) -> bool:
        return self.on_cull == R.ON_CULL_SUSPEND

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "max_age", "reclaim_after", "launch_timeout",
                     "gpu_idle_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
        threshold = self.gpu_idle_threshold
        if (not isinstance(threshold, (int, float)) or not math.isfinite(threshold)
                or not 0 < threshold <= 100):
            raise ValueError(f"gpu_idle_threshold must be a percentage in (0, 100], not "
                             f"{threshold!r}")


def _non_negative(proposal: Any) -> float:
    value = proposal["value"]
    if not math.isfinite(value) or value < 0:
        raise TraitError(f"{proposal['trait'].name} must be >= 0 seconds (0 disables), "
                         f"not {value!r}")
    return float(value)


class CullingDefaults(Configurable):
    """Gateway-wide culling defaults; a kernelspec's ``spec.culling`` overrides them field by field.

    Durations are seconds and 0 disables a rule, as with jupyter_server's
    ``MappingKernelManager.cull_idle_timeout``. ``cullConnected`` and ``cullBusy`` of a
    kernelspec always win: the CRD defaults them to false, so a stored kernelspec always says;
    the boolean defaults here apply to kernels whose kernelspec no longer exists.
    """

    idle_timeout = Float(
        0.0, config=True,
        help="Seconds of idleness after which a kernel is shut down (0: never). Per kernelspec: "
        "spec.culling.idleTimeout.",
    )
    cull_connected = Bool(
        False, config=True,
        help="Cull idle kernels that still have a connected client. Per kernelspec: "
        "spec.culling.cullConnected.",
    )
    cull_busy = Bool(
        False, config=True,
        help="Cull kernels that are busy executing. Per kernelspec: spec.culling.cullBusy.",
    )
    max_age = Float(
        0.0, config=True,
        help="Seconds after its creation at which a kernel is shut down whatever its activity "
        "(0: never). Per kernelspec: spec.culling.maxAge.",
    )
    reclaim_after = Float(
        600.0, config=True,
        help="Seconds of idleness after which a GPU kernel may be shut down to free its GPUs "
        "for a waiting start (0: never reclaim). Per kernelspec: spec.culling.reclaimAfter.",
    )
    gpu_idle_timeout = Float(
        0.0, config=True,
        help="Seconds a GPU kernel's GPUs may stay under gpu_idle_threshold before it is culled "
        "(or suspended), even when connected or running CPU-only code (0: never). Needs "
        "GpuUseSource. Per kernelspec: spec.culling.gpuIdleTimeout.",
    )
    gpu_idle_threshold = Float(
        5.0, config=True,
        help="GPU utilisation in percent under which a GPU counts as idle; at or over it, a "
        "kernel Jupyter shows idle is protected from idle culling and reclaim (background "
        "work). Per kernelspec: spec.culling.gpuIdleThreshold.",
    )
    interval = Float(
        60.0, config=True,
        help="Seconds between two passes of the gateway's culler.",
    )
    orphan_grace = Float(
        300.0, config=True,
        help="Seconds a kernel's gateway lease may be expired (or missing) before the cull job "
        "treats the kernel as orphaned. Covers gateway restarts, clock skew and adoption.",
    )

    @validate("idle_timeout", "max_age", "reclaim_after", "orphan_grace", "gpu_idle_timeout")
    def _check_seconds(self, proposal: Any) -> float:
        return _non_negative(proposal)

    @validate("gpu_idle_threshold")
    def _check_threshold(self, proposal: Any) -> float:
        value = proposal["value"]
        if not math.isfinite(value) or not 0 < value <= 100:
            raise TraitError(f"gpu_idle_threshold must be a percentage in (0, 100], not "
                             f"{value!r}")
        return float(value)

    @validate("interval")
    def _check_interval(self, proposal: Any) -> float:
        value = proposal["value"]
        if not math.isfinite(value) or value <= 0:
            raise TraitError(f"interval must be > 0 seconds, not {value!r}")
        return float(value)

    def as_policy(self) -> Policy:
        return Policy(
            idle_timeout=self.idle_timeout,
            cull_connected=self.cull_connected,
            cull_busy=self.cull_busy,
            max_age=self.max_age,
            reclaim_after=self.reclaim_after,
            gpu_idle_timeout=self.gpu_idle_timeout,
            gpu_idle_threshold=self.gpu_idle_threshold,
        )


def effective_policy(spec: R.CullingPolicy | R.KernelSpecView | None, defaults: Policy) -> Policy:
    """The kernelspec's ``spec.culling`` over the defaults: an unset duration takes the default."""
    if isinstance(spec, R.KernelSpecView):
        spec = spec.culling
    if spec is None:
        return defaults

    def pick(value: float | None, fallback: float) -> float:
        return fallback if value is None else float(value)

    return Policy(
        idle_timeout=pick(spec.idle_timeout, defaults.idle_timeout),
        cull_connected=spec.cull_connected,
        cull_busy=spec.cull_busy,
        max_age=pick(spec.max_age, defaults.max_age),
        reclaim_after=pick(spec.reclaim_after, defaults.reclaim_after),
        on_cull=spec.on_cull,
        suspend_max_bytes=spec.suspend_max_bytes or defaults.suspend_max_bytes,
        suspend_timeout=pick(spec.suspend_timeout, defaults.suspend_timeout),
        gpu_idle_timeout=pick(spec.gpu_idle_timeout, defaults.gpu_idle_timeout),
        gpu_idle_threshold=pick(spec.gpu_idle_threshold, defaults.gpu_idle_threshold),
    )


class PolicyBook:
    """Effective policies by kernelspec name, built from kernelspec CRs (a list or a watch cache).

    A kernelspec that is missing (deleted since the kernel started) or unreadable gets the
    defaults: a kernel must never become immortal because its kernelspec went away.
    """

    def __init__(self, defaults: Policy, specs: Mapping[str, Policy] | None = None,
                 problems: Sequence[str] = ()) -> None:
        self.defaults = defaults
        self._specs = dict(specs or {})
        #: One line per kernelspec that could not be read (shown by the cron, logged by the
        #: gateway); their kernels get the defaults.
        self.problems = list(problems)

    @classmethod
    def from_objects(cls, defaults: Policy, objects: Iterable[Mapping[str, Any]]) -> PolicyBook:
        specs: dict[str, Policy] = {}
        problems: list[str] = []
        for obj in objects:
            try:
                view = R.KernelSpecView.from_object(obj)
            except ValueError as e:
                problems.append(f"{e}; its kernels get the default culling policy")
                continue
            specs[view.name] = replace(effective_policy(view.culling, defaults),
                                       launch_timeout=view.launch_timeout
                                       or defaults.launch_timeout)
        return cls(defaults, specs, problems)

    def for_spec(self, name: str) -> Policy:
        return self._specs.get(name, self.defaults)

    def __call__(self, kernel: KernelFacts) -> Policy:
        return self.for_spec(kernel.kernel_spec)


# --- what a decider knows about a kernel -------------------------------------------------------


@dataclass(frozen=True)
class LeaseFacts:
    """A gateway's ``coordination.k8s.io/v1`` Lease, as far as orphan detection needs it."""

    name: str
    holder: str
    renew_time: datetime | None
    duration: float

    def expires_at(self) -> datetime | None:
        if self.renew_time is None:
            return None
        return self.renew_time + timedelta(seconds=self.duration)


@dataclass(frozen=True)
class KernelFacts:
    """Everything either decider knows about one kernel; ``None`` means "not known here".

    The gateway fills ``last_activity``, ``execution_state`` and ``connections`` with its live
    values; the cron takes them from the record (as the claiming gateway last mirrored them)
    and sets ``lease_checked`` with the kernel's gateway's lease in ``gateway_lease``
    (``None``: no such lease).
    """

    name: str
    namespace: str
    kernel_id: str
    user: str
    kernel_spec: str
    uid: str = ""
    resource_version: str = ""
    phase: str = R.PHASE_PENDING
    reason: str = ""
    message: str = ""
    gpus: int = 0
    created_at: datetime | None = None
    started_at: datetime | None = None
    last_activity: datetime | None = None
    execution_state: str | None = None
    connections: int | None = None
    gateway: str = ""
    lease_renewed_at: datetime | None = None
    gateway_lease: LeaseFacts | None = None
    lease_checked: bool = False
    deleting: bool = False
    #: Whether the kernel has a pod (any restart's), as the decider listed or watched them;
    #: None: not looked at, and then no rule depends on it.
    has_pod: bool | None = None
    #: From the GPU utilisation source (:mod:`.gpusource`), as :func:`track_gpu` followed it;
    #: None: not known (no source, no reading for the pod, or the reading failed).
    #: Since when every reading found the kernel's GPUs under the threshold.
    gpu_idle_since: datetime | None = None
    #: The latest reading found its GPUs at or over the threshold.
    gpu_busy: bool | None = None
    #: The GPU flavor it holds (``status.gpuResource``); "" when the record does not say.
    gpu_resource: str = ""

    @classmethod
    def from_view(cls, view: R.KernelView, **known: Any) -> KernelFacts:
        """Facts from a JupyterKernel record; ``known`` overrides it with live knowledge.

        The recorded connections and execution state count only when the record names the
        gateway whose view they are: nothing else writes them, and with no claimant there is no
        Lease to tell whether that view is still alive.
        """
        claimed = bool(view.gateway)
        facts = cls(
            name=view.name,
            namespace=view.namespace,
            kernel_id=view.kernel_id,
            user=view.user,
            kernel_spec=view.kernel_spec,
            uid=view.uid,
            resource_version=view.resource_version,
            phase=view.phase,
            reason=view.reason,
            message=view.message,
            gpus=view.gpus,
            gpu_resource=view.gpu_resource,
            created_at=view.created_at,
            started_at=view.started_at,
            last_activity=view.last_activity,
            execution_state=view.execution_state if claimed else None,
            connections=view.connections if claimed else None,
            gateway=view.gateway,
            lease_renewed_at=view.lease_renewed_at,
            deleting=view.deleting,
        )
        return replace(facts, **known) if known else facts

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], **known: Any) -> KernelFacts:
        """Facts from a JupyterKernel dict; raises ResourceError naming a malformed field."""
        return cls.from_view(R.KernelView.from_object(obj), **known)

    def activity_reference(self) -> datetime | None:
        """Idleness counts from here: the last activity, else the pod's start, else creation."""
        return self.last_activity or self.started_at or self.created_at

    def idle_seconds(self, now: datetime) -> float | None:
        ref = self.activity_reference()
        return None if ref is None else max(0.0, (now - ref).total_seconds())

    def age_seconds(self, now: datetime) -> float | None:
        if self.created_at is None:
            return None
        return max(0.0, (now - self.created_at).total_seconds())

    @property
    def busy(self) -> bool:
        return self.execution_state == EXECUTION_BUSY


@dataclass(frozen=True)
class CullDecision:
    """Shut ``kernel`` down for ``reason``; ``message`` says why in words a user understands."""

    kernel: KernelFacts
    reason: CullReason
    message: str
    idle: float | None = None
    age: float | None = None


# --- deciding -----------------------------------------------------------------------------------


def _d(seconds: float) -> str:
    """A duration for messages: whole seconds as 1h5m, sub-second values as 250ms."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return R.format_duration(seconds)


def _t(moment: datetime) -> str:
    return R.format_timestamp(moment)


def orphan_message(kernel: KernelFacts, now: datetime, grace: float) -> str | None:
    """Why ``kernel`` is orphaned, or None when its gateway still (or may still) hold it.

    A kernel is orphaned when it names a gateway (``spec.gateway``) and that gateway's lease is
    missing, released to someone else, or expired for longer than ``grace``. A kernel claimed
    less than ``grace`` ago (created, or its ``status.leaseRenewedAt``) is given the benefit of
    the doubt, so a gateway that starts kernels before its first lease write is visible, or has
    just adopted one, does not lose them. Adoption moves ``spec.gateway`` to the adopter, whose
    lease is then the one that counts. Kernels without a gateway (a plain jupyter_server started
    them) are never orphans: nothing claims them, so nothing can stop claiming them.
    """
    if not kernel.lease_checked or not kernel.gateway:
        return None
    if kernel.phase == R.PHASE_SUSPENDED:
        return None  # no gateway holds a suspended kernel: any one resumes it when asked
    claimed = max((t for t in (kernel.created_at, kernel.lease_renewed_at) if t is not None),
                  default=None)
    if claimed is not None and (now - claimed).total_seconds() <= grace:
        return None
    lease = kernel.gateway_lease
    if lease is None:
        return f"gateway {kernel.gateway} holds no lease and no other gateway adopted the kernel"
    if lease.holder != kernel.gateway:
        holder = f"is held by {lease.holder!r}" if lease.holder else "was released"
        return (f"the lease of gateway {kernel.gateway} {holder} and no other gateway adopted "
                "the kernel")
    expires = lease.expires_at()
    if expires is None:
        return f"gateway {kernel.gateway}'s lease was never renewed"
    overdue = (now - expires).total_seconds()
    if overdue <= grace:
        return None
    assert lease.renew_time is not None  # expires_at() had one
    return (f"gateway {kernel.gateway} last renewed its lease at {_t(lease.renew_time)} "
            f"(expired {_d(overdue)} ago, grace {_d(grace)}) and no other gateway adopted "
            "the kernel")


def launch_abandoned_message(kernel: KernelFacts, launch_timeout: float, now: datetime,
                             grace: float) -> str | None:
    """Why ``kernel`` is the leftover of a start that failed; None when it is not (or may not be).

    Such a record never ran (still Pending or Starting, never ``startedAt``), has no pod, and was
    created more than its launch timeout plus ``grace`` ago. A start creates the record and,
    right after, the pod, and gives up (deleting the record) at its launch timeout, so a live
    start is never that old without a pod; a kernel waiting in the GPU queue has its pod
    (gated or Pending) and is never judged here, nor is a restart (it has ``startedAt``). What
    remains is a record whose create the API server carried out after the start had failed
    (a hung API server): nobody holds it, its user cannot see it, and it counts against their
    limits. ``grace`` covers clock skew between the decider and the API server, which sets
    ``creationTimestamp``. ``kernel.has_pod`` None (not looked at) or a zero launch timeout
    never judges.
    """
    if kernel.has_pod is not False or launch_timeout <= 0 or kernel.deleting:
        return None
    if kernel.started_at is not None or kernel.phase not in STARTING_PHASES:
        return None
    age = kernel.age_seconds(now)
    if age is None or age <= launch_timeout + grace:
        return None
    return (f"the kernel never started and has no pod {_d(age)} after its record was created, "
            f"past its launchTimeout of {_d(launch_timeout)} (grace {_d(grace)}): the start "
            "failed after the record was written (e.g. while the API server hung) and nothing "
            "else would remove it")


def gpu_idle_message(kernel: KernelFacts, policy: Policy, now: datetime) -> str | None:
    """Why ``kernel`` holds GPUs it does not use, or None when it does (or nobody knows).

    Only a running kernel that holds GPUs, whose every reading for ``gpu_idle_timeout`` found
    them under ``gpu_idle_threshold``: unknown use (no source, a failed reading, a pod the
    exporter does not list) never counts as idle. Connections and a busy execution state do
    not protect it: a kernel can be connected all day, or spin a CPU loop, and still hold a GPU
    that another user waits for.

    Except under ``onCull: Suspend``: a busy kernel is suspended when its cell ends, not
    before. Its namespace cannot be saved while code runs (the save waits behind the cell, and
    a long cell outlasts the suspend timeout), so culling it then would delete the very state
    Suspend exists to keep, and the cell's work with it; the day simulation lost 19 kernels a
    day that way (bench_day). The GPU stays held until the cell ends, and the idle time
    already measured counts: the first pass after it suspends the kernel.
    """
    if (policy.gpu_idle_timeout <= 0 or kernel.gpus <= 0 or kernel.phase != R.PHASE_RUNNING
            or kernel.gpu_idle_since is None or kernel.gpu_busy is not False):
        return None
    if policy.suspends and kernel.busy:
        return None
    idle = (now - kernel.gpu_idle_since).total_seconds()
    if idle <= policy.gpu_idle_timeout:
        return None
    return (f"its {'GPU was' if kernel.gpus == 1 else 'GPUs were'} under "
            f"{policy.gpu_idle_threshold:g}% utilisation for {_d(idle)} (since "
            f"{_t(kernel.gpu_idle_since)}), past its gpuIdleTimeout of "
            f"{_d(policy.gpu_idle_timeout)}")


def decide(
    kernel: KernelFacts,
    policy: Policy,
    now: datetime,
    *,
    orphan_grace: float = 0.0,
    activity_slack: float = 0.0,
    launch_grace: float = 0.0,
) -> CullDecision | None:
    """Whether to cull ``kernel`` now, and why; None keeps it.

    Rules, first match wins:

    1. ``MaxAge``: older than ``max_age``, whatever its activity (busy and connected included).
    2. ``Orphaned``: only when the caller checked the gateway's lease (the cron); see
       :func:`orphan_message`. Busy and connected do not protect an orphan: no gateway relays its
       messages, so no one can be using it.
    3. ``LaunchAbandoned``: only when the caller looked for the kernel's pod (``has_pod``) and
       the policy has a launch timeout; see :func:`launch_abandoned_message`.
    4. ``GpuIdleTimeout``: its GPUs measured idle longer than ``gpu_idle_timeout``, whatever
       its connections and execution state (a busy kernel of a Suspend policy: once its cell
       ends); see :func:`gpu_idle_message`.
    5. ``IdleTimeout``: idle longer than ``idle_timeout + activity_slack``, unless it is still
       starting (Pending/Starting: its launch timeout governs it), busy while ``cull_busy`` is
       false, connected while ``cull_connected`` is false, or its GPUs are measured busy
       (``gpu_busy``: background work Jupyter does not see). For the cron these are the
       record's ``status.executionState`` and ``status.connections`` (see the module
       docstring); unknown busy/connected state does not protect. The gateway also counts a
       busy GPU as activity (:func:`with_gpu_activity`), so the record's ``lastActivity``
       protects such a kernel from the cron, which has no GPU readings.

    A kernel already being deleted is never chosen again.
    """
    if kernel.deleting:
        return None
    idle = kernel.idle_seconds(now)
    age = kernel.age_seconds(now)

    if policy.max_age > 0 and age is not None and age > policy.max_age:
        return CullDecision(kernel, CullReason.MAX_AGE,
                            f"the kernel is {_d(age)} old, past its maxAge of "
                            f"{_d(policy.max_age)}", idle, age)

    orphan = orphan_message(kernel, now, orphan_grace)
    if orphan is not None:
        return CullDecision(kernel, CullReason.ORPHANED, orphan, idle, age)

    abandoned = launch_abandoned_message(kernel, policy.launch_timeout, now, launch_grace)
    if abandoned is not None:
        return CullDecision(kernel, CullReason.LAUNCH_ABANDONED, abandoned, idle, age)

    gpu_idle = gpu_idle_message(kernel, policy, now)
    if gpu_idle is not None:
        return CullDecision(kernel, CullReason.GPU_IDLE, gpu_idle, idle, age)

    if (policy.idle_timeout <= 0 or idle is None or kernel.phase in STARTING_PHASES
            or kernel.phase == R.PHASE_SUSPENDED):
        return None  # a suspended kernel holds nothing but its snapshot; only maxAge ends it
    if kernel.busy and not policy.cull_busy:
        return None
    if kernel.gpu_busy:
        return None  # background GPU work (a training loop in a thread) is use
    if (kernel.connections or 0) > 0 and not policy.cull_connected:
        return None
    if idle <= policy.idle_timeout + activity_slack:
        return None
    since = kernel.activity_reference()
    what = "last activity" if kernel.last_activity else "start"
    when = f" ({what} {_t(since)})" if since is not None else ""
    return CullDecision(kernel, CullReason.IDLE_TIMEOUT,
                        f"the kernel was idle for {_d(idle)}{when}, past its idleTimeout of "
                        f"{_d(policy.idle_timeout)}", idle, age)


def reclaim_candidates(
    kernels: Iterable[KernelFacts],
    policy_for: Callable[[KernelFacts], Policy],
    now: datetime,
) -> list[CullDecision]:
    """GPU kernels that may be shut down for a waiting start, longest idle first.

    Only running kernels that hold GPUs, are idle past their ``reclaim_after`` (0: never
    reclaimed), are not being deleted, and whose execution state is known and not busy: "never
    reclaim a busy kernel" is a promise, so a kernel whose state this gateway cannot see is not
    taken; nor is one whose GPUs are measured busy (background work). Connections do not
    protect: an open browser tab on an idle GPU is exactly the waste reclaim exists for. Take
    one per waiting start, in order; ties go by name, so two replicas pick alike.
    """
    found: list[CullDecision] = []
    for kernel in kernels:
        if kernel.deleting or kernel.gpus <= 0 or kernel.phase != R.PHASE_RUNNING:
            continue
        if kernel.execution_state is None or kernel.busy or kernel.gpu_busy:
            continue
        policy = policy_for(kernel)
        idle = kernel.idle_seconds(now)
        if policy.reclaim_after <= 0 or idle is None or idle <= policy.reclaim_after:
            continue
        found.append(CullDecision(
            kernel, CullReason.RECLAIMED,
            f"the kernel was idle for {_d(idle)}, past its reclaimAfter of "
            f"{_d(policy.reclaim_after)}, while another kernel waited for "
            f"{'a GPU' if kernel.gpus == 1 else 'GPUs'}; its {kernel.gpus} "
            f"{kernel.gpu_resource or R.GPU_RESOURCE} went to that kernel",
            idle, kernel.age_seconds(now),
        ))
    found.sort(key=lambda d: (-(d.idle or 0.0), d.kernel.namespace, d.kernel.name))
    return found


def recorded_execution_state(state: str | None) -> str | None:
    """What the record says for a live execution state: busy, or idle for any other known state
    (starting, restarting, dead: none of them protects). None: unknown, nothing to write."""
    if state is None:
        return None
    return R.EXECUTION_BUSY if state == EXECUTION_BUSY else R.EXECUTION_IDLE


def status_to_mirror(live: KernelFacts, recorded: R.KernelView, written: datetime | None = None,
                     interval: float = MIRROR_INTERVAL) -> JSON:
    """The ``status`` fields the gateway should write for a kernel; empty: nothing to write.

    ``live`` is the gateway's view, ``recorded`` the record as it is, ``written`` the
    lastActivity this gateway last wrote (None: none, or forgotten).

    Connections and execution state are written when they differ from the record (a missing
    field reads as 0 and idle, so a fresh kernel costs nothing). Comparing with the record
    rather than with what this gateway last wrote makes the mirror correct itself: a stale
    value (a previous holder's, a write that lost a race) is overwritten at the next pass.

    Activity is written when :func:`mirror_due` against what the cron already counts idleness
    from: the newer of ``written`` and the recorded lastActivity, else the pod's start, else
    the record's creation (:meth:`KernelFacts.activity_reference`). A kernel nobody used since
    it started therefore costs no activity write at all. Along with another write, any newer
    activity is included (it is free).
    """
    body: JSON = {}
    if live.connections is not None and live.connections != (recorded.connections or 0):
        body["connections"] = live.connections
    state = recorded_execution_state(live.execution_state)
    if state is not None and state != (recorded.execution_state or R.EXECUTION_IDLE):
        body["executionState"] = state
    activity = live.last_activity
    known = [t for t in (written, recorded.last_activity) if t is not None]
    reference = max(known) if known else (recorded.started_at or recorded.created_at)
    if activity is not None and (
            mirror_due(reference, activity, interval)
            or (body and (reference is None or activity > reference))):
        body["lastActivity"] = R.format_timestamp(activity)
    return body


def mirror_due(mirrored: datetime | None, activity: datetime | None,
               interval: float = MIRROR_INTERVAL) -> bool:
    """Whether a new activity time is worth a write: newer, and the last write is old enough."""
    if activity is None:
        return False
    if mirrored is None:
        return True
    return activity > mirrored and (activity - mirrored).total_seconds() >= interval


# --- GPU use over time --------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuTrack:
    """What successive GPU readings said of one kernel; kept by the gateway between passes."""

    #: Since when every reading found its GPUs under the threshold (None: not idle, or not
    #: known without a gap).
    idle_since: datetime | None = None
    #: The latest reading that found them at or over the threshold.
    last_busy: datetime | None = None
    #: The latest reading's mean utilisation, percent (None: that reading did not know).
    utilisation: float | None = None
    #: When this kernel was last accounted (:class:`GpuSeconds`).
    seen_at: datetime | None = None

    @property
    def busy(self) -> bool | None:
        """At or over the threshold in the latest reading; None: not known."""
        if self.utilisation is None:
            return None
        return self.idle_since is None


def track_gpu(previous: GpuTrack | None, utilisation: float | None, threshold: float,
              now: datetime) -> GpuTrack:
    """The track after a reading of ``utilisation`` percent (None: the reading did not know).

    A reading that did not know restarts the idle clock: nobody saw the GPU in that gap, so
    it may have been busy, and idleness must be measured, never assumed.
    """
    last_busy = previous.last_busy if previous is not None else None
    if utilisation is None:
        return GpuTrack(None, last_busy, None, now)
    if utilisation >= threshold:
        return GpuTrack(None, now, utilisation, now)
    since = previous.idle_since if previous is not None else None
    return GpuTrack(since or now, last_busy, utilisation, now)


def with_gpu_activity(kernel: KernelFacts, track: GpuTrack | None) -> KernelFacts:
    """``kernel`` with what the GPU readings add: busy GPUs count as activity (so the mirrored
    ``lastActivity`` keeps the cron's idle rule off a kernel training in the background), and
    the GPU idle and busy facts the rules read."""
    if track is None:
        return kernel
    activity = kernel.last_activity
    if track.last_busy is not None and (activity is None or track.last_busy > activity):
        activity = track.last_busy
    return replace(kernel, last_activity=activity, gpu_idle_since=track.idle_since,
                   gpu_busy=track.busy)


@dataclass
class GpuSecondsEntry:
    """GPU-seconds of one user's kernels of one kernelspec."""

    held: float = 0.0
    used: float = 0.0
    #: Held while no reading knew the kernel's use: neither used nor idle, as far as we know.
    unmeasured: float = 0.0


class GpuSeconds:
    """GPU-seconds held and used, per (user, kernelspec), accumulated pass by pass.

    *Held* is GPUs times the seconds a running kernel had them; *used* weighs each second by
    the measured utilisation (a GPU at 30% for 100 s is 30 GPU-seconds used). Time a kernel
    held GPUs while no reading knew its use is *unmeasured*, so that held = used + idle +
    unmeasured and nothing is guessed. A kernel is accounted from the first pass that sees it
    running, in steps of the time between two passes, with the reading of the pass that ends
    the step.
    """

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], GpuSecondsEntry] = {}

    def add(self, user: str, kernelspec: str, gpus: int, seconds: float,
            utilisation: float | None) -> None:
        if gpus <= 0 or seconds <= 0:
            return
        entry = self.entries.setdefault((user, kernelspec), GpuSecondsEntry())
        held = gpus * seconds
        entry.held += held
        if utilisation is None:
            entry.unmeasured += held
        else:
            entry.used += held * min(100.0, max(0.0, utilisation)) / 100.0

    def snapshot(self) -> dict[tuple[str, str], GpuSecondsEntry]:
        return {key: replace(entry) for key, entry in self.entries.items()}
