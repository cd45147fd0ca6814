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
  (see ``gateway/lifecycle/liveness.py``).

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

**Records of starts that never happened** (``watch_abandoned_starts``). A start that failed
while the API server hung may see its JupyterKernel created afterwards (the provisioner then
removes it in the background, for a bounded time: ``provisioner/leftovers.py``). Should one
survive that, nothing else would: it has no pod, is not re-attached (only running kernels are),
is invisible to its user and counts against their kernel limit and GPU quota. So from startup
on, each record this gateway claims that has not started gets a timer for when it is older than
its kernelspec's ``launchTimeout`` plus ``launch_grace``; a record that appears later (on the
watch, or in a relist after an outage or at the periodic resync) gets one too, and the timer
goes when the record starts or is deleted. When it fires, a record that still never started,
whose start is not under way in this process and that has no pod (the watch cache, confirmed by
one list) is deleted with reason ``LaunchAbandoned``, an Event and a log line. A kernel waiting
in the GPU queue has its (gated or Pending) pod and is never taken; records claimed by other
gateways are theirs (and the cull cron's).

The hydrator is given what it needs, not the kernel manager (issue 12): this gateway's id,
whether a kernel is held (``holds``) or being started here (``pending_start``), how to attach
one (``attach``: jupyter_server's own start path, given the attachment), the kernelspecs, and a
clock for its judgements of records that never started.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from tornado import web
from traitlets import Float, Integer, TraitError, validate
from traitlets.config import LoggingConfigurable

from elastic_kernels.culling import actions as A
from elastic_kernels.culling import policy as C
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.records import Clock, utc_now
from elastic_kernels.kube.client import JSON, LEASES, PODS, SECRETS, KubeError, Resource
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.kube.informer import Informer
from elastic_kernels.provisioner import leftovers
from elastic_kernels.provisioner.provisioner import Attachment, ElasticKernelProvisioner
from elastic_kernels.provisioner.render import KEY_SECRET_ITEM
from elastic_kernels.leases import adopt, is_expired, lease_facts, lease_name

__all__ = ["KernelHydrator", "ClusterUnavailable"]

#: The Events of kernels this gateway deletes name it (as its culler's do).
COMPONENT = "elastic-kernels-gateway"
#: Seconds before a record that could not be judged (API trouble) is looked at again.
SWEEP_RETRY = 10.0


class ClusterUnavailable(web.HTTPError):
    """The kernel may exist, but the cluster cannot say: 503, not a misleading 404."""

    def __init__(self, what: str, error: KubeError) -> None:
        answer = ("is unavailable" if error.unreachable
                  else f"answered {error.status} {error.reason}")
        super().__init__(503, f"cannot {what}: the Kubernetes API {answer} ({error.message})")
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
    launch_grace = Float(
        60.0, config=True,
        help="Seconds past its kernelspec's launchTimeout after which a JupyterKernel this "
        "gateway claims, that never started, has no pod and is not being started here, is "
        "deleted (reason LaunchAbandoned): what a start that failed while the API server hung "
        "leaves when the create is carried out later. Covers clock skew between the gateway "
        "and the API server, which sets the record's creationTimestamp.",
    )

    @validate("launch_grace")
    def _check_launch_grace(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value >= 0:
            raise TraitError(f"launch_grace must be >= 0 seconds, not {value!r}")
        return value

    def __init__(
        self,
        *,
        gateway_id: Callable[[], str],
        holds: Callable[[str], bool],
        pending_start: Callable[[str], Any],
        attach: Callable[[str, R.KernelView, Attachment], Awaitable[Any]],
        kernelspecs: Callable[[], list[JSON]],
        clock: Clock = time.time,
        **kwargs: Any,
    ) -> None:
        """``kwargs`` are the Configurable's (``parent``: the kernel manager, for its config and
        log only)."""
        super().__init__(**kwargs)
        #: This gateway's id, read when needed (the app sets it after the manager is made).
        self.gateway_id = gateway_id
        #: Whether this gateway holds the kernel now.
        self.holds = holds
        #: The start of a kernel under way in this process (jupyter_server's pending task), or
        #: None.
        self.pending_start = pending_start
        #: ``attach(kernel_id, record, attachment)``: hold the kernel through jupyter_server's
        #: start path (the provisioner connects instead of creating); returns the kernel's
        #: manager, raises if it could not.
        self.attach = attach
        self.kernelspecs = kernelspecs
        self.clock = clock
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self._foreign: dict[str, set[str]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._leases: dict[str, tuple[bool, float]] = {}
        self._sweep_timers: dict[str, asyncio.TimerHandle] = {}
        self._sweeps: set[asyncio.Task[None]] = set()
        self._unwatch_records: Callable[[], None] | None = None

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
        if self.holds(kernel_id):
            return True
        # An attempt under way first: while it attaches, jupyter_server lists the kernel as a
        # pending start, and a request then (a gateway serves while it re-attaches at startup)
        # must wait for that attempt, not answer that there is no such kernel.
        attempt = self._inflight.get(kernel_id)
        if attempt is None:
            if self.pending_start(kernel_id) is not None:
                return False  # a user's start of it here, not a hydration
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
            if (isinstance(kernel_id, str) and not self.holds(kernel_id)
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
        await self.watch_abandoned_starts()
        return held

    async def close(self) -> None:
        """Stop watching other gateways' Leases and judging records (the gateway is stopping);
        stop removing what failed starts left (the next gateway's sweep and the cron take over)."""
        if self._unwatch_records is not None:
            self._unwatch_records()
            self._unwatch_records = None
        for timer in self._sweep_timers.values():
            timer.cancel()
        self._sweep_timers.clear()
        tasks = list(self._watchers.values()) + list(self._sweeps)
        self._watchers.clear()
        self._foreign.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await leftovers.stop_all()

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
        try:
            kernel: Any = await self.attach(kernel_id, view, attachment)
        except Exception as e:  # noqa: BLE001 - e.g. its kernelspec was deleted meanwhile
            self.log.warning("Kernel %s could not be re-attached: %s: %s", kernel_id,
                             type(e).__name__, e)
            return False
        # jupyter_server adds last_activity to the kernel managers it holds.
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
            # Anything else (unreachable, throttled, refused, a server error) says nothing of
            # whether the kernel exists: a 503 the client retries, never a 404 it believes.
            raise ClusterUnavailable(what, e) from None

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
        me = self.gateway_id()
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
        me = self.gateway_id()
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
            try:
                fresh = await self._get(R.JUPYTERKERNELS, str(name), f"adopt {name}")
            except ClusterUnavailable as e:
                # The kernel is held either way; the claim waits for the next chance.
                self.log.warning("Could not adopt %s: %s", name, e.log_message)
                return False
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
        return facts.holder == gateway_id and not is_expired(facts, utc_now(self.clock))

    async def _claim_when_dead(self, holder: str) -> None:
        """Wake when ``holder``'s Lease runs out; then claim its kernels this gateway holds."""
        try:
            while True:
                if not any(self.holds(k) for k in self._foreign.get(holder, ())):
                    return  # none of its kernels is held here any more
                try:
                    lease = await self.connection.client.get(LEASES, lease_name(holder))
                except KubeError as e:
                    if not e.not_found:
                        await asyncio.sleep(5.0)
                        continue
                    lease = None
                facts = lease_facts(lease) if lease is not None else None
                now = utc_now(self.clock)
                if facts is None or facts.holder != holder or is_expired(facts, now):
                    break
                expires = facts.expires_at()
                delay = (expires - now).total_seconds() if expires is not None else 5.0
                await asyncio.sleep(max(1.0, delay + 0.5))
            kernels = self._foreign.pop(holder, set())
            records = await self.connection.informer(R.JUPYTERKERNELS)
            for kernel_id in sorted(kernels):
                record = records.get(R.kernel_object_name(kernel_id))
                if (self.holds(kernel_id) and record is not None
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


    # -- records of starts that never happened (see the module docstring) -----------------------

    async def watch_abandoned_starts(self) -> None:
        """Arm a check for every record this gateway claims that has not started, now and as
        the JupyterKernel watch delivers them (a relist included)."""
        records = await self.connection.informer(R.JUPYTERKERNELS)
        if self._unwatch_records is None:
            self._unwatch_records = records.add_listener(self._record_changed)
        for record in records.items():
            self._arm(record)

    def _record_changed(self, event_type: str, obj: JSON, old: JSON | None) -> None:
        if event_type == "DELETED":
            self._disarm(str((obj.get("metadata") or {}).get("name") or ""))
        else:
            self._arm(obj)

    def _unstarted_claim(self, record: Mapping[str, Any] | None) -> R.KernelView | None:
        """The record, if this gateway claims it and it never started (else None)."""
        if record is None:
            return None
        # Cheap checks first: this runs on every JupyterKernel event of the namespace.
        status = record.get("status") or {}
        if (record.get("spec") or {}).get("gateway") != self.gateway_id() or \
                status.get("startedAt") or (record.get("metadata") or {}).get("deletionTimestamp"):
            return None
        try:
            view = R.KernelView.from_object(record)
        except ValueError:
            return None
        if view.gateway != self.gateway_id() or view.deleting:
            return None
        if view.started_at is not None or view.phase not in C.STARTING_PHASES:
            return None
        return view

    def _arm(self, record: JSON) -> None:
        name = str((record.get("metadata") or {}).get("name") or "")
        view = self._unstarted_claim(record)
        if view is None:
            self._disarm(name)
        elif name not in self._sweep_timers:
            self._schedule(name, self._due_in(view))

    def _disarm(self, name: str) -> None:
        timer = self._sweep_timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _schedule(self, name: str, delay: float) -> None:
        self._disarm(name)
        loop = asyncio.get_running_loop()
        self._sweep_timers[name] = loop.call_later(max(0.0, delay), self._judge_soon, name)

    def _judge_soon(self, name: str) -> None:
        self._sweep_timers.pop(name, None)
        task = asyncio.ensure_future(self._judge(name))
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    def _due_in(self, view: R.KernelView) -> float:
        """Seconds until the record is older than its launch timeout plus the grace."""
        if view.created_at is None:
            return self.launch_grace
        due = view.created_at + timedelta(seconds=self._launch_timeout(view) + self.launch_grace)
        return max(0.0, (due - utc_now(self.clock)).total_seconds())

    def _launch_timeout(self, view: R.KernelView) -> float:
        """The start's limit as the provisioner applies it: the kernelspec's launchTimeout,
        else the configured ``ElasticKernelProvisioner.launch_timeout``."""
        for obj in self.kernelspecs():
            meta = obj.get("metadata") or {}
            if meta.get("name") != view.kernel_spec or \
                    (meta.get("namespace") or view.namespace) != view.namespace:
                continue
            try:
                timeout = R.KernelSpecView.from_object(obj).launch_timeout
            except ValueError:
                timeout = None
            if timeout:
                return float(timeout)
            break
        section = self.config.get("ElasticKernelProvisioner")
        configured = section.get("launch_timeout") if isinstance(section, Mapping) else None
        try:
            return float(configured if configured is not None else
                         ElasticKernelProvisioner.class_traits()["launch_timeout"].default_value)
        except (TypeError, ValueError):
            return 300.0

    def _starting_here(self, view: R.KernelView) -> bool:
        """Whether this process is starting (or holds, or is attaching) the kernel."""
        if leftovers.in_progress(view.namespace, view.name):
            return True
        if self.holds(view.kernel_id) or view.kernel_id in self._inflight:
            return True
        pending = self.pending_start(view.kernel_id)
        return pending is not None and not getattr(pending, "done", lambda: True)()

    async def _has_pod(self, view: R.KernelView) -> bool:
        """Whether any pod of the kernel exists: the watch cache, confirmed by one list (a
        cache that lags after an outage must not make a queued kernel look pod-less)."""
        pods = await self.connection.informer(PODS, label_selector=R.KERNEL_POD_SELECTOR)
        for pod in pods.items():
            meta = pod.get("metadata") or {}
            if (meta.get("labels") or {}).get(R.LABEL_KERNEL_ID) == view.kernel_id or any(
                    isinstance(ref, dict) and view.uid and ref.get("uid") == view.uid
                    for ref in meta.get("ownerReferences") or []):
                return True
        listed = await self.connection.client.list(
            PODS, view.namespace,
            label_selector=f"{R.KERNEL_POD_SELECTOR},{R.LABEL_KERNEL_ID}={view.kernel_id}")
        return bool(listed.get("items"))

    async def _judge(self, name: str) -> None:
        """The timer of a record that has not started went off: delete it if it is a leftover."""
        try:
            records = await self.connection.informer(R.JUPYTERKERNELS)
            view = self._unstarted_claim(records.get(name))
            if view is None:
                return  # started, deleted or given to another gateway meanwhile
            delay = self._due_in(view)
            if delay > 0:  # its kernelspec's launchTimeout grew meanwhile
                self._schedule(name, delay)
                return
            if self._starting_here(view):
                self._schedule(name, max(self.launch_grace, SWEEP_RETRY))
                return
            if await self._has_pod(view):
                return  # e.g. waiting in the GPU queue: its start owns it
            now = utc_now(self.clock)
            facts = C.KernelFacts.from_view(view, has_pod=False)
            message = C.launch_abandoned_message(facts, self._launch_timeout(view), now,
                                                 self.launch_grace)
            if message is None:
                return
            decision = C.CullDecision(facts, C.CullReason.LAUNCH_ABANDONED, message,
                                      facts.idle_seconds(now), facts.age_seconds(now))
            result = await A.cull_kernel(self.connection.client, decision, component=COMPONENT,
                                         grace_period_seconds=0)
        except KubeError as e:
            self.log.info("Cannot judge JupyterKernel %s now (%s); looking again in %.0fs",
                          name, e, SWEEP_RETRY)
            self._schedule(name, SWEEP_RETRY)
            return
        if result.outcome is A.CullOutcome.DELETED:
            self.log.warning("Deleted JupyterKernel %s (kernel %s of user %s, kernelspec %s): "
                             "%s: %s", name, view.kernel_id, view.user, view.kernel_spec,
                             decision.reason.value, message)
        elif result.outcome is A.CullOutcome.FAILED:
            self.log.warning("Could not delete JupyterKernel %s (%s): %s; looking again in "
                             "%.0fs", name, decision.reason.value, result.detail, SWEEP_RETRY)
            self._schedule(name, SWEEP_RETRY)
        else:  # gone already, or written meanwhile (its watch event re-arms the check)
            self.log.info("JupyterKernel %s not deleted: %s", name, result.detail)


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
    """Holdable: running, or suspended (held without a pod until a connect resumes it)."""
    if record is None:
        return False
    if (record.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return (record.get("status") or {}).get("phase") in (R.PHASE_RUNNING, R.PHASE_SUSPENDED)
