"""The local cluster's Kubernetes API server: the REST protocol over the in-memory Store.

It speaks the wire protocol of a real kube-apiserver closely enough that the official ``kubernetes``
Python client and ``kubectl`` work against it unchanged: discovery (legacy and aggregated), OpenAPI,
CRUD with the real status codes and ``Status`` bodies, the four patch types, status subresources,
label/field selectors, chunked watches with resume, bookmarks and 410 Gone, server-side tables for
``kubectl get``, pod logs via a pluggable provider, and deletion options.

Every request is authenticated (``authn.py``) and authorized (``rbac.py``) as kube-apiserver does,
and counted by (verb, group, resource, subresource, namespace) so tests can assert how many writes
an operation costs and that nothing polls.  Bad input always gets a 4xx ``Status``; an
unexpected exception gets a 500 ``Status`` and is logged, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import re
import socket
import ssl
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import unquote

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web
import yaml

from . import discovery, openapi
from . import errors as E
from .accessreview import self_subject_access_review, self_subject_rules_review
from .authn import ANONYMOUS, Authenticator, UserInfo, self_subject_review
from .authz import Attributes, Authorizer, forbidden
from .bootstrappolicy import ensure_bootstrap_policy
from .errors import ApiError
from .ownerrefs import OwnerReferencesPermissionEnforcement
from .rbac import RBACAuthorizer, store_readers
from .requestinfo import request_attributes
from .resources import ResourceType
from .satokens import ServiceAccountTokens
from .store import Store, Watch, WatchEvent, WriteOptions

log = logging.getLogger(__name__)

LogProvider = Callable[[str, str, str], "str | Awaitable[str]"]

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
READ_VERBS = frozenset({"get", "list", "watch"})

_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}
_PATCH_ACCEPTED = ["application/json-patch+json", "application/merge-patch+json",
                   "application/apply-patch+yaml", "application/strategic-merge-patch+json"]
_JSON = "application/json"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# --- request accounting -------------------------------------------------------------------------

RequestKey = tuple[str, str, str, str, str]  # verb, group, resource, subresource, namespace


@dataclass(frozen=True)
class RequestRecord:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    user: str

    @property
    def key(self) -> RequestKey:
        return (self.verb, self.group, self.resource, self.subresource, self.namespace)


class RequestCounter:
    """Counts API requests by (verb, group, resource, subresource, namespace), and by user.

    ``snapshot()`` then ``since(snapshot)`` measures what an operation cost; ``writes()`` and
    ``reads()`` filter by verb class.  Non-resource requests (discovery, OpenAPI, /version) are
    counted separately in ``nonresource`` so they do not blur resource accounting.
    """

    def __init__(self) -> None:
        self._counts: Counter[RequestKey] = Counter()
        self._by_user: Counter[tuple[str, str, str, str, str, str]] = Counter()
        self.nonresource: Counter[str] = Counter()
        #: Requests refused by authorization: (user, verb, group, resource, subresource,
        #: namespace) for resources, (user, verb, path, "", "", "") for other URLs.
        self.denied: Counter[tuple[str, str, str, str, str, str]] = Counter()

    def record(self, verb: str, group: str, resource: str, subresource: str = "",
               namespace: str = "", user: str = "") -> None:
        key = (verb, group, resource, subresource, namespace)
        self._counts[key] += 1
        self._by_user[(user, *key)] += 1

    def record_nonresource(self, path: str) -> None:
        self.nonresource[path] += 1

    def record_denied(self, attrs: Attributes) -> None:
        if attrs.resource_request:
            self.denied[(attrs.user.name, attrs.verb, attrs.api_group, attrs.resource,
                         attrs.subresource, attrs.namespace)] += 1
        else:
            self.denied[(attrs.user.name, attrs.verb, attrs.path, "", "", "")] += 1

    def snapshot(self) -> Counter[RequestKey]:
        return Counter(self._counts)

    def since(self, snapshot: Counter[RequestKey]) -> Counter[RequestKey]:
        """Requests made after ``snapshot`` was taken."""
        diff = Counter(self._counts)
        diff.subtract(snapshot)
        return Counter({k: v for k, v in diff.items() if v > 0})

    diff = since

    def reset(self) -> None:
        self._counts.clear()
        self._by_user.clear()
        self.nonresource.clear()
        self.denied.clear()

    def total(self, counts: Counter[RequestKey] | None = None, *,
              verbs: Iterable[str] | None = None, group: str | None = None,
              resource: str | None = None) -> int:
        counts = self._counts if counts is None else counts
        wanted = set(verbs) if verbs is not None else None
        return sum(n for (verb, g, res, _sub, _ns), n in counts.items()
                   if (wanted is None or verb in wanted) and (group is None or g == group)
                   and (resource is None or res == resource))

    def writes(self, counts: Counter[RequestKey] | None = None) -> Counter[RequestKey]:
        counts = self._counts if counts is None else counts
        return Counter({k: v for k, v in counts.items() if k[0] in WRITE_VERBS})

    def reads(self, counts: Counter[RequestKey] | None = None) -> Counter[RequestKey]:
        counts = self._counts if counts is None else counts
        return Counter({k: v for k, v in counts.items() if k[0] in READ_VERBS})

    def by_user(self) -> Counter[tuple[str, str, str, str, str, str]]:
        """(user, verb, group, resource, subresource, namespace) -> count, for RBAC coverage."""
        return Counter(self._by_user)

    def users(self) -> set[str]:
        return {key[0] for key in self._by_user}


# --- content negotiation ------------------------------------------------------------------------

@dataclass(frozen=True)
class MediaType:
    type: str
    params: dict[str, str]

    @property
    def as_(self) -> str:
        return self.params.get("as", "")


def parse_accept(header: str | None) -> list[MediaType]:
    result = []
    for part in (header or "").split(","):
        part = part.strip()
        if not part:
            continue
        pieces = [p.strip() for p in part.split(";")]
        params = {}
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            params[key.strip()] = value.strip()
        result.append(MediaType(pieces[0].lower(), params))
    return result


def _choose(accepts: list[MediaType], options: Iterable[str]) -> tuple[str, MediaType | None]:
    """First acceptable representation: "" (plain JSON) or one of ``options`` (``as=`` names)."""
    allowed = set(options)
    for media in accepts:
        if media.type not in (_JSON, "application/*", "*/*", "application/yaml"):
            continue
        if media.as_:
            if media.as_ in allowed:
                return media.as_, media
            continue
        return "", media
    return "", None


# --- protobuf request bodies --------------------------------------------------------------------
# kubectl's typed clients (``kubectl create namespace/configmap/secret/serviceaccount``) always send
# protobuf bodies.  The simple kinds they create are decoded here from the wire format with their
# field numbers (k8s.io/api generated.proto); anything else gets a clear 415 asking for JSON.

_PB_MESSAGES: dict[str, dict[int, tuple[str, str]]] = {
    "ObjectMeta": {1: ("name", "str"), 2: ("generateName", "str"), 3: ("namespace", "str"),
                   5: ("uid", "str"), 6: ("resourceVersion", "str"), 7: ("generation", "int"),
                   10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", "map"),
                   12: ("annotations", "map"), 13: ("ownerReferences", "[OwnerReference"),
                   14: ("finalizers", "[str")},
    "OwnerReference": {1: ("kind", "str"), 3: ("name", "str"), 4: ("uid", "str"),
                       5: ("apiVersion", "str"), 6: ("controller", "bool"),
                       7: ("blockOwnerDeletion", "bool")},
    "ObjectReference": {1: ("kind", "str"), 2: ("namespace", "str"), 3: ("name", "str"),
                        4: ("uid", "str"), 5: ("apiVersion", "str"), 6: ("resourceVersion", "str"),
                        7: ("fieldPath", "str")},
    "LocalObjectReference": {1: ("name", "str")},
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 2: ("data", "map"), 3: ("binaryData", "mapbytes"),
                  4: ("immutable", "bool")},
    "Secret": {1: ("metadata", "ObjectMeta"), 2: ("data", "mapbytes"), 3: ("type", "str"),
               4: ("stringData", "map"), 5: ("immutable", "bool")},
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec"),
                  3: ("status", "NamespaceStatus")},
    "NamespaceSpec": {1: ("finalizers", "[str")},
    "NamespaceStatus": {1: ("phase", "str")},
    "ServiceAccount": {1: ("metadata", "ObjectMeta"), 2: ("secrets", "[ObjectReference"),
                       3: ("automountServiceAccountToken", "bool"),
                       4: ("imagePullSecrets", "[LocalObjectReference")},
    # k8s.io/api/authentication/v1 (kubectl create token, kubectl auth whoami); the status a
    # client sends (always, as zero values) is the server's to fill in, so it is skipped.
    "TokenRequest": {1: ("metadata", "ObjectMeta"), 2: ("spec", "TokenRequestSpec"),
                     3: ("status", "skip")},
    "TokenRequestSpec": {1: ("audiences", "[str"), 3: ("boundObjectRef", "BoundObjectReference"),
                         4: ("expirationSeconds", "int")},
    "BoundObjectReference": {1: ("kind", "str"), 2: ("apiVersion", "str"), 3: ("name", "str"),
                             4: ("uid", "str")},
    "SelfSubjectReview": {1: ("metadata", "ObjectMeta"), 2: ("status", "skip")},
    # k8s.io/api/authorization/v1 (kubectl auth can-i, can-i --list)
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta"),
                                2: ("spec", "SelfSubjectAccessReviewSpec"), 3: ("status", "skip")},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes"),
                                    2: ("nonResourceAttributes", "NonResourceAttributes")},
    "ResourceAttributes": {1: ("namespace", "str"), 2: ("verb", "str"), 3: ("group", "str"),
                           4: ("version", "str"), 5: ("resource", "str"),
                           6: ("subresource", "str"), 7: ("name", "str"),
                           8: ("fieldSelector", "skip"), 9: ("labelSelector", "skip")},
    "NonResourceAttributes": {1: ("path", "str"), 2: ("verb", "str")},
    "SelfSubjectRulesReview": {1: ("metadata", "ObjectMeta"),
                               2: ("spec", "SelfSubjectRulesReviewSpec"), 3: ("status", "skip")},
    "SelfSubjectRulesReviewSpec": {1: ("namespace", "str")},
}
_PB_KINDS = {("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Namespace"), ("v1", "ServiceAccount"),
             ("authentication.k8s.io/v1", "TokenRequest"),
             ("authentication.k8s.io/v1", "SelfSubjectReview"),
             ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
             ("authorization.k8s.io/v1", "SelfSubjectRulesReview")}


def _pb_fields(buf: bytes) -> Iterable[tuple[int, Any]]:
    pos = 0
    while pos < len(buf):
        key, pos = _pb_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _pb_varint(buf, pos)
        elif wire == 2:
            size, pos = _pb_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
            if pos > len(buf):
                raise ValueError("truncated field")
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def _pb_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _pb_message(buf: bytes, name: str) -> dict[str, Any]:
    schema = _PB_MESSAGES[name]
    out: dict[str, Any] = {}
    for number, value in _pb_fields(buf):
        if number not in schema:
            if isinstance(value, bytes) and not value:
                continue  # an empty optional message or string the client always sends
            if isinstance(value, int) and value == 0:
                continue
            raise E.bad_request(f"protobuf field {number} of {name} is not understood by this "
                                "server; send the object as JSON")
        field, kind = schema[number]
        if kind == "skip":
            continue
        if kind == "str":
            if value:
                out[field] = value.decode()
        elif kind == "int":
            if value:
                out[field] = value
        elif kind == "bool":
            out[field] = bool(value)
        elif kind in ("map", "mapbytes"):
            entry = dict(_pb_fields(value))
            if not entry:
                continue
            key = entry.get(1, b"").decode()
            raw_value = entry.get(2, b"")
            out.setdefault(field, {})[key] = (base64.b64encode(raw_value).decode()
                                              if kind == "mapbytes" else raw_value.decode())
        elif kind.startswith("["):
            item = kind[1:]
            out.setdefault(field, []).append(value.decode() if item == "str"
                                             else _pb_message(value, item))
        else:
            nested = _pb_message(value, kind)
            if nested:
                out[field] = nested
    return out


def decode_protobuf(raw: bytes) -> dict[str, Any]:
    """A Kubernetes protobuf envelope (``k8s\\0`` + runtime.Unknown) as a JSON-shaped object."""
    if not raw.startswith(b"k8s\x00"):
        raise E.bad_request("protobuf body without the k8s envelope")
    try:
        envelope = dict(_pb_fields(raw[4:]))
        type_meta = dict(_pb_fields(envelope.get(1, b"")))
        api_version = type_meta.get(1, b"").decode()
        kind = type_meta.get(2, b"").decode()
        if (api_version, kind) not in _PB_KINDS:
            raise ApiError(415, "UnsupportedMediaType",
                           "this server decodes protobuf only for ConfigMap, Secret, Namespace, "
                           "ServiceAccount, TokenRequest and the self-reviews, not "
                           f"{api_version}/{kind}; send the object as JSON (for example with "
                           "`kubectl create -f`)")
        obj = _pb_message(envelope.get(2, b""), kind)
    except (ValueError, UnicodeDecodeError, KeyError) as exc:
        raise E.bad_request(f"malformed protobuf body: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}


# --- server-side tables (what `kubectl get` prints) ---------------------------------------------

_NAME_COL = {"name": "Name", "type": "string", "format": "name", "priority": 0,
             "description": "Name must be unique within a namespace. Is required when creating "
                            "resources, although some resources may allow a client to request the "
                            "generation of an appropriate name automatically."}
_AGE_COL = {"name": "Age", "type": "string", "format": "", "priority": 0,
            "description": "CreationTimestamp is a timestamp representing the server time when "
                           "this object was created."}


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration (k8s.io/apimachinery/pkg/util/duration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(obj: dict, now: datetime) -> str:
    created = _parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    if created is None:
        return "<unknown>"
    return human_duration((now - created).total_seconds())


_JSONPATH_TOKEN = re.compile(
    r"\.(?P<field>(?:[A-Za-z0-9_\-$/]|\\\.)+)|\[(?P<index>-?\d+|\*)\]|\[\?\(@\.(?P<fkey>[A-Za-z0-9_.\-]+)"
    r"\s*==\s*(?P<fval>\"[^\"]*\"|'[^']*'|[^)\s]+)\)\]|\[['\"](?P<quoted>[^'\"]+)['\"]\]")


def jsonpath_values(obj: Any, path: str) -> list[Any]:
    """Evaluate the simple JSONPath subset printer columns use (``.a.b``, ``[0]``, ``[*]``,
    ``[?(@.type=="Ready")]``, ``['x.y']``); missing keys give no values."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    values = [obj]
    pos = 0
    while pos < len(path):
        match = _JSONPATH_TOKEN.match(path, pos)
        if not match:
            return []
        pos = match.end()
        nxt: list[Any] = []
        for value in values:
            name = match.group("quoted") or (match.group("field") or "").replace("\\.", ".") \
                or None
            if name is not None:
                if isinstance(value, dict) and name in value:
                    nxt.append(value[name])
            elif match.group("index") is not None:
                if isinstance(value, list):
                    if match.group("index") == "*":
                        nxt.extend(value)
                    else:
                        index = int(match.group("index"))
                        if -len(value) <= index < len(value):
                            nxt.append(value[index])
                elif isinstance(value, dict) and match.group("index") == "*":
                    nxt.extend(value.values())
            else:
                want = match.group("fval").strip("\"'")
                if isinstance(value, list):
                    for item in value:
                        got = jsonpath_values(item, "." + match.group("fkey"))
                        if not got:
                            continue
                        shown = got[0]
                        text = ("true" if shown else "false") if isinstance(shown, bool) else str(
                            shown)
                        if text == want:
                            nxt.append(item)
        values = nxt
    return values


def _cell(values: list[Any], col_type: str, now: datetime) -> Any:
    if not values:
        return None
    value = values[0] if len(values) == 1 else values
    if col_type == "date":
        moment = _parse_time(value) if isinstance(value, str) else None
        return human_duration((now - moment).total_seconds()) if moment else value
    if isinstance(value, (dict, list)):
        if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            return ",".join(str(v) for v in value)
        return json.dumps(value, separators=(",", ":"))
    if col_type == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _pod_row(pod: dict, now: datetime) -> list[Any]:
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    total = len(spec.get("containers") or [])
    ready = 0
    restarts = 0
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for cs in reversed(status.get("containerStatuses") or []):
        restarts += int(cs.get("restartCount") or 0)
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
        elif "terminated" in state:
            term = state["terminated"]
            reason = (f"Signal:{term['signal']}" if term.get("signal")
                      else f"ExitCode:{term.get('exitCode', 0)}")
        elif "running" in state and cs.get("ready"):
            ready += 1
    if pod.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    return [pod["metadata"]["name"], f"{ready}/{total}", reason, restarts, _age(pod, now),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", "<none>"]


def _column(name: str, col_type: str = "string", priority: int = 0, description: str = "",
            fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": col_type, "format": fmt, "description": description,
            "priority": priority}


def _builtin_table(rtype: ResourceType) -> tuple[list[dict], Callable[[dict, datetime], list]]:
    key = rtype.storage_key
    if key == ("", "pods"):
        return [_NAME_COL, _column("Ready", description="The aggregate readiness state of this "
                                                        "pod for accepting traffic."),
                _column("Status", description="The aggregate status of the containers in this "
                                              "pod."),
                _column("Restarts", "string", description="The number of times the containers "
                                                          "in this pod have been restarted."),
                _AGE_COL, _column("IP", priority=1, description="The IP address of the pod."),
                _column("Node", priority=1, description="The name of the node."),
                _column("Nominated Node", priority=1, description="The nominated node."),
                _column("Readiness Gates", priority=1,
                        description="The readiness gates.")], _pod_row
    if key == ("", "namespaces"):
        return [_NAME_COL, _column("Status"), _AGE_COL], lambda o, now: [
            o["metadata"]["name"], (o.get("status") or {}).get("phase", ""), _age(o, now)]
    if key == ("", "secrets"):
        return [_NAME_COL, _column("Type"), _column("Data", "string"), _AGE_COL], lambda o, now: [
            o["metadata"]["name"], o.get("type", ""), len(o.get("data") or {}), _age(o, now)]
    if key == ("", "configmaps"):
        return [_NAME_COL, _column("Data", "string"), _AGE_COL], lambda o, now: [
            o["metadata"]["name"], len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            _age(o, now)]
    if key == ("", "serviceaccounts"):
        return [_NAME_COL, _column("Secrets", "string"), _AGE_COL], lambda o, now: [
            o["metadata"]["name"], len(o.get("secrets") or []), _age(o, now)]
    if key == ("", "services"):
        def service_row(o: dict, now: datetime) -> list:
            spec = o.get("spec") or {}
            ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}"
                             for p in spec.get("ports") or []) or "<none>"
            return [o["metadata"]["name"], spec.get("type", ""), spec.get("clusterIP", "<none>"),
                    "<none>", ports, _age(o, now)]
        return [_NAME_COL, _column("Type"), _column("Cluster-IP"), _column("External-IP"),
                _column("Port(s)"), _AGE_COL], service_row
    if key == ("", "nodes"):
        def node_row(o: dict, now: datetime) -> list:
            conds = {c.get("type"): c.get("status") for c in
                     (o.get("status") or {}).get("conditions") or []}
            state = "Ready" if conds.get("Ready") == "True" else (
                "NotReady" if "Ready" in conds else "Unknown")
            if (o.get("spec") or {}).get("unschedulable"):
                state += ",SchedulingDisabled"
            version = ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
            return [o["metadata"]["name"], state, "<none>", _age(o, now), version]
        return [_NAME_COL, _column("Status"), _column("Roles"), _AGE_COL, _column("Version")], \
            node_row
    if key == ("", "events"):
        def event_row(o: dict, now: datetime) -> list:
            involved = o.get("involvedObject") or o.get("regarding") or {}
            last = _parse_time(o.get("lastTimestamp") or o.get("eventTime")
                               or o.get("metadata", {}).get("creationTimestamp"))
            seen = human_duration((now - last).total_seconds()) if last else "<unknown>"
            return [seen, o.get("type", ""), o.get("reason", ""),
                    f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
                    o.get("message") or o.get("note") or ""]
        return [_column("Last Seen"), _column("Type"), _column("Reason"), _column("Object"),
                _column("Message")], event_row
    if key == ("coordination.k8s.io", "leases"):
        return [_NAME_COL, _column("Holder"), _AGE_COL], lambda o, now: [
            o["metadata"]["name"], (o.get("spec") or {}).get("holderIdentity", ""), _age(o, now)]
    if key == ("apiextensions.k8s.io", "customresourcedefinitions"):
        return [_NAME_COL, _column("Created At", "date")], lambda o, now: [
            o["metadata"]["name"], o["metadata"].get("creationTimestamp")]
    return [_NAME_COL, _AGE_COL], lambda o, now: [o["metadata"]["name"], _age(o, now)]


def table_for(rtype: ResourceType) -> tuple[list[dict], Callable[[dict, datetime], list]]:
    """Column definitions and a row function for ``rtype`` (CRD printer columns if custom)."""
    if not rtype.is_custom:
        return _builtin_table(rtype)
    columns = [c for c in rtype.printer_columns]
    if not columns:
        return [_NAME_COL, _AGE_COL], lambda o, now: [o["metadata"]["name"], _age(o, now)]
    definitions = [_NAME_COL] + [
        {"name": c.name, "type": c.type if c.type != "date" else "date", "format": c.format,
         "description": c.description, "priority": c.priority} for c in columns]

    def row(obj: dict, now: datetime) -> list:
        return [obj["metadata"]["name"]] + [_cell(jsonpath_values(obj, c.json_path), c.type, now)
                                            for c in columns]
    return definitions, row


def partial_metadata(obj: dict, api_version: str = "meta.k8s.io/v1") -> dict:
    return {"kind": "PartialObjectMetadata", "apiVersion": api_version,
            "metadata": obj.get("metadata", {})}


# --- routing ------------------------------------------------------------------------------------

@dataclass
class Route:
    """A parsed resource URL."""

    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str
    legacy_watch: bool = False


class _Handler(tornado.web.RequestHandler):
    """One handler for every URL; it routes by parsing the path like the real server does."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def initialize(self, server: APIServer) -> None:
        self.server = server
        self.store = server.store
        self._watch: Watch | None = None
        # Who made this request: set by authentication before routing; authorization reads it.
        self.user: UserInfo = ANONYMOUS

    # tornado hooks ------------------------------------------------------------------------------

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", _JSON)
        self.clear_header("Server")
        self.set_header("Cache-Control", "no-cache, private")

    def prepare(self) -> None:
        # Watches write many small chunks; without TCP_NODELAY each one can wait for a delayed ACK.
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)

    def compute_etag(self) -> str | None:
        return None

    def check_xsrf_cookie(self) -> None:
        return None

    def on_connection_close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = E.REASON_BY_CODE.get(status_code, "InternalError")
        message = self._reason or reason
        self.set_header("Content-Type", _JSON)
        self.finish(_dumps(ApiError(status_code, reason, message).status()))

    async def get(self, *_: Any) -> None:
        await self._dispatch()

    async def head(self, *_: Any) -> None:
        await self._dispatch()

    async def post(self, *_: Any) -> None:
        await self._dispatch()

    async def put(self, *_: Any) -> None:
        await self._dispatch()

    async def patch(self, *_: Any) -> None:
        await self._dispatch()

    async def delete(self, *_: Any) -> None:
        await self._dispatch()

    async def options(self, *_: Any) -> None:
        await self._dispatch()

    # plumbing -----------------------------------------------------------------------------------

    def _send(self, body: Any, code: int = 200, content_type: str = _JSON) -> None:
        self.set_status(code)
        self.set_header("Content-Type", content_type)
        self.finish(body if isinstance(body, bytes) else _dumps(body))

    def _send_error(self, error: ApiError) -> None:
        if self._finished:
            return
        if self._headers_written:
            # Mid-stream (a watch): report in-band as the real server does.
            try:
                self.write(_dumps({"type": "ERROR", "object": error.status()}) + b"\n")
                self.finish()
            except Exception:  # noqa: BLE001 - the client is gone
                pass
            return
        self.clear()
        self._send(error.status(), error.code)

    def _query(self, name: str, default: str | None = None) -> str | None:
        values = self.request.query_arguments.get(name)
        if not values:
            return default
        return values[-1].decode("utf-8", "replace")

    def _int_query(self, name: str) -> int | None:
        value = self._query(name)
        if value in (None, ""):
            return None
        try:
            return int(value)  # type: ignore[arg-type]
        except ValueError:
            raise E.bad_request(f"invalid value for {name}: {value!r}: must be an "
                                "integer") from None

    def _authenticate(self) -> None:
        self.user = self.server.authenticator.authenticate(
            self.request.headers.get("Authorization"), self.request.path)

    def _authorize(self) -> None:
        """kube-apiserver's authorization filter: judged by what the URL asks, before routing."""
        query = {k: [v.decode("utf-8", "replace") for v in vs]
                 for k, vs in self.request.query_arguments.items()}
        attrs = request_attributes(self.user, self.request.method or "GET",
                                   unquote(self.request.path), query)
        decision = self.server.authorizer.authorize(attrs)
        if not decision.allowed:
            self.server.request_counter.record_denied(attrs)
            raise forbidden(attrs, decision.reason)

    def _content_type(self) -> str:
        return (self.request.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def _body(self, allow_yaml: bool = False) -> Any:
        raw = self.request.body
        content_type = self._content_type()
        if content_type == "application/vnd.kubernetes.protobuf":
            return decode_protobuf(raw)
        if not raw or not raw.strip():
            raise E.bad_request("the request body is empty")
        try:
            if content_type in ("application/yaml", "application/apply-patch+yaml") or allow_yaml:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError, RecursionError) as exc:
            raise E.bad_request(f"couldn't get version/kind; json parse error: {exc}") from None

    def _options(self) -> WriteOptions:
        dry = self.request.query_arguments.get("dryRun")
        validation = self._query("fieldValidation") or "Warn"
        if validation not in ("Ignore", "Warn", "Strict"):
            raise E.bad_request(f"fieldValidation must be one of Ignore, Warn, Strict; got "
                                f"{validation!r}")
        return WriteOptions(dry_run=bool(dry), field_validation=validation, admit=self._admit)

    def _admit(self, operation: str, rtype: ResourceType, subresource: str | None,
               old: dict | None, new: dict) -> None:
        """Validating admission of a client's write (OwnerReferencesPermissionEnforcement)."""
        self.server.owner_references.validate(self.user, operation, rtype, subresource, old, new)

    def _warn(self, opts: WriteOptions) -> None:
        for warning in opts.warnings[:20]:
            self.add_header("Warning", '299 - ' + json.dumps(warning))

    # dispatch -----------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        try:
            self._authenticate()
            self._authorize()
            await self._route()
        except ApiError as exc:
            self._send_error(exc)
        except tornado.iostream.StreamClosedError:
            pass
        except Exception as exc:  # noqa: BLE001 - the server must keep serving
            log.exception("unexpected error serving %s %s", self.request.method, self.request.uri)
            self._send_error(E.internal_error(f"{type(exc).__name__}: {exc}"))

    async def _route(self) -> None:
        method = self.request.method or "GET"
        parts = [unquote(p) for p in self.request.path.split("/") if p]
        if method == "OPTIONS":
            self._send(b"", 200)
            return
        if not parts:
            self._nonresource("/")
            self._send({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez",
                                  "/openapi/v2", "/openapi/v3", "/readyz", "/version"]})
            return
        head = parts[0]
        if head in ("healthz", "livez", "readyz"):
            self._nonresource("/" + head)
            self._send(b"ok", 200, "text/plain; charset=utf-8")
            return
        if head == "version" and len(parts) == 1:
            self._nonresource("/version")
            self._send(discovery.SERVER_VERSION)
            return
        if head == "openapi":
            self._nonresource("/" + "/".join(parts[:2]))
            self._serve_openapi(parts)
            return
        if head == "api":
            if len(parts) == 1:
                self._nonresource("/api")
                self._serve_discovery_root(core=True)
                return
            if parts[1] != "v1":
                raise self._not_found_path()
            group, version, rest = "", "v1", parts[2:]
        elif head == "apis":
            if len(parts) == 1:
                self._nonresource("/apis")
                self._serve_discovery_root(core=False)
                return
            if len(parts) == 2:
                self._nonresource("/apis/" + parts[1])
                body = discovery.api_group(self.store.registry, parts[1])
                if body is None:
                    raise self._not_found_path()
                self._send(body)
                return
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise self._not_found_path()
        if not rest:
            self._nonresource("/" + "/".join(parts))
            body = discovery.api_resource_list(self.store.registry, group, version)
            if body is None:
                raise self._not_found_path()
            self._send(body)
            return
        route = self._parse_route(group, version, rest)
        await self._serve_resource(method, route)

    def _nonresource(self, path: str) -> None:
        self.server.request_counter.record_nonresource(path)

    def _not_found_path(self) -> ApiError:
        return ApiError(404, "NotFound", "the server could not find the requested resource", {})

    def _parse_route(self, group: str, version: str, rest: list[str]) -> Route:
        registry = self.store.registry
        legacy_watch = False
        if rest[0] == "watch":
            legacy_watch = True
            rest = rest[1:]
            if not rest:
                raise self._not_found_path()
        if rest[0] == "namespaces" and len(rest) >= 3:
            rtype = registry.for_version(group, version, rest[2])
            if rtype is not None and rtype.namespaced:
                if len(rest) > 5:
                    raise self._not_found_path()
                return Route(rtype, rest[1], rest[3] if len(rest) > 3 else None,
                             rest[4] if len(rest) > 4 else "", legacy_watch)
            if rtype is None and group == "" and rest[2] not in ("status", "finalize"):
                raise self._not_found_path()
        rtype = registry.for_version(group, version, rest[0])
        if rtype is None or len(rest) > 3:
            raise self._not_found_path()
        name = rest[1] if len(rest) > 1 else None
        if rtype.namespaced and name is not None:
            raise self._not_found_path()
        return Route(rtype, None, name, rest[2] if len(rest) > 2 else "", legacy_watch)

    # discovery / openapi ------------------------------------------------------------------------

    def _serve_discovery_root(self, core: bool) -> None:
        accepts = parse_accept(self.request.headers.get("Accept"))
        for media in accepts:
            if media.as_ == "APIGroupDiscoveryList" and media.params.get("g") == \
                    "apidiscovery.k8s.io" and media.params.get("v") in ("v2", "v2beta1"):
                version = media.params["v"]
                body = discovery.aggregated_discovery(self.store.registry, core, version)
                self._send(body, 200, discovery.AGGREGATED_V2 if version == "v2"
                           else discovery.AGGREGATED_V2BETA1)
                return
            if media.type in (_JSON, "*/*", "application/*") and not media.as_:
                break
        if core:
            self._send(discovery.api_versions(f"{self.server.host}:{self.server.port}"))
        else:
            self._send(discovery.api_group_list(self.store.registry))

    def _serve_openapi(self, parts: list[str]) -> None:
        docs = self.server.openapi
        if len(parts) == 2 and parts[1] == "v2":
            self._send(docs.v2(), 200, _JSON)
            return
        if len(parts) >= 2 and parts[1] == "v3":
            if len(parts) == 2:
                self._send(docs.v3_index())
                return
            body = docs.v3_group_version("/".join(parts[2:]))
            if body is None:
                raise self._not_found_path()
            self._send(body)
            return
        raise self._not_found_path()

    # resources ----------------------------------------------------------------------------------

    def _verb(self, method: str, route: Route) -> str:
        if method in ("GET", "HEAD"):
            if route.name is None:
                watching = route.legacy_watch or (self._query("watch") or "") in _TRUE
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

    async def _serve_resource(self, method: str, route: Route) -> None:
        rtype = route.rtype
        verb = self._verb(method, route)
        self.server.request_counter.record(verb, rtype.group, rtype.plural, route.subresource,
                                           route.namespace or "", self.user.name)
        if route.subresource and route.subresource not in rtype.subresources:
            raise self._not_found_path()
        if not route.subresource and verb not in rtype.verbs:
            raise E.method_not_allowed("the server does not allow this method on the requested "
                                       "resource")
        if rtype.key == ("", "bindings"):
            self._bind(route)
            return
        if rtype.key == ("authentication.k8s.io", "selfsubjectreviews"):
            self._self_subject_review(route)
            return
        if rtype.group == "authorization.k8s.io":
            self._access_review(route)
            return
        if verb == "list":
            self._list(route)
        elif verb == "watch":
            await self._watch_stream(route)
        elif verb == "get":
            if route.subresource == "log":
                await self._pod_log(route)
            else:
                self._get(route)
        elif verb == "create":
            if route.name is not None:
                if route.subresource == "binding":
                    self._bind(route)
                elif route.subresource == "eviction":
                    self._evict(route)
                elif route.subresource == "token":
                    self._token_request(route)
                else:
                    raise E.method_not_allowed("the server does not allow this method on the "
                                               "requested resource")
            else:
                self._create(route)
        elif verb == "update":
            self._require_name(route)
            self._replace(route)
        elif verb == "patch":
            self._require_name(route)
            self._patch(route)
        elif verb == "delete":
            self._delete(route)
        elif verb == "deletecollection":
            self._delete_collection(route)
        else:
            raise E.method_not_allowed("the server does not allow this method on the requested "
                                       "resource")

    def _require_name(self, route: Route) -> None:
        if route.name is None:
            raise E.method_not_allowed("the server does not allow this method on the requested "
                                       "resource")
        if route.subresource not in ("", "status"):
            raise E.method_not_allowed("the server does not allow this method on the requested "
                                       "resource")

    def _namespace_required(self, route: Route) -> str | None:
        if route.rtype.namespaced and route.namespace is None:
            raise self._not_found_path()
        return route.namespace

    def _representation(self) -> tuple[str, MediaType | None]:
        return _choose(parse_accept(self.request.headers.get("Accept")),
                       ("Table", "PartialObjectMetadata", "PartialObjectMetadataList"))

    def _object_response(self, route: Route, obj: dict, code: int = 200) -> None:
        external = self.store.external(route.rtype, obj)
        rep, media = self._representation()
        if rep == "Table":
            self._send(self._table(route.rtype, [external], media, self.store.resource_version()),
                       code, self._table_content_type(media))
            return
        if rep == "PartialObjectMetadata":
            self._send(partial_metadata(external), code,
                       "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io")
            return
        self._send(external, code)

    def _table_content_type(self, media: MediaType | None) -> str:
        version = (media.params.get("v") if media else None) or "v1"
        return f"application/json;as=Table;v={version};g=meta.k8s.io"

    def _table(self, rtype: ResourceType, objects: list[dict], media: MediaType | None,
               rv: str, include_columns: bool = True) -> dict:
        columns, row = table_for(rtype)
        now = datetime.now(timezone.utc)
        include = self._query("includeObject") or "PartialObjectMetadata"
        version = (media.params.get("v") if media else None) or "v1"
        rows = []
        for obj in objects:
            entry: dict[str, Any] = {"cells": row(obj, now)}
            if include == "Object":
                entry["object"] = obj
            elif include != "None":
                entry["object"] = partial_metadata(obj, f"meta.k8s.io/{version}")
            rows.append(entry)
        return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}",
                "metadata": {"resourceVersion": rv},
                "columnDefinitions": columns if include_columns else [], "rows": rows}

    def _get(self, route: Route) -> None:
        if route.name is None:
            raise self._not_found_path()
        obj = self.store.get_ref(route.rtype, self._namespace_required(route), route.name)
        self._object_response(route, obj)

    def _list(self, route: Route) -> None:
        rtype = route.rtype
        items, rv = self.store.list_refs(rtype, route.namespace, self._query("labelSelector"),
                                         self._query("fieldSelector"))
        meta: dict[str, Any] = {"resourceVersion": rv}
        limit = self._int_query("limit")
        token = self._query("continue")
        if token:
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()))
                after = (start["ns"] or "", start["name"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(400, "BadRequest", "continue key is not valid: incorrect encoded "
                                                  "start resourceVersion (version meta.k8s.io/v1)"
                               ) from None
            items = [o for o in items if (o["metadata"].get("namespace") or "",
                                          o["metadata"]["name"]) > after]
        if limit and limit > 0 and len(items) > limit:
            remaining = len(items) - limit
            items = items[:limit]
            last = items[-1]["metadata"]
            meta["continue"] = base64.urlsafe_b64encode(_dumps(
                {"ns": last.get("namespace"), "name": last["name"]})).decode()
            meta["remainingItemCount"] = remaining
        externals = [self.store.external(rtype, o) for o in items]
        rep, media = self._representation()
        if rep == "Table":
            table = self._table(rtype, externals, media, rv)
            table["metadata"].update({k: v for k, v in meta.items() if k != "resourceVersion"})
            self._send(table, 200, self._table_content_type(media))
            return
        if rep in ("PartialObjectMetadataList", "PartialObjectMetadata"):
            self._send({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                        "metadata": meta, "items": [partial_metadata(o) for o in externals]}, 200,
                       "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io")
            return
        self._send({"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": meta,
                    "items": externals})

    def _create(self, route: Route) -> None:
        rtype = route.rtype
        if rtype.namespaced and route.namespace is None:
            raise self._not_found_path()
        body = self._body()
        if not isinstance(body, dict):
            raise E.bad_request("the body of the request was in an unknown format: expected an "
                                "object")
        kind = body.get("kind")
        if kind and kind != rtype.kind:
            raise E.bad_request(f"the server could not find the requested resource: the kind "
                                f"{kind!r} of the object does not match the resource "
                                f"{rtype.group_resource!r}")
        opts = self._options()
        obj = self.store.create_ref(rtype, route.namespace, body, opts)
        self._warn(opts)
        self._object_response(route, obj, 201)

    def _replace(self, route: Route) -> None:
        body = self._body()
        opts = self._options()
        obj = self.store.replace_ref(route.rtype, self._namespace_required(route), route.name,
                                     body, route.subresource or None, opts)
        self._warn(opts)
        self._object_response(route, obj)

    def _patch(self, route: Route) -> None:
        content_type = self._content_type()
        patch_type = _PATCH_TYPES.get(content_type)
        if patch_type is None:
            raise E.unsupported_media_type(
                content_type, _PATCH_ACCEPTED if route.rtype.strategic_merge
                else _PATCH_ACCEPTED[:3])
        if patch_type == "strategic" and not route.rtype.strategic_merge:
            raise E.unsupported_media_type(content_type, _PATCH_ACCEPTED[:3])
        patch = self._body(allow_yaml=patch_type == "apply")
        opts = self._options()
        ns = self._namespace_required(route)
        existed = True
        if patch_type == "apply":
            try:
                self.store.get_ref(route.rtype, ns, route.name)  # type: ignore[arg-type]
            except ApiError as exc:
                if exc.code != 404:
                    raise
                existed = False
        obj = self.store.patch_ref(route.rtype, ns, route.name, patch,  # type: ignore[arg-type]
                                   patch_type, route.subresource or None, opts)
        self._warn(opts)
        self._object_response(route, obj, 200 if existed else 201)

    def _delete_options(self) -> tuple[int | None, str | None, dict | None, WriteOptions]:
        grace = self._int_query("gracePeriodSeconds")
        propagation = self._query("propagationPolicy")
        orphan = self._query("orphanDependents")
        preconditions: dict | None = None
        opts = self._options()
        raw = self.request.body
        if raw and raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise E.bad_request(f"couldn't decode DeleteOptions: {exc}") from None
            if body is not None and not isinstance(body, dict):
                raise E.bad_request("DeleteOptions must be an object")
            body = body or {}
            if body.get("gracePeriodSeconds") is not None:
                grace = body["gracePeriodSeconds"]
                if not isinstance(grace, int) or isinstance(grace, bool):
                    raise E.bad_request("gracePeriodSeconds must be an integer")
            propagation = body.get("propagationPolicy") or propagation
            if body.get("orphanDependents") is not None:
                orphan = "true" if body["orphanDependents"] else "false"
            preconditions = body.get("preconditions") or None
            if body.get("dryRun"):
                opts.dry_run = True
        if orphan is not None and not propagation:
            propagation = "Orphan" if orphan in _TRUE else "Background"
        return grace, propagation, preconditions, opts

    def _delete(self, route: Route) -> None:
        if route.subresource:
            raise E.method_not_allowed("the server does not allow this method on the requested "
                                       "resource")
        grace, propagation, preconditions, opts = self._delete_options()
        ns = self._namespace_required(route)
        rtype = route.rtype
        obj = self.store.delete_ref(rtype, ns, route.name,  # type: ignore[arg-type]
                                    grace, propagation, preconditions, opts)
        try:
            self.store.get_ref(rtype, ns, route.name)  # type: ignore[arg-type]
            removed = opts.dry_run
        except ApiError:
            removed = True
        if removed and not rtype.return_deleted_object:
            details: dict[str, Any] = {"name": route.name, "kind": rtype.plural,
                                       "uid": obj["metadata"].get("uid")}
            if rtype.group:
                details["group"] = rtype.group
            self._send({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Success", "details": details})
            return
        self._send(self.store.external(rtype, obj))

    def _delete_collection(self, route: Route) -> None:
        rtype = route.rtype
        grace, propagation, _pre, opts = self._delete_options()
        deleted = self.store.delete_collection_refs(
            rtype, route.namespace, self._query("labelSelector"), self._query("fieldSelector"),
            grace, propagation, opts)
        self._send({"kind": rtype.list_kind, "apiVersion": rtype.api_version,
                    "metadata": {"resourceVersion": self.store.resource_version()},
                    "items": [self.store.external(rtype, o) for o in deleted]})

    def _bind(self, route: Route) -> None:
        """POST pods/{name}/binding, or POST bindings (the pod named by the Binding)."""
        body = self._body()
        if not isinstance(body, dict):
            raise E.bad_request("a Binding must be an object")
        meta = body.get("metadata") or {}
        name = route.name or meta.get("name")
        target = body.get("target") or {}
        node = target.get("name")
        errs = []
        if not name:
            errs.append(E.required("metadata.name"))
        if not node:
            errs.append(E.required("target.name"))
        if errs:
            raise E.invalid_object("Binding", name or "", errs)
        pods = self.store.resource_type(("", "pods"))
        self.store.bind_ref(pods, route.namespace, name, node, meta.get("uid"))  # type: ignore
        self._send({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "code": 201}, 201)

    def _token_request(self, route: Route) -> None:
        """POST serviceaccounts/{name}/token (TokenRequest), as ``kubectl create token`` does."""
        ns = self._namespace_required(route)
        body = self._body()
        opts = self._options()
        answer = self.server.service_account_tokens.token_request(
            ns, route.name, body)  # type: ignore[arg-type]
        if opts.dry_run:
            answer["status"] = {"token": "", "expirationTimestamp": None}
        self._send(answer, 201)

    def _self_subject_review(self, route: Route) -> None:
        """POST selfsubjectreviews: the caller as authenticated (``kubectl auth whoami``)."""
        if route.name is not None or route.subresource:
            raise self._not_found_path()
        body = self._body()
        if not isinstance(body, dict) or body.get("kind") not in (None, "SelfSubjectReview"):
            raise E.bad_request("the body of the request must be a SelfSubjectReview object")
        self._send(self_subject_review(self.user), 201)

    def _access_review(self, route: Route) -> None:
        """POST selfsubjectaccessreviews (``kubectl auth can-i``) or selfsubjectrulesreviews
        (``kubectl auth can-i --list``): answered by the authorizer that judges requests."""
        if route.name is not None or route.subresource:
            raise self._not_found_path()
        review = (self_subject_access_review if route.rtype.plural == "selfsubjectaccessreviews"
                  else self_subject_rules_review)
        self._send(review(self.user, self._body(), self.server.authorizer), 201)

    def _evict(self, route: Route) -> None:
        body = self._body() or {}
        options = body.get("deleteOptions") or {}
        self.store.delete_ref(route.rtype, route.namespace, route.name,  # type: ignore[arg-type]
                              options.get("gracePeriodSeconds"), options.get("propagationPolicy"),
                              options.get("preconditions"))
        self._send({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "code": 201}, 201)

    async def _pod_log(self, route: Route) -> None:
        ns = self._namespace_required(route)
        pod = self.store.get_ref(route.rtype, ns, route.name)  # type: ignore[arg-type]
        containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        container = self._query("container")
        if not container:
            if len(containers) != 1:
                raise E.bad_request(f"a container name must be specified for pod {route.name}, "
                                    f"choose one of: [{' '.join(containers)}]")
            container = containers[0]
        elif container not in containers and container not in [
                c.get("name") for c in (pod.get("spec") or {}).get("initContainers") or []]:
            raise E.bad_request(f"container {container} is not valid for pod {route.name}")
        provider = self.server.log_provider
        if provider is None:
            raise E.bad_request(f'container "{container}" in pod "{route.name}" is not running')
        text = provider(ns, route.name, container)  # type: ignore[arg-type]
        if inspect.isawaitable(text):
            text = await text
        text = text or ""
        tail = self._int_query("tailLines")
        if tail is not None and tail >= 0:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail:]) if tail else ""
        limit = self._int_query("limitBytes")
        data = text.encode()
        if limit is not None and limit > 0:
            data = data[:limit]
        self._send(data, 200, "text/plain")

    # watch --------------------------------------------------------------------------------------

    async def _watch_stream(self, route: Route) -> None:
        rtype = route.rtype
        rv = self._query("resourceVersion")
        send_initial_q = self._query("sendInitialEvents")
        send_initial = rv in (None, "", "0") if send_initial_q is None else send_initial_q in _TRUE
        bookmarks = (self._query("allowWatchBookmarks") or "") in _TRUE
        timeout = self._int_query("timeoutSeconds")
        if timeout is None or timeout <= 0:
            timeout = self.server.watch_timeout
        rep, media = self._representation()
        table = rep == "Table"
        try:
            watch = self.store.watch_type(rtype, route.namespace, self._query("labelSelector"),
                                          self._query("fieldSelector"),
                                          None if send_initial else rv, send_initial)
        except ApiError as exc:
            if exc.code != 410:
                raise
            self.set_header("Content-Type", _JSON)
            self.write(_dumps({"type": "ERROR", "object": exc.status()}) + b"\n")
            self.finish()
            return
        self._watch = watch
        self.server._watchers.add(watch)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = self.server.bookmark_interval
        next_bookmark = loop.time() + interval
        first_table = True
        self.set_header("Content-Type", self._table_content_type(media) if table else _JSON)
        try:
            await self.flush()
            if send_initial and send_initial_q is not None and bookmarks:
                self._write_initial_events(watch, rtype, table, media)
                self.write(self._bookmark(rtype, watch, initial_end=True))
                await self.flush()
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                wait = deadline - now
                if bookmarks:
                    wait = min(wait, max(0.0, next_bookmark - now))
                try:
                    event = await watch.next(wait)
                except StopAsyncIteration:
                    break
                if event is None:
                    if bookmarks and loop.time() >= next_bookmark:
                        self.write(self._bookmark(rtype, watch))
                        await self.flush()
                        next_bookmark = loop.time() + interval
                    continue
                chunks = [self._event_line(event, watch, rtype, table, media, first_table)]
                first_table = False
                while watch.pending() and len(chunks) < 256:
                    nxt = await watch.next(0)
                    if nxt is None:
                        break
                    chunks.append(self._event_line(nxt, watch, rtype, table, media, False))
                self.write(b"".join(chunks))
                await self.flush()
        except (tornado.iostream.StreamClosedError, StopAsyncIteration):
            pass
        finally:
            watch.close()
            self.server._watchers.discard(watch)
            self._watch = None
        if not self._finished:
            try:
                self.finish()
            except tornado.iostream.StreamClosedError:
                pass

    def _write_initial_events(self, watch: Watch, rtype: ResourceType, table: bool,
                              media: MediaType | None) -> None:
        chunks: list[bytes] = []
        for event in watch.take_queued():
            chunks.append(self._event_line(event, watch, rtype, table, media, not chunks))
        if chunks:
            self.write(b"".join(chunks))

    def _bookmark(self, rtype: ResourceType, watch: Watch, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": watch.bookmark_rv()}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return _dumps({"type": "BOOKMARK", "object": {"kind": rtype.kind,
                                                      "apiVersion": rtype.api_version,
                                                      "metadata": meta}}) + b"\n"

    def _event_line(self, event: WatchEvent, watch: Watch, rtype: ResourceType, table: bool,
                    media: MediaType | None, with_columns: bool) -> bytes:
        if table:
            obj = watch.external(event.object)
            body = self._table(rtype, [obj], media, obj["metadata"].get("resourceVersion", ""),
                               include_columns=with_columns)
            return _dumps({"type": event.type, "object": body}) + b"\n"
        source = event.source
        cache_key = (event.type, rtype.api_version)
        if source is not None:
            line = source.cache.get(cache_key)
            if line is not None:
                return line
        line = (b'{"type":"' + event.type.encode() + b'","object":'
                + _dumps(watch.external(event.object)) + b"}\n")
        if source is not None:
            source.cache[cache_key] = line
        return line


# --- the server ---------------------------------------------------------------------------------

class APIServer:
    """Serves ``store`` over HTTP on ``host:port`` (port 0 picks a free one) until ``stop()``.

    ``log_provider(namespace, pod, container) -> str`` (or an awaitable of str) answers
    ``pods/log``; the kubelet plugs in its own.  Every request is authenticated by
    ``authenticator`` (``authn.py``) before it is routed; by default only ServiceAccount tokens
    from ``service_account_tokens`` (which also answers the TokenRequest API) are accepted, so a
    caller that wants an admin passes an authenticator with one.  Then ``authorizer`` judges it
    (by default RBAC over the stored roles and bindings, ``rbac.py``, with the default cluster
    roles created at start), and client writes pass OwnerReferencesPermissionEnforcement.
    With ``tls`` (a server SSL context) the same API is also served over HTTPS on a second port
    (``tls_url``; ``tls_port`` 0 picks a free one): in-cluster clients only speak HTTPS. Both
    listeners authenticate and authorize alike.
    """

    def __init__(self, store: Store, host: str = "127.0.0.1", port: int = 0, *,
                 authenticator: Authenticator | None = None,
                 authorizer: Authorizer | None = None,
                 service_account_tokens: ServiceAccountTokens | None = None,
                 log_provider: LogProvider | None = None,
                 bookmark_interval: float = 60.0, watch_timeout: int = 1800,
                 tls: ssl.SSLContext | None = None, tls_port: int = 0) -> None:
        self.store = store
        self.host = host
        self._requested_port = port
        self.port = 0
        self.service_account_tokens = service_account_tokens or ServiceAccountTokens(store)
        self.authenticator = authenticator or Authenticator([self.service_account_tokens])
        self.authorizer: Authorizer = authorizer or RBACAuthorizer(*store_readers(store))
        self.owner_references = OwnerReferencesPermissionEnforcement(self.authorizer,
                                                                     store.registry)
        self.log_provider = log_provider
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.request_counter = RequestCounter()
        self.openapi = openapi.OpenAPIDocuments(store.registry)
        self._server: tornado.httpserver.HTTPServer | None = None
        self._watchers: set[Watch] = set()
        self.tls = tls
        self._requested_tls_port = tls_port
        self.tls_port = 0
        self._tls_server: tornado.httpserver.HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        """The HTTPS endpoint (``https://host:port``), when serving TLS."""
        return f"https://{self.host}:{self.tls_port}" if self._tls_server is not None else None

    def _log_request(self, handler: tornado.web.RequestHandler) -> None:
        status = handler.get_status()
        if status >= 500:
            log.warning("%s %s -> %d", handler.request.method, handler.request.uri, status)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %d", handler.request.method, handler.request.uri, status)

    async def start(self) -> None:
        if self._server is not None:
            return
        ensure_bootstrap_policy(self.store)
        app = tornado.web.Application([(r"/.*", _Handler, {"server": self})],
                                      log_function=self._log_request, compress_response=False)
        sockets = tornado.netutil.bind_sockets(self._requested_port, address=self.host,
                                               family=socket.AF_INET)
        server = tornado.httpserver.HTTPServer(app, max_body_size=64 * 1024 * 1024,
                                              idle_connection_timeout=3600)
        server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._server = server
        if self.tls is not None:
            tls_sockets = tornado.netutil.bind_sockets(self._requested_tls_port,
                                                       address=self.host, family=socket.AF_INET)
            tls_server = tornado.httpserver.HTTPServer(
                app, ssl_options=self.tls, max_body_size=64 * 1024 * 1024,
                idle_connection_timeout=3600)
            tls_server.add_sockets(tls_sockets)
            self.tls_port = tls_sockets[0].getsockname()[1]
            self._tls_server = tls_server

    async def stop(self) -> None:
        server, self._server = self._server, None
        tls_server, self._tls_server = self._tls_server, None
        if server is None:
            return
        server.stop()
        if tls_server is not None:
            tls_server.stop()
        for watch in list(self._watchers):
            watch.close()
        # Let watch handlers see their streams end, then drop idle keep-alive connections.
        await asyncio.sleep(0)
        try:
            await asyncio.wait_for(server.close_all_connections(), 5)
            if tls_server is not None:
                await asyncio.wait_for(tls_server.close_all_connections(), 5)
        except asyncio.TimeoutError:
            log.warning("some API connections did not close within 5 s")
