"""The authorization step of the local API server: what a request asks, the answer, and the 403.

kube-apiserver describes every authenticated request by a few attributes (user, verb, API group,
resource, subresource, namespace, name, or the path of a non-resource URL), asks its authorizers
whether that is allowed, and refuses with a ``Status`` whose wording people and tools recognise
(``User "..." cannot patch resource "pods" in API group "" in the namespace "ns"``). The same
attributes are what ``SelfSubjectAccessReview`` (``kubectl auth can-i``) asks about, and what
admission plugins ask about on a request's behalf, so they live here, apart from how they are
derived from a URL (``requestinfo.py``) and from how RBAC decides (``rbac.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from . import errors as E
from .authn import UserInfo
from .errors import ApiError, go_quote


@dataclass(frozen=True)
class Attributes:
    """kube-apiserver's ``authorizer.Attributes`` of one request (or of a review's question)."""

    user: UserInfo
    verb: str
    resource_request: bool = False
    path: str = ""
    api_group: str = ""
    api_version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""


@dataclass(frozen=True)
class Decision:
    """Allowed or not, and the authorizer's reason (RBAC: which binding allowed it, or the
    broken references it met while looking); a refusal carries the reason into the 403."""

    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class ResourceRule:
    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()

    def as_api(self) -> dict[str, list[str]]:
        out = {"verbs": list(self.verbs)}
        for key, values in (("apiGroups", self.api_groups), ("resources", self.resources),
                            ("resourceNames", self.resource_names)):
            if values:
                out[key] = list(values)
        return out


@dataclass(frozen=True)
class NonResourceRule:
    verbs: tuple[str, ...]
    urls: tuple[str, ...] = ()

    def as_api(self) -> dict[str, list[str]]:
        out = {"verbs": list(self.verbs)}
        if self.urls:
            out["nonResourceURLs"] = list(self.urls)
        return out


@dataclass(frozen=True)
class Rules:
    """What a user may do in a namespace, as ``SelfSubjectRulesReview`` lists it."""

    resource_rules: tuple[ResourceRule, ...] = ()
    non_resource_rules: tuple[NonResourceRule, ...] = ()
    errors: tuple[str, ...] = field(default_factory=tuple)


class Authorizer(Protocol):
    """Decides requests (``authorize``) and lists a user's rules (``rules_for``)."""

    def authorize(self, attrs: Attributes) -> Decision:
        """Whether ``attrs.user`` may do what ``attrs`` describe."""

    def rules_for(self, user: UserInfo, namespace: str) -> Rules:
        """The rules that apply to ``user`` in ``namespace`` (cluster-wide ones included)."""


class AlwaysAllow:
    """Every request allowed (kube-apiserver's ``--authorization-mode=AlwaysAllow``), for an
    API server that a benchmark measures without authorization in the way."""

    def authorize(self, attrs: Attributes) -> Decision:
        return Decision(True)

    def rules_for(self, user: UserInfo, namespace: str) -> Rules:
        return Rules((ResourceRule(("*",), ("*",), ("*",)),), (NonResourceRule(("*",), ("*",)),))


def _sanitize(text: str) -> str:
    """kube-apiserver keeps a 403's message from looking like HTML (quotes stay)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def forbidden_message(attrs: Attributes) -> str:
    """``forbiddenMessage`` of kube-apiserver's response writers, word for word."""
    user = go_quote(attrs.user.name)
    if not attrs.resource_request:
        return f"User {user} cannot {attrs.verb} path {go_quote(attrs.path)}"
    resource = attrs.resource
    if attrs.subresource:
        resource = f"{resource}/{attrs.subresource}"
    where = (f"in the namespace {go_quote(attrs.namespace)}" if attrs.namespace
             else "at the cluster scope")
    return (f"User {user} cannot {attrs.verb} resource {go_quote(resource)} in API group "
            f"{go_quote(attrs.api_group)} {where}")


def forbidden(attrs: Attributes, reason: str = "") -> ApiError:
    """The 403 kube-apiserver answers a request its authorizers did not allow."""
    message = _sanitize(forbidden_message(attrs))
    if reason:
        message = f"{message}: {reason}"
    return E.forbidden_status(attrs.api_group, attrs.resource, attrs.name, message)
