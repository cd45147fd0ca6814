"""OpenAPI documents (v3 per group version, and v2) for the kinds the local cluster serves.

kubectl reads them to decide how to talk to the server: ``create``/``apply``/``replace`` look for
the ``fieldValidation`` query parameter on each kind's PATCH operation (and then let the server
validate), and client-side ``apply`` reads ``x-kubernetes-patch-strategy``/``-merge-key`` to build
strategic merge patches for built-in kinds.  Built-in schemas are generated from the official
Python client's model classes (their ``openapi_types``/``attribute_map``), annotated with the same
patch metadata the server's strategic merge uses (``patching.PATCH_META``); custom resources get
their CRD's ``openAPIV3Schema``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from kubernetes.client import models as k8s_models

from .patching import PATCH_META, PatchMeta
from .resources import BUILTIN_TYPES, Registry, ResourceType

_META_PKG = "io.k8s.apimachinery.pkg.apis.meta.v1"
_META_NAMES = {
    "ObjectMeta", "ListMeta", "OwnerReference", "ManagedFieldsEntry", "Status", "StatusDetails",
    "StatusCause", "DeleteOptions", "Preconditions", "LabelSelector", "LabelSelectorRequirement",
    "Condition", "Time", "MicroTime", "APIResource", "APIResourceList", "APIGroup",
    "APIGroupList", "GroupVersionForDiscovery", "ServerAddressByClientCIDR", "WatchEvent",
}
# storage.k8s.io/v1 models (the rest of the core-looking names are core/v1).
_STORAGE_NAMES = {"StorageClass", "StorageClassList"}
_APIEXT_PKG = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1"
_APIEXT_PREFIXES = ("CustomResource", "JSONSchemaProps", "WebhookConversion",
                    "WebhookClientConfig", "ExternalDocumentation", "ValidationRule",
                    "SelectableField")

# (group, kind) -> python model class name of the external form, for every built-in kind served.
_KIND_MODELS: dict[tuple[str, str], str] = {
    **{(t.group, t.kind): t.model for t in BUILTIN_TYPES if t.model},
    ("events.k8s.io", "Event"): "EventsV1Event",  # stored as core Events, served as events/v1
}

_PRIMITIVES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer", "format": "int64"},
    "float": {"type": "number", "format": "double"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date"},
    "object": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
}

_LIST_RE = re.compile(r"^[Ll]ist\[(.+)\]$")
_DICT_RE = re.compile(r"^[Dd]ict[\[(]str, (.+)[\])]$")


def definition_name(model: str) -> str:
    """The Kubernetes OpenAPI definition name of a python client model class name."""
    if model.startswith("CoreV1"):
        return f"io.k8s.api.core.v1.{model[6:]}"
    if model.startswith("EventsV1"):
        return f"io.k8s.api.events.v1.{model[8:]}"
    short = model[2:] if model.startswith("V1") else model
    if short in _META_NAMES:
        return f"{_META_PKG}.{short}"
    if short.startswith(_APIEXT_PREFIXES):
        return f"{_APIEXT_PKG}.{short}"
    if short.startswith("Lease"):
        return f"io.k8s.api.coordination.v1.{short}"
    if short in _STORAGE_NAMES:
        return f"io.k8s.api.storage.v1.{short}"
    return f"io.k8s.api.core.v1.{short}"


class _SchemaBuilder:
    """Walks python client models into OpenAPI schemas with patch-strategy annotations."""

    def __init__(self, ref_prefix: str) -> None:
        self.ref_prefix = ref_prefix
        self.schemas: dict[str, dict[str, Any]] = {}
        # definition name -> json field -> (strategy, merge key)
        self.patch_ext: dict[str, dict[str, tuple[str, str | None]]] = {}

    def annotate(self, model: str, meta: PatchMeta) -> None:
        cls = getattr(k8s_models, model, None)
        if cls is None:
            return
        by_json = {v: k for k, v in cls.attribute_map.items()}
        for field, child in meta.children.items():
            attr = by_json.get(field)
            if attr is None:
                continue
            type_name = cls.openapi_types[attr]
            if child.strategy:
                self.patch_ext.setdefault(definition_name(model), {})[field] = (
                    child.strategy, child.merge_key)
            inner = type_name
            match = _LIST_RE.match(inner)
            if match:
                inner = match.group(1)
            if getattr(k8s_models, inner, None) is not None and child.children:
                self.annotate(inner, child)

    def ref(self, model: str) -> dict[str, Any]:
        return {"$ref": self.ref_prefix + definition_name(model)}

    def type_schema(self, type_name: str) -> dict[str, Any]:
        if type_name in _PRIMITIVES:
            return dict(_PRIMITIVES[type_name])
        match = _LIST_RE.match(type_name)
        if match:
            return {"type": "array", "items": self.type_schema(match.group(1))}
        match = _DICT_RE.match(type_name)
        if match:
            return {"type": "object", "additionalProperties": self.type_schema(match.group(1))}
        if getattr(k8s_models, type_name, None) is not None:
            self.add_model(type_name)
            return self.ref(type_name)
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

    def add_model(self, model: str) -> str:
        name = definition_name(model)
        if name in self.schemas:
            return name
        cls = getattr(k8s_models, model)
        schema: dict[str, Any] = {"type": "object", "properties": {}}
        self.schemas[name] = schema
        doc = (cls.__doc__ or "").strip().splitlines()
        if doc:
            schema["description"] = doc[0]
        ext = self.patch_ext.get(name, {})
        for attr, type_name in cls.openapi_types.items():
            field = cls.attribute_map[attr]
            prop = self.type_schema(type_name)
            if field in ext:
                strategy, key = ext[field]
                prop["x-kubernetes-patch-strategy"] = strategy
                if key:
                    prop["x-kubernetes-patch-merge-key"] = key
                    if prop.get("type") == "array":
                        prop["x-kubernetes-list-type"] = "map"
                        prop["x-kubernetes-list-map-keys"] = [key]
                elif prop.get("type") == "array":
                    prop["x-kubernetes-list-type"] = "set"
            schema["properties"][field] = prop
        return name


def _parameters(*names: str) -> list[dict[str, Any]]:
    descriptions = {
        "dryRun": "When present, indicates that modifications should not be persisted.",
        "fieldManager": "fieldManager is a name associated with the actor or entity that is "
                        "making these changes.",
        "fieldValidation": "fieldValidation instructs the server on how to handle objects in the "
                           "request containing unknown or duplicate fields. Valid values are: "
                           "Ignore, Warn, Strict.",
        "force": "Force is going to \"force\" Apply requests.",
        "pretty": "If 'true', then the output is pretty printed.",
        "labelSelector": "A selector to restrict the list of returned objects by their labels.",
        "fieldSelector": "A selector to restrict the list of returned objects by their fields.",
        "resourceVersion": "resourceVersion sets a constraint on what resource versions a request "
                           "may be served from.",
        "watch": "Watch for changes to the described resources.",
        "limit": "limit is a maximum number of responses to return for a list call.",
        "continue": "The continue option should be set when retrieving more results from the "
                    "server.",
        "timeoutSeconds": "Timeout for the list/watch call.",
        "allowWatchBookmarks": "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
        "gracePeriodSeconds": "The duration in seconds before the object should be deleted.",
        "propagationPolicy": "Whether and how garbage collection will be performed.",
    }
    types = {"force": "boolean", "watch": "boolean", "allowWatchBookmarks": "boolean",
             "limit": "integer", "timeoutSeconds": "integer", "gracePeriodSeconds": "integer"}
    return [{"name": n, "in": "query", "description": descriptions.get(n, n),
             "schema": {"type": types.get(n, "string"), "uniqueItems": True}} for n in names]


def _operation(action: str, rtype: ResourceType, op_id: str, schema_ref: dict | None,
               params: list[dict], body: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {
            "application/json": {"schema": schema_ref or {"type": "object"}}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rtype.group, "version": rtype.version,
                                            "kind": rtype.kind},
    }
    if body:
        types = ["application/json", "application/yaml"]
        if action == "patch":
            types = ["application/json-patch+json", "application/merge-patch+json",
                     "application/apply-patch+yaml"]
            if rtype.strategic_merge:
                types.append("application/strategic-merge-patch+json")
        op["requestBody"] = {"required": True, "content": {
            t: {"schema": schema_ref or {"type": "object"}} for t in types}}
    return op


def _paths(rtype: ResourceType, kind_ref: dict, list_ref: dict | None) -> dict[str, Any]:
    prefix = f"/apis/{rtype.group}/{rtype.version}" if rtype.group else "/api/v1"
    base = f"{prefix}/namespaces/{{namespace}}/{rtype.plural}" if rtype.namespaced else \
        f"{prefix}/{rtype.plural}"
    op_kind = rtype.kind
    path_params = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    if rtype.namespaced:
        path_params.append({"name": "namespace", "in": "path", "required": True,
                            "schema": {"type": "string"}})
    write = _parameters("dryRun", "fieldManager", "fieldValidation", "pretty")
    paths: dict[str, Any] = {
        base: {
            "get": _operation("list", rtype, f"list{op_kind}", list_ref,
                              _parameters("labelSelector", "fieldSelector", "limit", "continue",
                                          "resourceVersion", "timeoutSeconds", "watch",
                                          "allowWatchBookmarks")),
            "post": _operation("post", rtype, f"create{op_kind}", kind_ref, write, True),
            "delete": _operation("deletecollection", rtype, f"deleteCollection{op_kind}", None,
                                 _parameters("labelSelector", "fieldSelector",
                                             "gracePeriodSeconds", "propagationPolicy",
                                             "dryRun")),
            "parameters": path_params[1:],
        },
        f"{base}/{{name}}": {
            "get": _operation("get", rtype, f"read{op_kind}", kind_ref, _parameters("pretty")),
            "put": _operation("put", rtype, f"replace{op_kind}", kind_ref, write, True),
            "patch": _operation("patch", rtype, f"patch{op_kind}", kind_ref,
                                write + _parameters("force"), True),
            "delete": _operation("delete", rtype, f"delete{op_kind}", kind_ref,
                                 _parameters("gracePeriodSeconds", "propagationPolicy",
                                             "dryRun")),
            "parameters": path_params,
        },
    }
    if rtype.status_subresource:
        paths[f"{base}/{{name}}/status"] = {
            "get": _operation("get", rtype, f"read{op_kind}Status", kind_ref, []),
            "put": _operation("put", rtype, f"replace{op_kind}Status", kind_ref, write, True),
            "patch": _operation("patch", rtype, f"patch{op_kind}Status", kind_ref,
                                write + _parameters("force"), True),
            "parameters": path_params,
        }
    return paths


def _custom_schema(rtype: ResourceType, crd_version: dict, ref_prefix: str) -> dict[str, Any]:
    schema = json.loads(json.dumps((crd_version.get("schema") or {}).get("openAPIV3Schema")
                                   or {"type": "object"}))
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "description": "APIVersion defines the versioned "
                                                            "schema of this representation."}
    props["kind"] = {"type": "string", "description": "Kind is a string value representing the "
                                                      "REST resource this object represents."}
    props["metadata"] = {"$ref": ref_prefix + f"{_META_PKG}.ObjectMeta"}
    schema["x-kubernetes-group-version-kind"] = [
        {"group": rtype.group, "kind": rtype.kind, "version": rtype.version}]
    return schema


class OpenAPIDocuments:
    """Builds (and caches until the registry changes) the OpenAPI v2 and v3 documents."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._generation = -1
        self._v3: dict[str, dict[str, Any]] = {}
        self._v3_hashes: dict[str, str] = {}
        self._v2: dict[str, Any] | None = None

    def _refresh(self) -> None:
        if self._generation == self.registry.generation:
            return
        self._generation = self.registry.generation
        self._v2 = None
        self._v3 = {}
        groups = self.registry.group_versions()
        for group, versions in groups.items():
            for version in versions:
                key = f"apis/{group}/{version}" if group else f"api/{version}"
                doc = self._group_version_doc(group, version, "#/components/schemas/")
                self._v3[key] = doc
                self._v3_hashes[key] = hashlib.sha512(
                    json.dumps(doc, sort_keys=True).encode()).hexdigest()[:64].upper()

    def _group_version_doc(self, group: str, version: str, ref_prefix: str) -> dict[str, Any]:
        builder = _SchemaBuilder(ref_prefix)
        models_by_kind = {kind: model for (_, kind), model in _KIND_MODELS.items()}
        for model_kind, meta in PATCH_META.items():
            model = models_by_kind.get(model_kind)
            if model:
                builder.annotate(model, meta)
        schemas: dict[str, Any] = {}
        paths: dict[str, Any] = {}
        builder.add_model("V1ObjectMeta")
        builder.add_model("V1Status")
        builder.add_model("V1DeleteOptions")
        for rtype in self.registry.types_in(group, version):
            list_ref = None
            if rtype.is_custom:
                crd_version = (self.registry.crd_versions.get(rtype.key) or {}).get(version) or {}
                name = f"{'.'.join(reversed(rtype.group.split('.')))}.{version}.{rtype.kind}"
                schemas[name] = _custom_schema(rtype, crd_version, ref_prefix)
                kind_ref = {"$ref": ref_prefix + name}
                schemas[name + "List"] = {
                    "type": "object", "properties": {
                        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                        "items": {"type": "array", "items": kind_ref},
                        "metadata": {"$ref": ref_prefix + f"{_META_PKG}.ListMeta"}},
                    "x-kubernetes-group-version-kind": [{"group": rtype.group,
                                                         "kind": rtype.kind + "List",
                                                         "version": version}]}
                builder.add_model("V1ListMeta")
                list_ref = {"$ref": ref_prefix + name + "List"}
            else:
                model = _KIND_MODELS.get((rtype.group, rtype.kind))
                if model is None:
                    continue
                defname = builder.add_model(model)
                builder.schemas[defname]["x-kubernetes-group-version-kind"] = [
                    {"group": rtype.group, "kind": rtype.kind, "version": rtype.version}]
                kind_ref = builder.ref(model)
                list_model = model + "List"
                if getattr(k8s_models, list_model, None) is not None:
                    list_name = builder.add_model(list_model)
                    builder.schemas[list_name]["x-kubernetes-group-version-kind"] = [
                        {"group": rtype.group, "kind": rtype.kind + "List",
                         "version": rtype.version}]
                    list_ref = builder.ref(list_model)
            paths.update(_paths(rtype, kind_ref, list_ref))
        schemas.update(builder.schemas)
        return {"openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.37.0"},
                "paths": paths, "components": {"schemas": schemas}}

    def v3_index(self) -> dict[str, Any]:
        self._refresh()
        return {"paths": {
            key: {"serverRelativeURL": f"/openapi/v3/{key}?hash={self._v3_hashes[key]}"}
            for key in self._v3}}

    def v3_group_version(self, key: str) -> dict[str, Any] | None:
        self._refresh()
        return self._v3.get(key.strip("/"))

    def v2(self) -> dict[str, Any]:
        self._refresh()
        if self._v2 is None:
            definitions: dict[str, Any] = {}
            paths: dict[str, Any] = {}
            for doc in self._v3.values():
                text = json.dumps(doc["components"]["schemas"]).replace(
                    "#/components/schemas/", "#/definitions/")
                definitions.update(json.loads(text))
                for path, item in doc["paths"].items():
                    converted: dict[str, Any] = {}
                    for method, op in item.items():
                        if method == "parameters":
                            converted[method] = [{k: v for k, v in p.items() if k != "schema"}
                                                 | {"type": p.get("schema", {}).get("type",
                                                                                    "string")}
                                                 for p in op]
                            continue
                        op2 = {k: v for k, v in op.items() if k not in ("requestBody", "responses")}
                        op2["parameters"] = [{k: v for k, v in p.items() if k != "schema"}
                                             | {"type": p.get("schema", {}).get("type", "string")}
                                             for p in op.get("parameters", [])]
                        op2["responses"] = {"200": {"description": "OK"}}
                        converted[method] = op2
                    paths[path] = converted
            self._v2 = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.37.0"},
                        "paths": paths, "definitions": definitions}
        return self._v2
