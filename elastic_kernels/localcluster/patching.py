"""JSON merge patch, JSON patch and strategic merge patch, as the API server applies them.

Strategic merge patch needs to know which lists merge by which key; that knowledge is Go struct
tags in a real cluster.  It is encoded here (``PATCH_META``) for the built-in kinds the local
cluster serves; the OpenAPI documents publish the same table so kubectl's client-side apply
produces patches that this module understands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import jsonpointer

from .errors import ApiError, bad_request, unprocessable


@dataclass
class PatchMeta:
    """Patch strategy of one field and the metadata of its children (for lists: of its items)."""

    strategy: str = ""  # "", "merge", "merge,retainKeys", "replace"
    merge_key: str | None = None
    children: dict[str, PatchMeta] = field(default_factory=dict)

    def child(self, name: str) -> PatchMeta:
        return self.children.get(name) or _EMPTY

    @property
    def merges(self) -> bool:
        return "merge" in self.strategy.split(",")


_EMPTY = PatchMeta()


def _obj(**children: PatchMeta) -> PatchMeta:
    return PatchMeta(children=children)


def _map_list(key: str, item: PatchMeta | None = None, retain: bool = False) -> PatchMeta:
    return PatchMeta("merge,retainKeys" if retain else "merge", key,
                     item.children if item else {})


_SET = PatchMeta("merge", None)

_CONTAINER = _obj(env=_map_list("name"), ports=_map_list("containerPort"),
                  volumeMounts=_map_list("mountPath"), volumeDevices=_map_list("devicePath"))
_OBJECT_META = _obj(finalizers=_SET, ownerReferences=_map_list("uid"))

POD_SPEC_META = _obj(
    containers=_map_list("name", _CONTAINER), initContainers=_map_list("name", _CONTAINER),
    ephemeralContainers=_map_list("name", _CONTAINER), hostAliases=_map_list("ip"),
    imagePullSecrets=_map_list("name"), resourceClaims=_map_list("name", retain=True),
    schedulingGates=_map_list("name"), topologySpreadConstraints=_map_list("topologyKey"),
    volumes=_map_list("name", retain=True))

# kind -> patch metadata of the whole object
PATCH_META: dict[str, PatchMeta] = {
    "Pod": _obj(metadata=_OBJECT_META, spec=POD_SPEC_META, status=_obj(
        conditions=_map_list("type"), hostIPs=_map_list("ip"), podIPs=_map_list("ip"),
        resourceClaimStatuses=_map_list("name", retain=True),
        nodeAllocatableResourceClaimStatuses=_map_list("resourceClaimName"))),
    "Service": _obj(metadata=_OBJECT_META, spec=_obj(ports=_map_list("port")),
                    status=_obj(conditions=_map_list("type"))),
    "Node": _obj(metadata=_OBJECT_META, spec=_obj(podCIDRs=_SET),
                 status=_obj(addresses=_map_list("type"), conditions=_map_list("type"))),
    "ServiceAccount": _obj(metadata=_OBJECT_META, secrets=_map_list("name")),
    "Namespace": _obj(metadata=_OBJECT_META, status=_obj(conditions=_map_list("type"))),
}


_TEMPLATE = _obj(metadata=_OBJECT_META, spec=POD_SPEC_META)
_CONDITIONS = _obj(conditions=_map_list("type"))
PATCH_META["Deployment"] = _obj(metadata=_OBJECT_META, spec=_obj(template=_TEMPLATE),
                                status=_CONDITIONS)
PATCH_META["DaemonSet"] = _obj(metadata=_OBJECT_META, spec=_obj(template=_TEMPLATE),
                               status=_CONDITIONS)
PATCH_META["Job"] = _obj(metadata=_OBJECT_META, spec=_obj(template=_TEMPLATE),
                         status=_CONDITIONS)
PATCH_META["CronJob"] = _obj(metadata=_OBJECT_META, spec=_obj(jobTemplate=_obj(
    metadata=_OBJECT_META, spec=_obj(template=_TEMPLATE))))
PATCH_META["PodDisruptionBudget"] = _obj(metadata=_OBJECT_META, status=_CONDITIONS)
PATCH_META["PersistentVolumeClaim"] = _obj(metadata=_OBJECT_META, status=_CONDITIONS)


def patch_meta_for(kind: str) -> PatchMeta:
    return PATCH_META.get(kind) or _obj(metadata=_OBJECT_META)


# --- JSON merge patch (RFC 7386) ----------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- JSON patch (RFC 6902) ----------------------------------------------------------------------

def json_patch(target: dict, patch: Any) -> dict:
    if not isinstance(patch, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    try:
        ops = jsonpatch.JsonPatch(patch)
    except (jsonpatch.InvalidJsonPatch, TypeError, AttributeError) as exc:
        raise bad_request(f"invalid JSON patch: {exc}") from None
    try:
        result = ops.apply(target)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise unprocessable(f"the server rejected our request due to an error in our request: "
                            f"testing value failed: {exc}") from None
    except jsonpatch.InvalidJsonPatch as exc:
        raise bad_request(f"invalid JSON patch: {exc}") from None
    except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException, KeyError,
            IndexError, TypeError) as exc:
        raise unprocessable(f"the server rejected our request due to an error in our request: "
                            f"{exc}") from None
    if not isinstance(result, dict):
        raise unprocessable("the server rejected our request: the patched document is not an "
                            "object")
    return result


# --- strategic merge patch ----------------------------------------------------------------------

_DIRECTIVE = "$patch"


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items()
                if not (k.startswith(("$setElementOrder/", "$deleteFromPrimitiveList/"))
                        or k in (_DIRECTIVE, "$retainKeys"))}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def strategic_merge_patch(original: Any, patch: Any, meta: PatchMeta) -> Any:
    """Apply a strategic merge patch; lists merge by key where ``meta`` says so."""
    if not isinstance(patch, dict):
        return patch
    directive = patch.get(_DIRECTIVE)
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise bad_request(f"Unknown patch type: {directive} in map: {patch}")
    result = dict(original) if isinstance(original, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in (_DIRECTIVE, "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list) and isinstance(value, list):
                result[name] = [v for v in result[name] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        child = meta.child(key)
        if isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value, child)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and child.merges:
            result[key] = _merge_list(result.get(key), value, child, key)
        else:
            result[key] = _strip_directives(value)
    if isinstance(retain, list):
        keep = set(retain)
        result = {k: v for k, v in result.items() if k in keep}
    return result


def _merge_list(original: Any, patch: list, meta: PatchMeta, name: str) -> list:
    current = list(original) if isinstance(original, list) else []
    if any(isinstance(e, dict) and e.get(_DIRECTIVE) == "replace" for e in patch):
        return [_strip_directives(e) for e in patch
                if not (isinstance(e, dict) and e.get(_DIRECTIVE) == "replace")]
    key = meta.merge_key
    if key is None:  # a set of primitives: union, keeping the original order
        for item in patch:
            if item not in current:
                current.append(_strip_directives(item))
        return current
    for item in patch:
        if not isinstance(item, dict):
            raise bad_request(f"unable to find api field in struct for the merge key {key!r} of "
                              f"list {name!r}: element {item!r} is not a map")
        if key not in item:
            raise bad_request(f"map: {item} does not contain declared merge key: {key}")
        index = next((i for i, e in enumerate(current)
                      if isinstance(e, dict) and e.get(key) == item[key]), None)
        if item.get(_DIRECTIVE) == "delete":
            if index is not None:
                del current[index]
            continue
        if index is None:
            current.append(strategic_merge_patch({}, item, meta))
        else:
            current[index] = strategic_merge_patch(current[index], item, meta)
    return current


def apply_patch(original: dict, patch: Any, patch_type: str, kind: str,
                strategic_allowed: bool = True) -> dict:
    """Dispatch on ``patch_type`` ("merge", "json", "strategic", "apply")."""
    if patch_type == "json":
        return json_patch(original, patch)
    if not isinstance(patch, dict):
        raise bad_request("json: cannot unmarshal array into Go value of type "
                          "map[string]interface {}")
    if patch_type == "merge":
        return merge_patch(original, patch)
    if patch_type == "strategic":
        if not strategic_allowed:
            raise ApiError(415, "UnsupportedMediaType",
                           "the body of the request was in an unknown format - accepted media "
                           "types include: application/json-patch+json, "
                           "application/merge-patch+json, application/apply-patch+yaml")
        return strategic_merge_patch(original, patch, patch_meta_for(kind))
    if patch_type == "apply":
        if strategic_allowed:
            return strategic_merge_patch(original, patch, patch_meta_for(kind))
        return merge_patch(original, patch)
    raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {patch_type!r}")
