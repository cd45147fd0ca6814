"""OwnerReferencesPermissionEnforcement: who may point an object at an owner, and block it.

An ownerReference with ``blockOwnerDeletion: true`` holds up the owner's foreground deletion, so
kube-apiserver's admission plugin (``plugin/pkg/admission/gc``, on by default in OpenShift and
in many hardened clusters) lets a caller set one only if it may ``update`` the owner's
``finalizers`` subresource (``jupyterkernels/finalizers`` for a kernel's Pod and Secret); and
changing an existing object's ownerReferences needs ``delete`` on that object. Creating is
exempt from the second rule (whoever may create an object could have left it uncreated), and
``pods/status`` is exempt from both (its strategy keeps ownerReferences as they were).

Refusals are kube-apiserver's 403s, word for word, e.g. ``pods "x" is forbidden: cannot set
blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on: ,
<nil>`` (the reason RBAC gives is empty unless a binding names a missing role; ``<nil>`` is the
authorizer's absent error, printed as Go prints it).
"""

from __future__ import annotations

from typing import Any

from . import errors as E
from .authn import UserInfo
from .authz import Attributes, Authorizer
from .errors import ApiError
from .resources import Registry, ResourceType

JSON = dict[str, Any]
CREATE, UPDATE = "CREATE", "UPDATE"
#: (group, plural, subresource) the plugin ignores.
_EXEMPT = frozenset({("", "pods", "status")})


def _refs(obj: JSON | None) -> list[JSON]:
    if obj is None:
        return []
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return [r for r in refs if isinstance(r, dict)]


def _changing(new: JSON, old: JSON | None) -> bool:
    if old is None:
        return bool(_refs(new))
    return _refs(new) != _refs(old)


def _new_blocking(new: JSON, old: JSON | None) -> list[JSON]:
    """References that block and did not before (new ones, or false/unset turned true)."""
    blocking = [r for r in _refs(new) if r.get("blockOwnerDeletion") is True]
    if old is None:
        return blocking
    before = {r.get("uid"): r for r in _refs(old)}
    return [r for r in blocking
            if r.get("uid") not in before or before[r.get("uid")].get("blockOwnerDeletion")
            is not True]


def _parse_group_version(api_version: str) -> tuple[str, str]:
    if not api_version:
        return "", ""
    if api_version.count("/") == 0:
        return "", api_version
    group, _, version = api_version.partition("/")
    if "/" in version:
        raise ValueError(f"unexpected GroupVersion string: {api_version}")
    return group, version


class OwnerReferencesPermissionEnforcement:
    """The admission step; the store calls ``validate`` for every create and update a client
    asked for, with the object before (None on create) and after the write."""

    def __init__(self, authorizer: Authorizer, registry: Registry) -> None:
        self.authorizer = authorizer
        self.registry = registry

    def validate(self, user: UserInfo, operation: str, rtype: ResourceType,
                 subresource: str | None, old: JSON | None, new: JSON) -> None:
        sub = subresource or ""
        if (rtype.group, rtype.plural, sub) in _EXEMPT or not _changing(new, old):
            return
        meta = new.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        name = str(meta.get("name") or meta.get("generateName") or "")
        if operation != CREATE:
            decision = self.authorizer.authorize(Attributes(
                user, "delete", True, "", rtype.group, rtype.version, rtype.plural, sub,
                namespace, name))
            if not decision.allowed:
                raise self._forbidden(rtype, name, "cannot set an ownerRef on a resource you "
                                                   f"can't delete: {decision.reason}, <nil>")
        for ref in _new_blocking(new, old):
            api_version, kind = str(ref.get("apiVersion") or ""), str(ref.get("kind") or "")
            try:
                owners = self._owner_types(api_version, kind)
            except ValueError as exc:
                raise self._forbidden(
                    rtype, name, "cannot set blockOwnerDeletion in this case because cannot "
                                 f"find RESTMapping for APIVersion {api_version} Kind {kind}: "
                                 f"{exc}") from None
            for owner in owners:
                decision = self.authorizer.authorize(Attributes(
                    user, "update", True, "", owner.group, owner.version, owner.plural,
                    "finalizers", namespace if owner.namespaced else "",
                    str(ref.get("name") or "")))
                if not decision.allowed:
                    raise self._forbidden(
                        rtype, name, "cannot set blockOwnerDeletion if an ownerReference "
                                     "refers to a resource you can't set finalizers on: "
                                     f"{decision.reason}, <nil>")

    def _owner_types(self, api_version: str, kind: str) -> list[ResourceType]:
        """The resources ``kind`` maps to in ``api_version`` (the REST mapper's answer)."""
        group, version = _parse_group_version(api_version)
        found = [t for t in self.registry.types_in(group, version) if t.kind == kind]
        if not found:
            gv = f"{group}/{version}" if group else version
            raise ValueError(f"no matches for kind {E.go_quote(kind)} in version "
                             f"{E.go_quote(gv)}")
        return found

    @staticmethod
    def _forbidden(rtype: ResourceType, name: str, why: str) -> ApiError:
        return E.forbidden_status(rtype.group, rtype.plural, name, why)
