"""The local cluster's object store: the etcd + registry half of a Kubernetes API server.

It keeps every object in memory and applies the semantics clients rely on: a cluster-wide
``resourceVersion`` bumped by every write, optimistic concurrency, defaults, status subresources,
finalizers, graceful pod deletion, namespace teardown, and watches that can resume from a version
until it falls out of a bounded window (then 410 Gone).  The HTTP layer (``apiserver.py``), the
scheduler and the kubelet all go through it, so they see one consistent history.

Its parts, each in its own module: watches and the event window (``watchcache.py``), metadata
rules (``objectmeta.py``), the built-in kinds' defaults and validation (``kindrules.py``), CRD
registration and custom resource schemas (``crdregistry.py``), and what follows a delete:
ownerReference garbage collection and namespace and CRD teardown (``garbagecollection.py``),
run as follow-up work after each write.

Stored objects are never mutated after they are stored (every write stores a fresh copy), which
lets the HTTP layer serialise them, and watch events share them, without copying.  The public
methods still return deep copies, as the interface promises; the ``*_ref`` methods return the
shared stored objects, for the API server, which must not mutate them.

Everything here runs on the single event loop of the local cluster; methods are synchronous and
cheap, watches are async iterators fed synchronously by the writes. Tests may pass a smaller
``watch_window`` or ``watcher_queue_limit``, or other ``default_namespaces``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from . import errors as E
from . import kindrules
from .crdregistry import CRDRegistry
from .errors import ApiError, FieldError
from .garbagecollection import CRD_CLEANUP, GarbageCollector, ObjectRef, OwnerIndex
from .kindrules import prune_builtin, spec_changed
from .objectmeta import (FOREGROUND, ORPHAN, PATH_SEGMENT_NAMES, deep_copy, generated_name,
                         now_rfc3339, validate_meta)
from .patching import apply_patch
from .resources import CONVERTERS, Registry, ResourceKey, ResourceType
from .storageadmission import admit_create
from .selectors import FieldSelector, parse_field_selector, parse_label_selector
from .watchcache import StoredEvent, TypeState, Watch, WatchEvent
from .writeoptions import Admission, WriteOptions

__all__ = ["CRDS", "CRD_CLEANUP", "DEFAULT_NAMESPACES", "FOREGROUND", "NAMESPACES", "ORPHAN",
           "PATH_SEGMENT_NAMES", "PODS", "PROTECTED_NAMESPACES", "SERVICE_ACCOUNTS", "Admission",
           "Store", "Watch", "WatchEvent", "WriteOptions", "deep_copy", "now_rfc3339"]

log = logging.getLogger(__name__)

PODS: ResourceKey = ("", "pods")
NAMESPACES: ResourceKey = ("", "namespaces")
CRDS: ResourceKey = ("apiextensions.k8s.io", "customresourcedefinitions")
SERVICE_ACCOUNTS: ResourceKey = ("", "serviceaccounts")
STORAGE_CLASSES: ResourceKey = ("storage.k8s.io", "storageclasses")

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})

# Inside Store, ``list`` names its method: these spell the builtin list types it uses.
Objects = list[dict]
FieldErrors = list[FieldError]


class Store:
    """In-memory Kubernetes object storage with real API semantics (see module docstring)."""

    def __init__(self, *, watch_window: int = 5000, watcher_queue_limit: int = 100_000,
                 default_namespaces: tuple[str, ...] = DEFAULT_NAMESPACES) -> None:
        self.registry = Registry()
        self.watch_window = max(1, int(watch_window))
        self.watcher_queue_limit = watcher_queue_limit
        self.crds = CRDRegistry(self.registry)
        self._rv = 0
        self._states: dict[ResourceKey, TypeState] = {}
        self._owners = OwnerIndex()
        self._gc = GarbageCollector(self, self._owners)
        self._pending: deque[Callable[[], None]] = deque()
        self._draining = False
        self._service_ips = itertools.count(10)
        for rtype in self.registry.all():
            if rtype.storage is None:
                self._states[rtype.key] = TypeState(0)
        for name in default_namespaces:
            self.create(NAMESPACES, None, {"metadata": {"name": name}})

    # -- small helpers ---------------------------------------------------------------------------

    @property
    def current_rv(self) -> int:
        return self._rv

    def resource_version(self) -> str:
        return str(self._rv)

    def next_rv(self) -> int:
        """The resourceVersion of the next write (every write, of any type, takes one)."""
        self._rv += 1
        return self._rv

    def resource_type(self, key: ResourceKey) -> ResourceType:
        rtype = self.registry.get(key)
        if rtype is None:
            group, plural = key
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {"group": group, "kind": plural} if group else {"kind": plural})
        return rtype

    def _state(self, rtype: ResourceType) -> TypeState:
        state = self._states.get(rtype.storage_key)
        if state is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return state

    def _external_converter(self, rtype: ResourceType) -> Callable[[dict], dict] | None:
        conv = CONVERTERS.get(rtype.key)
        if conv:
            return conv[0]
        if rtype.is_custom:
            api_version = rtype.api_version
            return lambda obj: obj if obj.get("apiVersion") == api_version else {
                **obj, "apiVersion": api_version}
        return None

    def external(self, rtype: ResourceType, obj: dict) -> dict:
        """``obj`` (stored form) as ``rtype``'s API version presents it; shared, do not mutate."""
        conv = self._external_converter(rtype)
        return conv(obj) if conv else obj

    def _to_storage(self, rtype: ResourceType, obj: dict) -> dict:
        conv = CONVERTERS.get(rtype.key)
        return conv[1](obj) if conv else obj

    def _namespace_of(self, rtype: ResourceType, namespace: str | None) -> str | None:
        if not rtype.namespaced:
            return None
        if not namespace:
            raise E.bad_request("the namespace of the object is required for namespaced "
                                f"resources ({rtype.group_resource})")
        return namespace

    def _find(self, rtype: ResourceType, namespace: str | None, name: str) -> dict:
        state = self._state(rtype)
        bucket = state.objects.get(namespace if rtype.namespaced else None)
        obj = bucket.get(name) if bucket else None
        if obj is None:
            raise E.not_found(rtype.group_resource, name)
        return obj

    def lookup(self, ref: ObjectRef) -> dict | None:
        """The stored object at ``ref`` (shared), or None."""
        state = self._states.get(ref[0])
        if state is None:
            return None
        bucket = state.objects.get(ref[1])
        return bucket.get(ref[2]) if bucket else None

    def rtype_for_storage(self, storage_key: ResourceKey) -> ResourceType | None:
        """The served type whose objects are stored under ``storage_key``."""
        return self.registry.get(storage_key)

    def type_state(self, key: ResourceKey) -> TypeState | None:
        """The objects, event window and watchers stored under ``key``."""
        return self._states.get(key)

    def type_states(self) -> list[tuple[ResourceKey, TypeState]]:
        """Every stored type's state (a copy of the listing: writes may add or drop types)."""
        return list(self._states.items())

    # -- public API (deep copies) ----------------------------------------------------------------

    def create(self, key: ResourceKey, namespace: str | None, obj: dict,
               options: WriteOptions | None = None) -> dict:
        rtype = self.resource_type(key)
        return deep_copy(self.external(rtype, self.create_ref(rtype, namespace, obj, options)))

    def get(self, key: ResourceKey, namespace: str | None, name: str) -> dict:
        rtype = self.resource_type(key)
        return deep_copy(self.external(rtype, self.get_ref(rtype, namespace, name)))

    def list(self, key: ResourceKey, namespace: str | None = None,
             label_selector: str | None = None,
             field_selector: str | None = None) -> tuple[Objects, str]:
        rtype = self.resource_type(key)
        items, rv = self.list_refs(rtype, namespace, label_selector, field_selector)
        return [deep_copy(self.external(rtype, o)) for o in items], rv

    def replace(self, key: ResourceKey, namespace: str | None, name: str, obj: dict,
                subresource: str | None = None, options: WriteOptions | None = None) -> dict:
        rtype = self.resource_type(key)
        result = self.replace_ref(rtype, namespace, name, obj, subresource, options)
        return deep_copy(self.external(rtype, result))

    def patch(self, key: ResourceKey, namespace: str | None, name: str, patch: Any,
              patch_type: str, subresource: str | None = None,
              options: WriteOptions | None = None) -> dict:
        rtype = self.resource_type(key)
        result = self.patch_ref(rtype, namespace, name, patch, patch_type, subresource, options)
        return deep_copy(self.external(rtype, result))

    def delete(self, key: ResourceKey, namespace: str | None, name: str,
               grace_period_seconds: int | None = None, propagation_policy: str | None = None,
               preconditions: dict | None = None, options: WriteOptions | None = None) -> dict:
        rtype = self.resource_type(key)
        result = self.delete_ref(rtype, namespace, name, grace_period_seconds, propagation_policy,
                                 preconditions, options)
        return deep_copy(self.external(rtype, result))

    def bind(self, namespace: str, name: str, node_name: str, uid: str | None = None) -> dict:
        """What POST pods/{name}/binding does: set spec.nodeName once, as kube-scheduler does."""
        rtype = self.resource_type(PODS)
        return deep_copy(self.bind_ref(rtype, namespace, name, node_name, uid))

    def watch(self, key: ResourceKey, namespace: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None,
              resource_version: str | None = None, send_initial: bool = False) -> Watch:
        rtype = self.resource_type(key)
        return self.watch_type(rtype, namespace, label_selector, field_selector, resource_version,
                               send_initial)

    # -- reads (shared objects) --------------------------------------------------------------------

    def get_ref(self, rtype: ResourceType, namespace: str | None, name: str) -> dict:
        return self._find(rtype, namespace, name)

    def _field_selector(self, rtype: ResourceType, text: str | None) -> FieldSelector:
        return parse_field_selector(text, rtype.field_labels, dict(rtype.field_aliases))

    def list_refs(self, rtype: ResourceType, namespace: str | None = None,
                  label_selector: str | None = None,
                  field_selector: str | None = None) -> tuple[Objects, str]:
        labels = parse_label_selector(label_selector)
        fields = self._field_selector(rtype, field_selector)
        state = self._state(rtype)
        ns = namespace if rtype.namespaced else None
        items: Objects = []
        for obj in state.iter_objects(ns):
            meta = obj["metadata"]
            if labels.requirements and not labels.matches(meta.get("labels")):
                continue
            if fields.requirements and not fields.matches(obj):
                continue
            items.append(obj)
        return items, str(self._rv)

    def count(self, key: ResourceKey) -> int:
        rtype = self.resource_type(key)
        return self._state(rtype).count()

    # -- watch -----------------------------------------------------------------------------------

    def watch_type(self, rtype: ResourceType, namespace: str | None = None,
                   label_selector: str | None = None, field_selector: str | None = None,
                   resource_version: str | None = None, send_initial: bool = False) -> Watch:
        labels = parse_label_selector(label_selector)
        fields = self._field_selector(rtype, field_selector)
        state = self._state(rtype)
        ns = namespace if rtype.namespaced else None
        start: int | None = None
        if resource_version not in (None, "", "0"):
            try:
                start = int(str(resource_version))
            except ValueError:
                raise E.bad_request(f"invalid resource version: {resource_version!r}") from None
            if start < state.evicted_rv:
                oldest = state.events[0].rv if state.events else self._rv
                raise E.gone(f"too old resource version: {start} ({oldest - 1})")
        watcher = Watch(self, state, rtype, ns, labels, fields, self.watcher_queue_limit,
                        self._external_converter(rtype))
        if send_initial:
            for obj in state.iter_objects(ns):
                if watcher.matches(obj):
                    watcher.push(WatchEvent("ADDED", obj, int(obj["metadata"]["resourceVersion"])))
            watcher.last_rv = self._rv
        if start is not None:
            replay = []
            for event in reversed(state.events):
                if event.rv <= start:
                    break
                replay.append(event)
            for event in reversed(replay):
                watcher.offer(event)
            watcher.last_rv = start
        state.watchers.add(watcher)
        return watcher

    def watcher_count(self) -> int:
        return sum(len(s.watchers) for s in self._states.values())

    # -- internal write plumbing -------------------------------------------------------------

    def _emit(self, state: TypeState, etype: str, obj: dict, prev: dict | None) -> None:
        event = StoredEvent(int(obj["metadata"]["resourceVersion"]), etype, obj, prev)
        state.record(event, self.watch_window)

    def put(self, rtype: ResourceType, obj: dict, prev: dict | None) -> None:
        """Store ``obj`` (its resourceVersion already set) in place of ``prev`` and emit the
        change. Internal plumbing: no checks (the garbage collector writes through it)."""
        state = self._state(rtype)
        meta = obj["metadata"]
        ns = meta.get("namespace") if rtype.namespaced else None
        state.objects.setdefault(ns, {})[meta["name"]] = obj
        self._owners.stored((rtype.storage_key, ns, meta["name"]), meta,
                            (prev or {}).get("metadata", {}))
        self._emit(state, "ADDED" if prev is None else "MODIFIED", obj, prev)

    def defer(self, job: Callable[[], None]) -> None:
        """Run ``job`` once the current write is stored (GC, namespace and CRD teardown)."""
        self._pending.append(job)

    def remove(self, rtype: ResourceType, obj: dict) -> dict:
        """Take ``obj`` out of storage, emit DELETED and queue the follow-up work (GC, teardown)."""
        state = self._state(rtype)
        meta = obj["metadata"]
        ns = meta.get("namespace") if rtype.namespaced else None
        bucket = state.objects.get(ns)
        if bucket is not None:
            bucket.pop(meta["name"], None)
            if not bucket:
                del state.objects[ns]
        self._owners.removed((rtype.storage_key, ns, meta["name"]), meta)
        gone = dict(obj)
        gone["metadata"] = {**meta, "resourceVersion": str(self.next_rv())}
        self._emit(state, "DELETED", gone, obj)
        gc = self._gc
        self.defer(functools.partial(gc.collect_dependents, meta["uid"]))
        for owner in meta.get("ownerReferences") or []:
            self.defer(functools.partial(gc.check_foreground, owner.get("uid")))
        if ns is not None:
            self.defer(functools.partial(gc.check_namespace, ns))
        if rtype.is_custom:
            self.defer(functools.partial(gc.check_crd, rtype.crd_name))
        if rtype.key == CRDS:
            self._unregister_crd(obj)
        return gone

    def _drain(self) -> None:
        """Run the follow-up work (GC, namespace and CRD teardown) queued by writes."""
        if self._draining:
            return
        self._draining = True
        try:
            while self._pending:
                job = self._pending.popleft()
                try:
                    job()
                except ApiError as exc:
                    if exc.code not in (404, 409):
                        log.warning("background cleanup failed: %s", exc.message)
                except Exception:  # noqa: BLE001 - cleanup must not break the write that queued it
                    log.exception("background cleanup failed")
        finally:
            self._draining = False

    # -- create ----------------------------------------------------------------------------------

    def create_ref(self, rtype: ResourceType, namespace: str | None, obj: Any,
                   options: WriteOptions | None = None) -> dict:
        opts = options or WriteOptions()
        if not isinstance(obj, dict):
            raise E.bad_request(f"the body of the request must be a {rtype.kind} object")
        obj = self._to_storage(rtype, deep_copy(obj))
        meta = obj.get("metadata")
        if meta is None:
            meta = obj["metadata"] = {}
        elif not isinstance(meta, dict):
            raise E.bad_request("metadata must be an object")
        prune_builtin(rtype, obj, opts)
        meta = obj.setdefault("metadata", {})
        body_ns = meta.get("namespace")
        if rtype.namespaced:
            if namespace and body_ns and body_ns != namespace:
                raise E.bad_request("the namespace of the provided object does not match the "
                                    "namespace sent on the request")
            ns = namespace or body_ns or "default"
            meta["namespace"] = ns
            self._require_namespace(ns, creating=True)
        else:
            meta.pop("namespace", None)
            ns = None
        errs: list[FieldError] = []
        name = meta.get("name")
        if not name:
            generate = meta.get("generateName")
            if generate and isinstance(generate, str):
                name = generated_name(generate)
                meta["name"] = name
            else:
                errs.append(E.required("metadata.name", "name or generateName is required"))
        elif not isinstance(name, str):
            errs.append(E.invalid("metadata.name", name, "must be a string"))
        obj["apiVersion"] = "v1" if rtype.storage else rtype.api_version
        obj["kind"] = rtype.kind
        validate_meta(rtype, meta, errs)
        if errs:
            raise E.invalid_object(rtype.qualified_kind, str(meta.get("name") or ""), errs)
        state = self._state(rtype)
        bucket = state.objects.get(ns)
        if bucket and name in bucket:
            raise E.already_exists(rtype.group_resource, name)
        for system in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                       "deletionGracePeriodSeconds", "generation", "selfLink", "managedFields"):
            meta.pop(system, None)
        self._prepare_create(rtype, obj, opts)
        if errs:
            raise E.invalid_object(rtype.qualified_kind, name, errs)
        if opts.admit is not None:
            opts.admit("CREATE", rtype, None, None, obj)
        if rtype.has_generation:
            meta["generation"] = 1
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if opts.dry_run:
            meta["resourceVersion"] = str(self._rv)
            return obj
        meta["resourceVersion"] = str(self.next_rv())
        self.put(rtype, obj, None)
        self._after_create(rtype, obj)
        self._drain()
        return obj

    def _require_namespace(self, ns: str, creating: bool) -> None:
        bucket = self._states[NAMESPACES].objects.get(None) or {}
        namespace = bucket.get(ns)
        if namespace is None:
            raise E.not_found("namespaces", ns)
        if creating and namespace["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f"unable to create new content in namespace {ns} "
                                             "because it is being terminated",
                           {"name": ns, "kind": "namespaces",
                            "causes": [{"reason": "NamespaceTerminating",
                                        "message": f"namespace {ns} is being terminated",
                                        "field": "metadata.namespace"}]})

    def _after_create(self, rtype: ResourceType, obj: dict) -> None:
        key = rtype.storage_key
        meta = obj["metadata"]
        if key == NAMESPACES:
            self.defer(functools.partial(self._ensure_default_sa, meta["name"]))
        elif key == CRDS:
            self._register_crd(obj)
        owners = meta.get("ownerReferences") or []
        if owners:
            self.defer(functools.partial(self._gc.collect_if_orphaned, meta["uid"]))

    def _ensure_default_sa(self, ns: str) -> None:
        bucket = self._states[SERVICE_ACCOUNTS].objects.get(ns) or {}
        if "default" not in bucket:
            self.create_ref(self.resource_type(SERVICE_ACCOUNTS), ns,
                            {"metadata": {"name": "default"}})

    # -- kind-specific preparation -----------------------------------------------------------------

    def _prepare_create(self, rtype: ResourceType, obj: dict, opts: WriteOptions) -> None:
        errs: FieldErrors = []
        if rtype.storage_key == CRDS:
            self.crds.prepare(obj, None, errs)
        elif rtype.is_custom:
            if rtype.status_subresource:
                obj.pop("status", None)
            self.crds.prepare_custom(rtype, obj, opts, errs)
        else:
            admit_create(rtype.storage_key, obj, self._storage_classes)
            kindrules.prepare_create(rtype, obj, errs, self._service_ips)
        if errs:
            raise E.invalid_object(rtype.qualified_kind, obj["metadata"]["name"], errs)

    def _storage_classes(self) -> Objects:
        state = self._states.get(STORAGE_CLASSES)
        return list(state.iter_objects(None)) if state is not None else []

    def _prepare_update(self, rtype: ResourceType, old: dict, new: dict,
                        opts: WriteOptions) -> None:
        errs: FieldErrors = []
        if rtype.storage_key == CRDS:
            self.crds.prepare(new, old, errs)
        elif rtype.is_custom:
            self.crds.prepare_custom(rtype, new, opts, errs, old)
        else:
            kindrules.prepare_update(rtype, old, new, errs, self._service_ips)
        if errs:
            raise E.invalid_object(rtype.qualified_kind, old["metadata"]["name"], errs)

    def _register_crd(self, crd: dict) -> None:
        key = self.crds.register(crd)
        if key is not None and key not in self._states:
            self._states[key] = TypeState(self._rv)

    def _unregister_crd(self, crd: dict) -> None:
        key = self.crds.unregister(crd)
        state = self._states.pop(key, None) if key is not None else None
        if state is not None:
            for watcher in list(state.watchers):
                watcher.close()

    # -- update ----------------------------------------------------------------------------------

    def replace_ref(self, rtype: ResourceType, namespace: str | None, name: str, obj: Any,
                    subresource: str | None = None, options: WriteOptions | None = None) -> dict:
        opts = options or WriteOptions()
        if not isinstance(obj, dict):
            raise E.bad_request(f"the body of the request must be a {rtype.kind} object")
        ns = self._namespace_of(rtype, namespace)
        old = self._find(rtype, ns, name)
        new = self._to_storage(rtype, deep_copy(obj))
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        if meta.get("name") is not None and meta.get("name") != name:
            raise E.bad_request(f"the name of the object ({meta.get('name')}) does not match the "
                                f"name on the URL ({name})")
        if rtype.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise E.bad_request("the namespace of the provided object does not match the namespace "
                                "sent on the request")
        rv = meta.get("resourceVersion")
        if rv:
            if str(rv) != old["metadata"]["resourceVersion"]:
                raise E.stale(rtype.group_resource, name)
        elif not rtype.allow_unconditional_update:
            raise E.invalid_object(rtype.qualified_kind, name, [
                E.invalid("metadata.resourceVersion", 0, "must be specified for an update")])
        uid = meta.get("uid")
        if uid and uid != old["metadata"]["uid"]:
            raise E.conflict(rtype.group_resource, name,
                             f"Precondition failed: UID in precondition: {uid}, UID in object "
                             f"meta: {old['metadata']['uid']}")
        result = self._update(rtype, old, new, subresource, opts)
        self._drain()
        return result

    def patch_ref(self, rtype: ResourceType, namespace: str | None, name: str, patch: Any,
                  patch_type: str, subresource: str | None = None,
                  options: WriteOptions | None = None) -> dict:
        opts = options or WriteOptions()
        ns = self._namespace_of(rtype, namespace)
        try:
            old = self._find(rtype, ns, name)
        except ApiError as exc:
            if exc.code == 404 and patch_type == "apply" and subresource is None:
                return self._apply_create(rtype, ns, name, patch, opts)
            raise
        current = self.external(rtype, old)
        patched = apply_patch(current, patch, patch_type, rtype.kind, rtype.strategic_merge)
        new = self._to_storage(rtype, deep_copy(patched))
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        if meta.get("name") != name:
            raise E.invalid_object(rtype.qualified_kind, name, [
                E.invalid("metadata.name", meta.get("name"), "field is immutable")])
        if rtype.namespaced and meta.get("namespace") != ns:
            raise E.invalid_object(rtype.qualified_kind, name, [
                E.invalid("metadata.namespace", meta.get("namespace"), "field is immutable")])
        rv = meta.get("resourceVersion")
        if rv and str(rv) != old["metadata"]["resourceVersion"]:
            raise E.stale(rtype.group_resource, name)
        if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
            raise E.conflict(rtype.group_resource, name,
                             f"Precondition failed: UID in precondition: {meta['uid']}, UID in "
                             f"object meta: {old['metadata']['uid']}")
        result = self._update(rtype, old, new, subresource, opts)
        self._drain()
        return result

    def _apply_create(self, rtype: ResourceType, ns: str | None, name: str, patch: Any,
                      opts: WriteOptions) -> dict:
        if not isinstance(patch, dict):
            raise E.bad_request("the apply configuration must be an object")
        meta = patch.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise E.bad_request(f"the name of the object ({meta['name']}) does not match the name "
                                f"on the URL ({name})")
        body = {**patch, "metadata": {**meta, "name": name}}
        return self.create_ref(rtype, ns, body, opts)

    def _update(self, rtype: ResourceType, old: dict, new: dict, subresource: str | None,
                opts: WriteOptions) -> dict:
        """Turn a requested new state into the stored one (with real strategy rules) and save it."""
        old_meta = old["metadata"]
        name = old_meta["name"]
        prune_builtin(rtype, new, opts)
        if subresource == "status":
            status = new.get("status")
            new = dict(old)
            new["metadata"] = dict(old_meta)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
            if rtype.is_custom:
                status_errs = self.crds.status_errors(rtype, new)
                if status_errs:
                    raise E.invalid_object(rtype.qualified_kind, name, status_errs)
            new = deep_copy(new)
        elif subresource is not None:
            raise E.not_found(rtype.group_resource, name)
        else:
            if rtype.status_subresource:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
        meta = new["metadata"]
        for system in ("uid", "creationTimestamp", "deletionTimestamp",
                       "deletionGracePeriodSeconds", "generation", "name", "namespace"):
            if system in old_meta:
                meta[system] = old_meta[system]
            else:
                meta.pop(system, None)
        meta.pop("selfLink", None)
        meta.pop("managedFields", None)
        new["apiVersion"] = old.get("apiVersion", rtype.api_version)
        new["kind"] = rtype.kind
        errs: list[FieldError] = []
        validate_meta(rtype, meta, errs)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                errs.append(E.forbidden("metadata.finalizers", "no new finalizers can be added if "
                                                               "the object is being deleted, found "
                                                               f"new finalizers {sorted(added)}"))
        if errs:
            raise E.invalid_object(rtype.qualified_kind, name, errs)
        if subresource is None:
            self._prepare_update(rtype, old, new, opts)
        if rtype.has_generation and spec_changed(old, new):
            meta["generation"] = int(old_meta.get("generation") or 1) + 1
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if opts.admit is not None:
            opts.admit("UPDATE", rtype, subresource, old, new)
        if new == old:
            return old  # a no-op write is not a write: no new resourceVersion, no event
        if opts.dry_run:
            return new
        if (meta.get("deletionTimestamp") and not meta.get("finalizers")
                and old_meta.get("deletionGracePeriodSeconds") == 0):
            return self.remove(rtype, new)
        meta["resourceVersion"] = str(self.next_rv())
        self.put(rtype, new, old)
        if rtype.storage_key == CRDS:
            self._register_crd(new)
        if meta.get("ownerReferences") != old_meta.get("ownerReferences") and meta.get(
                "ownerReferences"):
            self.defer(functools.partial(self._gc.collect_if_orphaned, meta["uid"]))
        if FOREGROUND in (meta.get("finalizers") or []):
            self.defer(functools.partial(self._gc.check_foreground, meta["uid"]))
        return new

    def bind_ref(self, rtype: ResourceType, namespace: str | None, name: str, node_name: str,
                 uid: str | None = None) -> dict:
        old = self._find(rtype, namespace, name)
        if uid and uid != old["metadata"]["uid"]:
            raise E.conflict("pods", name, f"Precondition failed: UID in precondition: {uid}, UID "
                                           f"in object meta: {old['metadata']['uid']}")
        if old["metadata"].get("deletionTimestamp"):
            raise E.conflict("pods", name, "pod is being deleted, cannot be assigned to a host")
        if old["spec"].get("nodeName"):
            raise E.conflict("pods", name, f"pod {name} is already assigned to node "
                                           f"\"{old['spec']['nodeName']}\"")
        new = deep_copy(old)
        new["spec"]["nodeName"] = node_name
        conditions = [c for c in new.setdefault("status", {}).get("conditions") or []
                      if c.get("type") != "PodScheduled"]
        conditions.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                           "lastTransitionTime": now_rfc3339()})
        new["status"]["conditions"] = conditions
        new["metadata"]["resourceVersion"] = str(self.next_rv())
        self.put(rtype, new, old)
        self._drain()
        return new

    # -- delete ----------------------------------------------------------------------------------

    def delete_ref(self, rtype: ResourceType, namespace: str | None, name: str,
                   grace_period_seconds: int | None = None, propagation_policy: str | None = None,
                   preconditions: dict | None = None,
                   options: WriteOptions | None = None) -> dict:
        opts = options or WriteOptions()
        ns = self._namespace_of(rtype, namespace)
        old = self._find(rtype, ns, name)
        old_meta = old["metadata"]
        if preconditions:
            want_uid = preconditions.get("uid")
            if want_uid and want_uid != old_meta["uid"]:
                raise E.conflict(rtype.group_resource, name,
                                 f"Precondition failed: UID in precondition: {want_uid}, UID in "
                                 f"object meta: {old_meta['uid']}")
            want_rv = preconditions.get("resourceVersion")
            if want_rv and str(want_rv) != old_meta["resourceVersion"]:
                raise E.conflict(rtype.group_resource, name,
                                 f"Precondition failed: ResourceVersion in precondition: {want_rv},"
                                 f" ResourceVersion in object meta: {old_meta['resourceVersion']}")
        if propagation_policy not in (None, "", "Background", "Foreground", "Orphan"):
            raise E.invalid_object("DeleteOptions", "", [E.not_supported(
                "propagationPolicy", propagation_policy, ["Foreground", "Background", "Orphan",
                                                          "nil"])])
        if grace_period_seconds is not None and grace_period_seconds < 0:
            grace_period_seconds = None  # like kubectl's -1: the object's own default
        key = rtype.storage_key
        if key == NAMESPACES and name in PROTECTED_NAMESPACES:
            raise E.forbidden_error("namespaces", name, "this namespace may not be deleted")
        if opts.dry_run:
            return old
        result = self.delete_stored(rtype, old, grace_period_seconds, propagation_policy or "")
        self._drain()
        return result

    def delete_stored(self, rtype: ResourceType, old: dict, grace: int | None,
                      propagation: str) -> dict:
        """Delete a stored object as its kind and finalizers say (graceful pods, foreground or
        orphan propagation), without the request's checks: the garbage collector's delete."""
        old_meta = old["metadata"]
        key = rtype.storage_key
        graceful = 0
        if key == PODS:
            spec = old.get("spec") or {}
            graceful = grace if grace is not None else int(
                spec.get("terminationGracePeriodSeconds", 30) or 0)
            phase = (old.get("status") or {}).get("phase")
            if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
                graceful = 0
        finalizers = list(old_meta.get("finalizers") or [])
        if key == NAMESPACES:
            if old_meta.get("deletionTimestamp"):
                return old
            new = deep_copy(old)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {"phase": "Terminating"}
            new["metadata"]["resourceVersion"] = str(self.next_rv())
            self.put(rtype, new, old)
            self.defer(functools.partial(self._gc.check_namespace, old_meta["name"]))
            return new
        if key == CRDS and not old_meta.get("deletionTimestamp"):
            finalizers.append(CRD_CLEANUP)
            self.defer(functools.partial(self._gc.check_crd, old_meta["name"]))
        if propagation == "Orphan" or (ORPHAN in finalizers):
            self._gc.orphan_dependents(old_meta["uid"])
            finalizers = [f for f in finalizers if f != ORPHAN]
        elif propagation == "Foreground" and FOREGROUND not in finalizers:
            finalizers.append(FOREGROUND)
        if old_meta.get("deletionTimestamp"):
            current_grace = old_meta.get("deletionGracePeriodSeconds") or 0
            if key == PODS and graceful < current_grace or finalizers != list(
                    old_meta.get("finalizers") or []):
                new = deep_copy(old)
                meta = new["metadata"]
                if key == PODS and graceful < current_grace:
                    meta["deletionGracePeriodSeconds"] = graceful
                    meta["deletionTimestamp"] = now_rfc3339(graceful)
                meta["finalizers"] = finalizers
                if not finalizers:
                    meta.pop("finalizers")
                if not finalizers and meta.get("deletionGracePeriodSeconds") == 0:
                    return self.remove(rtype, new)
                meta["resourceVersion"] = str(self.next_rv())
                self.put(rtype, new, old)
                if FOREGROUND in finalizers:
                    self.defer(functools.partial(self._gc.check_foreground, meta["uid"]))
                return new
            return old
        if finalizers or graceful > 0:
            new = deep_copy(old)
            meta = new["metadata"]
            meta["deletionTimestamp"] = now_rfc3339(graceful)
            meta["deletionGracePeriodSeconds"] = graceful
            if finalizers:
                meta["finalizers"] = finalizers
            if rtype.has_generation:
                meta["generation"] = int(meta.get("generation") or 1) + 1
            meta["resourceVersion"] = str(self.next_rv())
            self.put(rtype, new, old)
            if FOREGROUND in finalizers:
                self.defer(functools.partial(self._gc.check_foreground, meta["uid"]))
            return new
        return self.remove(rtype, old)

    # -- bulk ------------------------------------------------------------------------------------

    def delete_collection_refs(self, rtype: ResourceType, namespace: str | None,
                               label_selector: str | None = None,
                               field_selector: str | None = None,
                               grace_period_seconds: int | None = None,
                               propagation_policy: str | None = None,
                               options: WriteOptions | None = None) -> Objects:
        items, _ = self.list_refs(rtype, namespace, label_selector, field_selector)
        deleted: Objects = []
        for obj in items:
            meta = obj["metadata"]
            try:
                deleted.append(self.delete_ref(rtype, meta.get("namespace"), meta["name"],
                                               grace_period_seconds, propagation_policy, None,
                                               options))
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return deleted
