"""The gateway's kernel managers: jupyter_server's, taught that kernels live in pods.

``ElasticMappingKernelManager`` keeps jupyter_server's whole mechanism (activity tracking,
culling, websocket bookkeeping) and adds what a multi-user, pod-backed gateway needs: the
authenticated user and the client's environment travel to the provisioner, kernel ids from
clients are validated, and each kernel's model carries its pod's state (``elastic``).

``ElasticKernelManager`` (one per kernel) keeps the HMAC key in memory only: it never writes a
connection file, and its sockets reconnect quickly to a pod whose kernel is still binding.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import zmq
from jupyter_client.kernelspec import NoSuchKernel
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets import (Bool, Dict, Float, Integer, List, TraitError, Unicode, default, observe,
                       validate)

from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import KubeError
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.kube.informer import Informer
from elastic_kernels import snapshot
from elastic_kernels.culling.gpusource import GpuUseSource
from elastic_kernels.culling.policy import CullDecision, CullingDefaults, Policy
from elastic_kernels.provisioner.errors import KernelLaunchError
from elastic_kernels.provisioner.provisioner import (
    ATTACH_KWARG,
    GPU_QUEUE_KWARG,
    WARM_POOL_KWARG,
    Attachment,
    ElasticKernelProvisioner,
    start_kernel_watches,
)
from elastic_kernels.gateway.lifecycle.activity import watch_activity
from elastic_kernels.gateway.lifecycle.culler import GatewayCuller, HeldKernel
from elastic_kernels.gateway.lifecycle.gpuqueue import GpuQueue
from elastic_kernels.gateway.lifecycle.hydration import KernelHydrator
from elastic_kernels.gateway.lifecycle.warmpool import WarmPools
from elastic_kernels.gateway.lifecycle.prepull import ImagePrepuller
from elastic_kernels.leases import GatewayLease
from elastic_kernels.gateway.transport.msgsize import SizeGuard
from elastic_kernels.gateway.lifecycle.liveness import kernel_died, renudge_connections
from elastic_kernels.gateway.lifecycle.suspension import Snapshots, SuspendLimits, read_key
from elastic_kernels.gateway.transport.offlinebuffer import bound_buffering
from elastic_kernels.upstream import (
    KernelManagerHooks,
    MappingKernelManagerHooks,
    activity_stream,
    connection_count,
    isoformat,
    managed_kernels,
    offline_buffers,
    pending_starts,
    utcnow,
)


class RestoreFailed(Exception):
    """A resume that could not restore the kernel's snapshot this time (the store or the
    kernel failed): the kernel is suspended again, its snapshot kept for the next try."""


class ElasticKernelManager(KernelManagerHooks):
    """A kernel manager whose kernel's connection info never touches the disk."""

    reconnect_interval_ms = Integer(
        10, config=True,
        help="ZeroMQ reconnect interval towards a kernel. The socket connects before the kernel "
        "binds (ZeroMQ queues), so the first reconnect decides how soon a fresh kernel answers; "
        "ZeroMQ's 100 ms default costs up to 100 ms per start.",
    )
    reconnect_interval_max_ms = Integer(
        1000, config=True, help="Upper bound of ZeroMQ's reconnect back-off towards a kernel."
    )

    #: Saved and without a pod (onCull: Suspend); the next connect or execute resumes it.
    suspended = False

    def __init__(self, **kwargs: Any) -> None:
        #: Every socket connected towards the kernel, with its endpoint (see _kernel_moved).
        self._elastic_endpoints: weakref.WeakKeyDictionary[zmq.Socket, str] = \
            weakref.WeakKeyDictionary()
        self._elastic_drop_listeners: weakref.WeakKeyDictionary[
            zmq.Socket, list[Callable[[str, int], None]]] = weakref.WeakKeyDictionary()
        super().__init__(**kwargs)

    def write_connection_file(self, **kwargs: Any) -> None:
        """The key lives in the kernel's Secret and in memory; nothing is written to disk."""
        self.mark_connection_file_written(True)

    def cleanup_connection_file(self) -> None:
        self.mark_connection_file_written(False)

    def create_connected_socket(self, channel: str, identity: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(_SOCKET_TYPES[channel])
        sock.linger = 1000
        sock.setsockopt(zmq.RECONNECT_IVL, self.reconnect_interval_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.reconnect_interval_max_ms)
        if identity:
            sock.identity = identity
        url = self.channel_url(channel)
        # Before connect: libzmq copies a socket's options into each connection it makes.
        self._guard_message_size(sock, channel)
        sock.connect(url)
        self._elastic_endpoints[sock] = url
        return sock

    def _guard_message_size(self, sock: zmq.Socket, channel: str) -> None:
        """Bound one message's size on ``sock`` and re-connect it when the bound drops its
        connection (gateway/transport/msgsize.py); listeners registered with
        :meth:`on_message_dropped` hear about it."""
        limit = int(getattr(self.parent, "max_kernel_message_bytes", 0) or 0)
        if limit <= 0 or channel == "hb":
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to re-connect on: better unbounded than deaf for ever
        sock.setsockopt(zmq.MAXMSGSIZE, limit)
        # Weak: the guard lives as long as the socket is open, and must not keep it alive.
        ref = weakref.ref(sock)

        def endpoint() -> str | None:
            s = ref()
            return None if s is None else self._elastic_endpoints.get(s)

        def dropped() -> None:
            s = ref()
            for listener in list(self._elastic_drop_listeners.get(s, ()) if s else ()):
                listener(channel, limit)

        SizeGuard(sock, endpoint, dropped)

    def on_message_dropped(self, sock: zmq.Socket,
                           listener: Callable[[str, int], None]) -> None:
        """Call ``listener(channel, max_bytes)`` when ``sock`` drops an oversized message."""
        self._elastic_drop_listeners.setdefault(sock, []).append(listener)

    @property
    def elastic_provisioner(self) -> ElasticKernelProvisioner | None:
        p = self.provisioner
        return p if isinstance(p, ElasticKernelProvisioner) else None

    # -- following the kernel from pod to pod (hydration, replicas, restarts) -------------------

    @default("restarter_class")
    def _restarter_class_default(self) -> type:
        # Decides on watch events and the kernelspec's restartPolicy (lifecycle/liveness.py).
        from elastic_kernels.gateway.lifecycle.liveness import ElasticKernelRestarter
        return ElasticKernelRestarter

    @observe("ip")
    def _kernel_moved(self, change: Any) -> None:
        """A restarted kernel is a new pod with a new IP (the ports are fixed). Re-point every
        open socket (websocket channels, the activity watcher, the control socket) so clients
        keep their connections across restarts, including those another replica made."""
        old, new = change["old"], change["new"]
        if not old or not new or old == new:
            return
        for sock, url in list(self._elastic_endpoints.items()):
            transport, _, rest = url.partition("://")
            host, _, port = rest.rpartition(":")
            if sock.closed or host != old:
                continue
            moved = f"{transport}://{new}:{port}"
            try:
                sock.disconnect(url)
            except zmq.ZMQError:
                pass  # already disconnected
            sock.connect(moved)
            self._elastic_endpoints[sock] = moved
        # Once the new connection info is complete, wake the open websockets as on open.
        asyncio.get_running_loop().call_soon(renudge_connections, self.kernel_id)


_SOCKET_TYPES = {
    "shell": zmq.DEALER,
    "iopub": zmq.SUB,
    "stdin": zmq.DEALER,
    "hb": zmq.REQ,
    "control": zmq.DEALER,
}


class ElasticMappingKernelManager(MappingKernelManagerHooks):
    """Kernels in pods, with their owners and their pods' state."""

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> str:
        return f"{ElasticKernelManager.__module__}.{ElasticKernelManager.__qualname__}"

    gateway_id = Unicode(
        config=True,
        help="This gateway's identity, recorded on the kernels it starts. Default: host name.",
    )

    shutdown_kernels_on_exit = Bool(
        False, config=True,
        help="Shut every kernel down when the gateway stops. Off by default: kernels live in "
        "pods and the next gateway, or another replica, re-attaches them.",
    )

    gpu_quota_per_user = Integer(
        0, config=True,
        help="Most devices of each GPU flavor (nvidia.com/gpu, a MIG profile, ...) one user's "
        "kernels may hold or wait for (0: no quota), unless gpu_quota_per_flavor says "
        "otherwise for that flavor. A start beyond it is refused at once, saying the quota and "
        "the current use.",
    )
    gpu_quota_per_flavor = Dict(
        key_trait=Unicode(), value_trait=Integer(min=0), config=True,
        help="Per-user quota of a GPU flavor, by resource name or pattern "
        "({'nvidia.com/gpu': 1, 'nvidia.com/mig-*': 4}; 0: no quota for it); overrides "
        "gpu_quota_per_user for the flavors it names. The most specific key (an exact name "
        "before a pattern) wins.",
    )
    gpu_flavors = List(
        Unicode(), default_value=list(R.DEFAULT_GPU_FLAVORS), config=True,
        help="Extended resources that count as GPUs, by name or pattern: each is a flavor "
        "with its own fair queue, reclaim and quota. A kernelspec asking for another extended "
        "resource is not queued: its shortage fails the start with the scheduler's words.",
    )
    gpu_queue_ungated = Integer(
        1, min=1, config=True,
        help="Waiting GPU starts of each flavor, from the head of the fair order, whose pods "
        "are left without a scheduling gate. 1: only the head, so the order is exactly the "
        "queue's, but a cluster autoscaler never sees the queue (gated pods do not trigger "
        "scale-up). N > 1 (autoscaler mode): the autoscaler sees N unschedulable pods and "
        "adds nodes; among those N the scheduler decides who is placed first.",
    )

    @validate("gpu_flavors")
    def _valid_gpu_flavors(self, proposal: Any) -> list[str]:
        try:
            flavors = R.GpuFlavors(tuple(proposal["value"]))
        except R.GpuFlavorError as e:
            raise TraitError(str(e)) from None
        R.set_gpu_flavors(flavors)
        return list(flavors.patterns)

    @validate("gpu_quota_per_flavor")
    def _valid_gpu_quota_per_flavor(self, proposal: Any) -> dict[str, int]:
        quotas = dict(proposal["value"])
        for key in quotas:
            try:
                R.GpuFlavors((key,))
            except R.GpuFlavorError as e:
                raise TraitError(f"gpu_quota_per_flavor: {e}") from None
        return quotas

    @observe("gpu_queue_ungated")
    def _ungated_changed(self, change: Any) -> None:
        queue = getattr(self, "gpu_queue", None)
        if queue is not None:
            queue.ungated = change["new"]
    lease_duration = Integer(
        30, config=True,
        help="Seconds of this gateway's Lease; the cull cron treats kernels of a gateway whose "
        "lease expired (plus its grace) as orphans.",
    )

    #: The gateway passes the authenticated user to start_kernel.
    tracks_users = True

    @default("gateway_id")
    def _gateway_id_default(self) -> str:
        return socket.gethostname()

    zmq_max_sockets = Integer(
        65536, config=True,
        help="ZeroMQ sockets the gateway may open (libzmq's default of 1,024 is ~300 kernels: "
        "each attached kernel holds a control and an activity socket, plus 3 per websocket; "
        "three times that with max_kernel_message_bytes, for the sockets' monitors).",
    )

    max_kernel_message_bytes = Integer(
        64 * 1024 * 1024, config=True,
        help="Largest single kernel message the gateway receives (0: no bound). A larger one "
        "(e.g. output written without a flush) is dropped, its socket re-connected and the "
        "user told in the cell; without a bound each such message costs its size on every "
        "socket subscribed to the kernel.",
    )

    offline_buffer_max_bytes = Integer(
        8 * 1024 * 1024, config=True,
        help="Bytes of output kept per kernel for a client that disconnected, replayed if it "
        "reconnects; beyond it the oldest messages are dropped (upstream keeps all of it).",
    )
    snapshot_store = Unicode(
        "", config=True,
        help="Where suspended kernels' snapshots are kept: a directory, a file:// URL or an "
        "fsspec URL (s3://..., with the snapshot-fsspec extra). Empty: kernelspecs with "
        "culling.onCull Suspend are culled as with Delete, the reason saying why.",
    )
    snapshot_key_file = Unicode(
        "", config=True,
        help="File holding the key that signs snapshots (a Secret mounted into the gateway's "
        "pod only, at least 32 bytes). Empty: $ELASTIC_KERNELS_SNAPSHOT_KEY.",
    )
    snapshot_chunk_bytes = Integer(
        16 * 1024 * 1024, config=True,
        help="Bytes of a snapshot moved per request between the gateway and a kernel (cut to "
        "fit max_kernel_message_bytes): the gateway holds about three pieces per suspend or "
        "resume in progress, whatever maxBytes allows; smaller pieces cost more requests.",
    )

    offline_buffer_max_seconds = Float(
        3600.0, config=True,
        help="Seconds a disconnected client's output is kept waiting for it to reconnect; "
        "then buffering stops and its sockets close (0: until the kernel stops).",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Set before any socket exists: libzmq reads it when the context starts its I/O.
        self.context.set(zmq.MAX_SOCKETS, self.zmq_max_sockets)
        self._kernel_records: Informer | None = None
        self._kernelspecs: Informer | None = None
        self._starting_gpus: dict[str, tuple[str, str, int]] = {}
        # The configured flavors (a validator runs only on assignment, not for the default).
        R.set_gpu_flavors(R.GpuFlavors(tuple(self.gpu_flavors)))
        self._culls: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.snapshots = self._open_snapshots()
        self._resumes: dict[str, asyncio.Task[str]] = {}
        #: Suspends under way, set when done: a resume waits for its kernel's to finish.
        self._suspending: dict[str, asyncio.Event] = {}
        # Each part gets the few callables it needs (issue 12), not this manager.
        self.culler = GatewayCuller(
            CullingDefaults(parent=self),
            gateway_id=lambda: self.gateway_id,
            kernelspecs=self.kernelspec_records,
            held=self._held_kernels,
            lookup=self._held_kernel,
            shutdown=self._shutdown_for_culler,
            remember_cull=self.remember_cull,
            after_pass=lambda: self.gpu_queue.poke(),
            suspend=self._suspend_for_culler,
            gpu_source=GpuUseSource(parent=self),
        )
        # Warm pools (warmpool.py): kept by the queue board's leader; their GPU pods are the
        # first reclaimed, and GPU pools are not refilled while starts wait for their flavor.
        self.warm_pools = WarmPools(
            leading=lambda: self.gpu_queue.board is None or self.gpu_queue.board.leading(),
            gpu_waiting=lambda flavor: any(w.resource == flavor
                                           for w in self.gpu_queue.ordered()))
        self.gpu_queue = GpuQueue(
            reclaim_candidates=lambda: [*self.warm_pools.reclaim_candidates(),
                                        *self.culler.reclaim_candidates()],
            reclaim=lambda d: (self.warm_pools.reclaim(d) if self.warm_pools.owns(d)
                               else self.culler.cull(d)),
            victim_flavor=self._victim_flavor,
            ungated=self.gpu_queue_ungated)
        self.lease: GatewayLease | None = None
        # Image pre-pull DaemonSets (prepull.py), kept by the queue board's leader like pools.
        self.prepuller = ImagePrepuller(
            parent=self,
            leading=lambda: self.gpu_queue.board is None or self.gpu_queue.board.leading())

    async def start_watching(self) -> None:
        """Start the shared watches this manager answers from, the lease and the culler."""
        conn = ClusterConnection.instance()
        informers = await start_kernel_watches()
        self._kernelspecs, _, self._kernel_records, _ = informers
        if self.lease is None:
            # Released on a clean stop, so a successor adopts our kernels at once instead of
            # after the lease expires (the cron's orphan grace still protects them meanwhile).
            self.lease = GatewayLease(conn.client, self.gateway_id, conn.default_namespace,
                                      duration=self.lease_duration, release_on_stop=True,
                                      parent=self)
            await self.lease.start()
        self.culler.start()
        # One fair queue across replicas: waiters on the shared pod watch, one ungater (#14).
        await self.gpu_queue.share_cluster(self.gateway_id, conn.default_namespace)
        self.warm_pools.follow_leadership(self.gpu_queue.board)
        await self.warm_pools.start(conn.default_namespace)
        self.prepuller.follow_leadership(self.gpu_queue.board)
        await self.prepuller.start(conn.default_namespace)
        await self.adopt_existing()

    async def stop_watching(self) -> None:
        await self.culler.stop()
        await self.warm_pools.stop()
        await self.prepuller.stop()
        await self.gpu_queue.stop()
        await self.hydrator.close()
        if self.lease is not None:
            await self.lease.stop()
            self.lease = None
        self._kernel_records = None

    # -- what the managers answer from ------------------------------------------------------

    def kernel_record(self, kernel_id: str) -> dict[str, Any] | None:
        if self._kernel_records is None:
            return None
        return self._kernel_records.get(R.kernel_object_name(kernel_id))

    def kernelspec_records(self) -> list[dict[str, Any]]:
        return self._kernelspecs.items() if self._kernelspecs is not None else []

    def _held_kernel(self, kernel_id: str) -> HeldKernel | None:
        """What the culler knows of a kernel this manager holds (None: not held)."""
        kernel = managed_kernels(self).get(kernel_id)
        if kernel is None:
            return None
        return HeldKernel(kernel_id, self.kernel_record(kernel_id),
                          last_activity=getattr(kernel, "last_activity", None),
                          execution_state=getattr(kernel, "execution_state", None),
                          connections=connection_count(self, kernel_id))

    def _held_kernels(self) -> list[HeldKernel]:
        # A kernel being resumed is no candidate for a cull or a reclaim: it is not idle, its
        # pod only just started (a save now would store its empty namespace over the snapshot
        # being restored). Its idle time starts when the resume ends.
        return [k for k in map(self._held_kernel, list(self.list_kernel_ids()))
                if k is not None and k.kernel_id not in self._resumes]

    async def _shutdown_for_culler(self, kernel_id: str, now: bool) -> None:
        await self.shutdown_kernel(kernel_id, now=now)

    def pre_start_kernel(self, kernel_name: str | None, kwargs: Any
                         ) -> tuple[Any, str, str]:
        """jupyter_client's step that makes the per-kernel manager; the GPU queue joins the
        start's keyword arguments here, so the provisioner gets it on every start, restart
        (jupyter_client replays them) and re-attach alike."""
        km, name, kernel_id = super().pre_start_kernel(kernel_name, kwargs)
        kwargs[GPU_QUEUE_KWARG] = self.gpu_queue
        kwargs[WARM_POOL_KWARG] = self.warm_pools
        return km, name, kernel_id

    # -- suspend and resume (lifecycle/suspension.py) ---------------------------------------------

    def _open_snapshots(self) -> Snapshots | None:
        """The snapshot store and key, if configured; a bad configuration stops the gateway
        with what is wrong (a Suspend kernelspec must never silently lose state)."""
        if not self.snapshot_store:
            return None
        try:
            key = read_key(self.snapshot_key_file)
            store = snapshot.open_store(self.snapshot_store)
        except (ValueError, ImportError, OSError) as e:
            self.log.critical("Cannot use the snapshot store: %s", e)
            raise SystemExit(1) from None
        return Snapshots(store, key, self.log, chunk_bytes=self.snapshot_chunk_bytes,
                         message_bytes=self.max_kernel_message_bytes)

    def is_suspended(self, kernel_id: str) -> bool:
        return bool(getattr(managed_kernels(self).get(kernel_id), "suspended", False))

    async def _suspend_for_culler(self, decision: CullDecision, policy: Policy) -> str:
        """Save the kernel's namespace, then let its pod go; "" when suspended, else why not
        (the culler then culls it as with Delete)."""
        if self.snapshots is None:
            return ("this gateway has no snapshot store "
                    "(ElasticMappingKernelManager.snapshot_store)")
        kernel_id = decision.kernel.kernel_id
        km = managed_kernels(self).get(kernel_id)
        prov = getattr(km, "provisioner", None)
        if km is None or not isinstance(prov, ElasticKernelProvisioner):
            return "the kernel is not held by this gateway"
        if getattr(km, "suspended", False):
            return ""
        done = self._suspending[kernel_id] = asyncio.Event()
        try:
            try:
                saved = await self.snapshots.save(
                    km, kernel_id, prov.user,
                    SuspendLimits(max_bytes=policy.suspend_max_bytes,
                                  timeout=policy.suspend_timeout))
            except snapshot.SnapshotError as e:
                return str(e)
            km.stop_restarter()  # its pod goes on purpose
            km.suspended = True
            km.execution_state = "suspended"
            if kernel_id in offline_buffers(self):
                self.stop_buffering(kernel_id)  # nothing comes from a pod that is gone
            await prov.suspend("Suspended", f"{decision.message}; {saved.summary()}")
        finally:
            self._suspending.pop(kernel_id, None)
            done.set()
        self.log.info("Kernel %s of %s suspended: %s (%d bytes)", kernel_id, prov.user,
                      saved.summary(), saved.size)
        return ""

    async def resume_kernel(self, kernel_id: str) -> str:
        """Start a suspended kernel in a new pod (through the GPU queue) and restore its
        snapshot; returns the line the user reads. Concurrent callers share one resume."""
        task = self._resumes.get(kernel_id)
        if task is None:
            task = asyncio.ensure_future(self._resume(kernel_id))
            self._resumes[kernel_id] = task
            task.add_done_callback(lambda _: self._resumes.pop(kernel_id, None))
        return await asyncio.shield(task)

    async def _resume(self, kernel_id: str) -> str:
        pending = self._suspending.get(kernel_id)
        if pending is not None:
            # Marked suspended, its pod still being released: a new pod must not race that.
            await pending.wait()
        km = managed_kernels(self).get(kernel_id)
        prov = getattr(km, "provisioner", None)
        if km is None or not getattr(km, "suspended", False) \
                or not isinstance(prov, ElasticKernelProvisioner) or self.snapshots is None:
            return ""
        policy = self.culler.policies().for_spec(km.kernel_name)
        self.log.info("Resuming kernel %s of %s", kernel_id, prov.user)
        km.suspended = False  # so that restart_kernel below keeps the snapshot
        km.execution_state = "starting"
        prov.resume_from_pool = True  # a warm pool pod of its kernelspec, if one is ready
        try:
            ready = await super().restart_kernel(kernel_id, now=True)
            await ready
        except BaseException as e:
            km.suspended, km.execution_state = True, "suspended"
            await prov.suspend("Suspended", f"resuming failed: {e}; the next connect tries again")
            raise
        try:
            result = await self.snapshots.restore(km, kernel_id, prov.user,
                                                  policy.suspend_timeout)
            line = f"Resumed after suspension: {result.report}"
        except snapshot.SnapshotRefused as e:
            # Never loadable here (modified, or not this kernel's or user's): starting fresh
            # loses nothing that could be had.
            line = f"Resumed after suspension, but the saved variables were refused: {e}"
        except snapshot.SnapshotError as e:
            # The store or the kernel failed this time (an outage, a timeout): the snapshot is
            # kept and the kernel suspended again, so the next connect tries again; a restart
            # is the user's way to start fresh without it.
            why = f"restoring its variables failed: {e}"
            km.stop_restarter()  # its new pod goes on purpose
            km.suspended, km.execution_state = True, "suspended"
            await prov.suspend("Suspended", f"{why}; they are kept, and the next connect tries "
                               "again (a restart starts the kernel without them)")
            self.log.warning("Kernel %s: %s; suspended again, its snapshot kept", kernel_id, why)
            raise RestoreFailed(f"{why}. They are kept: connect again to retry, or restart the "
                                "kernel to start without them") from None
        self.log.info("Kernel %s: %s", kernel_id, line)
        await self.snapshots.discard(kernel_id)
        km.last_activity = utcnow()  # idle from now, not from before the suspend
        return f"[elastic-kernels] {line}\n"

    async def restart_kernel(self, kernel_id: str,  # type: ignore[override]
                             now: bool = False) -> Any:
        """A user's restart of a suspended kernel starts it fresh: the snapshot is dropped."""
        km = managed_kernels(self).get(kernel_id)
        if km is not None and getattr(km, "suspended", False):
            km.suspended = False
            if self.snapshots is not None:
                await self.snapshots.discard(kernel_id)
            now = True  # nothing runs to be asked to stop
        return await super().restart_kernel(kernel_id, now=now)

    async def shutdown_kernel(self, kernel_id: str, now: bool = False,  # type: ignore[override]
                              restart: bool = False) -> None:
        if self.is_suspended(kernel_id):
            now = True  # no kernel to ask; its record (and so its Secret) goes, and its snapshot
            prov = getattr(managed_kernels(self).get(kernel_id), "provisioner", None)
            # Only when this shutdown ends the kernel: a released one (another replica resumed
            # it, or its record is gone) is only forgotten here, and its snapshot is not ours.
            if self.snapshots is not None and getattr(prov, "attached", False):
                await self.snapshots.discard(kernel_id)
        await super().shutdown_kernel(kernel_id, now=now, restart=restart)

    async def interrupt_kernel(self, kernel_id: str) -> None:  # type: ignore[override]
        if self.is_suspended(kernel_id):
            return  # nothing runs
        await super().interrupt_kernel(kernel_id)  # type: ignore[misc]  # async upstream

    def remember_cull(self, kernel_id: str, reason: str, message: str) -> None:
        """Keep why a kernel was culled, and tell its open websockets before it goes."""
        self._culls[kernel_id] = (reason, message)
        while len(self._culls) > 1000:
            self._culls.popitem(last=False)
        close = getattr(self.parent, "close_kernel_websockets", None)
        if close is not None:
            close(kernel_id, f"{reason}: {message}")

    def cull_reason(self, kernel_id: str) -> tuple[str, str] | None:
        """(reason, message) of a kernel this gateway culled, for the 404 that follows."""
        return self._culls.get(kernel_id)

    def _spec_flavor(self, kernel_spec: str) -> tuple[str, int]:
        """(flavor, count) a kernelspec asks for, from the watch cache; ("", 0) if unknown."""
        for obj in self.kernelspec_records():
            if (obj.get("metadata") or {}).get("name") == kernel_spec:
                try:
                    view = R.KernelSpecView.from_object(obj)
                except ValueError:
                    return "", 0
                return view.gpu_resource, view.gpus
        return "", 0

    def _record_flavor(self, record: dict[str, Any]) -> tuple[str, int]:
        """(flavor, count) a kernel record holds or waits for: its status, else its kernelspec
        (a record written before flavors existed holds whole GPUs)."""
        status = record.get("status") or {}
        gpus = status.get("gpus")
        if gpus is None:
            return self._spec_flavor(str((record.get("spec") or {}).get("kernelSpec") or ""))
        if not gpus:
            return "", 0
        return str(status.get("gpuResource") or R.GPU_RESOURCE), int(gpus)

    def _victim_flavor(self, decision: CullDecision) -> str:
        """The GPU flavor a reclaim candidate holds, so the queue frees only what fits."""
        record = self.kernel_record(decision.kernel.kernel_id)
        flavor = self._record_flavor(record)[0] if record is not None else ""
        return flavor or self._spec_flavor(decision.kernel.kernel_spec)[0] or R.GPU_RESOURCE

    def _gpu_use(self, user: str, resource: str = R.GPU_RESOURCE) -> int:
        """Devices of ``resource`` the user's kernels hold or wait for, from the kernel records
        and our starts."""
        use: dict[str, int] = {kid: gpus for kid, (u, r, gpus) in self._starting_gpus.items()
                               if u == user and r == resource}
        for record in (self._kernel_records.items() if self._kernel_records else []):
            spec = record.get("spec") or {}
            if spec.get("user") != user or (record.get("metadata") or {}).get("deletionTimestamp"):
                continue
            flavor, gpus = self._record_flavor(record)
            if flavor == resource:
                use[str(spec.get("kernelId"))] = gpus
        return sum(use.values())

    def gpu_quota(self, resource: str) -> int:
        """The per-user quota of one GPU flavor (0: none): gpu_quota_per_flavor's most specific
        key matching it (an exact name, then the longest pattern), else gpu_quota_per_user."""
        quotas = self.gpu_quota_per_flavor
        if resource in quotas:
            return int(quotas[resource])
        matching = [k for k in quotas if R.GpuFlavors((k,)).matches(resource)]
        if matching:
            return int(quotas[max(matching, key=len)])
        return self.gpu_quota_per_user

    async def _kernelspecs_known(self) -> None:
        """Wait until the kernelspec cache has its first list, so that a start arriving before
        it (just after startup, or while the API server is slow) is not told its kernelspec
        does not exist; 503 if the cluster cannot be read."""
        start = getattr(self.kernel_spec_manager, "start_watching", None)
        if start is None:
            return
        try:
            await start()
        except (KubeError, TimeoutError, asyncio.TimeoutError) as e:
            raise KernelLaunchError("ClusterUnavailable",
                                    f"cannot read the kernelspecs from the cluster: {e}",
                                    503) from None

    def _check_gpu_quota(self, user: str, kernel_name: str | None) -> tuple[str, int]:
        """The GPU flavor and count the kernel needs; raises 403 if they would take the user
        past the quota of that flavor."""
        view = getattr(self.kernel_spec_manager, "view", None)
        try:
            spec = view(kernel_name) if view and kernel_name else None
        except NoSuchKernel:
            return "", 0  # an unknown kernelspec fails later, with its own clear error
        # Anything else propagates: a quota that is skipped whenever the lookup fails is no
        # quota (fail closed).
        if spec is None or not spec.gpus:
            return "", 0
        resource, gpus = spec.gpu_resource, spec.gpus
        quota = self.gpu_quota(resource)
        if quota:
            used = self._gpu_use(user, resource)
            if used + gpus > quota:
                raise KernelLaunchError(
                    "GPUQuotaExceeded",
                    f"GPU quota exceeded: {user} may use {quota} {resource} and already "
                    f"uses or waits for {used}; this kernel needs {gpus}. Shut down a kernel "
                    f"holding {resource} first.", 403)
        return resource, gpus

    def elastic_status(self) -> dict[str, Any]:
        return {
            "gpu_queue": self.gpu_queue.snapshot(),
            "gpu_quota_per_user": self.gpu_quota_per_user,
            "gpu_quota_per_flavor": dict(self.gpu_quota_per_flavor),
            "lease": self.lease.name if self.lease is not None else None,
        }

    async def start_kernel(  # type: ignore[override]
        self,
        *,
        kernel_name: str | None = None,
        path: str | None = None,
        kernel_id: str | None = None,
        env: dict[str, Any] | None = None,
        user: str | None = None,
        **kwargs: Any,
    ) -> str:
        if kernel_id is not None and kernel_id not in self:
            kernel_id = _validated_kernel_id(kernel_id)
        if env is not None and not isinstance(env, dict):
            raise web.HTTPError(400, "env must be an object of string values")
        kwargs["elastic_client_env"] = _EnvValuesHidden(
            {str(k): v for k, v in (env or {}).items()})
        if user:
            kwargs["elastic_user"] = user
        if kernel_id is not None and kernel_id in self:
            return await super().start_kernel(kernel_name=kernel_name, kernel_id=kernel_id,
                                              **kwargs)
        kernel_id = kernel_id or self.new_kernel_id()
        await self._kernelspecs_known()
        resource, gpus = self._check_gpu_quota(user or "", kernel_name)
        if gpus:
            self._starting_gpus[kernel_id] = (user or "", resource, gpus)
        try:
            return await super().start_kernel(
                kernel_name=kernel_name, kernel_id=kernel_id, **kwargs
            )
        finally:
            self._starting_gpus.pop(kernel_id, None)

    def start_buffering(self, kernel_id: str, session_key: str, channels: dict[str, Any]
                        ) -> None:
        super().start_buffering(kernel_id, session_key, channels)
        # Bounded in bytes and time (upstream's is not): offlinebuffer.py.
        bound_buffering(self, kernel_id, self.offline_buffer_max_bytes,
                        self.offline_buffer_max_seconds)

    def start_watching_activity(self, kernel_id: str) -> None:
        # Upstream's rules, with a cheaper parse of each IOPub message (activity.py).
        watch_activity(self, kernel_id)

    def cwd_for_path(self, path: str, **kwargs: Any) -> str:
        """Notebook paths mean nothing inside a kernel pod; the image decides the cwd."""
        return ""

    def cluster_kernel_ids(self) -> list[str]:
        """Every kernel of the namespace from the shared record cache, whichever replica holds
        it (or none, while it waits for a GPU or is suspended), so that every replica lists the
        same kernels."""
        ids = []
        for record in (self._kernel_records.items() if self._kernel_records else []):
            kernel_id = (record.get("spec") or {}).get("kernelId")
            if (isinstance(kernel_id, str) and R.KERNEL_ID_RE.match(kernel_id)
                    and not (record.get("metadata") or {}).get("deletionTimestamp")
                    and (record.get("status") or {}).get("phase") != R.PHASE_TERMINATING):
                ids.append(kernel_id)
        return ids

    def record_model(self, kernel_id: str) -> dict[str, Any] | None:
        """jupyter_server's kernel model of a kernel this replica does not hold, from its
        record (None: no usable record). Its state is the one last mirrored there."""
        record = self.kernel_record(kernel_id)
        if record is None or (record.get("metadata") or {}).get("deletionTimestamp"):
            return None
        try:
            view = R.KernelView.from_object(record)
        except ValueError:
            return None
        state = {R.PHASE_SUSPENDED: "suspended", R.PHASE_FAILED: "dead",
                 R.PHASE_PENDING: "starting", R.PHASE_STARTING: "starting"}.get(
            view.phase, view.execution_state or "idle")
        since = view.last_activity or view.started_at or view.created_at
        return {"id": kernel_id, "name": view.kernel_spec,
                "last_activity": isoformat(since) if since is not None else None,
                "execution_state": state, "connections": view.connections or 0,
                "elastic": self.elastic_model(kernel_id)}

    def elastic_model(self, kernel_id: str) -> dict[str, Any]:
        """The pod's side of a kernel: what ``kubectl get jupyterkernel`` would say."""
        km = managed_kernels(self).get(kernel_id)
        prov = getattr(km, "elastic_provisioner", None)
        model: dict[str, Any] = {}
        if prov is not None:
            model.update({"user": prov.user, "pod": prov.pod_name})
        record = None
        if self._kernel_records is not None:
            record = self._kernel_records.get(R.kernel_object_name(kernel_id))
        if record is not None:
            status = record.get("status") or {}
            spec = record.get("spec") or {}
            model.update({
                "phase": status.get("phase") or "Pending",
                "reason": status.get("reason", ""),
                "message": status.get("message", ""),
                "pod": status.get("podName") or model.get("pod"),
                "node": status.get("node", ""),
                "gpus": status.get("gpus", 0),
                "gpu_resource": (status.get("gpuResource") or R.GPU_RESOURCE)
                if status.get("gpus") else "",
                "restart_count": status.get("restartCount", 0),
                "started_at": status.get("startedAt"),
                "user": spec.get("user") or model.get("user"),
                "kernelspec": spec.get("kernelSpec"),
            })
        if self.gpu_queue.is_waiting(kernel_id):
            model["queue_position"] = self.gpu_queue.position(kernel_id)
            model["message"] = self.gpu_queue.describe(kernel_id)
        return model

    async def detach_all(self) -> None:
        """Let go of every kernel without stopping it: close our sockets, keep the pods.

        The kernels' JupyterKernel records stay, so the next gateway (or another replica)
        re-attaches them; the cull cron reclaims any that nobody adopts.
        """
        for kernel_id in list(self.list_kernel_ids()):
            km = managed_kernels(self).pop(kernel_id, None)
            if km is None:
                continue
            km.stop_restarter()
            km.close_control_socket()
            km.provisioner = None  # so nothing below can delete the pod
            buffer = offline_buffers(self).pop(kernel_id, None)
            for stream in ((buffer or {}).get("channels") or {}).values():
                stream.close()
            activity = activity_stream(km)
            if activity is not None:
                activity.close()

    # -- hydration and kernel death (lifecycle/hydration.py, lifecycle/liveness.py) ------------

    @property
    def hydrator(self) -> KernelHydrator:
        """Re-attaches kernels this gateway did not start (created on first use)."""
        hydrator: KernelHydrator | None = getattr(self, "_elastic_hydrator", None)
        if hydrator is None:
            hydrator = self._elastic_hydrator = KernelHydrator(
                gateway_id=lambda: self.gateway_id,
                holds=self.__contains__,
                pending_start=lambda kernel_id: pending_starts(self).get(kernel_id),
                attach=self._attach,
                kernelspecs=self.kernelspec_records,
                parent=self,
            )
        return hydrator

    async def _attach(self, kernel_id: str, view: R.KernelView, attachment: Attachment) -> Any:
        """Hold a kernel that runs already (for the hydrator); returns its kernel manager.

        jupyter_server's own start path does all the bookkeeping (the kernel table, activity
        watching, connection counts, the "dead" callback, the culler); the provisioner, given
        the attachment, connects instead of creating anything. It is called past
        :meth:`start_kernel`: quotas concern new kernels, not this one.
        """
        attach: dict[str, Any] = {ATTACH_KWARG: attachment}
        try:
            await AsyncMappingKernelManager.start_kernel(
                self, kernel_id=kernel_id, kernel_name=view.kernel_spec, env={},
                elastic_client_env=dict(view.client_env), **attach,
            )
        except Exception:
            pending_starts(self).pop(kernel_id, None)
            raise
        kernel: Any = self.get_kernel(kernel_id)
        if view.phase == R.PHASE_SUSPENDED:
            # Held without a pod (suspended by another replica or an earlier gateway): the
            # next connect or execute resumes it here, from its snapshot.
            kernel.stop_restarter()
            kernel.suspended = True
            kernel.execution_state = "suspended"
        return kernel

    async def hydrate_kernel(self, kernel_id: str) -> bool:
        """Hold ``kernel_id`` if the cluster has it running (another replica started it, or a
        previous gateway did); False when there is no such kernel. The handlers call this before
        answering 404."""
        return await self.hydrator.hydrate(kernel_id)

    async def adopt_existing(self) -> list[str]:
        """Re-attach every running kernel of the namespace (at startup); returns their ids."""
        return await self.hydrator.adopt_existing()

    def kernel_died(self, kernel_id: str) -> None:
        kernel_died(self, kernel_id)

    def notify_connect(self, kernel_id: str) -> None:
        """jupyter_server counts a websocket that opened; the culler may record the kernel as
        connected at once, so the cull cron does not take a kernel someone just opened."""
        super().notify_connect(kernel_id)
        self.culler.connected(kernel_id)


class _EnvValuesHidden(dict):
    """A client's env whose repr names the variables only.

    jupyter_server logs a kernel's start arguments at DEBUG; the values are the user's business.
    """

    def __repr__(self) -> str:
        return f"<env: {', '.join(sorted(self))}>"


def _validated_kernel_id(kernel_id: Any) -> str:
    """Clients may choose a kernel id (jupyter_server allows it); it names pods, so check it."""
    try:
        parsed = uuid.UUID(str(kernel_id))
    except ValueError:
        raise web.HTTPError(400, f"kernel_id must be a UUID, got {str(kernel_id)[:80]!r}") \
            from None
    canonical = str(parsed)
    if canonical != str(kernel_id).lower():
        raise web.HTTPError(400, "kernel_id must be a UUID in canonical form")
    return canonical
