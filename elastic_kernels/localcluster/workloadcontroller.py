"""What the local cluster's workload controllers share: watches, a reconcile loop and pod writes.

The DaemonSet and Deployment controllers (``daemonsets.py``, ``deployments.py``) are one machine
around two different decisions. Each keeps its own view of a few kinds from watches, reconciles
every object of its kind whenever anything in that view changes, and makes and removes pods the
way kube-controller-manager's ``PodControl`` does: the pod built from the template as
``GetPodFromTemplate`` builds it, Pod Security admission before the create (the controllers write
to the store, behind kube-apiserver's admission), ``FailedCreate``/``SuccessfulCreate`` and
``FailedDelete``/``SuccessfulDelete`` Events in kube's words, and status written through the
status subresource. That machine lives here once, so that a fix to it (a relist, a refusal's
Event, a lost status write) reaches both; each controller keeps only which pods it wants and what
its status says.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .eventrecorder import EventRecorder
from .objectmeta import meta_of, rv_of
from .podsecurity import PodSecurityAdmission
from .resources import ResourceKey
from .scheduler import run_informer
from .tasks import cancel_all

if TYPE_CHECKING:
    from .store import Store

JSON = dict[str, Any]
PODS = ("", "pods")
NAMESPACES = ("", "namespaces")


def is_ready(pod: JSON) -> bool:
    """``podutil.IsPodReady``: what both controllers count as available (no minReadySeconds)."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def pod_from_template(owner: JSON, kind: str, generate_name: str, template_meta: JSON,
                      labels: dict[str, str], spec: JSON) -> JSON:
    """``controller.GetPodFromTemplate``: the template's annotations, the controller's labels and
    a controller ownerReference (blocking the owner's foreground deletion), so that garbage
    collection removes the pod with its owner."""
    meta = meta_of(owner)
    pod_meta: JSON = {
        "generateName": generate_name,
        "namespace": meta.get("namespace"),
        "labels": labels,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind,
                             "name": meta.get("name"), "uid": meta.get("uid"),
                             "controller": True, "blockOwnerDeletion": True}],
    }
    if template_meta.get("annotations"):
        pod_meta["annotations"] = dict(template_meta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}


class WorkloadController(ABC):
    """A controller of ``kind`` that reconciles on every change it watches.

    A subclass adds the other kinds it watches with ``_watch`` in its constructor and implements
    ``sync``. Nothing polls: a list or an event of any watched kind wakes the loop, which syncs
    every object of ``kind`` against the indexes as they are then.
    """

    def __init__(self, store: Store, component: str, kind: ResourceKey) -> None:
        self.store = store
        #: kube-controller-manager's name for it: the Events' source and the logs' prefix.
        self.component = component
        self.kind = kind
        self.events = EventRecorder(store, component)
        self.pod_security = PodSecurityAdmission(self._namespace_labels)
        self._indexes: dict[ResourceKey, dict[str, JSON]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # A failed sync is logged under the subclass's module, where the sync that failed lives.
        self._log = logging.getLogger(type(self).__module__)
        self._watch(kind)

    def _watch(self, key: ResourceKey) -> dict[str, JSON]:
        """The index of ``key`` by uid that ``start`` keeps current (one per kind, however often
        asked for), for the subclass to read in ``sync``."""
        return self._indexes.setdefault(key, {})

    @abstractmethod
    def sync(self, obj: JSON) -> None:
        """Bring one object of ``kind`` and its pods in line; called for each on every wake."""

    def _listed(self, key: ResourceKey) -> None:  # noqa: B027 - an optional hook
        """After ``key``'s index was rebuilt from a full list: for state a subclass keeps beside
        the indexes, which a list may make stale."""

    def _seen(self, key: ResourceKey, etype: str, obj: JSON) -> None:  # noqa: B027 - optional
        """After each watch event of ``key``: for state a subclass keeps beside the indexes."""

    async def start(self) -> None:
        self._stopping = False
        prefix = self.kind[1]
        self._tasks = [asyncio.create_task(self._informer(key, index), name=f"{prefix}-{key[1]}")
                       for key, index in self._indexes.items()]
        self._tasks.append(asyncio.create_task(self._run(), name=f"{prefix}-loop"))
        await asyncio.sleep(0)

    async def stop(self) -> None:
        self._stopping = True
        await cancel_all(self._tasks)
        self._tasks = []

    def _informer(self, key: ResourceKey,
                  index: dict[str, JSON]) -> Coroutine[Any, Any, None]:
        def on_list(items: list[JSON]) -> None:
            index.clear()
            for obj in items:
                index[str(meta_of(obj).get("uid"))] = obj
            self._listed(key)
            self._wake.set()

        def on_event(etype: str, obj: JSON) -> None:
            uid = str(meta_of(obj).get("uid"))
            if etype == "DELETED":
                index.pop(uid, None)
            elif uid not in index or rv_of(obj) > rv_of(index[uid]):
                # A subclass may put what it wrote into its index before the watch delivers it
                # (the Deployment controller does); an event older than that must not undo it.
                # Without such writes every event is newer than what the index holds.
                index[uid] = obj
            self._seen(key, etype, obj)
            self._wake.set()

        return run_informer(self.store, key, on_list, on_event, lambda: self._stopping,
                            self.component)

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            for obj in list(self._indexes[self.kind].values()):
                try:
                    self.sync(obj)
                except Exception:
                    self._log.exception("%s: syncing %s/%s failed", self.component,
                                        meta_of(obj).get("namespace"), meta_of(obj).get("name"))
            await asyncio.sleep(0)  # let the watches deliver what this pass wrote

    def _namespace_labels(self, name: str) -> dict[str, str]:
        try:
            namespace = self.store.get(NAMESPACES, None, name)
        except ApiError:
            return {}
        return dict(meta_of(namespace).get("labels") or {})

    # -- writes, in kube-controller-manager's words ----------------------------------------------

    def _create_pod(self, owner: JSON, pod: JSON) -> JSON | None:
        """Create ``pod`` for ``owner``, or record why not and return None.

        Pod Security runs here because the store is behind kube-apiserver's admission; a refusal
        is a ``FailedCreate`` Event with kube-apiserver's message, which names the pod by its
        generateName (no name is generated before admission).
        """
        namespace = str(meta_of(owner).get("namespace") or "default")
        admitted = {**pod["metadata"], "namespace": namespace,
                    "name": pod["metadata"]["generateName"]}
        try:
            self.pod_security.validate("CREATE", "", "pods", None,
                                       {**pod, "metadata": admitted}, [])
            created = self.store.create(PODS, namespace, pod)
        except ApiError as e:
            self.events.record(owner, "Warning", "FailedCreate", f"Error creating: {e.message}")
            return None
        self.events.record(owner, "Normal", "SuccessfulCreate",
                           f"Created pod: {meta_of(created).get('name')}")
        return created

    def _delete_pod(self, owner: JSON, pod: JSON) -> JSON | None:
        """Delete ``pod`` of ``owner`` (that very pod: a uid precondition) and return what the
        store answered, or None when it is gone already or was not deleted. A pod gone or
        replaced meanwhile is no failure: the next sync sees it."""
        meta = meta_of(pod)
        try:
            deleted = self.store.delete(PODS, meta.get("namespace"), meta["name"],
                                        preconditions={"uid": meta.get("uid")})
        except ApiError as e:
            if e.code not in (404, 409):
                self.events.record(owner, "Warning", "FailedDelete",
                                   f"Error deleting: {e.message}")
            return None
        self.events.record(owner, "Normal", "SuccessfulDelete", f"Deleted pod: {meta.get('name')}")
        return deleted

    def _replace_status(self, obj: JSON, status: JSON) -> JSON | None:
        """Write ``status`` through the status subresource when it differs from ``obj``'s, and
        return what was written (None when nothing was).

        The stored object is read first so that the write carries its resourceVersion. One of
        the same name but another uid is left alone, and so is a newer spec on its way to the
        informer: its own sync writes its status. A conflict or deletion in between is left to
        the next sync.
        """
        meta = meta_of(obj)
        if (obj.get("status") or {}) == status:
            return None
        try:
            current = self.store.get(self.kind, meta.get("namespace"), meta["name"])
        except ApiError:
            return None
        if (meta_of(current).get("uid") != meta.get("uid")
                or meta_of(current).get("generation") != meta.get("generation")):
            return None
        current["status"] = status
        try:
            return self.store.replace(self.kind, meta.get("namespace"), meta["name"],
                                      current, subresource="status")
        except ApiError as e:
            if e.code not in (404, 409):
                raise
            return None
