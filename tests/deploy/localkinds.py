"""The built-in kinds an install creates, served (stored, not acted on) by the local cluster.

The local cluster serves what the gateway itself uses (pods, secrets, events, leases, CRDs). To
``kubectl apply`` the whole install -- and to let Helm install the chart -- its API server must
also accept the install's other kinds: RBAC, Deployments, CronJobs, PodDisruptionBudgets,
NetworkPolicies, PersistentVolumeClaims and ResourceQuotas. Nothing acts on them (there is no
controller manager), which is all these tests need: the objects are accepted, stored and listed
as a real API server would.

These entries belong in ``elastic_kernels/localcluster/resources.py`` (``BUILTIN_TYPES`` and
``BUILTIN_GROUP_VERSIONS``) and ``openapi.py`` (``_KIND_MODELS``); until they are there,
:func:`serve_install_kinds` adds them for one test with ``monkeypatch``. Once they are, it adds
nothing.
"""

from __future__ import annotations

import pytest

from elastic_kernels.localcluster import openapi, resources
from elastic_kernels.localcluster.resources import ResourceType

RBAC = "rbac.authorization.k8s.io"

INSTALL_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "persistentvolumeclaims", "persistentvolumeclaim",
                 "PersistentVolumeClaim", True, ("pvc",), status_subresource=True,
                 model="V1PersistentVolumeClaim"),
    ResourceType("", "v1", "resourcequotas", "resourcequota", "ResourceQuota", True, ("quota",),
                 status_subresource=True, model="V1ResourceQuota"),
    ResourceType("apps", "v1", "deployments", "deployment", "Deployment", True, ("deploy",),
                 categories=("all",), status_subresource=True, has_generation=True,
                 model="V1Deployment"),
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
    ResourceType(RBAC, "v1", "roles", "role", "Role", True, model="V1Role"),
    ResourceType(RBAC, "v1", "rolebindings", "rolebinding", "RoleBinding", True,
                 model="V1RoleBinding"),
    ResourceType(RBAC, "v1", "clusterroles", "clusterrole", "ClusterRole", False,
                 model="V1ClusterRole"),
    ResourceType(RBAC, "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding",
                 False, model="V1ClusterRoleBinding"),
)

INSTALL_GROUP_VERSIONS: tuple[tuple[str, str], ...] = (
    ("apps", "v1"), ("batch", "v1"), ("policy", "v1"), ("networking.k8s.io", "v1"), (RBAC, "v1"),
)


def serve_install_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make local clusters created from now on (in this test) serve :data:`INSTALL_TYPES`."""
    served = {t.key for t in resources.BUILTIN_TYPES}
    missing = tuple(t for t in INSTALL_TYPES if t.key not in served)
    if missing:
        monkeypatch.setattr(resources, "BUILTIN_TYPES", resources.BUILTIN_TYPES + missing)
    versions = tuple(gv for gv in INSTALL_GROUP_VERSIONS
                     if gv not in resources.BUILTIN_GROUP_VERSIONS)
    if versions:
        monkeypatch.setattr(resources, "BUILTIN_GROUP_VERSIONS",
                            resources.BUILTIN_GROUP_VERSIONS + versions)
    models = {(t.group, t.kind): t.model for t in INSTALL_TYPES
              if (t.group, t.kind) not in openapi._KIND_MODELS}
    if models:
        monkeypatch.setattr(openapi, "_KIND_MODELS", {**openapi._KIND_MODELS, **models})
