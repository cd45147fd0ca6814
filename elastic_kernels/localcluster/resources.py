"""The resource types the local API server serves, built in and from CRDs.

One table drives discovery, URL routing, storage behaviour (status subresource, generation,
graceful deletion) and the field selectors a kind supports, so that a kind added here is consistent
everywhere.  The values follow what a real 1.3x kube-apiserver advertises for the same kinds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from collections.abc import Callable

ResourceKey = tuple[str, str]  # (group, plural); core group is ""

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
CLUSTER_VERBS = ALL_VERBS


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclass(frozen=True)
class ResourceType:
    """What the API server needs to know to serve one resource (one group/plural)."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    categories: tuple[str, ...] = ()
    status_subresource: bool = False
    extra_subresources: tuple[str, ...] = ()  # e.g. ("log",) for pods
    has_generation: bool = False
    allow_unconditional_update: bool = True
    return_deleted_object: bool = False
    strategic_merge: bool = True  # False for custom resources (415, like real)
    field_labels: tuple[str, ...] = ()
    field_aliases: tuple[tuple[str, str], ...] = ()  # (external label, stored label)
    storage: ResourceKey | None = None  # alias onto another type's storage (events.k8s.io)
    # For custom resources: every served version, the CRD's name and its uid.
    served_versions: tuple[str, ...] = ()
    crd_name: str = ""
    printer_columns: tuple[PrinterColumn, ...] = ()
    selectable_fields: tuple[str, ...] = ()
    # For built-in kinds: the official client's model class of the stored form (field sets).
    model: str = ""

    @property
    def key(self) -> ResourceKey:
        return (self.group, self.plural)

    @property
    def storage_key(self) -> ResourceKey:
        return self.storage or self.key

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``pods`` or ``jupyterkernels.elastic.jupyter.org``: how errors name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """``Pod`` or ``JupyterKernel.elastic.jupyter.org``: how 422 messages name the kind."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def is_custom(self) -> bool:
        return bool(self.crd_name)

    @property
    def subresources(self) -> tuple[str, ...]:
        return (("status",) if self.status_subresource else ()) + self.extra_subresources

    def versions(self) -> tuple[str, ...]:
        return self.served_versions or (self.version,)

    def with_version(self, version: str) -> ResourceType:
        return self if version == self.version else replace(self, version=version)


_POD_FIELDS = ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
               "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
               "status.nominatedNodeName")
_EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                 "involvedObject.uid", "involvedObject.apiVersion",
                 "involvedObject.resourceVersion",
                 "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type")
_EVENTS_V1_ALIASES = tuple((f"regarding.{f.split('.', 1)[1]}", f) for f in _EVENT_FIELDS
                           if f.startswith("involvedObject.")) + (
    ("reportingController", "reportingComponent"), ("deprecatedSource", "source"))

_RBAC = "rbac.authorization.k8s.io"

BUILTIN_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "pods", "pod", "Pod", True, ("po",), categories=("all",),
                 status_subresource=True, extra_subresources=("log", "binding", "eviction"),
                 has_generation=True, return_deleted_object=True, field_labels=_POD_FIELDS,
                 model="V1Pod"),
    ResourceType("", "v1", "secrets", "secret", "Secret", True, field_labels=("type",),
                 model="V1Secret"),
    ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",),
                 model="V1ConfigMap"),
    ResourceType("", "v1", "services", "service", "Service", True, ("svc",), categories=("all",),
                 status_subresource=True, return_deleted_object=True, model="V1Service"),
    ResourceType("", "v1", "bindings", "binding", "Binding", True, verbs=("create",)),
    ResourceType("", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, ("sa",),
                 extra_subresources=("token",), model="V1ServiceAccount"),
    ResourceType("", "v1", "namespaces", "namespace", "Namespace", False, ("ns",),
                 verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
                 status_subresource=True, return_deleted_object=True,
                 field_labels=("status.phase",), model="V1Namespace"),
    ResourceType("", "v1", "nodes", "node", "Node", False, ("no",), status_subresource=True,
                 field_labels=("spec.unschedulable",), model="V1Node"),
    ResourceType("", "v1", "events", "event", "Event", True, ("ev",), field_labels=_EVENT_FIELDS,
                 model="CoreV1Event"),
    ResourceType("events.k8s.io", "v1", "events", "event", "Event", True, ("ev",),
                 field_labels=_EVENT_FIELDS, field_aliases=_EVENTS_V1_ALIASES,
                 storage=("", "events"), model="CoreV1Event"),
    ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True, model="V1Lease"),
    # Not stored: the answer is the caller as authenticated (`kubectl auth whoami`).
    ResourceType("authentication.k8s.io", "v1", "selfsubjectreviews", "selfsubjectreview",
                 "SelfSubjectReview", False, verbs=("create",)),
    # Not stored either: what the caller may do (`kubectl auth can-i`, `can-i --list`).
    ResourceType("authorization.k8s.io", "v1", "selfsubjectaccessreviews",
                 "selfsubjectaccessreview", "SelfSubjectAccessReview", False, verbs=("create",)),
    ResourceType("authorization.k8s.io", "v1", "selfsubjectrulesreviews",
                 "selfsubjectrulesreview", "SelfSubjectRulesReview", False, verbs=("create",)),
    # Storage: claims, volumes and classes, acted on by the local-path provisioner
    # (``pvcontroller.py``), the scheduler's volume filters (``volumefit.py``) and the kubelet
    # (``claimmounts.py``); their rules are in ``storagerules.py``.
    ResourceType("", "v1", "persistentvolumeclaims", "persistentvolumeclaim",
                 "PersistentVolumeClaim", True, ("pvc",), status_subresource=True,
                 model="V1PersistentVolumeClaim"),
    ResourceType("", "v1", "persistentvolumes", "persistentvolume", "PersistentVolume", False,
                 ("pv",), status_subresource=True, model="V1PersistentVolume"),
    ResourceType("storage.k8s.io", "v1", "storageclasses", "storageclass", "StorageClass", False,
                 ("sc",), model="V1StorageClass"),
    # Kinds an install of this project creates. Nothing acts on them here (there is no controller
    # manager; Deployments only when the opt-in Deployment controller runs, ``deployments.py``),
    # but they are accepted, validated against their types, stored and listed, so that
    # `kubectl apply -k deploy/...` and Helm work against the local cluster.
    ResourceType("", "v1", "resourcequotas", "resourcequota", "ResourceQuota", True, ("quota",),
                 status_subresource=True, model="V1ResourceQuota"),
    ResourceType("apps", "v1", "deployments", "deployment", "Deployment", True, ("deploy",),
                 categories=("all",), status_subresource=True, has_generation=True,
                 model="V1Deployment"),
    # Acted on by the daemon controller (``daemonsets.py``): the image pre-puller is one.
    ResourceType("apps", "v1", "daemonsets", "daemonset", "DaemonSet", True, ("ds",),
                 categories=("all",), status_subresource=True, has_generation=True,
                 model="V1DaemonSet"),
    ResourceType("batch", "v1", "cronjobs", "cronjob", "CronJob", True, ("cj",),
                 categories=("all",), status_subresource=True, has_generation=True,
                 model="V1CronJob"),
    ResourceType("batch", "v1", "jobs", "job", "Job", True, categories=("all",),
                 status_subresource=True, has_generation=True, model="V1Job"),
    ResourceType("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget",
                 "PodDisruptionBudget", True, ("pdb",), status_subresource=True,
                 has_generation=True, model="V1PodDisruptionBudget"),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "networkpolicy", "NetworkPolicy",
                 True, ("netpol",), has_generation=True, model="V1NetworkPolicy"),
    ResourceType(_RBAC, "v1", "roles", "role", "Role", True, model="V1Role"),
    ResourceType(_RBAC, "v1", "rolebindings", "rolebinding", "RoleBinding", True,
                 model="V1RoleBinding"),
    ResourceType(_RBAC, "v1", "clusterroles", "clusterrole", "ClusterRole", False,
                 model="V1ClusterRole"),
    ResourceType(_RBAC, "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding",
                 False, model="V1ClusterRoleBinding"),
    ResourceType("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies",
                 "validatingadmissionpolicy", "ValidatingAdmissionPolicy", False,
                 categories=("api-extensions",), status_subresource=True, has_generation=True,
                 model="V1ValidatingAdmissionPolicy"),
    ResourceType("admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings",
                 "validatingadmissionpolicybinding", "ValidatingAdmissionPolicyBinding", False,
                 categories=("api-extensions",), has_generation=True,
                 model="V1ValidatingAdmissionPolicyBinding"),
    ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                 "customresourcedefinition", "CustomResourceDefinition", False, ("crd", "crds"),
                 categories=("api-extensions",), status_subresource=True, has_generation=True,
                 model="V1CustomResourceDefinition"),
)

# Group versions served for built-ins, in the order discovery lists them ("" first, as real).
BUILTIN_GROUP_VERSIONS: tuple[tuple[str, str], ...] = (
    ("", "v1"), ("events.k8s.io", "v1"), ("coordination.k8s.io", "v1"),
    ("authentication.k8s.io", "v1"), ("authorization.k8s.io", "v1"),
    ("admissionregistration.k8s.io", "v1"), ("apiextensions.k8s.io", "v1"), ("apps", "v1"),
    ("batch", "v1"), ("policy", "v1"), ("networking.k8s.io", "v1"), (_RBAC, "v1"),
    ("storage.k8s.io", "v1"),
)

# Kinds whose names are DNS labels rather than DNS subdomains (real validation differs by kind).
DNS_LABEL_NAMES: frozenset[ResourceKey] = frozenset({("", "namespaces"), ("", "services")})


# --- conversion between the two Event APIs (they share one storage, as in a real cluster) --------

_EVENT_RENAMES = (("regarding", "involvedObject"), ("note", "message"),
                  ("reportingController", "reportingComponent"), ("deprecatedSource", "source"),
                  ("deprecatedFirstTimestamp", "firstTimestamp"),
                  ("deprecatedLastTimestamp", "lastTimestamp"), ("deprecatedCount", "count"))


def event_v1_to_core(obj: dict) -> dict:
    out = dict(obj)
    for ext, core in _EVENT_RENAMES:
        out.pop(ext, None)
        if ext in obj:
            out[core] = obj[ext]
    out["apiVersion"] = "v1"
    return out


def event_core_to_v1(obj: dict) -> dict:
    out = dict(obj)
    for ext, core in _EVENT_RENAMES:
        out.pop(core, None)
        if core in obj:
            out[ext] = obj[core]
    out["apiVersion"] = "events.k8s.io/v1"
    return out


Converter = Callable[[dict], dict]

# key -> (stored -> external, external -> stored)
CONVERTERS: dict[ResourceKey, tuple[Converter, Converter]] = {
    ("events.k8s.io", "events"): (event_core_to_v1, event_v1_to_core),
}


def printer_columns_from_crd(version: dict[str, Any]) -> tuple[PrinterColumn, ...]:
    cols = []
    for col in version.get("additionalPrinterColumns") or []:
        cols.append(PrinterColumn(col.get("name", ""), col.get("type", "string"),
                                  col.get("jsonPath", ""), col.get("description", ""),
                                  int(col.get("priority", 0) or 0), col.get("format", "")))
    return tuple(cols)


def custom_resource_type(crd: dict) -> ResourceType:
    """The ResourceType that a (validated, defaulted) CRD object makes served."""
    spec = crd["spec"]
    names = spec["names"]
    versions = [v for v in spec["versions"] if v.get("served", True)]
    storage = next((v for v in spec["versions"] if v.get("storage")), spec["versions"][0])
    preferred = versions[0] if versions else storage
    subresources = preferred.get("subresources") or {}
    selectable = tuple(f.get("jsonPath", "").lstrip(".")
                       for f in preferred.get("selectableFields") or [])
    return ResourceType(
        group=spec["group"], version=preferred["name"], plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(), kind=names["kind"],
        namespaced=spec.get("scope") == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        status_subresource="status" in subresources,
        has_generation=True, allow_unconditional_update=False, return_deleted_object=True,
        strategic_merge=False, field_labels=selectable,
        served_versions=tuple(v["name"] for v in versions), crd_name=crd["metadata"]["name"],
        printer_columns=printer_columns_from_crd(preferred), selectable_fields=selectable)


class Registry:
    """Which resource types exist right now, by key and by the names URLs and kubectl use."""

    def __init__(self) -> None:
        self._types: dict[ResourceKey, ResourceType] = {}
        for rtype in BUILTIN_TYPES:
            self._types[rtype.key] = rtype
        self.crd_versions: dict[ResourceKey, dict[str, dict]] = {}  # key -> version -> CRD version
        self.generation = 0  # bumped on every change, so derived documents know to rebuild

    def add(self, rtype: ResourceType, crd_versions: dict[str, dict] | None = None) -> None:
        self._types[rtype.key] = rtype
        self.generation += 1
        if crd_versions is not None:
            self.crd_versions[rtype.key] = crd_versions

    def remove(self, key: ResourceKey) -> None:
        if self._types.pop(key, None) is not None:
            self.generation += 1
        self.crd_versions.pop(key, None)

    def get(self, key: ResourceKey) -> ResourceType | None:
        return self._types.get(key)

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def for_version(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The type served at ``/apis/{group}/{version}/{plural}``, or None if not served."""
        rtype = self._types.get((group, plural))
        if rtype is None or version not in rtype.versions():
            return None
        return rtype.with_version(version)

    def group_versions(self) -> dict[str, list[str]]:
        """group -> served versions (preferred first), built-ins before CRD groups."""
        result: dict[str, list[str]] = {}
        for group, version in BUILTIN_GROUP_VERSIONS:
            result.setdefault(group, []).append(version)
        for rtype in self._types.values():
            if not rtype.is_custom:
                continue
            versions = result.setdefault(rtype.group, [])
            for version in rtype.versions():
                if version not in versions:
                    versions.append(version)
        return result

    def types_in(self, group: str, version: str) -> list[ResourceType]:
        return [t.with_version(version) for t in self._types.values()
                if t.group == group and version in t.versions()]
