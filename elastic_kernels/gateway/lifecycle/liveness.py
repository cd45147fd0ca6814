"""Following a kernel's pod: death seen from the watch, restarts by other replicas, deletion.

jupyter_client's restarter polls ``is_alive`` every few seconds and restarts a dead kernel up to
``restart_limit`` times. For kernels in pods that is both too slow and too naive:

* **Too slow.** A pod that is deleted, evicted or crashes is one watch event away. The
  :class:`ElasticKernelRestarter` subscribes to the shared pod and JupyterKernel watches and
  decides on the event itself; the periodic poll stays only as a safety net, every 30 s
  (``time_to_dead``) instead of jupyter_client's 3 s. One listener per watch routes each event to
  the kernel it concerns, so the cost of an event does not grow with the kernels held.
* **Several gateways hold one kernel.** With replicas (or after hydration), another gateway may
  restart the kernel: its old pod dies, a pod with the next restart count appears and the
  JupyterKernel's ``status.restartCount``/``podName`` move on. That is not a death to restart
  from: this gateway *follows* the new pod (its sockets are re-pointed, its websocket clients
  see ``restarting``). If both gateways do restart at the same moment, the pod name, which
  carries the restart count, makes exactly one create succeed and the other gateway follows
  (``ElasticKernelProvisioner._create_pod``).
* **Deletion is final.** When the JupyterKernel disappears (another replica shut the kernel
  down, the cull job or an admin deleted it) the kernel is over: jupyter_client would otherwise
  "auto-restart" a kernel someone deleted on purpose. The provisioner is released (no API call
  touches the cluster for it again), clients get ``dead``, and the kernel manager drops it.
* **The kernelspec's ``restartPolicy`` decides.** ``Restart``: a new pod, ``restartCount`` + 1,
  the cause recorded in ``status.reason``/``message``. ``Fail``: no restart; the kernel is
  reported dead with the reason (``status.phase: Failed``, the kernel model's
  ``execution_state: dead``), which jupyter_client expresses as a restart limit of zero.

Everything is decided from the watch caches; the only API calls are, on a pod's death, one read
of the JupyterKernel (the two watches are not ordered: a record's deletion can reach us after its
pod's), the restart itself and one status write.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from tornado import web
from traitlets import default

from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import JSON, KubeError
from elastic_kernels.kube.informer import Informer
from elastic_kernels.provisioner.podstate import PodAssessment, Progress, assess_pod
from elastic_kernels.provisioner.provisioner import ElasticKernelProvisioner
from elastic_kernels.upstream import RestarterHooks, managed_kernels, open_kernel_connections

__all__ = [
    "ElasticKernelRestarter",
    "Fate",
    "KernelFate",
    "kernel_died",
    "kernel_fate",
    "renudge_connections",
]


class Fate(enum.Enum):
    ALIVE = "alive"
    WAIT = "wait"  # something is in progress elsewhere (a restart, a shutdown): do nothing yet
    FOLLOW = "follow"  # a newer pod of this kernel runs: switch to it
    DEAD = "dead"  # the pod died and nobody is replacing it: apply the restart policy
    DELETED = "deleted"  # the JupyterKernel is gone: the kernel is over


@dataclass(frozen=True)
class KernelFate:
    fate: Fate
    pod: JSON | None = None
    #: Why the kernel's pod is not alive (DEAD, and WAIT on another gateway's restart).
    cause: PodAssessment | None = None
    #: WAIT because another gateway announced it restarts the kernel: bounded by the launch
    #: timeout, in case that gateway died half-way.
    restarting_elsewhere: bool = False


_LIVE = (Progress.RUNNING, Progress.PENDING, Progress.WAITING_FOR_CAPACITY)


def _restart_count_of(pod: JSON) -> int:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(R.ANNOTATION_RESTART_COUNT, 0))
    except (TypeError, ValueError):
        return 0


def newest_pod(pods: Informer, kernel_id: str, namespace: str) -> JSON | None:
    """The kernel's pod with the highest restart count that is not being deleted."""
    best: JSON | None = None
    for pod in pods.items():
        meta = pod.get("metadata") or {}
        if (meta.get("labels") or {}).get(R.LABEL_KERNEL_ID) != kernel_id:
            continue
        if (meta.get("namespace") or "") != namespace or meta.get("deletionTimestamp"):
            continue
        if best is None or _restart_count_of(pod) > _restart_count_of(best):
            best = pod
    return best


def kernel_fate(prov: ElasticKernelProvisioner, records: Informer, pods: Informer,
                record_seen: bool, record_deleted: bool = False) -> KernelFate:
    """What the watch caches say should happen to the kernel ``prov`` stands for.

    ``record_seen``: whether its JupyterKernel has been in the cache before, so that a record the
    watch has not delivered yet (a kernel just started) is not taken for a deleted one;
    ``record_deleted``: whether the watch has reported it deleted (it may have been added and
    deleted before anyone looked at the cache). The
    common case (record unchanged, own pod alive) costs two cache lookups; only a dead pod
    makes it look through the kernel's other pods.
    """
    ns = prov.namespace_name
    record = records.get(R.kernel_object_name(prov.kernel_id), ns)
    if record_deleted and (record is None or not _same_uid(record, prov)):
        return KernelFate(Fate.DELETED)
    if record is None:
        return KernelFate(Fate.DELETED if record_seen else Fate.WAIT)
    meta = record.get("metadata") or {}
    if meta.get("deletionTimestamp") or not _same_uid(record, prov):
        return KernelFate(Fate.DELETED)
    status = record.get("status") or {}
    if status.get("phase") == R.PHASE_SUSPENDED:
        return KernelFate(Fate.WAIT)  # its pod went on purpose; a resume brings the next one
    try:
        recorded = int(status.get("restartCount") or 0)
    except (TypeError, ValueError):
        recorded = 0
    if recorded > prov.restart_count and status.get("podName"):
        # Another gateway finished a restart: its pod is the kernel now.
        pod = pods.get(str(status["podName"]), ns)
        if pod is not None and assess_pod(pod).progress is Progress.RUNNING:
            return KernelFate(Fate.FOLLOW, pod)

    own = pods.get(prov.pod_name, ns) if prov.pod_name else None
    assessment = assess_pod(own)
    if assessment.progress in _LIVE:
        return KernelFate(Fate.ALIVE)

    newest = newest_pod(pods, prov.kernel_id, ns)
    newer = newest if newest is not None and _restart_count_of(newest) > prov.restart_count \
        else None
    if newer is not None and assess_pod(newer).progress is Progress.RUNNING:
        return KernelFate(Fate.FOLLOW, newer)
    phase = status.get("phase")
    if phase == R.PHASE_TERMINATING:
        return KernelFate(Fate.WAIT, cause=assessment)  # shut down elsewhere; deletion follows
    if newer is not None and assess_pod(newer).progress in _LIVE:
        return KernelFate(Fate.WAIT, cause=assessment)  # another replica's new pod is coming
    if phase in (R.PHASE_STARTING, R.PHASE_PENDING) and recorded == prov.restart_count:
        # Another gateway announced a restart of this very incarnation (or waits for capacity
        # for its new pod): its old pod's death is expected.
        return KernelFate(Fate.WAIT, cause=assessment, restarting_elsewhere=True)
    return KernelFate(Fate.DEAD, cause=assessment)


def _same_uid(record: JSON, prov: ElasticKernelProvisioner) -> bool:
    """Whether ``record`` is the JupyterKernel ``prov`` knows (not a re-creation under its name)."""
    uid = (record.get("metadata") or {}).get("uid")
    return not (prov._kernel_uid and uid and uid != prov._kernel_uid)


log = logging.getLogger(__name__)

Listener = Callable[[str, JSON, "JSON | None"], None]


class _EventRouter:
    """One listener on a shared watch that hands each event to the kernels it concerns.

    Every held kernel follows its pod and its record. With a listener per kernel on the shared
    informer, each watch event would be offered to every kernel, so the work of N kernel starts
    (a few events each) would grow with N²; measured at 1,000 kernels it showed in the
    gateway's profile. The router looks up the event's kernel in a dict instead.
    """

    def __init__(self, informer: Informer, key_of: Callable[[JSON], str | None]) -> None:
        self._informer = informer
        self._key_of = key_of
        self._by_key: dict[str, list[Listener]] = {}
        self._unsubscribe: Callable[[], None] | None = None

    def add(self, key: str, listener: Listener) -> Callable[[], None]:
        if self._unsubscribe is None:
            self._unsubscribe = self._informer.add_listener(self._dispatch)
        self._by_key.setdefault(key, []).append(listener)

        def remove() -> None:
            listeners = self._by_key.get(key)
            if listeners and listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._by_key[key]
            if not self._by_key and self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

        return remove

    def _dispatch(self, event: str, obj: JSON, old: JSON | None) -> None:
        key = self._key_of(obj)
        for listener in list(self._by_key.get(key, ())) if key is not None else ():
            try:
                listener(event, obj, old)
            except Exception:  # one kernel's failure must not starve the others of the event
                log.exception("Kernel listener failed on %s event", event)


def _pod_kernel_id(obj: JSON) -> str | None:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(R.LABEL_KERNEL_ID)


def _object_name(obj: JSON) -> str | None:
    return (obj.get("metadata") or {}).get("name")


#: Routers by informer (pods: by kernel-id label; JupyterKernels: by name).
_routers: weakref.WeakKeyDictionary[Informer, _EventRouter] = weakref.WeakKeyDictionary()


def _router(informer: Informer, key_of: Callable[[JSON], str | None]) -> _EventRouter:
    router = _routers.get(informer)
    if router is None:
        router = _routers[informer] = _EventRouter(informer, key_of)
    return router


class ElasticKernelRestarter(RestarterHooks):
    """jupyter_client's restarter, driven by watch events and the kernelspec's restartPolicy."""

    @default("time_to_dead")
    def _default_time_to_dead(self) -> float:
        # jupyter_client polls every 3 s to *detect* a death; here watch events do that, and the
        # periodic decision is only a safety net (e.g. for a restart another gateway announced
        # and never finished). At 3 s it cost a decision per kernel per 3 s, 333 a second at
        # 1,000 kernels, for nothing.
        return 30.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._configured_limit = self.restart_limit
        self._unsubscribe: list[Callable[[], None]] = []
        self._subscribing: asyncio.Task[None] | None = None
        self._records: Informer | None = None
        self._pods: Informer | None = None
        self._record_seen = False
        self._record_deleted = False
        self._polling = False
        self._again = False
        self._closed = False
        self._waiting_since: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.polling

    def start(self) -> None:
        super().start()
        self._closed = False
        if not self._unsubscribe and self._subscribing is None:
            self._subscribing = asyncio.ensure_future(self._subscribe())
        else:
            self.kick()

    def close(self) -> None:
        """Stop for good: the kernel was shut down, released or detached."""
        self._closed = True
        self.stop()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._subscribing is not None:
            self._subscribing.cancel()
            self._subscribing = None

    def _provisioner(self) -> ElasticKernelProvisioner | None:
        prov = getattr(self.kernel_manager, "provisioner", None)
        return prov if isinstance(prov, ElasticKernelProvisioner) else None

    async def _subscribe(self) -> None:
        prov = self._provisioner()
        try:
            if prov is None:
                return
            pods = await prov.pod_cache()
            records = await prov.record_cache()
        except Exception as e:  # noqa: BLE001 - the periodic poll still covers the kernel
            self.log.warning("Kernel %s: cannot watch its pod (%s); polling only",
                             self.kernel_manager.kernel_id, e)
            return
        finally:
            self._subscribing = None
        if self._closed:
            return
        kernel_id = prov.kernel_id
        record_name = R.kernel_object_name(kernel_id)

        def on_pod(_event: str, _obj: JSON, _old: JSON | None) -> None:
            self.kick()

        def on_record(event: str, obj: JSON, _old: JSON | None) -> None:
            # Noted per event: a record added and deleted between two looks at the cache must
            # not pass for one the watch has not delivered yet.
            if event == "DELETED":
                self._record_deleted = self._record_deleted or _same_uid(obj, prov)
            else:
                self._record_seen = True
            self.kick()

        self._pods, self._records = pods, records
        self._unsubscribe = [_router(pods, _pod_kernel_id).add(kernel_id, on_pod),
                             _router(records, _object_name).add(record_name, on_record)]
        if records.get(record_name, prov.namespace_name) is None:
            # Not delivered yet, or already deleted before we listened: one read tells.
            try:
                await prov.connection.client.get(R.JUPYTERKERNELS, record_name,
                                                 prov.namespace_name)
                self._record_seen = True
            except KubeError as e:
                if e.not_found:
                    self._record_deleted = True
        self.kick()

    def kick(self) -> None:
        """Decide now (on the event loop, after the current callback)."""
        if self._polling:
            self._again = True
        elif not self._closed:
            asyncio.ensure_future(self.poll())

    # -- deciding ----------------------------------------------------------------------------

    async def poll(self) -> None:  # type: ignore[override]
        """One decision at a time: the periodic callback and watch events share this path."""
        if self._polling:
            self._again = True
            return
        self._polling = True
        try:
            while True:
                self._again = False
                try:
                    await self._decide()
                except Exception:  # never let a bug end the kernel's supervision silently
                    self.log.exception("Kernel %s: restarter failed", self.kernel_manager.kernel_id)
                if not self._again or self._closed:
                    break
        finally:
            self._polling = False

    async def _decide(self) -> None:
        km = self.kernel_manager
        prov = self._provisioner()
        if prov is None:
            if getattr(km, "provisioner", None) is None:
                self.close()  # detached (the gateway stops and leaves the kernel running)
            elif self.running:
                await super().poll()  # not a pod kernel: jupyter_client's behaviour
            return
        if not prov.attached:
            self.close()
            return
        if self._records is None or self._pods is None:
            return  # not subscribed yet; the subscription kicks once it is
        record_seen = self._record_seen
        if self._records.get(R.kernel_object_name(prov.kernel_id), prov.namespace_name):
            self._record_seen = True
        if km.shutting_down:
            return  # our own restart or shutdown is in progress
        if not km.ready.done():
            # Our own start or restart is in progress: look again once it is done.
            km.ready.add_done_callback(lambda _: self.kick())
            return
        fate = kernel_fate(prov, self._records, self._pods, record_seen, self._record_deleted)
        if fate.restarting_elsewhere:
            loop = asyncio.get_running_loop()
            if self._waiting_since is None:
                self._waiting_since = loop.time()
            elif loop.time() - self._waiting_since > prov.launch_timeout_seconds:
                self.log.warning("Kernel %s: the restart another gateway announced did not "
                                 "finish within %.0fs", prov.kernel_id,
                                 prov.launch_timeout_seconds)
                fate = KernelFate(Fate.DEAD, cause=fate.cause)
        else:
            self._waiting_since = None
        if fate.fate is Fate.DEAD and self.running and not await self._record_stands(prov):
            fate = KernelFate(Fate.DELETED)

        if fate.fate is Fate.DELETED:
            self.log.info("Kernel %s: its JupyterKernel was deleted (shut down elsewhere, culled "
                          "or removed); letting it go without restarting it", prov.kernel_id)
            prov.release()
            km.reason = "the kernel's JupyterKernel was deleted"
            self.stop()
            self.fire("dead")
            self.close()
        elif fate.fate is Fate.FOLLOW:
            assert fate.pod is not None
            self.log.info("Kernel %s was restarted elsewhere; following its pod %s",
                          prov.kernel_id, (fate.pod.get("metadata") or {}).get("name"))
            prov.follow(fate.pod)
            self.restarting = False
            self.restart_count = 0
            km.reason = ""
            if getattr(km, "execution_state", None) == "dead":
                km.execution_state = "starting"
            self.fire("restart")
            if not self.running:
                self.start()  # it had been reported dead; it lives again
        elif fate.fate is Fate.DEAD and self.running:
            assert fate.cause is not None
            await self._died(prov, fate.cause)
        elif fate.fate is Fate.ALIVE and self.running:
            self._note_alive()

    def _note_alive(self) -> None:
        """jupyter_client's bookkeeping for a live kernel (a restart counts as done once the
        kernel has lived ``stable_start_time``), without its poll.

        Its poll would ask the provisioner again and, on a "dead" answer, restart the kernel
        on its own. Between the caches read for this decision and that second look, the pod's
        deletion may arrive (the cull job or another replica deleted the JupyterKernel, whose
        deletion reaches us after its pod's): the kernel would then be restarted under a
        deleted record, bypassing every check above. Deaths are decided here only.
        """
        now = time.time()
        stable = self.stable_start_time
        prov = getattr(self.kernel_manager, "provisioner", None)
        if prov is not None:
            stable = prov.get_stable_start_time(recommended=stable)
        if now - self.last_dead >= stable:
            self.mark_started()

    async def _record_stands(self, prov: ElasticKernelProvisioner) -> bool:
        """Whether the kernel's JupyterKernel still exists, read from the API server.

        The pod and JupyterKernel caches are fed by two watches with no order between them.
        Deleting the record (the cull job, another replica's shutdown, an admin) makes the
        garbage collector delete its pod right away, and the pod watch may deliver that before
        the record watch delivers the deletion: the pod then looks dead under a record that
        looks alive, and restarting would resurrect a kernel someone ended on purpose (with a
        new pod owned by a deleted record). A pod death is rare and acting on it writes to the
        cluster anyway, so it is worth one read to tell the two apart.
        """
        try:
            record = await prov.connection.client.get(
                R.JUPYTERKERNELS, R.kernel_object_name(prov.kernel_id), prov.namespace_name)
        except KubeError as e:
            if e.not_found:
                self._record_deleted = True
                return False
            return True  # cannot tell (e.g. the API server is unreachable): the death stands
        meta = record.get("metadata") or {}
        return not meta.get("deletionTimestamp") and _same_uid(record, prov)

    async def _died(self, prov: ElasticKernelProvisioner, cause: PodAssessment) -> None:
        km = self.kernel_manager
        self.restart_limit = 0 if prov.restart_policy == "Fail" else self._configured_limit
        attempt = self.restart_count + 1 if self.restarting else 1
        km.reason = cause.message
        if attempt > self.restart_limit:
            why = ("its restartPolicy is Fail" if prov.restart_policy == "Fail"
                   else f"it died {attempt} times in a row")
            self.log.warning("Kernel %s died (%s: %s); not restarting it: %s", prov.kernel_id,
                             cause.reason, cause.message, why)
            await prov.record_failure(cause)
        else:
            self.log.warning("Kernel %s died (%s: %s); restarting it (%d/%d)", prov.kernel_id,
                             cause.reason, cause.message, attempt, self.restart_limit)
            prov.restart_cause = cause
            await prov.announce_restart(f"restarting after {cause.reason}: {cause.message}")
        try:
            await super().poll()  # restarts, or fires "dead" past the limit
        except Exception as e:  # noqa: BLE001 - a failed restart leaves the kernel dead
            self.log.error("Kernel %s: restart failed: %s", prov.kernel_id, e)
            km.reason = f"restart failed: {e}"
            self.restarting = False
            self.restart_count = 0
            self.stop()
            self.fire("dead")


def kernel_died(manager: Any, kernel_id: str) -> None:
    """The mapping manager's "dead" callback for kernels in pods.

    jupyter_server forgets a dead kernel at once. Here a kernel whose record is gone (shut down
    elsewhere, culled, or a restart that failed and removed it) is shut down locally, which
    releases its sockets and bookkeeping without any API call, and its websockets are closed
    saying why. A kernel that died under a ``Fail`` restart policy (or past the restart limit)
    stays listed as ``dead`` with the reason, so its user sees what happened; deleting it, or
    restarting it, works as for any kernel.
    """
    km = managed_kernels(manager).get(kernel_id)
    if km is None:
        return
    prov = getattr(km, "provisioner", None)
    reason = getattr(km, "reason", "") or "the kernel died"
    if isinstance(prov, ElasticKernelProvisioner) and prov.attached:
        km.execution_state = "dead"
        manager.log.warning("Kernel %s is dead: %s", kernel_id, reason)
        return
    manager.log.info("Kernel %s is gone: %s", kernel_id, reason)

    async def drop() -> None:
        # After the other "dead" callbacks (they tell each websocket client first).
        close = getattr(manager.parent, "close_kernel_websockets", None)
        if close is not None:
            close(kernel_id, f"KernelGone: {reason}")
        try:
            await manager.shutdown_kernel(kernel_id, now=True)
        except (KeyError, web.HTTPError):
            pass  # already gone
        except Exception:  # noqa: BLE001 - nothing is left in the cluster to clean up
            manager.log.exception("Dropping kernel %s failed", kernel_id)

    asyncio.ensure_future(drop())


def renudge_connections(kernel_id: str) -> None:
    """The kernel moved to a new pod (a restart, here or by another gateway): its open
    websockets' sockets were re-pointed, so wake each connection the way opening it does.

    The nudge sends ``kernel_info`` until the connection's own iopub socket has seen a message,
    so the client gets the new kernel's ``idle`` status and no output of its next request is
    lost to a subscription still on its way. Afterwards the connection forwards every channel
    again (the nudge pauses iopub while it runs).
    """
    for connection in open_kernel_connections():
        if getattr(connection, "kernel_id", None) != kernel_id or not connection.channels:
            continue
        try:
            nudged = connection.nudge()
        except Exception:  # noqa: BLE001 - the client can still reconnect
            connection.log.debug("Nudge after move failed", exc_info=True)
            continue

        def forward(_done: Any, connection: Any = connection) -> None:
            for stream in connection.channels.values():
                if not stream.closed():
                    stream.on_recv_stream(connection.handle_outgoing_message)

        nudged.add_done_callback(forward)
