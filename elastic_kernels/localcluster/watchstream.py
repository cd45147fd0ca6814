"""The wire form of a watch: one JSON event per line, bookmarks, and in-band errors.

A watch response is a stream of ``{"type": ..., "object": ...}`` lines. The JSON line of a stored
change is the same for every watcher of one API version, so it is made once and cached on the
shared event (``StoredEvent.cache``); table watches (``kubectl get -w``) get one Table per event.
Bookmarks carry only a resourceVersion to resume from, and the one that ends the initial events
of ``sendInitialEvents`` is annotated ``k8s.io/initial-events-end``. Used by the API server's
request handler (``handler.py``), which runs the stream. Nothing here may be overridden.
"""

from __future__ import annotations

from typing import Any

from .errors import ApiError
from .negotiation import dumps
from .resources import ResourceType
from .tables import build_table
from .watchcache import Watch, WatchEvent


def event_line(event: WatchEvent, watch: Watch, rtype: ResourceType) -> bytes:
    """``event`` as a JSON watch line, made once per stored change and API version."""
    source = event.source
    cache_key = (event.type, rtype.api_version)
    if source is not None:
        cached = source.cache.get(cache_key)
        if cached is not None:
            return cached
    line = (b'{"type":"' + event.type.encode() + b'","object":'
            + dumps(watch.external(event.object)) + b"}\n")
    if source is not None:
        source.cache[cache_key] = line
    return line


def table_event_line(event: WatchEvent, watch: Watch, rtype: ResourceType, *, version: str,
                     include_object: str, with_columns: bool) -> bytes:
    """``event`` with its object as a one-row Table (columns only in the first line)."""
    obj = watch.external(event.object)
    body = build_table(rtype, [obj], version=version, include_object=include_object,
                       rv=obj["metadata"].get("resourceVersion", ""),
                       include_columns=with_columns)
    return dumps({"type": event.type, "object": body}) + b"\n"


def bookmark_line(rtype: ResourceType, watch: Watch, initial_end: bool = False) -> bytes:
    """A BOOKMARK at the resourceVersion ``watch`` may resume from."""
    meta: dict[str, Any] = {"resourceVersion": watch.bookmark_rv()}
    if initial_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    return dumps({"type": "BOOKMARK", "object": {"kind": rtype.kind,
                                                 "apiVersion": rtype.api_version,
                                                 "metadata": meta}}) + b"\n"


def error_line(error: ApiError) -> bytes:
    """An ERROR event: how a watch reports a failure once its response has begun."""
    return dumps({"type": "ERROR", "object": error.status()}) + b"\n"
