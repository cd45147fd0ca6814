"""The PersistentVolume controller of the local cluster: binds, provisions, reclaims, protects.

What kube-controller-manager's persistentvolume-binder and pvc/pv-protection controllers plus a
local-path provisioner (``localpath.py``) do, as one asyncio task over the store:

* a claim is bound to a volume that satisfies it (``claims.volume_satisfies``): one whose
  ``claimRef`` names it first (static provisioning, pre-bound), else the smallest available
  one; both sides are written (``spec.claimRef``/``spec.volumeName``, phases Bound) with the
  annotations the real binder sets;
* a claim of a class whose provisioner is the local-path one and that nothing satisfies gets a
  new volume at once (``Immediate``) or once a pod uses it (``WaitForFirstConsumer``); other
  classes wait for someone else's volume, with the real controller's Events;
* a volume whose claim is gone is ``Released``; with ``Delete`` it is deleted (and its directory,
  if this provisioner made it), with ``Retain`` it stays, data and all;
* a claim or volume being deleted keeps its protection finalizer while a pod still uses the
  claim or the volume is still bound; a bound claim whose volume disappeared becomes ``Lost``.

It wakes on store watches of claims, volumes, classes and the pods that use claims, never on a
timer, and each pass reads the current claims and volumes, so a missed intermediate state does
not matter. Every write is conditional on what it read (resourceVersion), and a conflict only
means another pass.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .claims import (PV_PROTECTION, PVC_PROTECTION, PVCS, PVS, STORAGE_CLASSES, claim_class,
                     claim_ref_matches, is_bound, pod_claims, requested_storage,
                     volume_capacity, volume_path, volume_satisfies)
from .errors import ApiError
from .eventrecorder import EventRecorder, now_rfc3339
from .fit import is_terminal
from .localpath import (BETA_STORAGE_PROVISIONER, PROVISIONED_BY, PROVISIONER,
                        STORAGE_PROVISIONER, make_dir, owns, provisioned_volume, remove_dir,
                        volume_dir)
from .objectmeta import meta_of
from .scheduler import run_informer
from .tasks import cancel_all

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

JSON = dict[str, Any]
PODS = ("", "pods")
BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"


class PersistentVolumeController:
    """Binds, provisions and reclaims volumes (see the module docstring).

    ``volumes_root`` is where the local-path provisioner makes directories; ``provisioner`` the
    name classes must give to be served by it.
    """

    def __init__(self, store: Store, volumes_root: Path, *,
                 provisioner: str = PROVISIONER) -> None:
        self.store = store
        self.root = Path(volumes_root)
        self.provisioner = provisioner
        self.events = EventRecorder(store, "persistentvolume-controller")
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        # pod uid -> (namespace, claim names, still running), for the pods that use claims
        self._pod_claims: dict[str, tuple[str, frozenset[str], bool]] = {}
        self._announced: set[tuple[str, str]] = set()  # (claim uid, reason) already evented

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._informer(PVCS), name="pv-controller-claims"),
            asyncio.create_task(self._informer(PVS), name="pv-controller-volumes"),
            asyncio.create_task(self._informer(STORAGE_CLASSES), name="pv-controller-classes"),
            asyncio.create_task(run_informer(self.store, PODS, self._on_pod_list,
                                             self._on_pod_event, lambda: self._stopping,
                                             "pv-controller"), name="pv-controller-pods"),
            asyncio.create_task(self._run(), name="pv-controller"),
        ]
        await asyncio.sleep(0)

    async def stop(self) -> None:
        self._stopping = True
        await cancel_all(self._tasks)
        self._tasks = []

    def _informer(self, key: tuple[str, str]) -> Any:
        return run_informer(self.store, key, lambda _items: self._wake.set(),
                            lambda _etype, _obj: self._wake.set(), lambda: self._stopping,
                            "pv-controller")

    # -- pods that use claims ----------------------------------------------------------------------

    def _on_pod_list(self, pods: list[JSON]) -> None:
        self._pod_claims = {}
        for pod in pods:
            self._on_pod_event("ADDED", pod)
        self._wake.set()

    def _on_pod_event(self, etype: str, pod: JSON) -> None:
        uid = str(meta_of(pod).get("uid") or "")
        old = self._pod_claims.get(uid)
        claims = frozenset(name for _, name, _ in pod_claims(pod))
        if etype == "DELETED" or not claims:
            self._pod_claims.pop(uid, None)
            if old is not None:
                self._wake.set()
            return
        entry = (str(meta_of(pod).get("namespace") or ""), claims, not is_terminal(pod))
        if entry != old:
            self._pod_claims[uid] = entry
            self._wake.set()

    def claim_in_use(self, namespace: str, name: str) -> bool:
        """A pod that is not finished (running, pending or being deleted) uses the claim."""
        return any(ns == namespace and name in claims and live
                   for ns, claims, live in self._pod_claims.values())

    def claim_has_consumer(self, namespace: str, name: str) -> bool:
        return any(ns == namespace and name in claims
                   for ns, claims, _ in self._pod_claims.values())

    # -- the loop ----------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("persistent volume controller pass failed")
            await asyncio.sleep(0)  # let the events of our own writes arrive before the next pass

    async def reconcile(self) -> None:
        """One pass over every claim, then every volume."""
        claims, _ = self.store.list(PVCS)
        claims.sort(key=lambda c: (str(meta_of(c).get("creationTimestamp") or ""),
                                   str(meta_of(c).get("name") or "")))
        for claim in claims:
            try:
                await self._sync_claim(claim)
            except ApiError as e:
                if e.code not in (404, 409):
                    log.warning("claim %s/%s: %s", meta_of(claim).get("namespace"),
                                meta_of(claim).get("name"), e.message)
                self._wake.set()
        uids = {str(meta_of(c).get("uid")) for c in claims}
        self._announced = {k for k in self._announced if k[0] in uids}
        volumes, _ = self.store.list(PVS)
        live = {(str(meta_of(c).get("namespace")), str(meta_of(c).get("name"))): c for c in claims}
        for volume in volumes:
            try:
                await self._sync_volume(volume, live)
            except ApiError as e:
                if e.code not in (404, 409):
                    log.warning("volume %s: %s", meta_of(volume).get("name"), e.message)
                self._wake.set()

    # -- claims ------------------------------------------------------------------------------------

    async def _sync_claim(self, claim: JSON) -> None:
        meta = meta_of(claim)
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        if meta.get("deletionTimestamp"):
            if PVC_PROTECTION in (meta.get("finalizers") or []) and not self.claim_in_use(
                    namespace, name):
                self._drop_finalizer(PVCS, claim, PVC_PROTECTION)
            return
        volume_name = (claim.get("spec") or {}).get("volumeName")
        if is_bound(claim):
            volume = self._get(PVS, None, str(volume_name))
            if volume is None or not claim_ref_matches(volume, claim):
                self._claim_status(claim, {"phase": "Lost"})
                self._event(claim, "Warning", "ClaimLost",
                            "Bound claim has lost its PersistentVolume. Data on the volume is "
                            "lost!")
            return
        if (claim.get("status") or {}).get("phase") == "Lost":
            return
        if volume_name:  # its author asked for one volume by name: that one or none
            volume = self._get(PVS, None, str(volume_name))
            if volume is not None and self._requested_volume_fits(volume, claim):
                self._bind(claim, volume)
            return
        volume = self._find_volume(claim)
        if volume is not None:
            self._bind(claim, volume)
            return
        await self._provision_or_wait(claim)

    def _requested_volume_fits(self, volume: JSON, claim: JSON) -> bool:
        spec = volume.get("spec") or {}
        if spec.get("claimRef") and not claim_ref_matches(volume, claim):
            self._event_once(claim, "Warning", "FailedBinding",
                             f"volume \"{meta_of(volume).get('name')}\" already bound to a "
                             f"different claim.")
            return False
        unclaimed = {**volume, "spec": {**spec, "claimRef": None}}
        if not volume_satisfies(unclaimed, claim):
            self._event_once(claim, "Warning", "VolumeMismatch",
                             f"Cannot bind to requested volume \"{meta_of(volume).get('name')}\": "
                             f"it does not satisfy the claim's class, access modes, size or "
                             f"selector")
            return False
        return True

    def _find_volume(self, claim: JSON) -> JSON | None:
        volumes, _ = self.store.list(PVS)
        fitting = [v for v in volumes if volume_satisfies(v, claim)
                   and ((v.get("status") or {}).get("phase") in ("Available", "Pending")
                        or claim_ref_matches(v, claim))]
        pre_bound = [v for v in fitting if claim_ref_matches(v, claim)]
        if pre_bound:
            return pre_bound[0]
        free = [v for v in fitting if not (v.get("spec") or {}).get("claimRef")]
        free.sort(key=lambda v: (volume_capacity(v) or 0, str(meta_of(v).get("name"))))
        return free[0] if free else None

    async def _provision_or_wait(self, claim: JSON) -> None:
        meta = meta_of(claim)
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        class_name = claim_class(claim)
        if not class_name:
            self._event_once(claim, "Normal", "FailedBinding",
                             "no persistent volumes available for this claim and no storage "
                             "class is set")
            return
        storage_class = self._get(STORAGE_CLASSES, None, class_name)
        if storage_class is None:
            self._event_once(claim, "Warning", "ProvisioningFailed",
                             f'storageclass.storage.k8s.io "{class_name}" not found')
            return
        provisioner = str(storage_class.get("provisioner") or "")
        if (storage_class.get("volumeBindingMode") == "WaitForFirstConsumer"
                and not self.claim_has_consumer(namespace, name)):
            self._event_once(claim, "Normal", "WaitForFirstConsumer",
                             "waiting for first consumer to be created before binding")
            return
        self._annotate_provisioner(claim, provisioner)
        if provisioner != self.provisioner:
            self._event_once(claim, "Normal", "ExternalProvisioning",
                             f"Waiting for a volume to be created either by the external "
                             f"provisioner '{provisioner}' or manually by the system "
                             f"administrator. If volume creation is delayed, please verify "
                             f"that the provisioner is running and correctly registered.")
            return
        if requested_storage(claim) is None:
            return  # validation keeps such claims out; nothing to size a volume by
        self._event(claim, "Normal", "Provisioning",
                    f'External provisioner is provisioning volume for claim "{namespace}/{name}"')
        path = volume_dir(self.root, claim)
        try:
            await asyncio.to_thread(make_dir, path)
        except OSError as e:
            self._event(claim, "Warning", "ProvisioningFailed",
                        f"failed to provision volume with StorageClass \"{class_name}\": "
                        f"mkdir {path}: {e.strerror}")
            return
        volume = provisioned_volume(claim, storage_class, path)
        try:
            created = self.store.create(PVS, None, volume)
        except ApiError as e:
            if e.code != 409:
                raise
            return  # made by an earlier pass; it binds on the next one
        self._event(claim, "Normal", "ProvisioningSucceeded",
                    f"Successfully provisioned volume {created['metadata']['name']}")
        current = self._get(PVCS, namespace, name)
        if current is not None and meta_of(current).get("uid") == meta.get("uid"):
            self._bind(current, created)

    def _annotate_provisioner(self, claim: JSON, provisioner: str) -> None:
        annotations = meta_of(claim).get("annotations") or {}
        if annotations.get(STORAGE_PROVISIONER) == provisioner:
            return
        meta = meta_of(claim)
        claim.update(self.store.patch(PVCS, meta["namespace"], meta["name"], {"metadata": {
            "resourceVersion": meta["resourceVersion"],
            "annotations": {STORAGE_PROVISIONER: provisioner,
                            BETA_STORAGE_PROVISIONER: provisioner}}}, "merge"))

    def _bind(self, claim: JSON, volume: JSON) -> None:
        """Both halves of a binding, volume first (as the binder does), then both statuses."""
        cmeta, vmeta = meta_of(claim), meta_of(volume)
        vspec = dict(volume.get("spec") or {})
        ref = {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
               "namespace": cmeta["namespace"], "name": cmeta["name"], "uid": cmeta["uid"],
               "resourceVersion": cmeta.get("resourceVersion")}
        if vspec.get("claimRef") != ref and not (
                claim_ref_matches(volume, claim) and (vspec.get("claimRef") or {}).get("uid")):
            annotations = dict(vmeta.get("annotations") or {})
            if not vspec.get("claimRef"):
                annotations[BOUND_BY_CONTROLLER] = "yes"
            volume = self.store.patch(PVS, None, vmeta["name"], {
                "metadata": {"resourceVersion": vmeta["resourceVersion"],
                             "annotations": annotations},
                "spec": {"claimRef": ref}}, "merge")
        if (volume.get("status") or {}).get("phase") != "Bound":
            volume = self.store.patch(PVS, None, vmeta["name"], {"status": {
                "phase": "Bound", "lastPhaseTransitionTime": now_rfc3339()}}, "merge",
                subresource="status")
        spec = claim.get("spec") or {}
        if spec.get("volumeName") != vmeta["name"] or (
                cmeta.get("annotations") or {}).get(BIND_COMPLETED) != "yes":
            annotations = {BIND_COMPLETED: "yes"}
            if not spec.get("volumeName"):
                annotations[BOUND_BY_CONTROLLER] = "yes"
            claim = self.store.patch(PVCS, cmeta["namespace"], cmeta["name"], {
                "metadata": {"resourceVersion": cmeta["resourceVersion"],
                             "annotations": annotations},
                "spec": {"volumeName": vmeta["name"]}}, "merge")
        vspec = volume.get("spec") or {}
        self._claim_status(claim, {"phase": "Bound",
                                   "accessModes": list(vspec.get("accessModes") or []),
                                   "capacity": dict(vspec.get("capacity") or {})})

    def _claim_status(self, claim: JSON, status: JSON) -> None:
        current = claim.get("status") or {}
        if all(current.get(k) == v for k, v in status.items()):
            return
        meta = meta_of(claim)
        self.store.patch(PVCS, meta["namespace"], meta["name"],
                         {"metadata": {"uid": meta["uid"]}, "status": status}, "merge",
                         subresource="status")

    # -- volumes -----------------------------------------------------------------------------------

    async def _sync_volume(self, volume: JSON, claims: dict[tuple[str, str], JSON]) -> None:
        meta, spec = meta_of(volume), volume.get("spec") or {}
        phase = (volume.get("status") or {}).get("phase")
        ref = spec.get("claimRef") or {}
        claim = claims.get((str(ref.get("namespace")), str(ref.get("name")))) if ref else None
        if claim is not None and ref.get("uid") and ref["uid"] != meta_of(claim).get("uid"):
            claim = None  # a new claim of the same name is not this volume's claim
        if meta.get("deletionTimestamp"):
            if PV_PROTECTION in (meta.get("finalizers") or []) and (
                    phase != "Bound" or claim is None):
                self._drop_finalizer(PVS, volume, PV_PROTECTION)
            return
        if not ref:
            if phase != "Available":
                self._volume_status(volume, "Available")
            return
        if claim is not None or not ref.get("uid"):
            if phase not in ("Bound", "Available") and claim is None:
                self._volume_status(volume, "Available")  # pre-bound, waiting for its claim
            return
        fresh = self._get(PVCS, str(ref.get("namespace")), str(ref.get("name")))
        if fresh is not None and meta_of(fresh).get("uid") == ref.get("uid"):
            return  # created after this pass listed the claims: not gone
        # Its claim is gone: release, then reclaim per policy.
        if phase == "Bound" or phase in (None, "Pending", "Available"):
            self._volume_status(volume, "Released")
            phase = "Released"
        if phase != "Released":
            return
        policy = spec.get("persistentVolumeReclaimPolicy")
        if policy == "Delete":
            await self._delete_volume(volume)
        elif policy == "Recycle":
            self._volume_status(volume, "Failed", "VolumeFailedRecycle",
                                "Recycle is not supported by the local cluster")

    async def _delete_volume(self, volume: JSON) -> None:
        meta = meta_of(volume)
        path = volume_path(volume)
        ours = (meta.get("annotations") or {}).get(PROVISIONED_BY) == self.provisioner
        if not (ours and owns(self.root, path)):
            message = (f"error getting deleter volume plugin for volume \"{meta['name']}\": no "
                       f"deletable volume plugin matched")
            self._volume_status(volume, "Failed", "VolumeFailedDelete", message)
            self._event(volume, "Warning", "VolumeFailedDelete", message)
            return
        assert path is not None
        await asyncio.to_thread(remove_dir, self.root, path)
        try:
            self.store.delete(PVS, None, meta["name"],
                              preconditions={"uid": meta["uid"]})
        except ApiError as e:
            if e.code not in (404, 409):
                raise

    def _volume_status(self, volume: JSON, phase: str, reason: str | None = None,
                       message: str | None = None) -> None:
        status: JSON = {"phase": phase, "lastPhaseTransitionTime": now_rfc3339(),
                        "reason": reason, "message": message}
        volume.update(self.store.patch(PVS, None, meta_of(volume)["name"], {
            "metadata": {"uid": meta_of(volume)["uid"]}, "status": status}, "merge",
            subresource="status"))

    # -- helpers -----------------------------------------------------------------------------------

    def _get(self, key: tuple[str, str], namespace: str | None, name: str) -> JSON | None:
        try:
            return self.store.get(key, namespace, name)
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    def _drop_finalizer(self, key: tuple[str, str], obj: JSON, finalizer: str) -> None:
        meta = meta_of(obj)
        finalizers = [f for f in meta.get("finalizers") or [] if f != finalizer]
        self.store.patch(key, meta.get("namespace"), meta["name"], {"metadata": {
            "resourceVersion": meta["resourceVersion"], "finalizers": finalizers or None}},
            "merge")

    def _event(self, obj: JSON, etype: str, reason: str, message: str) -> None:
        self.events.record(obj, etype, reason, message)

    def _event_once(self, claim: JSON, etype: str, reason: str, message: str) -> None:
        """An Event for a claim that keeps waiting, once per reason (passes repeat)."""
        key = (str(meta_of(claim).get("uid")), reason)
        if key in self._announced:
            return
        self._announced.add(key)
        self._event(claim, etype, reason, message)
