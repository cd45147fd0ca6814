"""RBAC authorization over the Role, ClusterRole, RoleBinding and ClusterRoleBinding objects in
the store, with kube-apiserver's semantics (``plugin/pkg/auth/authorizer/rbac``).

* ``system:masters`` is allowed everything before RBAC is asked (kube-apiserver's privileged
  group authorizer), which is what the admin kubeconfig's user is in;
* otherwise the ClusterRoleBindings are visited, then (for a namespaced request) the namespace's
  RoleBindings; the first rule that allows the request wins, and the decision names the binding
  (``RBAC: allowed by RoleBinding "b/ns" of Role "r" to ServiceAccount "sa/ns"``);
* a binding's subjects are Users, Groups and ServiceAccounts (``system:serviceaccount:NS:NAME``,
  the binding's own namespace when the subject names none); a RoleBinding may grant a
  ClusterRole's rules, only in its namespace;
* a rule matches by verb (``*``), API group (``*``), resource (``*``, ``res/sub``, ``*/sub``),
  ``resourceNames`` (when it has any: only requests that name one of them), or by
  ``nonResourceURLs`` (exact, or a prefix ending in ``*``);
* a binding that names a missing role is skipped, and the refusal's reason says so
  (``RBAC: role.rbac.authorization.k8s.io "x" not found``), as kube-apiserver's does.

Left out: ClusterRole ``aggregationRule`` (no controller fills aggregated roles; the default
roles here carry their rules directly) and escalation prevention on writes of roles and bindings
(``escalate``/``bind``), which only matters to callers that may write RBAC objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .authn import SYSTEM_MASTERS, UserInfo
from .authz import Attributes, Decision, NonResourceRule, ResourceRule, Rules
from .errors import ApiError, go_quote
from .resources import ResourceKey

if TYPE_CHECKING:
    from .store import Store

RBAC_GROUP = "rbac.authorization.k8s.io"
ROLES: ResourceKey = (RBAC_GROUP, "roles")
CLUSTER_ROLES: ResourceKey = (RBAC_GROUP, "clusterroles")
ROLE_BINDINGS: ResourceKey = (RBAC_GROUP, "rolebindings")
CLUSTER_ROLE_BINDINGS: ResourceKey = (RBAC_GROUP, "clusterrolebindings")
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

JSON = dict[str, Any]
#: Gets a stored object (shared, not to be mutated) by (group, plural), namespace and name.
Lookup = Callable[[ResourceKey, "str | None", str], "JSON | None"]
#: Lists stored objects (shared) of (group, plural) in a namespace (None: cluster-scoped).
Listing = Callable[[ResourceKey, "str | None"], "list[JSON]"]


def _listed(rule: JSON, key: str) -> list[str]:
    values = rule.get(key)
    return [v for v in values if isinstance(v, str)] if isinstance(values, list) else []


def rule_allows(attrs: Attributes, rule: JSON) -> bool:
    """``RuleAllows``: whether one PolicyRule allows the request."""
    verbs = _listed(rule, "verbs")
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    if not attrs.resource_request:
        return any(url == "*" or url == attrs.path
                   or (url.endswith("*") and attrs.path.startswith(url.rstrip("*")))
                   for url in _listed(rule, "nonResourceURLs"))
    groups = _listed(rule, "apiGroups")
    if "*" not in groups and attrs.api_group not in groups:
        return False
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    if not any(_resource_matches(r, combined, attrs.subresource)
               for r in _listed(rule, "resources")):
        return False
    names = _listed(rule, "resourceNames")
    return not names or attrs.name in names


def _resource_matches(rule_resource: str, combined: str, subresource: str) -> bool:
    if rule_resource in ("*", combined):
        return True
    return bool(subresource) and rule_resource == f"*/{subresource}"


def service_account_user(namespace: str, name: str) -> str:
    return f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"


def _applies_to(user: UserInfo, subject: JSON, namespace: str) -> bool:
    """``appliesToUser``; ``namespace`` is the binding's ("" for a ClusterRoleBinding)."""
    kind, name = subject.get("kind"), subject.get("name")
    if not isinstance(name, str):
        return False
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        sa_namespace = subject.get("namespace") or namespace
        return bool(sa_namespace) and user.name == service_account_user(sa_namespace, name)
    return False


def _describe_subject(subject: JSON, binding_namespace: str) -> str:
    kind, name = subject.get("kind", ""), subject.get("name", "")
    if kind == "ServiceAccount":
        return f"{kind} {go_quote(f'{name}/' + (subject.get('namespace') or binding_namespace))}"
    return f"{kind} {go_quote(str(name))}"


class _Source:
    """Where rules came from, as kube-apiserver words it in an allowing decision's reason."""

    def __init__(self, binding: JSON, subject: JSON) -> None:
        self.binding = binding
        self.subject = subject

    def __str__(self) -> str:
        meta = self.binding.get("metadata") or {}
        ref = self.binding.get("roleRef") or {}
        namespace = meta.get("namespace") or ""
        if namespace:
            head = f"RoleBinding {go_quote(meta.get('name', '') + '/' + namespace)}"
        else:
            head = f"ClusterRoleBinding {go_quote(meta.get('name', ''))}"
        return (f"{head} of {ref.get('kind', '')} {go_quote(str(ref.get('name', '')))} to "
                f"{_describe_subject(self.subject, namespace)}")


class RBACAuthorizer:
    """kube-apiserver's authorizer chain for this cluster: privileged groups, then RBAC.

    It reads the RBAC objects straight from the store on every request (they are few, and a
    change takes effect on the next request, as with kube-apiserver's informers).
    """

    def __init__(self, lookup: Lookup, listing: Listing,
                 privileged_groups: frozenset[str] = frozenset({SYSTEM_MASTERS})) -> None:
        self._lookup = lookup
        self._listing = listing
        self.privileged_groups = privileged_groups

    # -- deciding --------------------------------------------------------------------------------

    def authorize(self, attrs: Attributes) -> Decision:
        if self.privileged_groups.intersection(attrs.user.groups):
            return Decision(True)
        errors: list[str] = []
        for source, rules in self._visit(attrs.user, attrs.namespace, errors):
            for rule in rules:
                if rule_allows(attrs, rule):
                    return Decision(True, f"RBAC: allowed by {source}")
        return Decision(False, _rbac_reason(errors))

    def rules_for(self, user: UserInfo, namespace: str) -> Rules:
        if self.privileged_groups.intersection(user.groups):
            return Rules((ResourceRule(("*",), ("*",), ("*",)),),
                         (NonResourceRule(("*",), ("*",)),))
        errors: list[str] = []
        resource_rules: list[ResourceRule] = []
        non_resource_rules: list[NonResourceRule] = []
        for _source, rules in self._visit(user, namespace, errors):
            for rule in rules:
                verbs = tuple(_listed(rule, "verbs"))
                if _listed(rule, "resources"):
                    resource_rules.append(ResourceRule(
                        verbs, tuple(_listed(rule, "apiGroups")), tuple(_listed(rule, "resources")),
                        tuple(_listed(rule, "resourceNames"))))
                if _listed(rule, "nonResourceURLs"):
                    non_resource_rules.append(
                        NonResourceRule(verbs, tuple(_listed(rule, "nonResourceURLs"))))
        return Rules(tuple(resource_rules), tuple(non_resource_rules), tuple(errors))

    # -- the rule resolver -----------------------------------------------------------------------

    def _visit(self, user: UserInfo, namespace: str,
               errors: list[str]) -> Iterator[tuple[_Source, list[JSON]]]:
        """(source, rules) of each binding subject that applies to ``user``: cluster-wide
        bindings first, then those of ``namespace``; broken references go to ``errors``."""
        for binding in self._listing(CLUSTER_ROLE_BINDINGS, None):
            subject = self._subject_for(user, binding, "")
            if subject is None:
                continue
            ref = binding.get("roleRef") or {}
            rules = self._role_rules(ref, "", errors)
            if rules is not None:
                yield _Source(binding, subject), rules
        if not namespace:
            return
        for binding in self._listing(ROLE_BINDINGS, namespace):
            subject = self._subject_for(user, binding, namespace)
            if subject is None:
                continue
            rules = self._role_rules(binding.get("roleRef") or {}, namespace, errors)
            if rules is not None:
                yield _Source(binding, subject), rules

    @staticmethod
    def _subject_for(user: UserInfo, binding: JSON, namespace: str) -> JSON | None:
        for subject in binding.get("subjects") or []:
            if isinstance(subject, dict) and _applies_to(user, subject, namespace):
                return subject
        return None

    def _role_rules(self, ref: JSON, namespace: str, errors: list[str]) -> list[JSON] | None:
        kind, name = ref.get("kind"), str(ref.get("name") or "")
        if kind == "ClusterRole":
            role = self._lookup(CLUSTER_ROLES, None, name)
            missing = f"clusterrole.{RBAC_GROUP} {go_quote(name)} not found"
        elif kind == "Role":
            role = self._lookup(ROLES, namespace, name) if namespace else None
            missing = f"role.{RBAC_GROUP} {go_quote(name)} not found"
        else:
            errors.append(f"unsupported role reference kind: {go_quote(str(kind))}")
            return None
        if role is None:
            errors.append(missing)
            return None
        return [r for r in role.get("rules") or [] if isinstance(r, dict)]


def _rbac_reason(errors: list[str]) -> str:
    """The reason of a refusal: the broken references met, as an aggregate error prints."""
    unique = list(dict.fromkeys(errors))
    if not unique:
        return ""
    return "RBAC: " + (unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]")


def store_readers(store: Store) -> tuple[Lookup, Listing]:
    """Lookup and listing functions over a ``Store`` (shared objects, no copies)."""

    def lookup(key: ResourceKey, namespace: str | None, name: str) -> JSON | None:
        try:
            return store.get_ref(store.resource_type(key), namespace, name)
        except ApiError:
            return None

    def listing(key: ResourceKey, namespace: str | None) -> list[JSON]:
        items, _rv = store.list_refs(store.resource_type(key), namespace)
        return list(items)

    return lookup, listing
