"""API discovery documents: ``/version``, ``/api``, ``/apis`` and their per-version lists.

kubectl and client-go find out which resources exist, their kinds, scopes, short names and verbs
from these documents before they touch a resource, so they are generated from the live registry
(built-ins plus every established CRD).  Both the legacy documents and the aggregated
``apidiscovery.k8s.io/v2`` form (one request instead of one per group version) are served.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from .resources import Registry, ResourceType

SERVER_VERSION: dict[str, str] = {
    "major": "1",
    "minor": "37",
    "emulationMajor": "1",
    "emulationMinor": "37",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "36",
    "gitVersion": "v1.37.0-elastic-local",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"

# Verbs of subresources, as a real server advertises them.
_SUBRESOURCE_VERBS: dict[str, tuple[str, ...]] = {
    "status": ("get", "patch", "update"),
    "log": ("get",),
    "binding": ("create",),
    "eviction": ("create",),
    "scale": ("get", "patch", "update"),
    "token": ("create",),
}
# Subresources whose kind is not the parent's: name -> (group, version, kind)
_SUBRESOURCE_KINDS: dict[str, tuple[str, str, str]] = {
    "binding": ("", "v1", "Binding"),
    "eviction": ("policy", "v1", "Eviction"),
    "scale": ("autoscaling", "v1", "Scale"),
    "token": ("authentication.k8s.io", "v1", "TokenRequest"),
}


def _hash(rtype: ResourceType) -> str:
    digest = hashlib.sha256(f"{rtype.group}/{rtype.version}/{rtype.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": server_address}]}


def _group_entry(group: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    groups = [_group_entry(g, vs) for g, vs in registry.group_versions().items() if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, group: str) -> dict[str, Any] | None:
    versions = registry.group_versions().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(group, versions)}


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = registry.types_in(group, version)
    if not types:
        return None
    resources: list[dict[str, Any]] = []
    for rtype in sorted(types, key=lambda t: t.plural):
        entry: dict[str, Any] = {
            "name": rtype.plural, "singularName": rtype.singular, "namespaced": rtype.namespaced,
            "kind": rtype.kind, "verbs": list(rtype.verbs),
        }
        if rtype.short_names:
            entry["shortNames"] = list(rtype.short_names)
        if rtype.categories:
            entry["categories"] = list(rtype.categories)
        entry["storageVersionHash"] = _hash(rtype)
        resources.append(entry)
        for sub in rtype.subresources:
            sub_entry: dict[str, Any] = {"name": f"{rtype.plural}/{sub}", "singularName": "",
                                         "namespaced": rtype.namespaced, "kind": rtype.kind,
                                         "verbs": list(_SUBRESOURCE_VERBS.get(sub, ("get",)))}
            if sub in _SUBRESOURCE_KINDS:
                sgroup, sversion, skind = _SUBRESOURCE_KINDS[sub]
                sub_entry["kind"] = skind
                if sgroup:
                    sub_entry["group"], sub_entry["version"] = sgroup, sversion
            resources.append(sub_entry)
    group_version = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": resources}


def _discovery_resource(rtype: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": rtype.plural,
        "responseKind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
        "scope": "Namespaced" if rtype.namespaced else "Cluster",
        "singularResource": rtype.singular,
        "verbs": list(rtype.verbs),
    }
    if rtype.short_names:
        entry["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        entry["categories"] = list(rtype.categories)
    subs = []
    for sub in rtype.subresources:
        group, version, kind = _SUBRESOURCE_KINDS.get(sub, (rtype.group, rtype.version, rtype.kind))
        subs.append({"subresource": sub,
                     "responseKind": {"group": group, "version": version, "kind": kind},
                     "verbs": list(_SUBRESOURCE_VERBS.get(sub, ("get",)))})
    if subs:
        entry["subresources"] = subs
    return entry


def aggregated_discovery(registry: Registry, core: bool, version: str = "v2") -> dict[str, Any]:
    """The ``APIGroupDiscoveryList`` for ``/api`` (core=True) or ``/apis``."""
    items = []
    for group, versions in registry.group_versions().items():
        if bool(group) == core:
            continue
        version_entries = []
        for gv in versions:
            resources = [_discovery_resource(t) for t in
                         sorted(registry.types_in(group, gv), key=lambda t: t.plural)]
            version_entries.append({"version": gv, "resources": resources, "freshness": "Current"})
        metadata: dict[str, Any] = {"creationTimestamp": None}
        if group:
            metadata["name"] = group
        items.append({"metadata": metadata, "versions": version_entries})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}
