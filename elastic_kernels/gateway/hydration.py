"""Hydration: a gateway takes on kernels it did not start, from the cluster alone.

The Kubernetes API is the only store (DESIGN §3.9). A kernel is fully described by its
JupyterKernel (id, user, kernelspec, restart count, pod name and IP), its pod (the IP, from the
shared pod watch) and its Secret (the HMAC key). From those three a gateway re-attaches a kernel
exactly as if it had started it: the kernel appears in ``/api/kernels`` with its state intact,
websockets connect to it, and interrupt, restart and shutdown work.

Who hydrates what:

* **At startup** (``adopt_existing``, called from ``start_watching``) a gateway re-attaches every
  kernel of its namespace whose JupyterKernel is ``Running`` and not being deleted. Attaching is
  cheap (two ZeroMQ sockets and one Secret read), and it makes a restarted gateway list its
  kernels at once, whether its predecessor stopped cleanly, was SIGKILLed or was another replica.
* **On demand** (``hydrate_kernel``): a request naming a kernel this gateway does not hold. With
  replicas any replica may serve any kernel, so this works for a kernel another live replica
  holds too; both then hold it and follow each other's restarts and shutdowns through the watch
  (see ``gateway/liveness.py``).

Holding is not claiming. The *claim* is ``JupyterKernel.spec.gateway``, which the cull job checks
against that gateway's Lease. A gateway claims (``lease.adopt``: one conditional write, so two
gateways adopting at once cannot both win, nor can adoption race the cull job) a kernel it
attaches when the kernel is unclaimed, claimed by this gateway id, or claimed by a gateway whose
Lease is missing, released or expired. A kernel claimed by a live replica keeps its claim; this
gateway watches that Lease and claims the kernel if the replica dies, so the cull job never
takes a kernel a live gateway still serves. Only the claimant should cull a kernel; the others
drop it when its JupyterKernel is deleted.

Costs: per hydrated kernel one GET of its Secret and at most one write (the adoption). A
record or pod missing from the watch cache (another replica has just created it) costs one GET
each instead of a guess. The key is never logged: it lives in the Secret and in memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from ..kube import resources as R
from ..kube.client import JSON, LEASES, PODS, SECRETS, KubeError, Resource
from ..kube.connection import ClusterConnection
from ..kube.informer import Informer
from ..provisioner.provisioner import ATTACH_KWARG, ElasticKernelProvisioner
from ..provisioner.render import KEY_SECRET_ITEM
from .lease import adopt, is_expired, lease_facts, lease_name

if TYPE_CHECKING:
    from .kernelmanager import ElasticMappingKernelManager

__all__ = ["KernelHydrator", "ClusterUnavailable"]


class ClusterUnavailable(web.HTTPError):
    """The kernel may exist, but the cluster cannot say: 503, not a misleading 404."""

    def __init__(self, what: str, error: KubeError) -> None:
        super().__init__(503, f"cannot {what}: the Kubernetes API is unavailable ({error.message})")
        self.reason = "ClusterUnavailable"


class KernelHydrator(LoggingConfigurable):
    """Re-attaches kernels to one ``ElasticMappingKernelManager`` (see the module docstring)."""

    cache_timeout = Float(
        30.0, config=True,
        help="Seconds to wait for the shared watch to deliver a kernel's record or pod that a "
        "direct read found (another replica has just written it).",
    )
    concurrency = Integer(
        8, config=True, help="Kernels re-attached at the same time when the gateway starts."
    )

    def __init__(self, manager: ElasticMappingKernelManager, **kwargs: Any) -> None:
        super().__init__(parent=manager, **kwargs)
        self.manager = manager
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self._foreign: dict[str, set[str]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, tuple[bool, float]] = {}

    @property
    def connection(self) -> ClusterConnection:
        return ClusterConnection.instance()

    # -- entry points ------------------------------------------------------------------------

    async def hydrate(self, kernel_id: str, record: JSON | None = None) -> bool:
        """Hold ``kernel_id`` if its JupyterKernel says it runs; False if there is no such kernel.

        Concurrent requests for one kernel share a single attempt. Raises an HTTP 503 when the
        cluster cannot be asked.
        """
        if not isinstance(kernel_id, str) or not R.KERNEL_ID_RE.match(kernel_id):
            return False
        if kernel_id in self.manager:
            return True
        if kernel_id in getattr(self.manager, "_pending_kernels", {}):
            return False  # this gateway is starting it right now
        attempt = self._inflight.get(kernel_id)
        if attempt is None:
            attempt = asyncio.ensure_future(self._hydrate(kernel_id, record))
            self._inflight[kernel_id] = attempt
            attempt.add_done_callback(lambda _: self._inflight.pop(kernel_id, None))
        # Shielded: a client that goes away must not cancel the attempt others wait for.
        return await asyncio.shield(attempt)

    async def adopt_existing(self) -> list[str]:
        """Re-attach every running kernel of the namespace; returns the ids now held."""
        records = await self.connection.informer(R.JUPYTERKERNELS)
        found: list[tuple[str, JSON]] = []
        for record in records.items():
            kernel_id = ((record.get("spec") or {}).get("kernelId"))
            meta = record.get("metadata") or {}
            phase = (record.get("status") or {}).get("phase")
            if (isinstance(kernel_id, str) and kernel_id not in self.manager
                    and not meta.get("deletionTimestamp") and phase == R.PHASE_RUNNING):
                found.append((kernel_id, record))
        limit = asyncio.Semaphore(max(1, self.concurrency))

        async def one(kernel_id: str, record: JSON) -> bool:
            async with limit:
                try:
                    return await self.hydrate(kernel_id, record)
                except web.HTTPError as e:
                    self.log.warning("Kernel %s not re-attached: %s", kernel_id, e.log_message)
                    return False

        results = await asyncio.gather(*(one(kid, rec) for kid, rec in found)) if found else []
        held = [kid for (kid, _), ok in zip(found, results) if ok]
        self.log.info("Re-attached %d of %d running kernel%s found in namespace %s", len(held),
                      len(found), "" if len(found) == 1 else "s", self.connection.default_namespace)
        return held

    async def close(self) -> None:
        """Stop watching other gateways' Leases (the gateway is stopping)."""
        tasks = list(self._watchers.values())
        self._watchers.clear()
        self._foreign.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one kernel --------------------------------------------------------------------------

    async def _hydrate(self, kernel_id: str, known: JSON | None) -> bool:
        conn = self.connection
        try:
            records = await conn.informer(R.JUPYTERKERNELS)
            pods = await conn.informer(PODS, label_selector=R.KERNEL_POD_SELECTOR)
        except KubeError as e:
            raise ClusterUnavailable(f"look up kernel {kernel_id}", e) from None
        name = R.kernel_object_name(kernel_id)
        record = known or records.get(name)
        if not _running(record):
            # Not in the cache, or not running there: another replica may have written it a
            # moment ago. Ask once rather than answer 404 for a kernel that exists.
            record = await self._get(R.JUPYTERKERNELS, name, f"look up kernel {kernel_id}")
            if record is None or not _coming(record):
                return False
        # The restarter and the kernel model read the record from the watch: wait until it is
        # there, and running (a start or restart by another gateway may be under way).
        if not _running(records.get(name)):
            try:
                record = await records.wait_for(_settled, name, timeout=self.cache_timeout)
            except asyncio.TimeoutError:
                self.log.warning("Kernel %s: not running after %.0fs; not re-attaching",
                                 kernel_id, self.cache_timeout)
                return False
            if not _running(record):
                return False
        assert record is not None
        try:
            view = R.KernelView.from_object(record)
        except ValueError as e:
            self.log.warning("Kernel %s cannot be re-attached: %s", kernel_id, e)
            return False
        if view.kernel_id != kernel_id:
            self.log.warning("JupyterKernel %s names kernel %s; not re-attaching", name,
                             view.kernel_id)
            return False
        pod = await self._pod(view, pods)
        key = await self._key(view)
        if key is None:
            return False
        spec = await self._kernelspec(view)
        try:
            attachment = ElasticKernelProvisioner.attachment(record, pod, key, spec)
        except ValueError as e:
            self.log.warning("Kernel %s cannot be re-attached: %s", kernel_id, e)
            return False
        manager = self.manager
        try:
            # jupyter_server's own start path does all the bookkeeping (the kernel table,
            # activity watching, connection counts, the "dead" callback, the culler); the
            # provisioner, given the attachment, connects instead of creating anything. It is
            # called past ElasticMappingKernelManager.start_kernel: quotas and the GPU queue
            # concern new kernels, not this one.
            await AsyncMappingKernelManager.start_kernel(
                manager, kernel_id=kernel_id, kernel_name=view.kernel_spec, env={},
                elastic_client_env=dict(view.client_env), **{ATTACH_KWARG: attachment},
            )
        except Exception as e:  # noqa: BLE001 - e.g. its kernelspec was deleted meanwhile
            getattr(manager, "_pending_kernels", {}).pop(kernel_id, None)
            self.log.warning("Kernel %s could not be re-attached: %s: %s", kernel_id,
                             type(e).__name__, e)
            return False
        kernel = manager.get_kernel(kernel_id)
        if view.last_activity is not None:
            # Idle time continues from the record: restarting gateways must not keep idle
            # kernels alive for ever.
            kernel.last_activity = view.last_activity
        self._ping(kernel)
        self.log.info("Re-attached kernel %s (%s, user %s, pod %s)", kernel_id, view.kernel_spec,
                      view.user, attachment.pod_name)
        await self._claim(kernel_id, records)
        return True

    async def _get(self, resource: Resource, name: str, what: str) -> JSON | None:
        """One read; None when the object does not exist."""
        try:
            return await self.connection.client.get(resource, name)
        except KubeError as e:
            if e.not_found:
                return None
            if e.unreachable:
                raise ClusterUnavailable(what, e) from None
            self.log.warning("Cannot read %s %s: %s", resource.kind, name, e)
            return None

    async def _pod(self, view: R.KernelView, pods: Informer) -> JSON | None:
        """The kernel's pod from the watch cache; None when it is really gone (the restarter
        then applies the restart policy). A pod the watch has not delivered yet is waited for,
        so a lagging cache never looks like a dead kernel."""
        name = view.pod_name or R.kernel_pod_name(view.kernel_id, view.restart_count)
        pod = pods.get(name, view.namespace)
        if pod is not None:
            return pod
        fetched = await self._get(PODS, name, f"look up the pod of kernel {view.kernel_id}")
        if fetched is None:
            return None
        try:
            return await pods.wait_for(lambda p: p is not None, name, view.namespace,
                                       timeout=self.cache_timeout)
        except asyncio.TimeoutError:
            raise ClusterUnavailable(
                f"follow kernel {view.kernel_id}",
                KubeError(0, "Timeout", "the pod watch did not deliver its pod")) from None

    async def _key(self, view: R.KernelView) -> str | None:
        """The HMAC key, from the kernel's Secret: one GET. Never logged."""
        secret = await self._get(SECRETS, R.key_secret_name(view.kernel_id),
                                 f"read the key of kernel {view.kernel_id}")
        raw = ((secret or {}).get("data") or {}).get(KEY_SECRET_ITEM)
        if not isinstance(raw, str):
            self.log.warning("Kernel %s cannot be re-attached: its Secret %s is missing or has no "
                             "%r item", view.kernel_id, R.key_secret_name(view.kernel_id),
                             KEY_SECRET_ITEM)
            return None
        try:
            return base64.b64decode(raw, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            self.log.warning("Kernel %s cannot be re-attached: its Secret's key is not base64 "
                             "ASCII", view.kernel_id)
            return None

    async def _kernelspec(self, view: R.KernelView) -> R.KernelSpecView | None:
        """The kernel's JupyterKernelSpec from the cache (restart policy, GPUs); None if gone."""
        specs = await self.connection.informer(R.KERNELSPECS, view.namespace)
        obj = specs.get(view.kernel_spec, view.namespace)
        try:
            return R.KernelSpecView.from_object(obj) if obj is not None else None
        except ValueError:
            return None

    def _ping(self, kernel: Any) -> None:
        """Ask for kernel_info on a transient control stream, so the activity watcher learns
        the kernel's state instead of showing 'starting' until a client connects."""
        try:
            stream = kernel.connect_control()
        except Exception:  # noqa: BLE001 - cosmetic only
            return
        loop = asyncio.get_running_loop()

        def close(*_: Any) -> None:
            if not stream.closed():
                stream.close()

        stream.on_recv(close)
        kernel.session.send(stream, "kernel_info_request")
        loop.call_later(self.cache_timeout, close)

    # -- claims -------------------------------------------------------------------------------

    async def _claim(self, kernel_id: str, records: Informer) -> None:
        """Claim the kernel unless a live gateway does (see the module docstring)."""
        me = self.manager.gateway_id
        record = records.get(R.kernel_object_name(kernel_id))
        if record is None:
            return
        holder = str((record.get("spec") or {}).get("gateway") or "")
        if holder == me:
            return
        if holder and await self._lease_live(holder):
            self._foreign.setdefault(holder, set()).add(kernel_id)
            if holder not in self._watchers:
                self._watchers[holder] = asyncio.ensure_future(self._claim_when_dead(holder))
            return
        await self._adopt(record)

    async def _adopt(self, record: JSON) -> bool:
        me = self.manager.gateway_id
        name = (record.get("metadata") or {}).get("name")
        client = self.connection.client
        for attempt in range(2):
            try:
                await adopt(client, record, me)
                self.log.info("Adopted %s (was claimed by %r)", name,
                              (record.get("spec") or {}).get("gateway") or None)
                return True
            except KubeError as e:
                if e.not_found:
                    return False  # deleted meanwhile: the restarter lets the kernel go
                if not e.conflict or attempt:
                    self.log.warning("Could not adopt %s: %s", name, e)
                    return False
            # The record changed since it was read: judge again on its current state.
            fresh = await self._get(R.JUPYTERKERNELS, str(name), f"adopt {name}")
            if fresh is None:
                return False
            holder = str((fresh.get("spec") or {}).get("gateway") or "")
            if holder == me or (holder and await self._lease_live(holder)):
                return holder == me
            record = fresh
        return False

    async def _lease_live(self, gateway_id: str) -> bool:
        """Whether ``gateway_id`` holds an unexpired Lease. Unsure (API errors) counts as live:
        taking a kernel from a live gateway is worse than claiming it a little later.

        Answers are kept for a second: a starting gateway asks about the same few gateways once
        per kernel it re-attaches.
        """
        loop = asyncio.get_running_loop()
        known = self._leases.get(gateway_id)
        if known is not None and known[1] > loop.time():
            return known[0]
        live = await self._read_lease_live(gateway_id)
        self._leases[gateway_id] = (live, loop.time() + 1.0)
        return live

    async def _read_lease_live(self, gateway_id: str) -> bool:
        try:
            lease = await self.connection.client.get(LEASES, lease_name(gateway_id))
        except KubeError as e:
            return not e.not_found
        except ValueError:
            return False  # not a usable gateway id: nothing can hold a lease for it
        facts = lease_facts(lease)
        return facts.holder == gateway_id and not is_expired(facts, datetime.now(timezone.utc))

    async def _claim_when_dead(self, holder: str) -> None:
        """Wake when ``holder``'s Lease runs out; then claim its kernels this gateway holds."""
        try:
            while True:
                if not any(k in self.manager for k in self._foreign.get(holder, ())):
                    return  # none of its kernels is held here any more
                try:
                    lease = await self.connection.client.get(LEASES, lease_name(holder))
                except KubeError as e:
                    if not e.not_found:
                        await asyncio.sleep(5.0)
                        continue
                    lease = None
                facts = lease_facts(lease) if lease is not None else None
                now = datetime.now(timezone.utc)
                if facts is None or facts.holder != holder or is_expired(facts, now):
                    break
                expires = facts.expires_at()
                delay = (expires - now).total_seconds() if expires is not None else 5.0
                await asyncio.sleep(max(1.0, delay + 0.5))
            kernels = self._foreign.pop(holder, set())
            records = await self.connection.informer(R.JUPYTERKERNELS)
            for kernel_id in sorted(kernels):
                record = records.get(R.kernel_object_name(kernel_id))
                if (kernel_id in self.manager and record is not None
                        and (record.get("spec") or {}).get("gateway") == holder):
                    self.log.info("Gateway %s is gone; claiming kernel %s", holder, kernel_id)
                    await self._adopt(record)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug here must not go unnoticed, nor crash anything
            self.log.exception("Watching the lease of gateway %s failed", holder)
        finally:
            if self._watchers.get(holder) is asyncio.current_task():
                self._watchers.pop(holder, None)


def _coming(record: Mapping[str, Any]) -> bool:
    """Running, or being started or restarted (so worth waiting for)."""
    if (record.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return (record.get("status") or {}).get("phase", R.PHASE_PENDING) in (
        R.PHASE_RUNNING, R.PHASE_STARTING, R.PHASE_PENDING)


def _settled(record: Mapping[str, Any] | None) -> bool:
    """In the cache and done starting, one way or the other."""
    return record is not None and not _coming(record) or _running(record)


def _running(record: Mapping[str, Any] | None) -> bool:
    if record is None:
        return False
    if (record.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return (record.get("status") or {}).get("phase") == R.PHASE_RUNNING
