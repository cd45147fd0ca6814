"""What follows a delete: ownerReference garbage collection, namespace and CRD teardown.

kube-controller-manager's garbage collector deletes an object whose owners are all gone
(background), deletes an owner's dependents before the owner when it carries the
``foregroundDeletion`` finalizer (an owner waits for dependents that set ``blockOwnerDeletion``),
and strips the ownerReference from dependents of an owner deleted with ``orphan``. Its namespace
controller empties a terminating namespace before removing it, and apiextensions' finalizer
deletes every object of a deleted CRD before the CRD. The local cluster does the same here,
synchronously, as follow-up work the store runs after each write (``Store.defer``).

``OwnerIndex`` keeps who owns whom (by uid) as objects are stored and removed. The store
(``store.py``) owns one of each; ``GarbageCollector`` writes only through the store's internal
write plumbing, so every change it makes is an ordinary stored change that watchers see.
Nothing here may be overridden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .objectmeta import FOREGROUND, deep_copy
from .resources import ResourceKey, ResourceType

if TYPE_CHECKING:
    from .store import Store

#: Where an object is stored: (storage key, namespace or None, name).
ObjectRef = tuple[ResourceKey, "str | None", str]

NAMESPACES: ResourceKey = ("", "namespaces")
CRDS: ResourceKey = ("apiextensions.k8s.io", "customresourcedefinitions")
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"


class OwnerIndex:
    """Where each object is (by uid) and which objects name each uid as an owner."""

    def __init__(self) -> None:
        self._by_uid: dict[str, ObjectRef] = {}
        self._dependents: dict[str, set[ObjectRef]] = {}

    def where(self, uid: str | None) -> ObjectRef | None:
        return self._by_uid.get(uid or "")

    def dependents(self, owner_uid: str) -> list[ObjectRef]:
        """The objects that name ``owner_uid`` as an owner, in a stable order."""
        return sorted(self._dependents.get(owner_uid, ()),
                      key=lambda r: (r[0], r[1] or "", r[2]))

    def stored(self, ref: ObjectRef, meta: dict[str, Any], prev_meta: dict[str, Any]) -> None:
        """``ref`` was stored with ``meta`` (``prev_meta`` its metadata before, {} if new)."""
        self._by_uid[meta["uid"]] = ref
        old_owners = {r.get("uid") for r in prev_meta.get("ownerReferences") or []}
        new_owners = {r.get("uid") for r in meta.get("ownerReferences") or []}
        for uid in old_owners - new_owners:
            self._drop(uid, ref)
        for uid in new_owners - old_owners:
            self._dependents.setdefault(uid, set()).add(ref)

    def removed(self, ref: ObjectRef, meta: dict[str, Any]) -> None:
        """``ref`` (whose metadata was ``meta``) left storage."""
        self._by_uid.pop(meta["uid"], None)
        for owner in meta.get("ownerReferences") or []:
            self._drop(owner.get("uid"), ref)

    def _drop(self, owner_uid: Any, ref: ObjectRef) -> None:
        deps = self._dependents.get(owner_uid)
        if deps:
            deps.discard(ref)
            if not deps:
                del self._dependents[owner_uid]


class GarbageCollector:
    """The garbage collector, namespace controller and CRD finalizer of one store."""

    def __init__(self, store: Store, owners: OwnerIndex) -> None:
        self._store = store
        self._owners = owners

    def _find(self, uid: str | None) -> tuple[ObjectRef, dict[str, Any]] | None:
        where = self._owners.where(uid)
        obj = self._store.lookup(where) if where else None
        return (where, obj) if where is not None and obj is not None else None

    # -- ownerReferences -----------------------------------------------------------------------

    def owners_alive(self, meta: dict[str, Any], ignore_uid: str | None = None) -> bool:
        for ref in meta.get("ownerReferences") or []:
            uid = ref.get("uid")
            if uid == ignore_uid:
                continue
            where = self._owners.where(uid)
            if where is None:
                continue
            if self._store.lookup(where) is not None:
                return True
        return False

    def _owners_alive_except_deleting(self, meta: dict[str, Any]) -> bool:
        """True if some owner exists that is not itself waiting for dependents (real GC rule)."""
        for ref in meta.get("ownerReferences") or []:
            found = self._find(ref.get("uid"))
            if found is not None and FOREGROUND not in (found[1]["metadata"].get("finalizers")
                                                        or []):
                return True
        return False

    def _dependent_objects(self, owner_uid: str) -> list[tuple[ResourceType, dict[str, Any]]]:
        found = []
        for ref in self._owners.dependents(owner_uid):
            obj = self._store.lookup(ref)
            rtype = self._store.rtype_for_storage(ref[0])
            if obj is not None and rtype is not None:
                found.append((rtype, obj))
        return found

    def collect_dependents(self, owner_uid: str) -> None:
        """Background GC: delete dependents of a removed owner that have no owner left."""
        for rtype, obj in self._dependent_objects(owner_uid):
            meta = obj["metadata"]
            if meta.get("deletionTimestamp") or self.owners_alive(meta, owner_uid):
                continue
            self._store.delete_stored(rtype, obj, None, "Background")

    def collect_if_orphaned(self, uid: str) -> None:
        """An object created (or re-owned) after its owners are gone is garbage, as in real GC."""
        found = self._find(uid)
        if found is None:
            return
        where, obj = found
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") or not meta.get("ownerReferences"):
            return
        rtype = self._store.rtype_for_storage(where[0])
        if rtype is not None and not self.owners_alive(meta):
            self._store.delete_stored(rtype, obj, None, "Background")

    def orphan_dependents(self, owner_uid: str) -> None:
        """Deletion with ``orphan``: the dependents lose their reference to the owner."""
        for rtype, obj in self._dependent_objects(owner_uid):
            new = deep_copy(obj)
            refs = [r for r in new["metadata"].get("ownerReferences") or []
                    if r.get("uid") != owner_uid]
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                new["metadata"].pop("ownerReferences", None)
            new["metadata"]["resourceVersion"] = str(self._store.next_rv())
            self._store.put(rtype, new, obj)

    def check_foreground(self, owner_uid: str | None) -> None:
        """Foreground deletion: delete dependents, drop the finalizer once blockers are gone."""
        found = self._find(owner_uid)
        if owner_uid is None or found is None:
            return
        where, owner = found
        if FOREGROUND not in (owner["metadata"].get("finalizers") or []):
            return
        store = self._store
        blocking = False
        for rtype, obj in self._dependent_objects(owner_uid):
            meta = obj["metadata"]
            if not meta.get("deletionTimestamp") and not self._owners_alive_except_deleting(meta):
                obj = store.delete_stored(rtype, obj, None, "Foreground")
                if store.lookup((rtype.storage_key, meta.get("namespace") if rtype.namespaced
                                 else None, meta["name"])) is None:
                    continue
            if any(r.get("uid") == owner_uid and r.get("blockOwnerDeletion")
                   for r in obj["metadata"].get("ownerReferences") or []):
                blocking = True
        if blocking:
            return
        current = store.lookup(where)
        owner_type = store.rtype_for_storage(where[0])
        if current is None or owner_type is None:
            return
        new = deep_copy(current)
        finalizers = [f for f in new["metadata"].get("finalizers") or [] if f != FOREGROUND]
        if finalizers:
            new["metadata"]["finalizers"] = finalizers
        else:
            new["metadata"].pop("finalizers", None)
        if not finalizers and new["metadata"].get("deletionGracePeriodSeconds") == 0:
            store.remove(owner_type, new)
            return
        new["metadata"]["resourceVersion"] = str(store.next_rv())
        store.put(owner_type, new, current)

    # -- namespaces and CRDs -------------------------------------------------------------------

    def check_namespace(self, ns: str) -> None:
        """Namespace controller: empty a terminating namespace, then remove it."""
        store = self._store
        namespace = store.lookup((NAMESPACES, None, ns))
        if namespace is None or not namespace["metadata"].get("deletionTimestamp"):
            return
        remaining = False
        for key, state in store.type_states():
            objects = state.objects.get(ns)
            if not objects:
                continue
            rtype = store.rtype_for_storage(key)
            if rtype is None or not rtype.namespaced:
                continue
            for obj in list(objects.values()):
                if not obj["metadata"].get("deletionTimestamp"):
                    store.delete_stored(rtype, obj, None, "Background")
            if state.objects.get(ns):
                remaining = True
        if remaining:
            return
        namespace = store.lookup((NAMESPACES, None, ns))
        if namespace is None:
            return
        final = deep_copy(namespace)
        final.setdefault("spec", {})["finalizers"] = []
        store.remove(store.resource_type(NAMESPACES), final)

    def check_crd(self, crd_name: str) -> None:
        """CRD finalizer: delete every custom object of a deleted CRD, then remove the CRD."""
        store = self._store
        crd = store.lookup((CRDS, None, crd_name))
        if crd is None or not crd["metadata"].get("deletionTimestamp"):
            return
        spec = crd["spec"]
        key = (spec["group"], spec["names"]["plural"])
        rtype = store.registry.get(key)
        state = store.type_state(key)
        if rtype is not None and state is not None and rtype.crd_name == crd_name:
            for ns in list(state.objects):
                for obj in list((state.objects.get(ns) or {}).values()):
                    if not obj["metadata"].get("deletionTimestamp"):
                        store.delete_stored(rtype, obj, None, "Background")
            if state.count():
                return
        crd = store.lookup((CRDS, None, crd_name))
        if crd is None:
            return
        crds = store.resource_type(CRDS)
        new = deep_copy(crd)
        finalizers = [f for f in new["metadata"].get("finalizers") or [] if f != CRD_CLEANUP]
        if finalizers:
            new["metadata"]["finalizers"] = finalizers
            new["metadata"]["resourceVersion"] = str(store.next_rv())
            store.put(crds, new, crd)
            return
        new["metadata"].pop("finalizers", None)
        store.remove(crds, new)
