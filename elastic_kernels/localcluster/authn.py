"""Who is calling the local API server: the authentication step of a real kube-apiserver.

A real API server runs every request through a chain of authenticators before anything else
looks at it, and so does this one, so that what works here also works against a cluster:

* a bearer token is offered to each token authenticator in turn (the admin's static token, then
  ServiceAccount JWTs from ``satokens.py``); a token that none accepts is refused with 401, on
  every path, as kube-apiserver does ("a bad bearer token is not anonymous");
* a request without credentials is the anonymous user only on the paths the default
  ``system:public-info-viewer`` ClusterRole opens to ``system:unauthenticated`` (``/healthz``,
  ``/livez``, ``/readyz``, ``/version``), which is kube-apiserver with
  ``AuthenticationConfiguration.anonymous.conditions`` listing those paths; anywhere else it is
  refused with 401 and the real ``Status`` body;
* every user a token names also gets the group ``system:authenticated``.

The result is a ``UserInfo`` that the API server puts on the request (``current_user``); an
authorizer (RBAC) reads it from there and needs nothing from this module but that type.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ApiError
from .eventrecorder import now_rfc3339

log = logging.getLogger(__name__)

ANONYMOUS_USER = "system:anonymous"
UNAUTHENTICATED = "system:unauthenticated"
AUTHENTICATED = "system:authenticated"
SYSTEM_MASTERS = "system:masters"
#: The user kubeadm's admin kubeconfig authenticates as.
ADMIN_USER = "kubernetes-admin"

#: The non-resource URLs ``system:public-info-viewer`` grants to ``system:unauthenticated``.
PUBLIC_INFO_PATHS: frozenset[str] = frozenset({"/healthz", "/livez", "/readyz", "/version",
                                               "/version/"})


@dataclass(frozen=True)
class UserInfo:
    """The authenticated caller, as kube-apiserver's ``user.Info`` carries it to authorization."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def is_anonymous(self) -> bool:
        return self.name == ANONYMOUS_USER

    def with_group(self, group: str) -> UserInfo:
        if group in self.groups:
            return self
        return UserInfo(self.name, self.uid, (*self.groups, group), self.extra)

    def as_user_info(self) -> dict[str, Any]:
        """The ``authentication.k8s.io/v1`` UserInfo object (empty fields left out, as real)."""
        out: dict[str, Any] = {"username": self.name}
        if self.uid:
            out["uid"] = self.uid
        if self.groups:
            out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = {k: list(v) for k, v in self.extra.items()}
        return out


ANONYMOUS = UserInfo(ANONYMOUS_USER, groups=(UNAUTHENTICATED,))


def admin_user() -> UserInfo:
    """The cluster admin of the kubeconfig the local cluster writes."""
    return UserInfo(ADMIN_USER, groups=(SYSTEM_MASTERS,))


def unauthorized() -> ApiError:
    """kube-apiserver's answer to a request it could not authenticate (always the same text)."""
    return ApiError(401, "Unauthorized", "Unauthorized")


class TokenAuthenticator(Protocol):
    """One link of the chain: a bearer token to a user."""

    def authenticate_token(self, token: str) -> UserInfo | None:
        """The user, or None when this authenticator does not accept the token (never raises
        for a bad token, and never logs it)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class StaticTokens:
    """Fixed tokens mapped to users (kube-apiserver's ``--token-auth-file``).

    Only digests are kept, so a token never sits in memory next to its user, and lookups compare
    digests, not the secret text.
    """

    def __init__(self, users: Mapping[str, UserInfo]) -> None:
        self._users = {_digest(token): user for token, user in users.items() if token}

    def authenticate_token(self, token: str) -> UserInfo | None:
        return self._users.get(_digest(token))


class Authenticator:
    """The chain: bearer token authenticators, then anonymous on the public-info paths only."""

    def __init__(self, token_authenticators: Sequence[TokenAuthenticator],
                 anonymous_paths: Collection[str] = PUBLIC_INFO_PATHS) -> None:
        self.token_authenticators = list(token_authenticators)
        self.anonymous_paths = frozenset(anonymous_paths)

    def add(self, authenticator: TokenAuthenticator) -> None:
        self.token_authenticators.append(authenticator)

    def authenticate(self, authorization: str | None, path: str) -> UserInfo:
        """The caller of a request with this ``Authorization`` header and URL path.

        Raises the 401 ``ApiError`` when a bearer token is offered and no authenticator accepts
        it, or when no credentials are offered on a path anonymous users may not reach.
        """
        token = bearer_token(authorization)
        if token is not None:
            for authenticator in self.token_authenticators:
                user = authenticator.authenticate_token(token)
                if user is not None:
                    return user.with_group(AUTHENTICATED)
            log.debug("refused a bearer token on %s: no authenticator accepts it", path)
            raise unauthorized()
        if path in self.anonymous_paths:
            return ANONYMOUS
        raise unauthorized()


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None for no header, another scheme or an
    empty token (which kube-apiserver treats as no credentials)."""
    parts = (authorization or "").strip().split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    return parts[1]


def self_subject_review(user: UserInfo) -> dict[str, Any]:
    """``POST selfsubjectreviews``'s answer: the caller as the server sees it (``kubectl auth
    whoami``)."""
    return {"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": now_rfc3339()},
            "status": {"userInfo": user.as_user_info()}}
