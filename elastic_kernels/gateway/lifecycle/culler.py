"""The gateway's idle culler: jupyter_server's idea, with each kernelspec's own policy.

jupyter_server culls with one idle timeout for every kernel and one kernel at a time. Here the
policy comes from the kernel's ``JupyterKernelSpec`` (GPU kernels culled sooner), falling back to
``CullingDefaults``; culls of one pass run concurrently, so one slow pod deletion holds up nothing;
every cull leaves its reason on the JupyterKernel and in an Event; and the user whose kernel went
away is told why (the websocket's close reason and the 404 that follows).

The same pass mirrors onto each kernel's JupyterKernel what the ``elastic-kernels cull`` cron
needs and cannot see (``status.connections``, ``status.executionState``, ``status.lastActivity``;
see :mod:`elastic_kernels.culling`), each only when it changed: a kernel that stays as it was
costs no write, however long it stays. The one write not left to the pass is a client connecting
to a kernel the record shows unconnected (:meth:`GatewayCuller.connected`).

With a GPU utilisation source (:class:`~elastic_kernels.culling.gpusource.GpuUseSource`), each
pass also reads every pod's GPU use once (one scrape or query for all kernels, never one per
kernel), follows each GPU kernel's idle spell across passes (:func:`~.policy.track_gpu`), and
accounts GPU-seconds held and used per user and kernelspec (:class:`~.policy.GpuSeconds`). A
reading that fails is logged once when it starts and once when it ends, and counted; while it
lasts no kernel is judged GPU-idle and no busy GPU is assumed.

The culler is given what it needs, not the kernel manager (issue 12): the kernels this gateway
holds with their live state (``held``, ``lookup``), the kernelspecs, how to shut a kernel down,
where to remember why, what to poke after a pass (the GPU queue), and a clock. Its decisions are
:mod:`elastic_kernels.culling.policy`'s; its writes go through :mod:`elastic_kernels.kube.records`
and :mod:`elastic_kernels.culling.actions`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from elastic_kernels.culling.actions import CullConflict, mark_culled, record_cull_event
from elastic_kernels.culling.gpusource import GpuReading, GpuUseSource
from elastic_kernels.culling.policy import (MIRROR_INTERVAL, CullDecision, CullingDefaults,
                                            CullReason, GpuSeconds, GpuTrack, KernelFacts, Policy,
                                            PolicyBook, decide, reclaim_candidates,
                                            status_to_mirror, track_gpu, with_gpu_activity)
from elastic_kernels.kube import records
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import KubeClient, KubeError
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.tasks import cancel_all, cancel_and_wait

log = logging.getLogger(__name__)

COMPONENT = "elastic-kernels-gateway"
#: Culls that ``onCull: Suspend`` turns into a suspension; maxAge ends a kernel for good.
SUSPENDABLE = frozenset({CullReason.IDLE_TIMEOUT, CullReason.RECLAIMED, CullReason.GPU_IDLE})


@dataclass(frozen=True)
class HeldKernel:
    """One kernel this gateway holds: its record from the watch cache (None: not there) and
    what only the gateway knows of it (jupyter_server's activity, state and websockets)."""

    kernel_id: str
    record: dict[str, Any] | None
    last_activity: datetime | None = None
    execution_state: str | None = None
    connections: int = 0


def _nothing() -> None:
    return None


class GatewayCuller:
    """Runs the periodic pass and performs culls (idle ones, and reclaims for the GPU queue)."""

    def __init__(
        self,
        defaults: CullingDefaults,
        *,
        gateway_id: Callable[[], str],
        kernelspecs: Callable[[], list[dict[str, Any]]],
        held: Callable[[], list[HeldKernel]],
        lookup: Callable[[str], HeldKernel | None],
        shutdown: Callable[[str, bool], Awaitable[Any]],
        remember_cull: Callable[[str, str, str], None],
        after_pass: Callable[[], None] = _nothing,
        suspend: Callable[[CullDecision, Policy], Awaitable[str]] | None = None,
        clock: records.Clock = time.time,
        concurrency: int = 8,
        gpu_source: GpuUseSource | None = None,
    ) -> None:
        self.defaults = defaults
        #: This gateway's id, read when needed (the app sets it after the manager is made).
        self.gateway_id = gateway_id
        self.kernelspecs = kernelspecs
        self.held = held
        self.lookup = lookup
        #: ``shutdown(kernel_id, now)``: the kernel manager's shutdown (KeyError: not held).
        self.shutdown = shutdown
        #: ``remember_cull(kernel_id, reason, message)``: for the 404 and the websocket's close.
        self.remember_cull = remember_cull
        #: Called after each pass's decisions (the GPU queue looks again: idle kernels cross
        #: their reclaimAfter as time passes, with no event to say so).
        self.after_pass = after_pass
        #: ``suspend(decision, policy)`` for kernelspecs with ``onCull: Suspend``: "" once the
        #: kernel is saved and its pod gone, else why not (then it is culled as usual).
        self.suspend = suspend
        self.clock = clock
        self._limit = asyncio.Semaphore(concurrency)
        self._mirrored: dict[str, datetime] = {}
        #: Least time between two activity writes for one kernel (tests shorten it).
        self.mirror_interval = MIRROR_INTERVAL
        self._connecting: dict[str, asyncio.Task[None]] = {}
        #: Kernels being culled or suspended now: a save can take longer than a pass, and the
        #: next pass (or a reclaim) must not start a second one.
        self._in_flight: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        #: Told the reason of each cull this gateway performs (the gateway's metrics; set by
        #: ElasticGatewayApp).
        self.on_cull: Callable[[str], None] | None = None
        #: Where GPU utilisation comes from (None or source "none": nowhere).
        self.gpu_source = gpu_source
        self._gpu_tracks: dict[str, GpuTrack] = {}
        #: GPU-seconds held and used by the kernels this gateway culls, per (user, kernelspec).
        self.gpu_seconds = GpuSeconds()
        #: The latest reading (None: no source, or none yet) and the readings that failed.
        self.gpu_reading: GpuReading | None = None
        self.gpu_reading_failures = 0

    def _counted(self, reason: str) -> None:
        if self.on_cull is not None:
            self.on_cull(reason)

    @staticmethod
    def _client() -> KubeClient:
        return ClusterConnection.instance().client

    def _now(self) -> datetime:
        return records.utc_now(self.clock)

    # -- facts ----------------------------------------------------------------------------------

    def policies(self) -> PolicyBook:
        return PolicyBook.from_objects(self.defaults.as_policy(), self.kernelspecs())

    def facts(self) -> list[KernelFacts]:
        """What this gateway knows of each kernel it holds: its record plus live state."""
        return [live for live, _ in self._held()]

    def _held(self) -> list[tuple[KernelFacts, R.KernelView]]:
        """Each kernel this gateway holds and claims (or nobody claims): live facts, record."""
        found = []
        for kernel in self.held():
            record = kernel.record
            if record is None:
                continue
            claimant = (record.get("spec") or {}).get("gateway") or ""
            if claimant and claimant != self.gateway_id():
                continue  # another live replica claims it and culls it; don't race it
            try:
                view = R.KernelView.from_object(record)
            except ValueError as e:
                log.warning("Kernel %s: its record is not usable for culling: %s",
                            kernel.kernel_id, e)
                continue
            facts = KernelFacts.from_view(
                view,
                last_activity=kernel.last_activity,
                execution_state=kernel.execution_state,
                connections=kernel.connections,
            )
            found.append((with_gpu_activity(facts, self._gpu_tracks.get(kernel.kernel_id)),
                          view))
        return found

    def reclaim_candidates(self) -> list[CullDecision]:
        return reclaim_candidates(self.facts(), self.policies(), self._now())

    # -- the periodic pass -----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and self.defaults.interval > 0:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await cancel_all(list(self._connecting.values()))
        self._connecting.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.defaults.interval)
            try:
                await self.run_once()
            except Exception:
                log.exception("culling pass failed")

    async def run_once(self) -> list[CullDecision]:
        """One pass: cull what policy says, concurrently; mirror what changed. Returns the culls."""
        now = self._now()
        book = self.policies()
        await self._observe_gpus(now, book)
        held = self._held()
        decisions = [d for d in (decide(f, book(f), now) for f, _ in held
                                 if f.kernel_id not in self._in_flight) if d is not None]
        culled = {d.kernel.kernel_id for d in decisions}
        # Kernels cross their reclaimAfter as time passes, with no event to say so: let the GPU
        # queue look again for anyone still waiting.
        self.after_pass()
        dead = [k.kernel_id for k in self.held() if k.execution_state == "dead"]
        for gone in set(self._mirrored) - {f.kernel_id for f, _ in held}:
            del self._mirrored[gone]
        await asyncio.gather(
            *(self.cull(d) for d in decisions),
            *(self._shutdown_dead(kid) for kid in dead),
            *(self._mirror(f, view) for f, view in held if f.kernel_id not in culled),
        )
        return decisions

    # -- GPU use ---------------------------------------------------------------------------------

    async def _observe_gpus(self, now: datetime, book: PolicyBook) -> None:
        """Read every pod's GPU use once; follow each GPU kernel's idle spell; account it."""
        running = [(f, view) for f, view in self._held()
                   if f.gpus > 0 and f.phase == R.PHASE_RUNNING and not f.deleting]
        reading: GpuReading | None = None
        if self.gpu_source is not None and self.gpu_source.enabled:
            reading = await self.gpu_source.read(now)
            self._report_reading(reading)
        self.gpu_reading = reading
        tracks: dict[str, GpuTrack] = {}
        for kernel, view in running:
            use = reading.for_pod(kernel.namespace, view.pod_name) if reading else None
            previous = self._gpu_tracks.get(kernel.kernel_id)
            threshold = book(kernel).gpu_idle_threshold
            track = track_gpu(previous, use.busiest if use else None, threshold, now)
            if self.gpu_source is not None and self.gpu_source.enabled:
                tracks[kernel.kernel_id] = track
            else:
                tracks[kernel.kernel_id] = GpuTrack(seen_at=now)
            if previous is not None and previous.seen_at is not None:
                self.gpu_seconds.add(kernel.user, kernel.kernel_spec, kernel.gpus,
                                     (now - previous.seen_at).total_seconds(),
                                     use.utilisation if use else None)
        self._gpu_tracks = tracks

    def _report_reading(self, reading: GpuReading) -> None:
        """Log a change in the source's health once, not at every pass."""
        before = self.gpu_reading
        assert self.gpu_source is not None
        where = self.gpu_source.describe()
        if not reading.available:
            self.gpu_reading_failures += 1
            if before is None or before.available:
                log.warning("GPU utilisation from %s is unavailable (%s): no kernel is culled "
                            "for GPU idleness and no busy GPU protects one until it is back",
                            where, "; ".join(reading.errors))
        elif reading.errors:
            if before is None or set(before.errors) != set(reading.errors):
                log.warning("GPU utilisation from %s is partly unavailable (%s): kernels on "
                            "those GPUs are not judged by GPU use meanwhile", where,
                            "; ".join(reading.errors))
        elif before is not None and (not before.available or before.errors):
            log.info("GPU utilisation from %s is available again", where)

    async def _shutdown_dead(self, kernel_id: str) -> None:
        async with self._limit:
            log.warning("Culling dead kernel %s", kernel_id)
            # Keep why it died for the user's next request (its record says, until deleted).
            kernel = self.lookup(kernel_id)
            status = ((kernel.record if kernel else None) or {}).get("status") or {}
            reason = str(status.get("reason") or "KernelDied")
            self.remember_cull(kernel_id, reason, str(status.get("message") or "the kernel died"))
            self._counted("KernelDied")
            try:
                await self.shutdown(kernel_id, True)
            except Exception:
                log.exception("Kernel %s: shutting down a dead kernel failed", kernel_id)

    async def _mirror(self, live: KernelFacts, recorded: R.KernelView) -> None:
        """Write what changed since the record was written (nothing, for a kernel at rest)."""
        body = status_to_mirror(live, recorded, self._mirrored.get(live.kernel_id),
                                self.mirror_interval)
        if not body:
            return
        async with self._limit:
            try:
                await records.patch_kernel_status(self._client(), live.name, live.namespace,
                                                  body)
            except KubeError as e:
                log.info("Kernel %s: could not mirror its state: %s", live.kernel_id, e)
                return
        if "lastActivity" in body and live.last_activity is not None:
            self._mirrored[live.kernel_id] = live.last_activity

    # -- a client connects -------------------------------------------------------------------------

    def connected(self, kernel_id: str) -> None:
        """A client websocket to ``kernel_id`` opened (jupyter_server has counted it).

        When the record shows nobody connected and a cron run before the next pass could cull
        the kernel as idle (:meth:`_cullable_before_next_pass`), say so now: otherwise the cron
        would take the kernel someone has just opened. Everything else (a fresh kernel, a
        second tab, a reload that finds the record still connected, disconnections) waits for
        the pass, so a start storm does not cost a write per kernel. The write runs as its own
        task: the websocket's open never waits for the API server.
        """
        if self._task is None or kernel_id in self._connecting:
            return
        kernel = self.lookup(kernel_id)
        if kernel is None or kernel.connections <= 0 or kernel.record is None:
            return
        record = kernel.record
        spec = record.get("spec") or {}
        status = record.get("status") or {}
        if spec.get("gateway") and spec.get("gateway") != self.gateway_id():
            return  # the claimant's view, not ours, is what its record carries
        if (record.get("metadata") or {}).get("deletionTimestamp"):
            return
        recorded = status.get("connections")
        if isinstance(recorded, int) and recorded > 0:
            return
        if not self._cullable_before_next_pass(record):
            return
        task = asyncio.ensure_future(self._write_connected(kernel_id, record))
        self._connecting[kernel_id] = task
        task.add_done_callback(lambda _: self._connecting.pop(kernel_id, None))

    def _cullable_before_next_pass(self, record: dict[str, Any]) -> bool:
        """Whether a cron run before this gateway's next pass could cull the kernel as idle,
        judging from its record. Only the kernelspec's own rules are known here: an idle timeout
        it leaves unset is the cron's ``--idle-timeout``, which may be anything, so then yes."""
        try:
            view = R.KernelView.from_object(record)
        except ValueError:
            return True
        spec = next((o for o in self.kernelspecs()
                     if (o.get("metadata") or {}).get("name") == view.kernel_spec), None)
        try:
            culling = R.KernelSpecView.from_object(spec).culling if spec is not None else None
        except ValueError:
            culling = None
        if culling is None or culling.idle_timeout is None:
            return True
        if culling.cull_connected or culling.idle_timeout <= 0:
            return False  # connections do not protect it, or idleness never culls it
        idle = KernelFacts.from_view(view).idle_seconds(self._now())
        return idle is None or idle + self.defaults.interval >= culling.idle_timeout

    async def _write_connected(self, kernel_id: str, record: dict[str, Any]) -> None:
        meta = record.get("metadata") or {}
        kernel = self.lookup(kernel_id)
        count = kernel.connections if kernel is not None else 0
        if count <= 0:
            return  # closed again already: the record's 0 is right
        try:
            await records.patch_kernel_status(self._client(), str(meta.get("name")),
                                              meta.get("namespace"), {"connections": count})
        except KubeError as e:
            log.info("Kernel %s: could not record its new connection (the next culling pass "
                     "will): %s", kernel_id, e)
        except Exception:
            log.exception("Kernel %s: recording its new connection failed", kernel_id)

    # -- one cull ---------------------------------------------------------------------------------

    async def cull(self, decision: CullDecision) -> bool:
        """Record why, tell the user, shut the kernel down, leave an Event; or, for a
        kernelspec with ``onCull: Suspend``, suspend the kernel instead when that works.

        False if we lost a race."""
        kernel_id = decision.kernel.kernel_id
        if kernel_id in self._in_flight:
            return False  # a cull or suspension of it is under way
        self._in_flight.add(kernel_id)
        try:
            return await self._cull(decision)
        finally:
            self._in_flight.discard(kernel_id)

    async def _cull(self, decision: CullDecision) -> bool:
        kernel_id = decision.kernel.kernel_id
        policy = self.policies()(decision.kernel)
        if policy.suspends and decision.reason in SUSPENDABLE and self.suspend is not None:
            why_not = await self._suspend(decision, policy)
            if not why_not:
                return True
            decision = replace(decision, message=f"{decision.message}; not suspended: {why_not}")
        client = self._client()
        async with self._limit:
            try:
                await mark_culled(client, decision)
            except CullConflict as e:
                log.info("Kernel %s: not culled: %s", kernel_id, e)
                return False
            except KubeError as e:
                log.warning("Kernel %s: cannot record its cull (%s); not culled", kernel_id, e)
                return False
            log.warning("Culling kernel %s of %s (%s): %s", kernel_id, decision.kernel.user,
                        decision.reason.value, decision.message)
            self.remember_cull(kernel_id, decision.reason.value, decision.message)
            self._counted(decision.reason.value)
            self._mirrored.pop(kernel_id, None)
            try:
                await self.shutdown(kernel_id, False)
            except KeyError:
                pass  # already gone
            try:
                await record_cull_event(client, decision, COMPONENT)
            except KubeError as e:
                log.info("Kernel %s: could not record the cull event: %s", kernel_id, e)
            return True

    async def _suspend(self, decision: CullDecision, policy: Policy) -> str:
        """Suspend instead of deleting; "" when done, else why not."""
        assert self.suspend is not None
        kernel = decision.kernel
        async with self._limit:
            log.warning("Suspending kernel %s of %s (%s): %s", kernel.kernel_id, kernel.user,
                        decision.reason.value, decision.message)
            try:
                why_not = await self.suspend(decision, policy)
            except Exception as e:  # noqa: BLE001 - then it is culled as usual
                log.exception("Kernel %s: suspending failed", kernel.kernel_id)
                why_not = f"{type(e).__name__}: {e}"
            if why_not:
                log.warning("Kernel %s not suspended (%s); culling it instead", kernel.kernel_id,
                            why_not)
                return why_not
            self._counted("Suspended")
            self._mirrored.pop(kernel.kernel_id, None)
            try:
                await records.record_kernel_event(
                    self._client(), kernel.name, kernel.namespace, uid=kernel.uid,
                    reason="Suspended", message=decision.message, type="Normal",
                    component=COMPONENT, action="Suspend")
            except KubeError as e:
                log.info("Kernel %s: could not record the suspend event: %s", kernel.kernel_id, e)
        return ""
