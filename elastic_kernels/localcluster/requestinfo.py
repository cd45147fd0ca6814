"""A request's authorization attributes, derived from its URL as kube-apiserver derives them.

Authorization happens before routing: a request is judged by what its URL says it is about, not
by whether that resource exists, so an unprivileged caller gets 403 for a resource it may not
touch even where an admin would get 404 (kube-apiserver's ``RequestInfoFactory``). The verb is
the HTTP method's (``get``/``create``/``update``/``patch``/``delete``), turned into ``list`` or
``watch`` (``?watch=1``/``true``, or the legacy ``/watch/`` prefix) and ``deletecollection``
when the URL names no object. A ``list``/``watch`` whose field selector pins ``metadata.name``
is about that one object, so ``resourceNames`` rules can allow it (watching a single Secret).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .authn import UserInfo
from .authz import Attributes

_API_PREFIXES = frozenset({"api", "apis"})
_GROUPLESS_PREFIXES = frozenset({"api"})
#: Subresources of a namespace, so that /namespaces/ns/status is not a resource named "status".
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})
_METHOD_VERBS = {"POST": "create", "GET": "get", "HEAD": "get", "PUT": "update",
                 "PATCH": "patch", "DELETE": "delete"}


def request_attributes(user: UserInfo, method: str, path: str,
                       query: Mapping[str, Sequence[str]]) -> Attributes:
    """The attributes of ``method path?query`` made by ``user`` (``query``: decoded values)."""
    nonresource = Attributes(user, method.lower(), path=path)
    parts = path.strip("/").split("/") if path.strip("/") else []
    if len(parts) < 3 or parts[0] not in _API_PREFIXES:
        return nonresource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix not in _GROUPLESS_PREFIXES:
        if len(parts) < 3:
            return nonresource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    verb = _METHOD_VERBS.get(method.upper(), "")
    if parts[0] == "watch":
        # /api/v1/watch/... (special verbs need something after them)
        if len(parts) < 2:
            return Attributes(user, verb, True, path, group, version)
        verb, parts = "watch", parts[1:]
    namespace = ""
    if parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in _NAMESPACE_SUBRESOURCES:
            parts = parts[2:]
    resource = parts[0] if parts else ""
    name = parts[1] if len(parts) > 1 else ""
    subresource = parts[2] if len(parts) > 2 else ""
    if not name and verb == "get":
        verb = "watch" if _is_watch(query) else "list"
        name = _selected_name(query)
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(user, verb, True, path, group, version, resource, subresource, namespace,
                      name)


def _first(query: Mapping[str, Sequence[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _is_watch(query: Mapping[str, Sequence[str]]) -> bool:
    value = _first(query, "watch")
    return value is not None and value.lower() not in ("false", "0")


def _selected_name(query: Mapping[str, Sequence[str]]) -> str:
    """The name a field selector requires (``metadata.name=x``), if it is a valid path segment
    (``fields.Selector.RequiresExactMatch`` with ``path.IsValidPathSegmentName``)."""
    selector = _first(query, "fieldSelector")
    if not selector:
        return ""
    for term in _split_terms(selector):
        if "!=" in term:
            continue
        key, sep, value = term.partition("==") if "==" in term else term.partition("=")
        if not sep:
            return ""  # not a selector the server would parse: no name, as kube-apiserver
        if key.strip() == "metadata.name":
            name = _unescape(value)
            if name in (".", "..") or "/" in name or "%" in name:
                return ""
            return name
    return ""


def _split_terms(selector: str) -> list[str]:
    """Terms split at unescaped commas (a value may hold ``\\,``)."""
    terms, current, escaped = [], [], False
    for char in selector:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [t for t in terms if t]


def _unescape(value: str) -> str:
    out, escaped = [], False
    for char in value:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)
