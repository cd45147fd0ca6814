"""The API server's request handler: one tornado handler that serves every URL as kube-apiserver.

Each request is authenticated (``authn.py``), then authorized from its URL alone (``rbac.py`` via
``requestinfo.py``), then routed (``routing.py``): discovery and OpenAPI documents, or a resource
verb on the store. Resource responses follow the client's ``Accept`` (``negotiation.py``): plain
JSON, server-side tables (``tables.py``) or partial object metadata; bodies may be JSON, YAML or,
for the few kinds kubectl sends so, protobuf (``protobuf.py``). Writes carry the request's
``WriteOptions`` and its admission (OwnerReferencesPermissionEnforcement, ``ownerrefs.py``).
Watches stream from the store's watch cache in the wire form of ``watchstream.py``, with
bookmarks, until their timeout or until the client leaves. Bad input always gets a 4xx
``Status``; an unexpected exception gets a 500 ``Status`` and is logged, and the server keeps
serving.

``APIServer`` (``apiserver.py``) mounts it for every path; nothing else uses it, and nothing here
is meant to be overridden.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import tornado.iostream
import tornado.web
import yaml

from . import discovery
from . import errors as E
from .accessreview import self_subject_access_review, self_subject_rules_review
from .authn import ANONYMOUS, UserInfo, self_subject_review
from .authz import forbidden
from .errors import ApiError
from .negotiation import JSON_TYPE, MediaType, choose, dumps, parse_accept
from .protobuf import decode_protobuf
from .requestinfo import request_attributes
from .resources import ResourceType
from .routing import TRUE_VALUES, Route, not_found, parse_route, request_verb
from .tables import build_table, partial_metadata
from .watchcache import Watch, WatchEvent
from .watchstream import bookmark_line, error_line, event_line, table_event_line
from .writeoptions import WriteOptions

if TYPE_CHECKING:
    from .apiserver import APIServer

log = logging.getLogger(__name__)

_PATCH_TYPES = {
    "application/merge-patch+json": "merge",
    "application/json-patch+json": "json",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}
_PATCH_ACCEPTED = ["application/json-patch+json", "application/merge-patch+json",
                   "application/apply-patch+yaml", "application/strategic-merge-patch+json"]


class RequestHandler(tornado.web.RequestHandler):
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
        self.set_header("Content-Type", JSON_TYPE)
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
        self.set_header("Content-Type", JSON_TYPE)
        self.finish(dumps(ApiError(status_code, reason, message).status()))

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

    def _send(self, body: Any, code: int = 200, content_type: str = JSON_TYPE) -> None:
        self.set_status(code)
        self.set_header("Content-Type", content_type)
        self.finish(body if isinstance(body, bytes) else dumps(body))

    def _send_error(self, error: ApiError) -> None:
        if self._finished:
            return
        if self._headers_written:
            # Mid-stream (a watch): report in-band as the real server does.
            try:
                self.write(error_line(error))
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
        if value is None or value == "":
            return None
        try:
            return int(value)
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
        opts = WriteOptions(dry_run=bool(dry), field_validation=validation)
        # validating admission (admission.py) for this caller, its warnings in this request's
        opts.admit = functools.partial(self.server.admission.validate, self.user, opts)
        return opts

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
                raise not_found()
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
                    raise not_found()
                self._send(body)
                return
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise not_found()
        if not rest:
            self._nonresource("/" + "/".join(parts))
            body = discovery.api_resource_list(self.store.registry, group, version)
            if body is None:
                raise not_found()
            self._send(body)
            return
        route = parse_route(self.store.registry, group, version, rest)
        await self._serve_resource(method, route)

    def _nonresource(self, path: str) -> None:
        self.server.request_counter.record_nonresource(path)

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
            if media.type in (JSON_TYPE, "*/*", "application/*") and not media.as_:
                break
        if core:
            self._send(discovery.api_versions(f"{self.server.host}:{self.server.port}"))
        else:
            self._send(discovery.api_group_list(self.store.registry))

    def _serve_openapi(self, parts: list[str]) -> None:
        docs = self.server.openapi
        if len(parts) == 2 and parts[1] == "v2":
            self._send(docs.v2(), 200, JSON_TYPE)
            return
        if len(parts) >= 2 and parts[1] == "v3":
            if len(parts) == 2:
                self._send(docs.v3_index())
                return
            body = docs.v3_group_version("/".join(parts[2:]))
            if body is None:
                raise not_found()
            self._send(body)
            return
        raise not_found()

    # resources ----------------------------------------------------------------------------------

    async def _serve_resource(self, method: str, route: Route) -> None:
        rtype = route.rtype
        verb = request_verb(method, route, self._query("watch"))
        self.server.request_counter.record(verb, rtype.group, rtype.plural, route.subresource,
                                           route.namespace or "", self.user.name)
        if route.subresource and route.subresource not in rtype.subresources:
            raise not_found()
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

    def _object_name(self, route: Route) -> str:
        """The object's name, for verbs that only route to a named object."""
        if route.name is None:
            raise not_found()
        return route.name

    def _namespace(self, route: Route) -> str:
        """The namespace, for kinds that are only namespaced (pods, serviceaccounts)."""
        if route.namespace is None:
            raise not_found()
        return route.namespace

    def _namespace_required(self, route: Route) -> str | None:
        if route.rtype.namespaced and route.namespace is None:
            raise not_found()
        return route.namespace

    def _representation(self) -> tuple[str, MediaType | None]:
        return choose(parse_accept(self.request.headers.get("Accept")),
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
        return f"application/json;as=Table;v={self._table_version(media)};g=meta.k8s.io"

    def _table(self, rtype: ResourceType, objects: list[dict], media: MediaType | None,
               rv: str, include_columns: bool = True) -> dict:
        return build_table(rtype, objects, version=self._table_version(media),
                           include_object=self._query("includeObject") or "PartialObjectMetadata",
                           rv=rv, include_columns=include_columns)

    def _table_version(self, media: MediaType | None) -> str:
        return (media.params.get("v") if media else None) or "v1"

    def _get(self, route: Route) -> None:
        if route.name is None:
            raise not_found()
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
            meta["continue"] = base64.urlsafe_b64encode(dumps(
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
            raise not_found()
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
        obj = self.store.replace_ref(route.rtype, self._namespace_required(route),
                                     self._object_name(route), body, route.subresource or None,
                                     opts)
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
                self.store.get_ref(route.rtype, ns, self._object_name(route))
            except ApiError as exc:
                if exc.code != 404:
                    raise
                existed = False
        obj = self.store.patch_ref(route.rtype, ns, self._object_name(route), patch,
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
            propagation = "Orphan" if orphan in TRUE_VALUES else "Background"
        return grace, propagation, preconditions, opts

    def _delete(self, route: Route) -> None:
        if route.subresource:
            raise E.method_not_allowed("the server does not allow this method on the requested "
                                       "resource")
        grace, propagation, preconditions, opts = self._delete_options()
        ns = self._namespace_required(route)
        rtype = route.rtype
        name = self._object_name(route)
        obj = self.store.delete_ref(rtype, ns, name,
                                    grace, propagation, preconditions, opts)
        try:
            self.store.get_ref(rtype, ns, name)
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
        name = route.name or str(meta.get("name") or "")
        target = body.get("target") or {}
        node = str(target.get("name") or "")
        errs = []
        if not name:
            errs.append(E.required("metadata.name"))
        if not node:
            errs.append(E.required("target.name"))
        if errs:
            raise E.invalid_object("Binding", name, errs)
        pods = self.store.resource_type(("", "pods"))
        self.store.bind_ref(pods, route.namespace, name, node, meta.get("uid"))
        self._send({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "code": 201}, 201)

    def _token_request(self, route: Route) -> None:
        """POST serviceaccounts/{name}/token (TokenRequest), as ``kubectl create token`` does."""
        ns = self._namespace(route)
        body = self._body()
        opts = self._options()
        answer = self.server.service_account_tokens.token_request(ns, self._object_name(route),
                                                                  body)
        if opts.dry_run:
            answer["status"] = {"token": "", "expirationTimestamp": None}
        self._send(answer, 201)

    def _self_subject_review(self, route: Route) -> None:
        """POST selfsubjectreviews: the caller as authenticated (``kubectl auth whoami``)."""
        if route.name is not None or route.subresource:
            raise not_found()
        body = self._body()
        if not isinstance(body, dict) or body.get("kind") not in (None, "SelfSubjectReview"):
            raise E.bad_request("the body of the request must be a SelfSubjectReview object")
        self._send(self_subject_review(self.user), 201)

    def _access_review(self, route: Route) -> None:
        """POST selfsubjectaccessreviews (``kubectl auth can-i``) or selfsubjectrulesreviews
        (``kubectl auth can-i --list``): answered by the authorizer that judges requests."""
        if route.name is not None or route.subresource:
            raise not_found()
        review = (self_subject_access_review if route.rtype.plural == "selfsubjectaccessreviews"
                  else self_subject_rules_review)
        self._send(review(self.user, self._body(), self.server.authorizer), 201)

    def _evict(self, route: Route) -> None:
        body = self._body() or {}
        options = body.get("deleteOptions") or {}
        self.store.delete_ref(route.rtype, route.namespace, self._object_name(route),
                              options.get("gracePeriodSeconds"), options.get("propagationPolicy"),
                              options.get("preconditions"))
        self._send({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "code": 201}, 201)

    async def _pod_log(self, route: Route) -> None:
        ns = self._namespace(route)
        name = self._object_name(route)
        pod = self.store.get_ref(route.rtype, ns, name)
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
        text = provider(ns, name, container)
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
        send_initial = (rv in (None, "", "0") if send_initial_q is None
                        else send_initial_q in TRUE_VALUES)
        bookmarks = (self._query("allowWatchBookmarks") or "") in TRUE_VALUES
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
            self.set_header("Content-Type", JSON_TYPE)
            self.write(error_line(exc))
            self.finish()
            return
        self._watch = watch
        self.server.open_watches.add(watch)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = self.server.bookmark_interval
        next_bookmark = loop.time() + interval
        first_table = True
        self.set_header("Content-Type", self._table_content_type(media) if table else JSON_TYPE)
        try:
            await self.flush()
            if send_initial and send_initial_q is not None and bookmarks:
                self._write_initial_events(watch, rtype, table, media)
                self.write(bookmark_line(rtype, watch, initial_end=True))
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
                        self.write(bookmark_line(rtype, watch))
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
            self.server.open_watches.discard(watch)
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

    def _event_line(self, event: WatchEvent, watch: Watch, rtype: ResourceType, table: bool,
                    media: MediaType | None, with_columns: bool) -> bytes:
        if not table:
            return event_line(event, watch, rtype)
        return table_event_line(
            event, watch, rtype, version=self._table_version(media),
            include_object=self._query("includeObject") or "PartialObjectMetadata",
            with_columns=with_columns)
