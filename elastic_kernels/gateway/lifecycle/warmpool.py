"""Keeping the warm pools (``spec.warmPool``, issue 15): refill, readiness, GPU reclaim, status.

What a pool pod is and how a start claims one is :mod:`elastic_kernels.provisioner.pool` (the
design, and why a pool kernel is only started at claim, is in its docstring). This part keeps
each kernelspec's pool at its size:

* **One keeper per namespace.** Only the replica that holds the GPU queue's Lease (the queue
  board's leader, ``queueboard.py``) creates, deletes and marks pool pods and writes the
  kernelspecs' status; without a board (one gateway) this one does. Every replica claims.
* **Driven by the watches.** The kernelspec, template and pool-pod watches wake the keeper; so
  do kernel pods leaving (GPUs freed) while a GPU pool is short. It refills in the background,
  creating a pod then its pool Secret (owned by the pod), and replaces pods made from an older
  generation of the kernelspec, pods that failed, and extras past a smaller size.
* **Readiness.** A new pool pod that runs is probed once (:func:`pool.probe`: the launcher
  greets only once its imports are done) and then annotated ready; starts claim ready pods.
* **GPU pressure.** Pool pods of GPU kernelspecs hold GPUs while idle. They are the first
  reclaim candidates the GPU queue sees (:meth:`WarmPools.reclaim_candidates`, ahead of any
  user's kernel), GPU pools are not refilled while any start waits for GPUs, and a GPU pool
  pod the scheduler cannot place is deleted at once (never left pending to race a user's pod
  for the next free GPU), its pool refilled again after a back-off.
* **Status.** A kernelspec with a pool gets ``status.warmPool`` (size, ready, starting, a
  summary ``kubectl get jks`` shows) and a ``Poolable`` condition, False with the reason when
  it cannot pool (``PerUserVolumes``: its template has ``userVolumes``).
* **Refill.** A claimed pod is replaced ``refill_delay`` (1 s) after the claim, not at once: the
  new pool pod's Python importing ipykernel would take CPU from the kernel being claimed,
  often on the same node (measured: warm starts 0.49x of cold with an immediate refill, 0.34x
  with the delay, ``bench/bench_warmpool.py``).
* **Metrics.** :meth:`WarmPools.snapshot` and the claim and reclaim counts, read at scrape time
  by ``web/metrics.py``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from elastic_kernels.culling.policy import CullDecision, CullReason, KernelFacts
from elastic_kernels.kube import records
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import JSON, PODS, SECRETS, KubeError
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.kube.informer import Informer
from elastic_kernels.provisioner import pool
from elastic_kernels.provisioner.podstate import Progress, assess_pod
from elastic_kernels.tasks import cancel_and_wait

log = logging.getLogger(__name__)

#: Who a reclaim decision about a pool pod names as the kernel's user.
POOL_USER = "(warm pool)"
_RECLAIM_PREFIX = "pool:"
CONDITION_POOLABLE = "Poolable"


class WarmPools:
    """The namespace's warm pools as this gateway keeps them (if it leads) and claims from."""

    def __init__(self, *, leading: Callable[[], bool], gpu_waiting: Callable[[str], bool],
                 probe_timeout: float = 300.0, backoff: tuple[float, float] = (5.0, 300.0),
                 refill_delay: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.leading = leading
        self.gpu_waiting = gpu_waiting
        self.probe_timeout = probe_timeout
        self.backoff = backoff
        #: Seconds between a claim and its refill, so that the new pool pod's start (a Python
        #: importing ipykernel) does not take CPU from the kernel being claimed, often on the
        #: same node; a refill is background work and a few seconds late costs nobody.
        self.refill_delay = refill_delay
        self._quiet_until: dict[str, float] = {}
        self.clock = clock
        self.namespace = ""
        self._specs: Informer | None = None
        self._templates: Informer | None = None
        self._pools: Informer | None = None
        self._unlisten: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._probing: dict[str, asyncio.Task[None]] = {}
        self._creating: Counter[str] = Counter()
        #: kernelspec -> (monotonic time before which a GPU pool is not refilled, next delay)
        self._held_off: dict[str, tuple[float, float]] = {}
        self._timers: list[asyncio.TimerHandle] = []
        #: (kernelspec, outcome) -> claims this gateway made (outcome "ok", "empty", ...).
        self.claims: Counter[tuple[str, str]] = Counter()
        #: kernelspec -> pool pods this gateway reclaimed for a kernel waiting for GPUs.
        self.reclaims: Counter[str] = Counter()
        self._stopped = False

    def __repr__(self) -> str:
        # Travels in a start's keyword arguments, which jupyter_server logs at DEBUG.
        return f"<WarmPools {self.namespace}>"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, namespace: str) -> None:
        conn = ClusterConnection.instance()
        self.namespace = namespace
        specs, templates, pools, kernel_pods = await asyncio.gather(
            conn.informer(R.KERNELSPECS, namespace),
            conn.informer(R.TEMPLATES, namespace),
            conn.informer(PODS, namespace, label_selector=R.POOL_POD_SELECTOR),
            conn.informer(PODS, namespace, label_selector=R.KERNEL_POD_SELECTOR),
        )
        self._specs, self._templates, self._pools = specs, templates, pools
        self._unlisten = [
            specs.add_listener(lambda *_: self.changed()),
            templates.add_listener(lambda *_: self.changed()),
            pools.add_listener(lambda *_: self.changed()),
            kernel_pods.add_listener(self._kernel_pod_event),
        ]
        self.changed()

    async def stop(self) -> None:
        self._stopped = True
        for unlisten in self._unlisten:
            unlisten()
        self._unlisten = []
        for timer in self._timers:
            timer.cancel()
        for task in list(self._probing.values()):
            await cancel_and_wait(task)
        await cancel_and_wait(self._task)
        self._task = None

    def follow_leadership(self, board: Any) -> None:
        """Look again when this replica becomes the queue board's leader (the keeper)."""
        leader = getattr(board, "leader", None)
        if leader is not None:
            leader.also_on_lead(self.changed)

    def _kernel_pod_event(self, event_type: str, obj: JSON, old: JSON | None) -> None:
        # A kernel pod going (or binding) may free or take GPUs: matters to short GPU pools.
        if event_type == "DELETED" or (obj.get("spec") or {}).get("nodeName") != \
                ((old or {}).get("spec") or {}).get("nodeName"):
            self.changed()

    def changed(self) -> None:
        if self._stopped:
            return
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self._wake.is_set():
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("Warm pools: reconcile failed")

    # -- the door a start uses (provisioner.pool.WarmPoolDoor) -----------------------------------

    def claimed(self, kernelspec: str, outcome: str) -> None:
        self.claims[(kernelspec, outcome)] += 1
        if outcome == "ok" and self.refill_delay > 0:
            self._quiet_until[kernelspec] = self.clock() + self.refill_delay
            self._call_later(self.refill_delay)
        self.changed()

    # -- reading ---------------------------------------------------------------------------------

    def _views(self) -> list[tuple[R.KernelSpecView, R.TemplateView | None, str, str]]:
        """(spec, template, refusal reason, refusal message) of each kernelspec with a pool."""
        found = []
        for obj in self._specs.items() if self._specs is not None else []:
            try:
                spec = R.KernelSpecView.from_object(obj)
            except ValueError:
                continue
            if not spec.warm_pool.size and "warmPool" not in (obj.get("status") or {}):
                continue
            template = None
            reason = message = ""
            if spec.template_name:
                tobj = self._templates.get(spec.template_name, self.namespace) \
                    if self._templates is not None else None
                try:
                    template = R.TemplateView.from_object(tobj) if tobj is not None else None
                except ValueError as e:
                    reason, message = "InvalidTemplate", f"cannot pool: {e}"
                if tobj is None:
                    reason, message = "TemplateNotFound", (
                        f"cannot pool: template {spec.template_name} does not exist")
            if not reason:
                reason, message = pool.pool_refusal(spec, template)
            found.append((spec, template, reason, message))
        return found

    def _pods_of(self, spec_name: str) -> list[JSON]:
        return [p for p in (self._pools.items() if self._pools is not None else [])
                if pool.pool_spec_name(p) == spec_name
                and not (p.get("metadata") or {}).get("deletionTimestamp")]

    def snapshot(self) -> dict[str, dict[str, int]]:
        """kernelspec -> {size, ready, starting}: what the metrics show."""
        result: dict[str, dict[str, int]] = {}
        for spec, _, reason, _ in self._views():
            pods = self._pods_of(spec.name)
            ready = sum(1 for p in pods if pool.is_ready(p))
            result[spec.name] = {"size": 0 if reason else spec.warm_pool.size, "ready": ready,
                                 "starting": len(pods) - ready}
        return result

    # -- GPU pressure (for the GPU queue) ---------------------------------------------------------

    def reclaim_candidates(self) -> list[CullDecision]:
        """Pool pods holding GPUs, to free before any user's kernel (not-ready ones first)."""
        decisions = []
        for spec, _, _, _ in self._views():
            if not spec.gpus:
                continue
            for p in sorted(self._pods_of(spec.name), key=pool.is_ready):
                if not (p.get("spec") or {}).get("nodeName"):
                    continue  # holds nothing yet (and is deleted by the keeper anyway)
                name = p["metadata"]["name"]
                decisions.append(CullDecision(
                    kernel=KernelFacts(name=name, namespace=self.namespace,
                                       kernel_id=_RECLAIM_PREFIX + name, user=POOL_USER,
                                       kernel_spec=spec.name, gpus=spec.gpus),
                    reason=CullReason.RECLAIMED,
                    message=f"warm pool pod {name} of {spec.name} freed its GPUs for a kernel "
                    "that waits for them"))
        return decisions

    @staticmethod
    def owns(decision: CullDecision) -> bool:
        return decision.kernel.kernel_id.startswith(_RECLAIM_PREFIX)

    async def reclaim(self, decision: CullDecision) -> bool:
        """Delete the pool pod (not forced: its GPUs count as free once the kubelet stopped
        it); False if it was gone or claimed meanwhile."""
        name = decision.kernel.name
        pod = self._pools.get(name, self.namespace) if self._pools is not None else None
        if pod is None:
            return False
        try:
            await ClusterConnection.instance().client.delete(
                PODS, name, self.namespace,
                preconditions={"resourceVersion": pod["metadata"]["resourceVersion"]})
        except KubeError as e:
            if not (e.not_found or e.conflict):
                log.warning("Warm pools: could not reclaim %s: %s", name, e)
            return False
        self.reclaims[decision.kernel.kernel_spec] += 1
        log.warning("Warm pools: %s", decision.message)
        return True

    # -- keeping --------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        if self._specs is None or not self.leading():
            return
        for spec, template, reason, message in self._views():
            try:
                await self._keep(spec, template, reason)
                await self._write_status(spec, reason, message)
            except KubeError as e:
                log.warning("Warm pool of %s: %s", spec.name, e)

    async def _keep(self, spec: R.KernelSpecView, template: R.TemplateView | None,
                    refusal: str) -> None:
        client = ClusterConnection.instance().client
        pods = self._pods_of(spec.name)
        size = 0 if refusal else spec.warm_pool.size
        # Only starts waiting for this pool's GPU flavor need its capacity.
        gpu_busy = bool(spec.gpus) and self.gpu_waiting(spec.gpu_resource)
        keep: list[JSON] = []
        for p in pods:
            a = assess_pod(p)
            stale = (p["metadata"].get("annotations") or {}).get(
                pool.ANNOTATION_SPEC_GENERATION) != str(spec.generation)
            unplaced = bool(spec.gpus) and not (p.get("spec") or {}).get("nodeName") and (
                gpu_busy or a.progress is Progress.WAITING_FOR_CAPACITY)
            if a.progress in (Progress.FAILED, Progress.GONE) or stale or unplaced:
                if unplaced and a.progress is Progress.WAITING_FOR_CAPACITY:
                    self._hold_off(spec.name)
                await self._delete(client, p)
            else:
                keep.append(p)
        # Extras past a smaller size: those not ready first, newest first.
        keep.sort(key=lambda p: (pool.is_ready(p), str(p["metadata"].get("creationTimestamp"))))
        while len(keep) > size:
            await self._delete(client, keep.pop(0))
        for p in keep:
            if not pool.is_ready(p) and assess_pod(p).progress is Progress.RUNNING:
                self._probe(p)
        missing = size - len(keep) - self._creating[spec.name]
        if missing <= 0 or gpu_busy or self._holding_off(spec.name):
            return
        await asyncio.gather(*(self._create(client, spec, template) for _ in range(missing)))

    def _hold_off(self, spec_name: str) -> None:
        _, delay = self._held_off.get(spec_name, (0.0, self.backoff[0]))
        self._held_off[spec_name] = (self.clock() + delay, min(delay * 2, self.backoff[1]))
        self._call_later(delay)

    def _call_later(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._timers = [t for t in self._timers if t.when() > loop.time()]
        self._timers.append(loop.call_later(delay, self.changed))

    def _holding_off(self, spec_name: str) -> bool:
        until, _ = self._held_off.get(spec_name, (0.0, 0.0))
        return self.clock() < max(until, self._quiet_until.get(spec_name, 0.0))

    async def _create(self, client: Any, spec: R.KernelSpecView,
                      template: R.TemplateView | None) -> None:
        self._creating[spec.name] += 1
        try:
            name = pool.pool_pod_name(spec.name, secrets.token_hex(3))
            try:
                rendered = pool.render_pool_pod(spec, template, self.namespace, name,
                                                pool.new_pool_secret())
            except ValueError as e:
                log.warning("Warm pool of %s: cannot render a pool pod: %s", spec.name, e)
                return
            created = await client.create(PODS, rendered.pod, self.namespace)
            try:
                await client.create(SECRETS, pool.owned_by_pod(rendered.secret, created),
                                    self.namespace)
            except KubeError:
                await self._delete(client, created)
                raise
            log.info("Warm pool of %s: started %s", spec.name, name)
            if spec.gpus:
                self._held_off.pop(spec.name, None)
        finally:
            self._creating[spec.name] -= 1

    async def _delete(self, client: Any, pod: JSON) -> None:
        try:
            await client.delete(PODS, pod["metadata"]["name"], self.namespace,
                                preconditions={"uid": pod["metadata"]["uid"]})
        except KubeError as e:
            if not (e.not_found or e.conflict):
                raise

    def _probe(self, pod: JSON) -> None:
        name = pod["metadata"]["name"]
        if name in self._probing:
            return
        ip = str((pod.get("status") or {}).get("podIP") or "")
        if not ip:
            return

        async def probe() -> None:
            try:
                if await pool.probe(ip, self.probe_timeout):
                    await ClusterConnection.instance().client.patch(PODS, name, {"metadata": {
                        "resourceVersion": None,
                        "annotations": {pool.ANNOTATION_READY: "true"}}}, self.namespace)
            except KubeError as e:
                if not (e.not_found or e.conflict):
                    log.warning("Warm pools: could not mark %s ready: %s", name, e)
            finally:
                self._probing.pop(name, None)

        self._probing[name] = asyncio.ensure_future(probe())

    async def _write_status(self, spec: R.KernelSpecView, reason: str, message: str) -> None:
        obj = self._specs.get(spec.name, self.namespace) if self._specs is not None else None
        if obj is None:
            return
        pods = self._pods_of(spec.name)
        ready = sum(1 for p in pods if pool.is_ready(p))
        size = 0 if reason else spec.warm_pool.size
        summary = "cannot pool" if reason else f"{ready}/{size} ready"
        warm = {"size": size, "ready": ready, "starting": len(pods) - ready, "summary": summary}
        status = obj.get("status") or {}
        condition = {"type": CONDITION_POOLABLE, "status": "False" if reason else "True",
                     "reason": reason or "Poolable",
                     "message": message or "pool pods start ahead; starts claim them",
                     "observedGeneration": spec.generation}
        old: dict[str, Any] = next((c for c in status.get("conditions") or []
                    if c.get("type") == CONDITION_POOLABLE), {})
        same = all(old.get(k) == v for k, v in condition.items())
        if status.get("warmPool") == warm and same:
            return
        condition["lastTransitionTime"] = (old.get("status") == condition["status"]
                                           and old.get("lastTransitionTime")) \
            or records.now_timestamp()
        others = [c for c in status.get("conditions") or []
                  if c.get("type") != CONDITION_POOLABLE]
        await ClusterConnection.instance().client.patch(
            R.KERNELSPECS, spec.name, {"status": {"warmPool": warm,
                                                  "conditions": [*others, condition]}},
            self.namespace, subresource="status")
