"""The local cluster's object store: the etcd + registry half of a Kubernetes API server.

It keeps every object in memory and applies the semantics clients rely on: a cluster-wide
``resourceVersion`` bumped by every write, optimistic concurrency, defaults, status subresources,
CRD registration with schema validation, finalizers, graceful pod deletion, ownerReference garbage
collection, namespace teardown, and watches that can resume from a version until it falls out of a
bounded window (then 410 Gone).  The HTTP layer, the scheduler and the kubelet all go through it, so
they see one consistent history.

Stored objects are never mutated after they are stored (every write stores a fresh copy), which
lets the HTTP layer serialise them, and watch events share them, without copying.  The public
methods still return deep copies, as the interface promises.

Everything here runs on the single event loop of the local cluster; methods are synchronous and
cheap, watches are async iterators fed synchronously by the writes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import logging
import random
import re
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from collections.abc import Callable, Iterator

from . import errors as E
from .errors import ApiError, FieldError
from .patching import apply_patch
from .resources import (CONVERTERS, DNS_LABEL_NAMES, Registry, ResourceKey, ResourceType,
                        custom_resource_type)
from .schema import BUILTIN_DECODER, DecodeError, StructuralSchema, default_crd, validate_crd
from .selectors import (FieldSelector, LabelSelector, label_key_error, label_value_error,
                        parse_field_selector, parse_label_selector)

log = logging.getLogger(__name__)

PODS: ResourceKey = ("", "pods")
NAMESPACES: ResourceKey = ("", "namespaces")
CRDS: ResourceKey = ("apiextensions.k8s.io", "customresourcedefinitions")
SERVICE_ACCOUNTS: ResourceKey = ("", "serviceaccounts")
_RBAC = "rbac.authorization.k8s.io"
#: Kinds whose names need only be valid URL path segments (kube-apiserver's ValidateRBACName).
PATH_SEGMENT_NAMES: frozenset[ResourceKey] = frozenset(
    {(_RBAC, "roles"), (_RBAC, "rolebindings"), (_RBAC, "clusterroles"),
     (_RBAC, "clusterrolebindings")})

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CONFIG_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                  "characters, '-' or '.', and must start and end with an alphanumeric character "
                  "(e.g. 'example.com', regex used for validation is "
                  "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
              "'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or "
              "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
_CONFIG_KEY_MSG = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
                   "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation "
                   "is '[-._a-zA-Z0-9]+')")


def now_rfc3339(offset_seconds: float = 0) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def deep_copy(value: Any) -> Any:
    """Copy JSON-shaped data; about twice as fast as copy.deepcopy for API objects."""
    kind = type(value)
    if kind is dict:
        return {k: deep_copy(v) for k, v in value.items()}
    if kind is list:
        return [deep_copy(v) for v in value]
    return value


def _meta(obj: dict) -> dict:
    return obj["metadata"]


# --- watch machinery ----------------------------------------------------------------------------

def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Event:
    """One stored change, shared by every watcher (with a cache of its serialised forms)."""

    __slots__ = ("rv", "type", "obj", "prev", "cache")

    def __init__(self, rv: int, etype: str, obj: dict, prev: dict | None) -> None:
        self.rv = rv
        self.type = etype
        self.obj = obj
        self.prev = prev
        self.cache: dict[Any, Any] = {}


@dataclass
class WatchEvent:
    """What a watcher receives: the event type and the (shared, read-only) object."""

    type: str
    object: dict
    rv: int
    source: _Event | None = None


class Watch:
    """A stream of (type, object) changes of one resource type, filtered like a real watch."""

    def __init__(self, store: Store, state: _TypeState, rtype: ResourceType,
                 namespace: str | None, label_selector: LabelSelector,
                 field_selector: FieldSelector, queue_limit: int) -> None:
        self._store = store
        self._state = state
        self.rtype = rtype
        self.namespace = namespace
        self._labels = label_selector
        self._fields = field_selector
        self._queue: deque[WatchEvent] = deque()
        self._waiter: asyncio.Future | None = None
        self._closed = False
        self._queue_limit = queue_limit
        self.overflowed = False
        self.last_rv = store.current_rv
        self._external = store._external_converter(rtype)

    # -- filtering, fed synchronously by the store ------------------------------------------------

    def _matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self._labels.requirements and not self._labels.matches(meta.get("labels")):
            return False
        if self._fields.requirements and not self._fields.matches(obj):
            return False
        return True

    def _offer(self, event: _Event) -> None:
        if self._closed:
            return
        now_match = event.type != "DELETED" and self._matches(event.obj)
        if event.type == "ADDED":
            if not now_match:
                return
            out = WatchEvent("ADDED", event.obj, event.rv, event)
        elif event.type == "MODIFIED":
            was_match = self._matches(event.prev)
            if now_match and was_match:
                out = WatchEvent("MODIFIED", event.obj, event.rv, event)
            elif now_match:
                out = WatchEvent("ADDED", event.obj, event.rv, event)
            elif was_match:
                # Like the watch cache: the previous content, at the new resourceVersion.
                gone = dict(event.prev)  # type: ignore[arg-type]
                gone["metadata"] = {**event.prev["metadata"],  # type: ignore[index]
                                    "resourceVersion": str(event.rv)}
                out = WatchEvent("DELETED", gone, event.rv, None)
            else:
                return
        else:  # DELETED
            if not self._matches(event.obj):
                return
            out = WatchEvent("DELETED", event.obj, event.rv, event)
        self._push(out)

    def _push(self, event: WatchEvent) -> None:
        if len(self._queue) >= self._queue_limit:
            # A consumer this far behind would hold memory for ever; end it like a real server
            # ends a slow watcher. The client re-watches from its last resourceVersion.
            self.overflowed = True
            self._queue.clear()
            self.close()
            return
        self._queue.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- consumption ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        return len(self._queue)

    def bookmark_rv(self) -> str:
        """A resourceVersion this watcher may resume from without missing anything."""
        return str(self._store.current_rv if not self._queue else self.last_rv)

    async def next(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event; None on timeout; raises StopAsyncIteration once closed and drained."""
        if not self._queue:
            if self._closed:
                raise StopAsyncIteration
            if timeout is not None and timeout <= 0:
                return None
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            # A plain timer on the future: far cheaper than wait_for() on a hot watch path.
            timer = loop.call_later(timeout, _wake, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._queue:
                if self._closed:
                    raise StopAsyncIteration
                return None
        event = self._queue.popleft()
        self.last_rv = event.rv
        return event

    def external(self, obj: dict) -> dict:
        """The object as the watched API version presents it (shared; do not mutate)."""
        return self._external(obj) if self._external else obj

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> tuple[str, dict]:
        event = None
        while event is None:
            event = await self.next()
        return event.type, deep_copy(self.external(event.object))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._state.watchers.discard(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _TypeState:
    """Objects, the retained event window and the watchers of one stored resource type."""

    __slots__ = ("objects", "events", "evicted_rv", "watchers", "created_rv")

    def __init__(self, created_rv: int) -> None:
        self.objects: dict[str | None, dict[str, dict]] = {}
        self.events: deque[_Event] = deque()
        self.evicted_rv = 0
        self.watchers: set[Watch] = set()
        self.created_rv = created_rv

    def iter_objects(self, namespace: str | None) -> Iterator[dict]:
        if namespace is not None:
            bucket = self.objects.get(namespace)
            if bucket:
                for name in sorted(bucket):
                    yield bucket[name]
            return
        for ns in sorted(self.objects, key=lambda n: n or ""):
            bucket = self.objects[ns]
            for name in sorted(bucket):
                yield bucket[name]

    def count(self) -> int:
        return sum(len(b) for b in self.objects.values())


#: See ``WriteOptions.admit``.
Admission = Callable[[str, ResourceType, "str | None", "dict | None", dict], None]


@dataclass
class WriteOptions:
    """Per-request knobs of a write (dryRun, fieldValidation) and the warnings it produced.

    ``admit`` is the API server's validating admission for the caller of this request:
    ``admit(operation, rtype, subresource, old, new)`` with operation ``CREATE`` or ``UPDATE``
    and ``old`` None on create, called once the new object is complete and valid, before it is
    stored; it raises an ``ApiError`` to refuse the write. Writes the cluster makes itself
    (scheduler, kubelet, garbage collector) carry none.
    """

    dry_run: bool = False
    field_validation: str = "Warn"  # "Ignore" | "Warn" | "Strict"
    warnings: list[str] = field(default_factory=list)
    admit: Admission | None = None


# --- the store ----------------------------------------------------------------------------------

class Store:
    """In-memory Kubernetes object storage with real API semantics (see module docstring)."""

    def __init__(self, *, watch_window: int = 5000, watcher_queue_limit: int = 100_000,
                 default_namespaces: tuple[str, ...] = DEFAULT_NAMESPACES) -> None:
        self.registry = Registry()
        self.watch_window = max(1, int(watch_window))
        self.watcher_queue_limit = watcher_queue_limit
        self._rv = 0
        self._states: dict[ResourceKey, _TypeState] = {}
        self._schemas: dict[ResourceKey, dict[str, StructuralSchema]] = {}
        self._by_uid: dict[str, tuple[ResourceKey, str | None, str]] = {}
        self._dependents: dict[str, set[tuple[ResourceKey, str | None, str]]] = {}
        self._pending: deque[Callable[[], None]] = deque()
        self._draining = False
        self._service_ips = itertools.count(10)
        for rtype in self.registry.all():
            if rtype.storage is None:
                self._states[rtype.key] = _TypeState(0)
        for name in default_namespaces:
            self.create(NAMESPACES, None, {"metadata": {"name": name}})

    # -- small helpers ---------------------------------------------------------------------------

    @property
    def current_rv(self) -> int:
        return self._rv

    def resource_version(self) -> str:
        return str(self._rv)

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def resource_type(self, key: ResourceKey) -> ResourceType:
        rtype = self.registry.get(key)
        if rtype is None:
            group, plural = key
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {"group": group, "kind": plural} if group else {"kind": plural})
        return rtype

    def _state(self, rtype: ResourceType) -> _TypeState:
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

    def _lookup(self, ref: tuple[ResourceKey, str | None, str]) -> dict | None:
        state = self._states.get(ref[0])
        if state is None:
            return None
        bucket = state.objects.get(ref[1])
        return bucket.get(ref[2]) if bucket else None

    def _rtype_for_storage(self, storage_key: ResourceKey) -> ResourceType:
        return self.registry.get(storage_key)  # type: ignore[return-value]

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
             field_selector: str | None = None) -> tuple[list[dict], str]:
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
                  field_selector: str | None = None) -> tuple[list[dict], str]:
        labels = parse_label_selector(label_selector)
        fields = self._field_selector(rtype, field_selector)
        state = self._state(rtype)
        ns = namespace if rtype.namespaced else None
        items = []
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
                start = int(resource_version)  # type: ignore[arg-type]
            except ValueError:
                raise E.bad_request(f"invalid resource version: {resource_version!r}") from None
            if start < state.evicted_rv:
                oldest = state.events[0].rv if state.events else self._rv
                raise E.gone(f"too old resource version: {start} ({oldest - 1})")
        watcher = Watch(self, state, rtype, ns, labels, fields, self.watcher_queue_limit)
        if send_initial:
            for obj in state.iter_objects(ns):
                if watcher._matches(obj):
                    watcher._push(WatchEvent("ADDED", obj, int(obj["metadata"]["resourceVersion"])))
            watcher.last_rv = self._rv
        if start is not None:
            replay = []
            for event in reversed(state.events):
                if event.rv <= start:
                    break
                replay.append(event)
            for event in reversed(replay):
                watcher._offer(event)
            watcher.last_rv = start
        state.watchers.add(watcher)
        return watcher

    def watcher_count(self) -> int:
        return sum(len(s.watchers) for s in self._states.values())

    # -- internal write plumbing -------------------------------------------------------------

    def _emit(self, state: _TypeState, etype: str, obj: dict, prev: dict | None) -> None:
        event = _Event(int(obj["metadata"]["resourceVersion"]), etype, obj, prev)
        events = state.events
        if len(events) >= self.watch_window:
            state.evicted_rv = events.popleft().rv
        events.append(event)
        for watcher in list(state.watchers):
            watcher._offer(event)

    def _put(self, rtype: ResourceType, obj: dict, prev: dict | None) -> None:
        state = self._state(rtype)
        meta = obj["metadata"]
        ns = meta.get("namespace") if rtype.namespaced else None
        state.objects.setdefault(ns, {})[meta["name"]] = obj
        ref = (rtype.storage_key, ns, meta["name"])
        self._by_uid[meta["uid"]] = ref
        old_owners = {r.get("uid") for r in (prev or {}).get("metadata", {}).get(
            "ownerReferences") or []}
        new_owners = {r.get("uid") for r in meta.get("ownerReferences") or []}
        for uid in old_owners - new_owners:
            deps = self._dependents.get(uid)
            if deps:
                deps.discard(ref)
                if not deps:
                    del self._dependents[uid]
        for uid in new_owners - old_owners:
            self._dependents.setdefault(uid, set()).add(ref)
        self._emit(state, "ADDED" if prev is None else "MODIFIED", obj, prev)

    def _remove(self, rtype: ResourceType, obj: dict) -> dict:
        """Take ``obj`` out of storage, emit DELETED and queue the follow-up work (GC, teardown)."""
        state = self._state(rtype)
        meta = obj["metadata"]
        ns = meta.get("namespace") if rtype.namespaced else None
        bucket = state.objects.get(ns)
        if bucket is not None:
            bucket.pop(meta["name"], None)
            if not bucket:
                del state.objects[ns]
        ref = (rtype.storage_key, ns, meta["name"])
        self._by_uid.pop(meta["uid"], None)
        for owner in meta.get("ownerReferences") or []:
            deps = self._dependents.get(owner.get("uid"))
            if deps:
                deps.discard(ref)
                if not deps:
                    del self._dependents[owner.get("uid")]
        gone = dict(obj)
        gone["metadata"] = {**meta, "resourceVersion": str(self._next_rv())}
        self._emit(state, "DELETED", gone, obj)
        uid = meta["uid"]
        self._pending.append(lambda: self._collect_dependents(uid))
        for owner in meta.get("ownerReferences") or []:
            owner_uid = owner.get("uid")
            self._pending.append(lambda u=owner_uid: self._check_foreground(u))
        if ns is not None:
            self._pending.append(lambda n=ns: self._check_namespace(n))
        if rtype.is_custom:
            crd_name = rtype.crd_name
            self._pending.append(lambda c=crd_name: self._check_crd(c))
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

    # -- metadata validation -------------------------------------------------------------------

    def _validate_meta(self, rtype: ResourceType, meta: dict, errs: list[FieldError]) -> None:
        name = meta.get("name")
        if isinstance(name, str) and name:
            if rtype.key in DNS_LABEL_NAMES:
                if len(name) > 63 or not _DNS_LABEL_RE.match(name):
                    errs.append(E.invalid("metadata.name", name, _LABEL_MSG))
            elif rtype.key in PATH_SEGMENT_NAMES:
                # RBAC names are path segments (system:discovery, system:serviceaccount:...).
                if name in (".", ".."):
                    errs.append(E.invalid("metadata.name", name, f"may not be '{name}'"))
                for illegal in ("/", "%"):
                    if illegal in name:
                        errs.append(E.invalid("metadata.name", name,
                                              f"may not contain '{illegal}'"))
            elif rtype.storage_key != ("", "events"):
                if len(name) > 253 or not _DNS_SUBDOMAIN_RE.match(name):
                    errs.append(E.invalid("metadata.name", name, _SUBDOMAIN_MSG))
            elif "/" in name or name in (".", ".."):
                errs.append(E.invalid("metadata.name", name, "may not contain '/'"))
        for field_name in ("labels", "annotations"):
            values = meta.get(field_name)
            if values is None:
                continue
            if not isinstance(values, dict):
                errs.append(E.invalid(f"metadata.{field_name}", values, "must be a map"))
                continue
            for key, value in values.items():
                why = label_key_error(key)
                if why:
                    errs.append(E.invalid(f"metadata.{field_name}", key, why))
                if not isinstance(value, str):
                    errs.append(E.invalid(f"metadata.{field_name}", value, "must be a string"))
                elif field_name == "labels":
                    why = label_value_error(value)
                    if why:
                        errs.append(E.invalid("metadata.labels", value, why))
        finalizers = meta.get("finalizers")
        if finalizers is not None:
            if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
                errs.append(E.invalid("metadata.finalizers", finalizers,
                                      "must be a list of strings"))
            else:
                for index, fin in enumerate(finalizers):
                    if "/" not in fin and fin not in (FOREGROUND, ORPHAN, "kubernetes"):
                        errs.append(E.invalid(f"metadata.finalizers[{index}]", fin,
                                              "name is neither a standard finalizer name nor is it "
                                              "fully qualified"))
        owners = meta.get("ownerReferences")
        if owners is not None:
            if not isinstance(owners, list):
                errs.append(E.invalid("metadata.ownerReferences", owners, "must be a list"))
            else:
                controllers = 0
                for index, ref in enumerate(owners):
                    path = f"metadata.ownerReferences[{index}]"
                    if not isinstance(ref, dict):
                        errs.append(E.invalid(path, ref, "must be an object"))
                        continue
                    for req in ("apiVersion", "kind", "name", "uid"):
                        if not ref.get(req):
                            errs.append(E.invalid(f"{path}.{req}", ref.get(req, ""),
                                                  f"{req} must not be empty"))
                    if ref.get("controller"):
                        controllers += 1
                if controllers > 1:
                    errs.append(E.invalid("metadata.ownerReferences", owners,
                                          "Only one reference can have Controller set to true"))

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
        self._prune_builtin(rtype, obj, opts)
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
                name = generate + "".join(random.choice(_NAME_CHARS) for _ in range(5))
                meta["name"] = name
            else:
                errs.append(E.required("metadata.name", "name or generateName is required"))
        elif not isinstance(name, str):
            errs.append(E.invalid("metadata.name", name, "must be a string"))
        obj["apiVersion"] = "v1" if rtype.storage else rtype.api_version
        obj["kind"] = rtype.kind
        self._validate_meta(rtype, meta, errs)
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
        meta["resourceVersion"] = str(self._next_rv())
        self._put(rtype, obj, None)
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
            self._pending.append(lambda: self._ensure_default_sa(meta["name"]))
        elif key == CRDS:
            self._register_crd(obj)
        owners = meta.get("ownerReferences") or []
        if owners:
            uid = meta["uid"]
            self._pending.append(lambda: self._collect_if_orphaned(uid))

    def _ensure_default_sa(self, ns: str) -> None:
        bucket = self._states[SERVICE_ACCOUNTS].objects.get(ns) or {}
        if "default" not in bucket:
            self.create_ref(self.registry.get(SERVICE_ACCOUNTS),  # type: ignore[arg-type]
                            ns, {"metadata": {"name": "default"}})

    # -- kind-specific preparation -----------------------------------------------------------------

    def _prepare_create(self, rtype: ResourceType, obj: dict, opts: WriteOptions) -> None:
        key = rtype.storage_key
        errs: list[FieldError] = []
        if key == PODS:
            _default_pod(obj)
            _validate_pod(obj, errs)
            obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj["spec"])}
        elif key == ("", "secrets"):
            _prepare_secret(obj, errs)
        elif key == ("", "configmaps"):
            _validate_config_keys(obj, "data", errs)
            _validate_config_keys(obj, "binaryData", errs)
        elif key == NAMESPACES:
            spec = obj.setdefault("spec", {})
            spec["finalizers"] = ["kubernetes"]
            obj["status"] = {"phase": "Active"}
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif key == ("", "services"):
            self._default_service(obj, errs)
            obj["status"] = {"loadBalancer": {}}
        elif key == CRDS:
            self._prepare_crd(obj, None, errs)
        elif rtype.key == ("events.k8s.io", "events"):
            _validate_events_v1(obj, errs)
        elif rtype.is_custom:
            if rtype.status_subresource:
                obj.pop("status", None)
            self._prepare_custom(rtype, obj, opts, errs)
        if errs:
            raise E.invalid_object(rtype.qualified_kind, obj["metadata"]["name"], errs)

    def _prune_builtin(self, rtype: ResourceType, obj: dict, opts: WriteOptions) -> None:
        """Decode like the Go types would: wrong types are a 400, unknown fields are dropped."""
        try:
            if rtype.model:
                pruned = BUILTIN_DECODER.decode(rtype.model, obj)
            else:
                pruned = [f"metadata.{p}" for p in BUILTIN_DECODER.decode(
                    "V1ObjectMeta", obj.get("metadata") or {})]
        except DecodeError as exc:
            raise E.bad_request(f'{rtype.kind} in version "{rtype.version}" cannot be handled '
                                f"as a {rtype.kind}: {exc}") from None
        if not pruned:
            return
        if opts.field_validation == "Strict":
            raise E.bad_request(f'{rtype.kind} in version "{rtype.version}" cannot be handled as a '
                                f"{rtype.kind}: strict decoding error: " + ", ".join(
                                    f'unknown field "{p}"' for p in pruned))
        if opts.field_validation == "Warn":
            opts.warnings.extend(f'unknown field "{p}"' for p in pruned)

    def _prepare_custom(self, rtype: ResourceType, obj: dict, opts: WriteOptions,
                        errs: list[FieldError]) -> None:
        api_version = obj.get("apiVersion") or rtype.api_version
        version = api_version.rpartition("/")[2]
        schemas = self._schemas.get(rtype.key) or {}
        schema = schemas.get(version) or schemas.get(rtype.version)
        if version not in schemas:
            version = rtype.version
        obj["apiVersion"] = f"{rtype.group}/{version}"
        if schema is None:
            return
        pruned = schema.prune(obj)
        if pruned:
            if opts.field_validation == "Strict":
                raise E.bad_request("strict decoding error: " + ", ".join(
                    f'unknown field "{p}"' for p in pruned))
            if opts.field_validation == "Warn":
                opts.warnings.extend(f'unknown field "{p}"' for p in pruned)
        schema.default(obj)
        errs.extend(schema.validate(obj))

    def _default_service(self, obj: dict, errs: list[FieldError]) -> None:
        spec = obj.setdefault("spec", {})
        if not isinstance(spec, dict):
            errs.append(E.invalid("spec", spec, "must be an object"))
            return
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName":
            if not spec.get("clusterIP"):
                n = next(self._service_ips)
                spec["clusterIP"] = f"10.96.{n // 250 % 250}.{n % 250 + 1}"
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        for index, port in enumerate(spec.get("ports") or []):
            if not isinstance(port, dict) or not isinstance(port.get("port"), int):
                errs.append(E.required(f"spec.ports[{index}].port"))
                continue
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port["port"])

    def _prepare_crd(self, obj: dict, old: dict | None, errs: list[FieldError]) -> None:
        default_crd(obj)
        errs.extend(validate_crd(obj))
        if errs:
            return
        spec = obj["spec"]
        if old is not None:
            old_spec = old["spec"]
            if spec.get("group") != old_spec.get("group"):
                errs.append(E.invalid("spec.group", spec.get("group"), "field is immutable"))
            if spec["names"].get("plural") != old_spec["names"].get("plural"):
                errs.append(E.invalid("spec.names.plural", spec["names"].get("plural"),
                                      "field is immutable"))
            if spec.get("scope") != old_spec.get("scope"):
                errs.append(E.invalid("spec.scope", spec.get("scope"), "field is immutable"))
        conflict = self._crd_name_conflict(obj)
        accepted = dict(spec["names"])
        storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
        stored = list((old or {}).get("status", {}).get("storedVersions") or [])
        if storage not in stored:
            stored.append(storage)
        stamp = now_rfc3339()
        obj["status"] = {
            "acceptedNames": accepted if not conflict else {"kind": "", "plural": ""},
            "conditions": [
                {"type": "NamesAccepted", "status": "False" if conflict else "True",
                 "reason": "NameConflict" if conflict else "NoConflicts",
                 "message": conflict or "no conflicts found", "lastTransitionTime": stamp},
                {"type": "Established", "status": "False" if conflict else "True",
                 "reason": "NotAccepted" if conflict else "InitialNamesAccepted",
                 "message": "not all names are accepted" if conflict else
                 "the initial names have been accepted", "lastTransitionTime": stamp},
            ],
            "storedVersions": stored,
        }

    def _crd_name_conflict(self, crd: dict) -> str:
        spec = crd["spec"]
        group, names = spec["group"], spec["names"]
        for rtype in self.registry.all():
            if rtype.group != group or rtype.crd_name == crd["metadata"]["name"]:
                continue
            for attr in ("plural", "singular", "kind"):
                mine = names.get(attr)
                if mine and mine in (rtype.plural, rtype.singular, rtype.kind) and attr != "kind":
                    return f'"{mine}" is already in use'
                if attr == "kind" and mine == rtype.kind:
                    return f'"{mine}" is already in use'
        return ""

    def _register_crd(self, crd: dict) -> None:
        if any(c["type"] == "Established" and c["status"] != "True"
               for c in crd.get("status", {}).get("conditions", [])):
            return
        rtype = custom_resource_type(crd)
        versions = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served", True)}
        schemas = {}
        for name, version in versions.items():
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            schemas[name] = StructuralSchema(schema)
        if not versions:
            self.registry.remove(rtype.key)
            return
        self.registry.add(rtype, versions)
        self._schemas[rtype.key] = schemas
        if rtype.key not in self._states:
            self._states[rtype.key] = _TypeState(self._rv)

    def _unregister_crd(self, crd: dict) -> None:
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        rtype = self.registry.get(key)
        if rtype is None or rtype.crd_name != crd["metadata"]["name"]:
            return
        self.registry.remove(key)
        self._schemas.pop(key, None)
        state = self._states.pop(key, None)
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
        self._prune_builtin(rtype, new, opts)
        if subresource == "status":
            status = new.get("status")
            new = dict(old)
            new["metadata"] = dict(old_meta)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
            if rtype.is_custom:
                errs = self._custom_status_errors(rtype, new)
                if errs:
                    raise E.invalid_object(rtype.qualified_kind, name, errs)
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
        self._validate_meta(rtype, meta, errs)
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
        if rtype.has_generation and _spec_changed(old, new):
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
            return self._remove(rtype, new)
        meta["resourceVersion"] = str(self._next_rv())
        self._put(rtype, new, old)
        if rtype.storage_key == CRDS:
            self._register_crd(new)
        if meta.get("ownerReferences") != old_meta.get("ownerReferences") and meta.get(
                "ownerReferences"):
            uid = meta["uid"]
            self._pending.append(lambda: self._collect_if_orphaned(uid))
        if FOREGROUND in (meta.get("finalizers") or []):
            uid = meta["uid"]
            self._pending.append(lambda: self._check_foreground(uid))
        return new

    def _custom_status_errors(self, rtype: ResourceType, obj: dict) -> list[FieldError]:
        version = (obj.get("apiVersion") or "").rpartition("/")[2]
        schemas = self._schemas.get(rtype.key) or {}
        schema = schemas.get(version) or schemas.get(rtype.version)
        if schema is None:
            return []
        work = deep_copy(obj)
        schema.prune(work)
        schema.default(work)
        if "status" in work:
            obj["status"] = work["status"]
        return [e for e in schema.validate(work) if e.field.startswith("status")]

    def _prepare_update(self, rtype: ResourceType, old: dict, new: dict,
                        opts: WriteOptions) -> None:
        key = rtype.storage_key
        errs: list[FieldError] = []
        name = old["metadata"]["name"]
        if key == PODS:
            _default_pod(new)
            _validate_pod(new, errs)
            if not errs:
                _validate_pod_update(old, new, errs)
        elif key == ("", "secrets"):
            _prepare_secret(new, errs)
            if old.get("type") != new.get("type"):
                errs.append(E.invalid("type", new.get("type"), "field is immutable"))
            _check_immutable_data(old, new, errs)
        elif key == ("", "configmaps"):
            _validate_config_keys(new, "data", errs)
            _validate_config_keys(new, "binaryData", errs)
            _check_immutable_data(old, new, errs)
        elif key == NAMESPACES:
            new["spec"] = old.get("spec", {})
            labels = new["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = name
        elif key == ("", "services"):
            self._default_service(new, errs)
            old_ip = (old.get("spec") or {}).get("clusterIP")
            if old_ip and (new.get("spec") or {}).get("clusterIP") != old_ip:
                errs.append(E.invalid("spec.clusterIP", new["spec"].get("clusterIP"),
                                      "field is immutable"))
        elif key == CRDS:
            self._prepare_crd(new, old, errs)
        elif rtype.key == ("events.k8s.io", "events"):
            pass
        elif rtype.is_custom:
            self._prepare_custom(rtype, new, opts, errs)
        if errs:
            raise E.invalid_object(rtype.qualified_kind, name, errs)

    def bind_ref(self, rtype: ResourceType, namespace: str, name: str, node_name: str,
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
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        self._put(rtype, new, old)
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
        result = self._delete(rtype, old, grace_period_seconds, propagation_policy or "")
        self._drain()
        return result

    def _delete(self, rtype: ResourceType, old: dict, grace: int | None, propagation: str) -> dict:
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
            new["metadata"]["resourceVersion"] = str(self._next_rv())
            self._put(rtype, new, old)
            name = old_meta["name"]
            self._pending.append(lambda: self._check_namespace(name))
            return new
        if key == CRDS and not old_meta.get("deletionTimestamp"):
            finalizers.append(CRD_CLEANUP)
            name = old_meta["name"]
            self._pending.append(lambda: self._check_crd(name))
        if propagation == "Orphan" or (ORPHAN in finalizers):
            self._orphan_dependents(old_meta["uid"])
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
                    return self._remove(rtype, new)
                meta["resourceVersion"] = str(self._next_rv())
                self._put(rtype, new, old)
                if FOREGROUND in finalizers:
                    uid = meta["uid"]
                    self._pending.append(lambda: self._check_foreground(uid))
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
            meta["resourceVersion"] = str(self._next_rv())
            self._put(rtype, new, old)
            if FOREGROUND in finalizers:
                uid = meta["uid"]
                self._pending.append(lambda: self._check_foreground(uid))
            return new
        return self._remove(rtype, old)

    # -- garbage collection ------------------------------------------------------------------------

    def _owners_alive(self, meta: dict, ignore_uid: str | None = None) -> bool:
        for ref in meta.get("ownerReferences") or []:
            uid = ref.get("uid")
            if uid == ignore_uid:
                continue
            where = self._by_uid.get(uid)
            if where is None:
                continue
            owner = self._lookup(where)
            if owner is not None:
                return True
        return False

    def _dependent_objects(self, owner_uid: str) -> list[tuple[ResourceType, dict]]:
        found = []
        for ref in sorted(self._dependents.get(owner_uid, ()), key=lambda r: (r[0], r[1] or "",
                                                                                r[2])):
            obj = self._lookup(ref)
            if obj is not None:
                found.append((self._rtype_for_storage(ref[0]), obj))
        return found

    def _collect_dependents(self, owner_uid: str) -> None:
        """Background GC: delete dependents of a removed owner that have no owner left."""
        for rtype, obj in self._dependent_objects(owner_uid):
            meta = obj["metadata"]
            if meta.get("deletionTimestamp") or self._owners_alive(meta, owner_uid):
                continue
            self._delete(rtype, obj, None, "Background")

    def _collect_if_orphaned(self, uid: str) -> None:
        """An object created (or re-owned) after its owners are gone is garbage, as in real GC."""
        where = self._by_uid.get(uid)
        obj = self._lookup(where) if where else None
        if obj is None:
            return
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") or not meta.get("ownerReferences"):
            return
        if not self._owners_alive(meta):
            self._delete(self._rtype_for_storage(where[0]), obj, None,  # type: ignore[index]
                         "Background")

    def _orphan_dependents(self, owner_uid: str) -> None:
        for rtype, obj in self._dependent_objects(owner_uid):
            new = deep_copy(obj)
            refs = [r for r in new["metadata"].get("ownerReferences") or []
                    if r.get("uid") != owner_uid]
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                new["metadata"].pop("ownerReferences", None)
            new["metadata"]["resourceVersion"] = str(self._next_rv())
            self._put(rtype, new, obj)

    def _check_foreground(self, owner_uid: str | None) -> None:
        """Foreground deletion: delete dependents, drop the finalizer once blockers are gone."""
        where = self._by_uid.get(owner_uid or "")
        owner = self._lookup(where) if where else None
        if owner is None or FOREGROUND not in (owner["metadata"].get("finalizers") or []):
            return
        blocking = False
        for rtype, obj in self._dependent_objects(owner_uid):  # type: ignore[arg-type]
            meta = obj["metadata"]
            if not meta.get("deletionTimestamp") and not self._owners_alive_except_deleting(meta):
                obj = self._delete(rtype, obj, None, "Foreground")
                if self._lookup((rtype.storage_key, meta.get("namespace") if rtype.namespaced
                                 else None, meta["name"])) is None:
                    continue
            if any(r.get("uid") == owner_uid and r.get("blockOwnerDeletion")
                   for r in obj["metadata"].get("ownerReferences") or []):
                blocking = True
        if blocking:
            return
        owner = self._lookup(where)  # type: ignore[arg-type]
        if owner is None:
            return
        rtype = self._rtype_for_storage(where[0])  # type: ignore[index]
        new = deep_copy(owner)
        finalizers = [f for f in new["metadata"].get("finalizers") or [] if f != FOREGROUND]
        if finalizers:
            new["metadata"]["finalizers"] = finalizers
        else:
            new["metadata"].pop("finalizers", None)
        if not finalizers and new["metadata"].get("deletionGracePeriodSeconds") == 0:
            self._remove(rtype, new)
            return
        new["metadata"]["resourceVersion"] = str(self._next_rv())
        self._put(rtype, new, owner)

    def _owners_alive_except_deleting(self, meta: dict) -> bool:
        """True if some owner exists that is not itself waiting for dependents (real GC rule)."""
        for ref in meta.get("ownerReferences") or []:
            where = self._by_uid.get(ref.get("uid"))
            owner = self._lookup(where) if where else None
            if owner is not None and FOREGROUND not in (owner["metadata"].get("finalizers") or []):
                return True
        return False

    def _check_namespace(self, ns: str) -> None:
        """Namespace controller: empty a terminating namespace, then remove it."""
        bucket = self._states[NAMESPACES].objects.get(None) or {}
        namespace = bucket.get(ns)
        if namespace is None or not namespace["metadata"].get("deletionTimestamp"):
            return
        remaining = False
        for key, state in list(self._states.items()):
            objects = state.objects.get(ns)
            if not objects:
                continue
            rtype = self._rtype_for_storage(key)
            if rtype is None or not rtype.namespaced:
                continue
            for obj in list(objects.values()):
                if not obj["metadata"].get("deletionTimestamp"):
                    self._delete(rtype, obj, None, "Background")
            if state.objects.get(ns):
                remaining = True
        if remaining:
            return
        namespace = bucket.get(ns)
        if namespace is None:
            return
        rtype = self.registry.get(NAMESPACES)
        final = deep_copy(namespace)
        final.setdefault("spec", {})["finalizers"] = []
        self._remove(rtype, final)  # type: ignore[arg-type]

    def _check_crd(self, crd_name: str) -> None:
        """CRD finalizer: delete every custom object of a deleted CRD, then remove the CRD."""
        bucket = self._states[CRDS].objects.get(None) or {}
        crd = bucket.get(crd_name)
        if crd is None or not crd["metadata"].get("deletionTimestamp"):
            return
        spec = crd["spec"]
        key = (spec["group"], spec["names"]["plural"])
        rtype = self.registry.get(key)
        state = self._states.get(key)
        if rtype is not None and state is not None and rtype.crd_name == crd_name:
            for ns in list(state.objects):
                for obj in list((state.objects.get(ns) or {}).values()):
                    if not obj["metadata"].get("deletionTimestamp"):
                        self._delete(rtype, obj, None, "Background")
            if state.count():
                return
        crd = bucket.get(crd_name)
        if crd is None:
            return
        crds = self.registry.get(CRDS)
        new = deep_copy(crd)
        finalizers = [f for f in new["metadata"].get("finalizers") or [] if f != CRD_CLEANUP]
        if finalizers:
            new["metadata"]["finalizers"] = finalizers
            new["metadata"]["resourceVersion"] = str(self._next_rv())
            self._put(crds, new, crd)  # type: ignore[arg-type]
            return
        new["metadata"].pop("finalizers", None)
        self._remove(crds, new)  # type: ignore[arg-type]

    # -- bulk ------------------------------------------------------------------------------------

    def delete_collection_refs(self, rtype: ResourceType, namespace: str | None,
                               label_selector: str | None = None,
                               field_selector: str | None = None,
                               grace_period_seconds: int | None = None,
                               propagation_policy: str | None = None,
                               options: WriteOptions | None = None) -> list[dict]:
        items, _ = self.list_refs(rtype, namespace, label_selector, field_selector)
        deleted = []
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


# --- built-in kind rules -----------------------------------------------------------------------

def _spec_changed(old: dict, new: dict) -> bool:
    skip = ("metadata", "status", "apiVersion", "kind")
    keys = (set(old) | set(new)) - set(skip)
    return any(old.get(k) != new.get(k) for k in keys)


def _default_container(container: dict, index: int, path: str) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    image = container.get("image") or ""
    if "imagePullPolicy" not in container and isinstance(image, str):
        tag = image.rsplit("/", 1)[-1]
        latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
        container["imagePullPolicy"] = "Always" if latest else "IfNotPresent"
    resources = container.setdefault("resources", {})
    if isinstance(resources, dict) and isinstance(resources.get("limits"), dict):
        requests = resources.setdefault("requests", {})
        if isinstance(requests, dict):
            for res, qty in resources["limits"].items():
                requests.setdefault(res, qty)
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _default_pod(pod: dict) -> None:
    spec = pod.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    if spec.get("serviceAccount") and not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = spec["serviceAccount"]
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    for field_name in ("containers", "initContainers"):
        for index, container in enumerate(spec.get(field_name) or []):
            if isinstance(container, dict):
                _default_container(container, index, f"spec.{field_name}[{index}]")


def _validate_pod(pod: dict, errs: list[FieldError]) -> None:
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        errs.append(E.required("spec"))
        return
    containers = spec.get("containers")
    if not containers:
        errs.append(E.required("spec.containers"))
    names: set[str] = set()
    for field_name in ("initContainers", "containers"):
        items = spec.get(field_name) or []
        if not isinstance(items, list):
            errs.append(E.invalid(f"spec.{field_name}", items, "must be a list"))
            continue
        for index, container in enumerate(items):
            path = f"spec.{field_name}[{index}]"
            if not isinstance(container, dict):
                errs.append(E.invalid(path, container, "must be an object"))
                continue
            name = container.get("name")
            if not name:
                errs.append(E.required(f"{path}.name"))
            elif not isinstance(name, str) or len(name) > 63 or not _DNS_LABEL_RE.match(name):
                errs.append(E.invalid(f"{path}.name", name, _LABEL_MSG))
            elif name in names:
                errs.append(FieldError("Duplicate", f"{path}.name", name))
            else:
                names.add(name)
            if not container.get("image"):
                errs.append(E.required(f"{path}.image"))
            env_names: set[str] = set()
            for eindex, env in enumerate(container.get("env") or []):
                if not isinstance(env, dict) or not env.get("name"):
                    errs.append(E.required(f"{path}.env[{eindex}].name"))
                elif not isinstance(env.get("value", ""), str):
                    errs.append(E.invalid(f"{path}.env[{eindex}].value", env.get("value"),
                                          "must be a string"))
                else:
                    env_names.add(env["name"])
    policy = spec.get("restartPolicy")
    if policy not in ("Always", "OnFailure", "Never"):
        errs.append(E.not_supported("spec.restartPolicy", policy, ["Always", "OnFailure", "Never"]))
    volumes: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        if not isinstance(volume, dict) or not volume.get("name"):
            errs.append(E.required(f"spec.volumes[{index}].name"))
        elif volume["name"] in volumes:
            errs.append(FieldError("Duplicate", f"spec.volumes[{index}].name", volume["name"]))
        else:
            volumes.add(volume["name"])
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 0):
        errs.append(E.invalid("spec.terminationGracePeriodSeconds", grace,
                              "must be greater than or equal to 0"))


_POD_MUTABLE_MSG = ("pod updates may not change fields other than `spec.containers[*].image`,"
                    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                    "`spec.tolerations` (only additions to existing tolerations),"
                    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                    "previously negative)")


def _validate_pod_update(old: dict, new: dict, errs: list[FieldError]) -> None:
    def masked(spec: dict) -> dict:
        out = dict(spec)
        for key in ("activeDeadlineSeconds", "tolerations", "schedulingGates", "nodeName",
                    "terminationGracePeriodSeconds"):
            out.pop(key, None)
        for key in ("containers", "initContainers"):
            out[key] = [{k: v for k, v in c.items() if k not in ("image", "resources")}
                        if isinstance(c, dict) else c for c in spec.get(key) or []]
        return out

    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if masked(old_spec) != masked(new_spec):
        errs.append(E.forbidden("spec", _POD_MUTABLE_MSG))
    old_node = old_spec.get("nodeName")
    if old_node and new_spec.get("nodeName") != old_node:
        errs.append(E.forbidden("spec", _POD_MUTABLE_MSG))


def _qos_class(spec: dict) -> str:
    containers = [c for c in (spec.get("containers") or []) if isinstance(c, dict)]
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for res in ("cpu", "memory"):
            if res in requests or res in limits:
                any_set = True
            if res not in limits or str(requests.get(res, limits.get(res))) != str(limits[res]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _validate_config_keys(obj: dict, field_name: str, errs: list[FieldError]) -> None:
    values = obj.get(field_name)
    if values is None:
        return
    if not isinstance(values, dict):
        errs.append(E.invalid(field_name, values, "must be a map of strings"))
        return
    for key, value in values.items():
        if len(key) > 253 or not _CONFIG_KEY_RE.match(key):
            errs.append(E.invalid(f"{field_name}[{key}]", key, _CONFIG_KEY_MSG))
        if not isinstance(value, str):
            errs.append(E.invalid(f"{field_name}[{key}]", value, "must be a string"))


def _prepare_secret(obj: dict, errs: list[FieldError]) -> None:
    string_data = obj.pop("stringData", None)
    if string_data:
        if not isinstance(string_data, dict):
            errs.append(E.invalid("stringData", string_data, "must be a map of strings"))
        else:
            data = obj.setdefault("data", {}) or {}
            obj["data"] = data
            for key, value in string_data.items():
                if not isinstance(value, str):
                    errs.append(E.invalid(f"stringData[{key}]", value, "must be a string"))
                    continue
                data[key] = base64.b64encode(value.encode()).decode()
    obj.setdefault("type", "Opaque")
    data = obj.get("data")
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str):
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise E.bad_request(f"Secret in version \"v1\" cannot be handled as a Secret: "
                                        f"illegal base64 data at input for key {key!r}") from None
    _validate_config_keys(obj, "data", errs)


def _check_immutable_data(old: dict, new: dict, errs: list[FieldError]) -> None:
    if old.get("immutable"):
        if not new.get("immutable"):
            errs.append(E.forbidden("immutable", "field is immutable when `immutable` is set"))
        for field_name in ("data", "binaryData"):
            if old.get(field_name) != new.get(field_name):
                errs.append(E.forbidden(field_name, "field is immutable when `immutable` is set"))


def _validate_events_v1(obj: dict, errs: list[FieldError]) -> None:
    # obj is already in the core form here; names in errors use the events.k8s.io fields.
    if not obj.get("eventTime"):
        errs.append(E.required("eventTime"))
    if not obj.get("reportingComponent"):
        errs.append(E.required("reportingController"))
    if not obj.get("reportingInstance"):
        errs.append(E.required("reportingInstance"))
    if not obj.get("action"):
        errs.append(E.required("action"))
    if obj.get("type") not in ("Normal", "Warning"):
        errs.append(E.not_supported("type", obj.get("type"), ["Normal", "Warning"]))
