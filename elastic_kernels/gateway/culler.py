"""The gateway's idle culler: jupyter_server's idea, with each kernelspec's own policy.

jupyter_server culls with one idle timeout for every kernel and one kernel at a time. Here the
policy comes from the kernel's ``JupyterKernelSpec`` (GPU kernels culled sooner), falling back to
``CullingDefaults``; culls of one pass run concurrently, so one slow pod deletion holds up nothing;
every cull leaves its reason on the JupyterKernel and in an Event; and the user whose kernel went
away is told why (the websocket's close reason and the 404 that follows).

The same pass mirrors each kernel's last activity into ``JupyterKernel.status.lastActivity``, at
most once a minute per kernel, so the ``elastic-kernels cull`` cron judges idleness on nearly live
data while writes stay cheap.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..culling import (CullConflict, CullDecision, CullingDefaults, KernelFacts, PolicyBook,
                       activity_to_mirror, decide, mark_culled, mirror_due, reclaim_candidates,
                       record_cull_event)
from ..kube import resources as R
from ..kube.client import KubeError
from ..kube.connection import ClusterConnection
from ..tasks import cancel_and_wait

if TYPE_CHECKING:
    from .kernelmanager import ElasticMappingKernelManager

log = logging.getLogger(__name__)

COMPONENT = "elastic-kernels-gateway"


class GatewayCuller:
    """Runs the periodic pass and performs culls (idle ones, and reclaims for the GPU queue)."""

    def __init__(self, manager: "ElasticMappingKernelManager", defaults: CullingDefaults,
                 concurrency: int = 8) -> None:
        self.manager = manager
        self.defaults = defaults
        self._limit = asyncio.Semaphore(concurrency)
        self._mirrored: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    # -- facts ----------------------------------------------------------------------------------

    def policies(self) -> PolicyBook:
        specs = self.manager.kernelspec_records()
        return PolicyBook.from_objects(self.defaults.as_policy(), specs)

    def facts(self) -> list[KernelFacts]:
        """What this gateway knows of each kernel it holds: its record plus live state."""
        found = []
        for kernel_id in list(self.manager.list_kernel_ids()):
            record = self.manager.kernel_record(kernel_id)
            kernel = self.manager._kernels.get(kernel_id)
            if record is None or kernel is None:
                continue
            claimant = (record.get("spec") or {}).get("gateway") or ""
            if claimant and claimant != self.manager.gateway_id:
                continue  # another live replica claims it and culls it; don't race it
            try:
                found.append(KernelFacts.from_object(
                    record,
                    last_activity=getattr(kernel, "last_activity", None),
                    execution_state=getattr(kernel, "execution_state", None),
                    connections=self.manager._kernel_connections.get(kernel_id, 0),
                ))
            except ValueError as e:
                log.warning("Kernel %s: its record is not usable for culling: %s", kernel_id, e)
        return found

    def reclaim_candidates(self) -> list[CullDecision]:
        return reclaim_candidates(self.facts(), self.policies(), _now())

    # -- the periodic pass -----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and self.defaults.interval > 0:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.defaults.interval)
            try:
                await self.run_once()
            except Exception:
                log.exception("culling pass failed")

    async def run_once(self) -> list[CullDecision]:
        """One pass: cull what policy says, concurrently; mirror activity. Returns the culls."""
        now = _now()
        book = self.policies()
        facts = self.facts()
        decisions = [d for d in (decide(f, book(f), now) for f in facts) if d is not None]
        # Kernels cross their reclaimAfter as time passes, with no event to say so: let the GPU
        # queue look again for anyone still waiting.
        self.manager.gpu_queue.poke()
        dead = [kid for kid in self.manager.list_kernel_ids()
                if getattr(self.manager._kernels.get(kid), "execution_state", "") == "dead"]
        await asyncio.gather(
            *(self.cull(d) for d in decisions),
            *(self._shutdown_dead(kid) for kid in dead),
            *(self._mirror(f, book(f), now) for f in facts
              if f.kernel_id not in {d.kernel.kernel_id for d in decisions}),
        )
        return decisions

    async def _shutdown_dead(self, kernel_id: str) -> None:
        async with self._limit:
            log.warning("Culling dead kernel %s", kernel_id)
            # Keep why it died for the user's next request (its record says, until deleted).
            status = (self.manager.kernel_record(kernel_id) or {}).get("status") or {}
            self.manager.remember_cull(kernel_id, str(status.get("reason") or "KernelDied"),
                                       str(status.get("message") or "the kernel died"))
            try:
                await self.manager.shutdown_kernel(kernel_id, now=True)
            except Exception:
                log.exception("Kernel %s: shutting down a dead kernel failed", kernel_id)

    async def _mirror(self, facts: KernelFacts, policy: Any, now: datetime) -> None:
        activity = activity_to_mirror(facts, policy, now)
        if activity is None:
            return
        mirrored = self._mirrored.get(facts.kernel_id) or self._recorded(facts.kernel_id)
        if not mirror_due(mirrored, activity):
            return
        async with self._limit:
            try:
                await ClusterConnection.instance().client.patch(
                    R.JUPYTERKERNELS, facts.name,
                    {"status": {"lastActivity": R.format_timestamp(activity)}},
                    facts.namespace, subresource="status")
                self._mirrored[facts.kernel_id] = activity
            except KubeError as e:
                log.info("Kernel %s: could not mirror its activity: %s", facts.kernel_id, e)

    def _recorded(self, kernel_id: str) -> datetime | None:
        """The lastActivity already on the record (e.g. written by a previous gateway)."""
        record = self.manager.kernel_record(kernel_id) or {}
        stamp = (record.get("status") or {}).get("lastActivity")
        try:
            return R.parse_timestamp(stamp) if stamp else None
        except ValueError:
            return None

    # -- one cull ---------------------------------------------------------------------------------

    async def cull(self, decision: CullDecision) -> bool:
        """Record why, tell the user, shut the kernel down, leave an Event. False if we lost a race."""
        kernel_id = decision.kernel.kernel_id
        client = ClusterConnection.instance().client
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
            self.manager.remember_cull(kernel_id, decision.reason.value, decision.message)
            self._mirrored.pop(kernel_id, None)
            try:
                await self.manager.shutdown_kernel(kernel_id)
            except KeyError:
                pass  # already gone
            try:
                await record_cull_event(client, decision, COMPONENT)
            except KubeError as e:
                log.info("Kernel %s: could not record the cull event: %s", kernel_id, e)
            return True


def _now() -> datetime:
    return datetime.now(timezone.utc)
