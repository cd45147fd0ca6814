"""Each user's kernels as they change: resources, phase, queue position, cull deadlines, culls.

Endpoints (relative to the gateway's base URL; token or JupyterHub auth as everywhere):

``GET /api/elastic/kernels``
    One-shot JSON: ``{"user", "admin", "kernels": [...], "overview": {...}}``.
``GET /api/elastic/kernels/stream``
    The same as server-sent events (``text/event-stream``): one ``snapshot`` event, then
    ``kernel`` (a kernel's whole model, new or changed), ``removed`` (``{"id", "ended",
    "last_phase", "kernelspec"}``: why it went away, when known; a ``last_phase`` of Pending or
    Starting means its start failed, told even when none of its changes was) and ``overview``
    events, with a comment line every
    :attr:`KernelStatusHub.heartbeat` seconds so proxies keep the connection open.
``POST /api/elastic/kernels/{id}/keepalive``
    Counts as activity on the kernel, as a message from it would (jupyter_server's
    ``last_activity``), so its idle deadline moves; the kernel's model comes back.
``GET /api/elastic/kernels/{id}/diagnostics``
    The kernel's pod events and launcher log lines (:mod:`.diagnostics`), also for a kernel
    whose failed start removed it: the hub remembers whose deleted kernels were (:meth:`gone`).

Everyone sees only their own kernels (ownership as in :mod:`.ownership`: someone else's kernel
does not exist, 404 for keepalive); admins see all, and the overview's GPU queue shows others'
entries anonymously to non-admins (:meth:`~.ownership.KernelOwnership.status_for`).

How it is fed: one :class:`KernelStatusHub` per gateway listens on the shared watch caches the
kernel manager already runs (JupyterKernel records, kernel pods, kernelspecs; no watch of its
own and no polling). An event marks the kernel it concerns; marks are coalesced for
:attr:`~KernelStatusHub.coalesce` seconds, then each marked kernel's model is recomputed from
the caches and the kernel manager's live state and sent to the subscribers that may see it,
only if it changed. Every replica sees every record, so any replica serves any user's stream.
Each subscriber has a bounded queue: a reader too slow to take :attr:`~KernelStatusHub.
queue_limit` events is dropped (its response ends; ``EventSource`` reconnects and gets a fresh
snapshot), as :mod:`..transport.writelimit` does for kernel websockets.

A model (:func:`kernel_status`) says what a user asks about a kernel: its resources ("1 ×
nvidia.com/gpu on node-1"), what it is doing ("pulling image", "waiting for 1 nvidia.com/gpu:
2nd in queue", "scheduled on node-1", "running", "suspended", "resuming"), when it would be
culled (``cull.idle_deadline`` from the kernelspec's policy and the kernel's last activity,
``cull.protected`` when busy or connected protects it, ``cull.reclaimable_at`` for GPU
kernels, ``cull.saved``: whether a cull suspends it with its variables instead of deleting it),
and, once gone, why (``ended.summary``: "reclaimed for a waiting user after 12m idle").
Deadlines are absolute times (UTC, ISO 8601) so a client counts down without asking again.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import typing as t
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from elastic_kernels.culling.policy import CULL_REASONS, CullReason, KernelFacts, Policy
from elastic_kernels.kube import resources as R
from elastic_kernels.upstream import kernel_id_regex, managed_kernels, utcnow
from elastic_kernels.gateway.web.auth import ElasticUser
from elastic_kernels.gateway.web.errors import GatewayHTTPError
from elastic_kernels.gateway.web.handlers import GatewayAPIHandler, require_kernel
from elastic_kernels.gateway.web.ownership import KernelOwnership, is_admin, ownership

if t.TYPE_CHECKING:
    from elastic_kernels.kube.informer import Informer

__all__ = ["KernelStatusHub", "close_hub", "kernel_status", "start_hub", "status_handlers",
           "status_hub"]

log = logging.getLogger(__name__)

JSON = dict[str, t.Any]
_SETTINGS_KEY = "elastic_kernel_status_hub"
#: How many culls the overview keeps (newest first).
CULLS_KEPT = 50
#: Phases in which a kernel is still on its way to running.
_STARTING = frozenset({R.PHASE_PENDING, R.PHASE_STARTING})


# --- the model of one kernel (pure) ------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _plus(value: datetime | None, seconds: float) -> datetime | None:
    return None if value is None or seconds <= 0 else value + timedelta(seconds=seconds)


@dataclass(frozen=True)
class Live:
    """What only the replica holding a kernel knows of it (jupyter_server's view)."""

    last_activity: datetime | None = None
    execution_state: str | None = None
    connections: int = 0
    suspended: bool = False


@dataclass(frozen=True)
class SpecFacts:
    """The kernelspec's part of a kernel's model."""

    display_name: str = ""
    gpus: int = 0
    requests: t.Mapping[str, str] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    #: The GPU flavor its kernels hold (a whole GPU, a MIG profile, a time-sliced share).
    gpu_resource: str = ""


def _pod_state(pod: JSON | None) -> tuple[str, str]:
    """(what the pod is doing in words, its node) for a kernel still starting."""
    if pod is None:
        return "creating its pod", ""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    node = str(spec.get("nodeName") or "")
    if spec.get("schedulingGates"):
        return "waiting for its turn in the GPU queue", node
    if not node:
        for c in status.get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("message"):
                return f"waiting to be scheduled: {c['message']}", node
        return "waiting to be scheduled", node
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in ("ContainerCreating", "PodInitializing"):
            return "pulling image", node
        if reason:
            return f"{reason}: {waiting.get('message') or ''}".rstrip(": "), node
        if (cs.get("state") or {}).get("running"):
            return "starting the kernel", node
    if status.get("phase") == "Running":
        return "starting the kernel", node
    return f"scheduled on {node}", node


def _resources(gpus: int, requests: t.Mapping[str, str], node: str,
               gpu_resource: str = "") -> JSON:
    flavor = gpu_resource or R.GPU_RESOURCE
    if gpus:
        summary = f"{gpus} × {flavor}"
    else:
        parts = [f"{requests['cpu']} CPU" if "cpu" in requests else "",
                 f"{requests['memory']} memory" if "memory" in requests else ""]
        summary = ", ".join(p for p in parts if p) or "no requests"
    if node:
        summary += f" on {node}"
    return {"gpus": gpus, "gpu_resource": flavor if gpus else None, "cpu": requests.get("cpu"),
            "memory": requests.get("memory"), "node": node or None, "summary": summary}


def kernel_status(record: JSON, pod: JSON | None, spec: SpecFacts, live: Live | None, *,
                  queue_text: str = "", queue_position: int | None = None,
                  snapshots: bool = False) -> JSON:
    """A kernel's model for its user (see the module docstring); raises ValueError for a
    record that is not a usable JupyterKernel."""
    view = R.KernelView.from_object(record)
    status = record.get("status") or {}
    facts = KernelFacts.from_view(view)
    if live is not None:
        facts = KernelFacts.from_view(
            view, last_activity=live.last_activity or view.last_activity,
            execution_state=live.execution_state, connections=live.connections)
    gpus = view.gpus or spec.gpus
    node = view.node
    phase = view.phase
    if view.deleting:
        state = "shutting down"
    elif phase in _STARTING:
        if queue_text:
            state = queue_text
        else:
            state, pod_node = _pod_state(pod)
            node = node or pod_node
            if state == "pulling image" and view.reason == "PullingImage" and view.message:
                # The kubelet's words, which name the image (provisioner/pullprogress.py).
                state = view.message[:1].lower() + view.message[1:]
        if view.reason == "Restarting":
            state = f"restarting: {state}"
    elif phase == R.PHASE_SUSPENDED:
        state = "resuming" if live is not None and not live.suspended else "suspended"
    elif phase == R.PHASE_RUNNING:
        state = "running"
        if facts.execution_state in (R.EXECUTION_BUSY, R.EXECUTION_IDLE):
            state = f"running ({facts.execution_state})"
    else:
        state = phase.lower()
    policy = spec.policy
    reference = facts.activity_reference()
    idle_deadline: datetime | None = None
    protected: str | None = None
    reclaimable_at: datetime | None = None
    if phase == R.PHASE_RUNNING and not view.deleting:
        if policy.idle_timeout > 0:
            if facts.busy and not policy.cull_busy:
                protected = "busy"
            elif (facts.connections or 0) > 0 and not policy.cull_connected:
                protected = "connected"
            else:
                idle_deadline = _plus(reference, policy.idle_timeout)
        if gpus and policy.reclaim_after > 0 and not facts.busy:
            reclaimable_at = _plus(reference, policy.reclaim_after)
    cull = {
        "idle_timeout": policy.idle_timeout,
        "idle_since": _iso(reference),
        "idle_deadline": _iso(idle_deadline),
        "protected": protected,
        "max_age": policy.max_age,
        "max_age_deadline": _iso(_plus(view.created_at, policy.max_age)),
        "reclaim_after": policy.reclaim_after if gpus else 0,
        "reclaimable_at": _iso(reclaimable_at),
        "on_cull": policy.on_cull,
        "saved": policy.suspends and snapshots,
    }
    return {
        "id": view.kernel_id,
        "user": view.user,
        "kernelspec": view.kernel_spec,
        "display_name": spec.display_name or view.kernel_spec,
        "phase": "Terminating" if view.deleting else phase,
        "state": state,
        "reason": view.reason,
        "message": view.message,
        "execution_state": facts.execution_state,
        "connections": facts.connections,
        "gpus": gpus,
        "node": node or None,
        "pod": view.pod_name or ((pod or {}).get("metadata") or {}).get("name"),
        "resources": _resources(gpus, spec.requests, node,
                                view.gpu_resource if view.gpus else spec.gpu_resource),
        "queue_position": queue_position if queue_position is not None
        else (view.queue_position if phase in _STARTING else None),
        "restart_count": view.restart_count,
        "created_at": _iso(view.created_at),
        "started_at": _iso(view.started_at),
        "last_activity": _iso(facts.last_activity),
        "held_here": live is not None,
        "cull": cull,
        "status_message": str(status.get("message") or ""),
    }


_ENDINGS = {
    CullReason.IDLE_TIMEOUT.value: "shut down after {idle} idle",
    CullReason.RECLAIMED.value: "reclaimed for a waiting user after {idle} idle",
    CullReason.MAX_AGE.value: "shut down at its maximum age ({age})",
    CullReason.ORPHANED.value: "shut down: its gateway went away",
    CullReason.LAUNCH_ABANDONED.value: "removed: its start never finished",
    "Suspended": "suspended after {idle} idle; its variables were saved",
}


def ended(record: JSON, now: datetime, last_activity: datetime | None = None) -> JSON | None:
    """Why a record's kernel went away (or was suspended), when its last status says so.

    ``last_activity``: the holding gateway's own, newer than the record's (mirrored at most
    once a minute), so the idle time said is the one the culler saw."""
    status = record.get("status") or {}
    reason = str(status.get("reason") or "")
    if reason not in CULL_REASONS and reason != "Suspended":
        return None
    try:
        facts = KernelFacts.from_object(record) if last_activity is None else \
            KernelFacts.from_view(R.KernelView.from_object(record), last_activity=last_activity)
    except ValueError:
        return None
    idle = facts.idle_seconds(now)
    age = facts.age_seconds(now)
    summary = _ENDINGS[reason].format(
        idle=R.format_duration(idle) if idle is not None else "some time",
        age=R.format_duration(age) if age is not None else "?")
    return {"kernel_id": facts.kernel_id, "user": facts.user, "kernelspec": facts.kernel_spec,
            "reason": reason, "message": str(status.get("message") or ""), "summary": summary,
            "at": _iso(now)}


# --- the hub -------------------------------------------------------------------------------------


class Subscriber:
    """One stream's reader: whose kernels it sees, and a bounded queue of events for it."""

    def __init__(self, user: str, admin: bool, limit: int) -> None:
        self.user = user
        self.admin = admin
        self.events: asyncio.Queue[tuple[str, JSON]] = asyncio.Queue(limit)
        self.ended = asyncio.Event()
        self.dropped = False

    def may_see(self, user: str | None) -> bool:
        return self.admin or (user is not None and user == self.user)

    def push(self, name: str, data: JSON) -> None:
        if self.ended.is_set():
            return
        try:
            self.events.put_nowait((name, data))
        except asyncio.QueueFull:
            self.dropped = True  # too slow: the response ends, the client reconnects
            self.ended.set()


class KernelStatusHub:
    """Kernel models from the shared watch caches, pushed to subscribers when they change."""

    #: Seconds over which a burst of watch events becomes one update per kernel.
    coalesce = 0.05
    #: Seconds between heartbeat comments on an idle stream.
    heartbeat = 15.0
    #: Events a subscriber may have waiting before it is dropped.
    queue_limit = 512

    def __init__(self, km: t.Any, owners: KernelOwnership) -> None:
        self.km = km
        self.owners = owners
        self.subscribers: set[Subscriber] = set()
        self.culls: collections.deque[JSON] = collections.deque(maxlen=CULLS_KEPT)
        self._records: Informer | None = None
        self._pods: Informer | None = None
        self._specs: Informer | None = None
        self._unsubscribe: list[t.Callable[[], None]] = []
        self._sent: dict[str, JSON] = {}
        self._dirty: set[str] = set()
        self._all_dirty = False
        self._endings: dict[str, JSON] = {}
        self._gone: dict[str, JSON] = {}
        self._culling: dict[str, JSON] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._overview: JSON | None = None
        self._started: asyncio.Future[bool] | None = None

    @staticmethod
    def supported(km: t.Any) -> bool:
        return all(hasattr(km, a) for a in ("kernel_record", "culler", "gpu_queue"))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> bool:
        """Listen on the kernel manager's shared watches (once; False when there are none)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        try:
            return await asyncio.shield(self._started)
        except Exception:
            self._started = None  # try again on the next request
            raise

    async def _start(self) -> bool:
        if not self.supported(self.km):
            return False
        # Deferred: the provisioner layer is only needed with the Kubernetes kernel manager.
        from elastic_kernels.provisioner.provisioner import start_kernel_watches

        specs, _templates, records, pods = await start_kernel_watches()
        self._specs, self._records, self._pods = specs, records, pods
        self._unsubscribe = [records.add_listener(self._record_changed),
                             pods.add_listener(self._pod_changed),
                             specs.add_listener(self._spec_changed)]
        self._sent = {kid: m for kid, m in self._compute_all().items()}
        return True

    def close(self) -> None:
        for remove in self._unsubscribe:
            remove()
        self._unsubscribe = []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for sub in list(self.subscribers):
            sub.ended.set()
        self.subscribers.clear()

    # -- watch listeners (on the event loop) ----------------------------------------------

    def _record_changed(self, event_type: str, obj: JSON, old: JSON | None) -> None:
        kernel_id = str((obj.get("spec") or {}).get("kernelId") or "")
        if not kernel_id:
            return
        now = datetime.now(timezone.utc)
        if event_type == "DELETED":
            self._remember_gone(kernel_id, obj)
            # The culler writes its reason first; the shutdown that follows overwrites it
            # ("ShutdownRequested") before the record goes, so the reason seen then counts.
            why = ended(obj, now) or self._culling.pop(kernel_id, None)
            self._culling.pop(kernel_id, None)
            if why is not None:
                self._endings[kernel_id] = why
                self.culls.appendleft(why)
                while len(self._endings) > 1000:
                    self._endings.pop(next(iter(self._endings)))
        elif (obj.get("status") or {}).get("phase") == R.PHASE_SUSPENDED and \
                ((old or {}).get("status") or {}).get("phase") != R.PHASE_SUSPENDED:
            why = ended(obj, now)
            if why is not None:
                self.culls.appendleft(why)
        elif kernel_id not in self._culling and \
                (obj.get("status") or {}).get("reason") in CULL_REASONS:
            live = self._live(kernel_id)
            culling = ended(obj, now, live.last_activity if live is not None else None)
            if culling is not None:
                self._culling[kernel_id] = culling
                while len(self._culling) > 1000:
                    self._culling.pop(next(iter(self._culling)))
        self.touch(kernel_id)

    def _remember_gone(self, kernel_id: str, obj: JSON) -> None:
        status = obj.get("status") or {}
        restarts = int(status.get("restartCount") or 0)
        pod = str(status.get("podName") or R.kernel_pod_name(kernel_id, restarts))
        spec = obj.get("spec") or {}
        self._gone[kernel_id] = {
            "user": str(spec.get("user") or ""),
            "kernelspec": str(spec.get("kernelSpec") or ""),
            "phase": str(status.get("phase") or R.PHASE_PENDING),
            "namespace": str((obj.get("metadata") or {}).get("namespace") or ""),
            "pods": [pod]}
        while len(self._gone) > 1000:
            self._gone.pop(next(iter(self._gone)))

    def gone(self, kernel_id: str) -> JSON | None:
        """Whose a deleted kernel was, its namespace and pods (the last 1000 deleted)."""
        return self._gone.get(kernel_id)

    def pod(self, name: str) -> JSON | None:
        """A kernel pod from the shared pod watch (None: no such pod now)."""
        return self._pods.get(name) if self._pods is not None else None

    def _pod_changed(self, event_type: str, obj: JSON, old: JSON | None) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        kernel_id = labels.get(R.LABEL_KERNEL_ID)
        if kernel_id:
            self.touch(str(kernel_id))

    def _spec_changed(self, event_type: str, obj: JSON, old: JSON | None) -> None:
        self._all_dirty = True
        self._schedule()

    def touch(self, kernel_id: str) -> None:
        """Recompute ``kernel_id``'s model soon (coalesced) and send it if it changed."""
        self._dirty.add(kernel_id)
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is None and self._unsubscribe:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(self.coalesce, self._flush)

    # -- computing ---------------------------------------------------------------------------

    def _spec_facts(self) -> dict[str, SpecFacts]:
        book = self.km.culler.policies()
        found: dict[str, SpecFacts] = {}
        for obj in (self._specs.items() if self._specs is not None else []):
            try:
                view = R.KernelSpecView.from_object(obj)
            except ValueError:
                continue
            found[view.name] = SpecFacts(view.display_name, view.gpus,
                                         dict(view.resources.requests), book.for_spec(view.name),
                                         view.gpu_resource)
        found[""] = SpecFacts(policy=book.defaults)
        return found

    def _live(self, kernel_id: str) -> Live | None:
        kernel = managed_kernels(self.km).get(kernel_id)
        if kernel is None:
            return None
        held = self.km.culler.lookup(kernel_id)
        return Live(last_activity=getattr(kernel, "last_activity", None),
                    execution_state=getattr(kernel, "execution_state", None),
                    connections=held.connections if held is not None else 0,
                    suspended=bool(getattr(kernel, "suspended", False)))

    def _model(self, kernel_id: str, specs: dict[str, SpecFacts]) -> JSON | None:
        record = self.km.kernel_record(kernel_id)
        if record is None:
            return None
        pod = None
        if self._pods is not None:
            pod_name = (record.get("status") or {}).get("podName") or R.kernel_pod_name(
                kernel_id, int((record.get("status") or {}).get("restartCount") or 0))
            pod = self._pods.get(str(pod_name))
        queue = self.km.gpu_queue
        waiting = queue.is_waiting(kernel_id)
        kernel_spec = str((record.get("spec") or {}).get("kernelSpec") or "")
        try:
            return kernel_status(
                record, pod, specs.get(kernel_spec, specs[""]), self._live(kernel_id),
                queue_text=queue.describe(kernel_id) if waiting else "",
                queue_position=queue.position(kernel_id) if waiting else None,
                snapshots=getattr(self.km, "snapshots", None) is not None)
        except ValueError as e:
            log.debug("Kernel %s: no status model: %s", kernel_id, e)
            return None

    def model(self, kernel_id: str) -> JSON | None:
        """``kernel_id``'s model now (None: no such record)."""
        return self._model(kernel_id, self._spec_facts())

    def _kernel_ids(self) -> set[str]:
        records = self._records.items() if self._records is not None else []
        return {str((r.get("spec") or {}).get("kernelId")) for r in records
                if (r.get("spec") or {}).get("kernelId")}

    def _compute_all(self) -> dict[str, JSON]:
        specs = self._spec_facts()
        models = {}
        for kernel_id in self._kernel_ids():
            model = self._model(kernel_id, specs)
            if model is not None:
                models[kernel_id] = model
        return models

    def overview(self, models: t.Iterable[JSON]) -> JSON:
        """The GPU queue, GPUs held and busy per node, and recent culls (for admins)."""
        nodes: dict[str, JSON] = {}
        for model in models:
            if not model["gpus"] or not model["node"] or model["phase"] != R.PHASE_RUNNING:
                continue
            node = nodes.setdefault(model["node"], {"node": model["node"], "gpus_held": 0,
                                                    "gpus_busy": 0, "kernels": 0})
            node["gpus_held"] += model["gpus"]
            node["kernels"] += 1
            if model["execution_state"] == R.EXECUTION_BUSY:
                node["gpus_busy"] += model["gpus"]
        return {"gpu_queue": self.km.gpu_queue.snapshot(),
                "nodes": sorted(nodes.values(), key=lambda n: n["node"]),
                "culls": list(self.culls)}

    def view_for(self, user: t.Any, models: t.Iterable[JSON]) -> JSON:
        """What ``user`` may see: their kernels (all, for admins) and their overview."""
        admin = is_admin(user)
        name = getattr(user, "username", None)
        models = list(models)
        mine = [m for m in models if admin or m["user"] == name]
        return {"user": name, "admin": admin,
                "kernels": sorted(mine, key=lambda m: (m["user"], m["created_at"] or "",
                                                       m["id"])),
                "overview": self._overview_for(admin, name, self.overview(models))}

    def _overview_for(self, admin: bool, name: str | None, overview: JSON) -> JSON:
        if admin:
            return overview
        shown = self.owners.status_for(ElasticUser(username=name or ""),
                                       {"gpu_queue": overview["gpu_queue"]})
        return {"gpu_queue": shown["gpu_queue"],
                "culls": [c for c in overview["culls"] if c.get("user") == name]}

    def snapshot_for(self, user: t.Any) -> JSON:
        return self.view_for(user, self._compute_all().values())

    # -- sending -----------------------------------------------------------------------------

    def subscribe(self, user: t.Any) -> Subscriber:
        sub = Subscriber(getattr(user, "username", ""), is_admin(user), self.queue_limit)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        sub.ended.set()

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, set()
        if self._all_dirty:
            self._all_dirty = False
            dirty |= self._kernel_ids() | set(self._sent)
        specs = self._spec_facts()
        for kernel_id in sorted(dirty):
            model = self._model(kernel_id, specs)
            before = self._sent.get(kernel_id)
            last = self._gone.get(kernel_id)
            if model is None and before is None and last is not None and \
                    last["phase"] in _STARTING and not last.get("told"):
                # A start that failed before any of its changes was sent: still worth telling.
                last["told"] = True
                self._send("removed", self._removed(kernel_id, last["user"]), last["user"])
                continue
            if model == before:
                continue
            if model is None:
                assert before is not None
                del self._sent[kernel_id]
                self._send("removed", self._removed(kernel_id, before["user"]), before["user"])
            else:
                self._sent[kernel_id] = model
                self._send("kernel", model, model["user"])
        overview = self.overview(self._sent.values())
        if overview != self._overview:
            self._overview = overview
            for sub in list(self.subscribers):
                sub.push("overview", self._overview_for(sub.admin, sub.user, overview))

    def _removed(self, kernel_id: str, user: str) -> JSON:
        """A ``removed`` event: why the kernel went (a cull), and the phase and kernelspec its
        record had last (Pending or Starting: its start failed or was abandoned)."""
        last = self._gone.get(kernel_id) or {}
        return {"id": kernel_id, "user": user, "ended": self._endings.get(kernel_id),
                "last_phase": last.get("phase"), "kernelspec": last.get("kernelspec")}

    def _send(self, name: str, data: JSON, owner: str | None) -> None:
        for sub in list(self.subscribers):
            if sub.may_see(owner):
                sub.push(name, data)


# --- wiring ------------------------------------------------------------------------------------


def status_hub(settings: dict[str, t.Any]) -> KernelStatusHub:
    """The gateway's one hub (made on first use), from the web app's settings."""
    hub = settings.get(_SETTINGS_KEY)
    if hub is None:
        app = settings["serverapp"]
        hub = KernelStatusHub(app.kernel_manager, ownership(_SettingsHolder(settings)))
        settings[_SETTINGS_KEY] = hub
    return t.cast(KernelStatusHub, hub)


@dataclass
class _SettingsHolder:
    settings: dict[str, t.Any]


async def start_hub(settings: dict[str, t.Any]) -> None:
    """Start listening when the gateway starts, so the culls list covers its whole life."""
    hub = status_hub(settings)
    if hub.supported(hub.km):
        try:
            await hub.start()
        except Exception as e:  # noqa: BLE001 - the first request tries again
            log.warning("Kernel status: cannot watch the kernels yet: %s", e)


def close_hub(settings: dict[str, t.Any]) -> None:
    """End every stream and stop listening (the gateway is stopping)."""
    hub = settings.pop(_SETTINGS_KEY, None)
    if hub is not None:
        hub.close()


class _StatusBase(GatewayAPIHandler):
    async def hub(self) -> KernelStatusHub:
        hub = status_hub(self.settings)
        if not hub.supported(hub.km):
            raise GatewayHTTPError(501, "Kernel status needs the Kubernetes kernel manager",
                                   "NotSupported")
        try:
            await hub.start()
        except Exception as e:
            raise GatewayHTTPError(503, f"Cannot read the kernels from the cluster: {e}",
                                   "ClusterUnavailable") from None
        return hub


class KernelStatusHandler(_StatusBase):
    """``GET /api/elastic/kernels``: the caller's kernels (all, for admins), once."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        hub = await self.hub()
        self.finish(json.dumps(hub.snapshot_for(self.current_user)))


class KernelStatusStreamHandler(_StatusBase):
    """``GET /api/elastic/kernels/stream``: the same, then every change (server-sent events)."""

    _sub: Subscriber | None = None

    @web.authenticated
    @authorized
    async def get(self) -> None:
        hub = await self.hub()
        sub = self._sub = hub.subscribe(self.current_user)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache, no-transform")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        try:
            snapshot = _event("snapshot", hub.snapshot_for(self.current_user))
            await self._send(f"retry: 3000\n\n{snapshot}")
            while not sub.ended.is_set():
                chunk = await self._next(sub, hub.heartbeat)
                await self._send(chunk)
            if sub.dropped:
                self.log.info("Kernel status stream of %s dropped: it did not keep up",
                              sub.user)
        except StreamClosedError:
            return
        finally:
            hub.unsubscribe(sub)
        try:
            self.finish(set_content_type="text/event-stream; charset=utf-8")
        except (StreamClosedError, RuntimeError):
            pass  # the client went away first

    @staticmethod
    async def _next(sub: Subscriber, heartbeat: float) -> str:
        """The events waiting (all of them, in one write), or a heartbeat comment."""
        if sub.events.empty():
            getter = asyncio.ensure_future(sub.events.get())
            ender = asyncio.ensure_future(sub.ended.wait())
            try:
                await asyncio.wait({getter, ender}, timeout=heartbeat,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                ender.cancel()
                if not getter.done():
                    getter.cancel()
            if not getter.done() or getter.cancelled():
                return ": heartbeat\n\n" if not sub.ended.is_set() else ""
            first = [getter.result()]
        else:
            first = []
        waiting = first + [sub.events.get_nowait() for _ in range(sub.events.qsize())]
        return "".join(_event(name, data) for name, data in waiting)

    async def _send(self, chunk: str) -> None:
        if chunk:
            self.write(chunk)
            await self.flush()

    def on_connection_close(self) -> None:
        if self._sub is not None:
            self._sub.ended.set()


def _event(name: str, data: JSON) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class KeepaliveHandler(_StatusBase):
    """``POST /api/elastic/kernels/{id}/keepalive``: activity on the kernel, owner only."""

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str) -> None:
        await require_kernel(self, kernel_id)  # 404 for someone else's, as everywhere
        hub = await self.hub()
        kernel = managed_kernels(self.kernel_manager).get(kernel_id)
        if kernel is None:
            raise GatewayHTTPError(404, f"Kernel does not exist: {kernel_id}", "NoSuchKernel")
        # As jupyter_server's activity watcher does for a message from the kernel.
        self.kernel_manager.last_kernel_activity = kernel.last_activity = utcnow()
        hub.touch(kernel_id)
        model = hub.model(kernel_id)
        self.finish(json.dumps({"kernel": model}))


def status_handlers() -> list[tuple[str, type[web.RequestHandler]]]:
    # Deferred: diagnostics builds on this module's handler base.
    from elastic_kernels.gateway.web.diagnostics import KernelDiagnosticsHandler

    return [
        (r"/api/elastic/kernels", KernelStatusHandler),
        (r"/api/elastic/kernels/stream", KernelStatusStreamHandler),
        (rf"/api/elastic/kernels/{kernel_id_regex}/keepalive", KeepaliveHandler),
        (rf"/api/elastic/kernels/{kernel_id_regex}/diagnostics", KernelDiagnosticsHandler),
    ]
