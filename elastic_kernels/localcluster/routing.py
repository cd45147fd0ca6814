"""Routing: which resource, object, subresource and verb a request URL and method name.

kube-apiserver's URL scheme: ``/api/v1/...`` for the core group, ``/apis/{group}/{version}/...``
for the others; ``namespaces/{ns}/{plural}[/{name}[/{subresource}]]`` for namespaced kinds,
``{plural}[/{name}[/{subresource}]]`` for cluster-scoped ones; the legacy ``watch/`` prefix; and
the verb from the method (GET of a collection is ``list``, or ``watch`` with ``?watch=true``).
Used by the API server's request handler (``handler.py``); authorization reads the same URL
separately (``requestinfo.py``) before routing, as the real server does. Nothing here may be
overridden.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ApiError
from .resources import Registry, ResourceType

#: How a query parameter says true (Go's strconv.ParseBool).
TRUE_VALUES = frozenset({"1", "t", "T", "true", "TRUE", "True"})


@dataclass
class Route:
    """A parsed resource URL."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str
    legacy_watch: bool = False


def not_found() -> ApiError:
    """The 404 of a URL that names nothing the server serves."""
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def parse_route(registry: Registry, group: str, version: str, rest: list[str]) -> Route:
    """The resource that the path segments after ``/api/v1`` or ``/apis/{group}/{version}``
    (``rest``, not empty) name; a 404 ``ApiError`` if none."""
    legacy_watch = False
    if rest[0] == "watch":
        legacy_watch = True
        rest = rest[1:]
        if not rest:
            raise not_found()
    if rest[0] == "namespaces" and len(rest) >= 3:
        rtype = registry.for_version(group, version, rest[2])
        if rtype is not None and rtype.namespaced:
            if len(rest) > 5:
                raise not_found()
            return Route(rtype, rest[1], rest[3] if len(rest) > 3 else None,
                         rest[4] if len(rest) > 4 else "", legacy_watch)
        if rtype is None and group == "" and rest[2] not in ("status", "finalize"):
            raise not_found()
    rtype = registry.for_version(group, version, rest[0])
    if rtype is None or len(rest) > 3:
        raise not_found()
    name = rest[1] if len(rest) > 1 else None
    if rtype.namespaced and name is not None:
        raise not_found()
    return Route(rtype, None, name, rest[2] if len(rest) > 2 else "", legacy_watch)


def request_verb(method: str, route: Route, watch_param: str | None) -> str:
    """The API verb of ``method`` on ``route`` (``watch_param``: the ``watch`` query value)."""
    if method in ("GET", "HEAD"):
        if route.name is None:
            watching = route.legacy_watch or (watch_param or "") in TRUE_VALUES
            return "watch" if watching else "list"
        return "watch" if route.legacy_watch else "get"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if route.name is not None else "deletecollection"
    return method.lower()
