"""The default ClusterRoles and ClusterRoleBindings a cluster starts with (the ones that matter
here), as kube-apiserver's ``rbac/bootstrap-roles`` post-start hook creates them.

Without them a ServiceAccount could not even run ``kubectl`` discovery or ``kubectl auth
whoami``/``can-i`` on a real cluster, and anonymous health checks would fail; with them, what a
token may do beyond that is exactly what the install's own Roles grant. Missing objects are
created when the API server starts; existing ones are left as they are (kube-apiserver would also
re-add rules removed from an ``autoupdate`` object; nothing here edits them).

Left out: ``admin``, ``edit`` and ``view``, which on a real cluster are aggregated from dozens of
built-in kinds this cluster does not serve; ``cluster-admin`` is here, bound to
``system:masters`` as real (that group is allowed everything before RBAC is asked anyway).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .authn import AUTHENTICATED, SYSTEM_MASTERS, UNAUTHENTICATED
from .errors import ApiError
from .rbac import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES, RBAC_GROUP

if TYPE_CHECKING:
    from .store import Store

JSON = dict[str, Any]

_META = {"annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
         "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}

#: name -> rules
CLUSTER_ROLE_RULES: dict[str, list[JSON]] = {
    "cluster-admin": [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
        {"nonResourceURLs": ["*"], "verbs": ["*"]},
    ],
    "system:discovery": [
        {"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                             "/openapi", "/openapi/*", "/readyz", "/version", "/version/"],
         "verbs": ["get"]},
    ],
    "system:basic-user": [
        {"apiGroups": ["authorization.k8s.io"],
         "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
         "verbs": ["create"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"],
         "verbs": ["create"]},
    ],
    # What an external provisioner's ServiceAccount is bound to (no default binding, as real);
    # this cluster's own provisioner runs inside it (``pvcontroller.py``).
    "system:persistent-volume-provisioner": [
        {"apiGroups": [""], "resources": ["persistentvolumes"],
         "verbs": ["create", "delete", "get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"],
         "verbs": ["get", "list", "update", "watch"]},
        {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
         "verbs": ["create", "patch", "update", "watch"]},
    ],
    "system:public-info-viewer": [
        {"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"],
         "verbs": ["get"]},
    ],
}

#: ClusterRoleBinding (named as its ClusterRole) -> groups bound
CLUSTER_ROLE_BINDING_GROUPS: dict[str, tuple[str, ...]] = {
    "cluster-admin": (SYSTEM_MASTERS,),
    "system:discovery": (AUTHENTICATED,),
    "system:basic-user": (AUTHENTICATED,),
    "system:public-info-viewer": (AUTHENTICATED, UNAUTHENTICATED),
}


def default_cluster_roles() -> list[JSON]:
    return [{"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole",
             "metadata": {"name": name, **_META}, "rules": rules}
            for name, rules in CLUSTER_ROLE_RULES.items()]


def default_cluster_role_bindings() -> list[JSON]:
    return [{"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": name, **_META},
             "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
             "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": group}
                          for group in groups]}
            for name, groups in CLUSTER_ROLE_BINDING_GROUPS.items()]


def ensure_bootstrap_policy(store: Store) -> None:
    """Create whichever default ClusterRoles and ClusterRoleBindings are missing."""
    for key, objects in ((CLUSTER_ROLES, default_cluster_roles()),
                         (CLUSTER_ROLE_BINDINGS, default_cluster_role_bindings())):
        for obj in objects:
            try:
                store.create(key, None, obj)
            except ApiError as exc:
                if exc.code != 409:
                    raise
