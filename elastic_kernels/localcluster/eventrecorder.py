"""Core v1 Events written the way client-go's event recorder writes them.

Repeated identical events (same object, component, reason and message) bump ``count`` and
``lastTimestamp`` of the existing Event instead of creating a new one, so a retrying scheduler or
a crash-looping container does not flood the store (the recorder's event correlator does the same).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from datetime import datetime, timezone
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

EVENT_KEY = ("", "events")
_MAX_TRACKED = 4096
_counter = itertools.count()


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def object_reference(obj: Mapping[str, Any], field_path: str | None = None) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    ref = {
        "kind": obj.get("kind") or "Pod",
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "apiVersion": obj.get("apiVersion") or "v1",
        "resourceVersion": meta.get("resourceVersion"),
    }
    if field_path:
        ref["fieldPath"] = field_path
    return {k: v for k, v in ref.items() if v is not None}


class EventRecorder:
    """Records Events for one component (``default-scheduler``, ``kubelet``)."""

    def __init__(self, store: Store, component: str, instance: str | None = None) -> None:
        self.store = store
        self.component = component
        self.instance = instance or f"{component}-localcluster"
        # aggregation key -> (event name, namespace, count)
        self._seen: OrderedDict[tuple, tuple[str, str, int]] = OrderedDict()

    def record(self, obj: Mapping[str, Any], event_type: str, reason: str, message: str, *,
               host: str | None = None, field_path: str | None = None) -> None:
        """Create or bump an Event; never raises (events are best effort, as in real)."""
        try:
            self._record(obj, event_type, reason, message, host, field_path)
        except Exception as e:  # an Event must never break scheduling or a pod's lifecycle
            log.debug("could not record event %s for %s: %s", reason,
                      (obj.get("metadata") or {}).get("name"), e)

    def _record(self, obj: Mapping[str, Any], event_type: str, reason: str, message: str,
                host: str | None, field_path: str | None) -> None:
        from .errors import ApiError

        ref = object_reference(obj, field_path)
        namespace = ref.get("namespace") or "default"
        key = (ref.get("uid"), field_path, event_type, reason, message, host)
        now = now_rfc3339()
        seen = self._seen.get(key)
        if seen is not None:
            name, ns, count = seen
            try:
                self.store.patch(EVENT_KEY, ns, name,
                                 {"count": count + 1, "lastTimestamp": now}, "merge")
                self._seen[key] = (name, ns, count + 1)
                self._seen.move_to_end(key)
                return
            except ApiError as e:
                if e.code != 404:
                    raise
                # The Event was deleted (TTL, kubectl delete): start a new one.
        source: dict[str, str] = {"component": self.component}
        if host:
            source["host"] = host
        name = f"{ref.get('name', 'unknown')}.{time.time_ns() + next(_counter):x}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": event_type,
            "eventTime": None,
            "reportingComponent": self.component,
            "reportingInstance": host or self.instance,
        }
        self.store.create(EVENT_KEY, namespace, event)
        self._seen[key] = (name, namespace, 1)
        while len(self._seen) > _MAX_TRACKED:
            self._seen.popitem(last=False)

    def forget(self, uid: str | None) -> None:
        """Drop aggregation state of an object that is gone."""
        if not uid:
            return
        for key in [k for k in self._seen if k[0] == uid]:
            del self._seen[key]
