"""ServiceAccount tokens: the TokenRequest API that issues them and the authenticator of them.

They are what a real cluster's are, so that code which reads a pod's token, or an admin's
``kubectl create token``, behaves here as it will in production:

* signed JWTs (HS256 with a key made for this cluster run; a real cluster signs with RS256 or
  ES256, which only matters to someone verifying tokens outside the API server) carrying
  kube-apiserver's claims: ``iss``, ``sub: system:serviceaccount:NS:NAME``, ``aud``, ``exp``,
  ``iat``, ``nbf``, ``jti`` and ``kubernetes.io: {namespace, serviceaccount, pod | secret | node}``;
* ``POST .../serviceaccounts/NAME/token`` validates and defaults the request as the real registry
  does (10 minutes to 2^32 seconds, one hour by default; a bound Pod must run as that account;
  a bound object's uid must match) and answers the TokenRequest with its status filled in;
* a token is accepted only while it is unexpired (with the real 60 s leeway), its audience is the
  API server's, its ServiceAccount still exists with the same uid, and its bound object too
  (an object whose deletion began more than the leeway ago counts as gone). The user is
  ``system:serviceaccount:NS:NAME`` with groups ``system:serviceaccounts`` and
  ``system:serviceaccounts:NS``, the ServiceAccount's uid, and the real ``extra`` keys.

The clock is injectable so that tests can make a token expire without waiting for it.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import jwt

from . import errors as E
from .authn import UserInfo
from .errors import ApiError
from .store import Store

log = logging.getLogger(__name__)

#: kubeadm's ``--service-account-issuer``; it is also the API audience by default.
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ALGORITHM = "HS256"
MIN_EXPIRATION_SECONDS = 10 * 60
MAX_EXPIRATION_SECONDS = 1 << 32
DEFAULT_EXPIRATION_SECONDS = 60 * 60
#: go-jose's jwt.DefaultLeeway, which kube-apiserver applies to exp, nbf and deletions.
LEEWAY_SECONDS = 60

SERVICE_ACCOUNTS = ("", "serviceaccounts")
PODS = ("", "pods")
SECRETS = ("", "secrets")
NODES = ("", "nodes")
TOKEN_REQUEST_KIND = "TokenRequest.authentication.k8s.io"

#: The keys of ``UserInfo.extra`` a ServiceAccount token user carries (k8s.io/apiserver).
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_NODE_UID = "authentication.kubernetes.io/node-uid"
EXTRA_CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


def service_account_username(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class IssuedToken:
    """A token and its lifetime (epoch seconds), as the kubelet needs them to rotate it."""

    token: str = field(repr=False)  # never in a log line, even by accident
    issued_at: float
    expires_at: float

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.issued_at


@dataclass(frozen=True)
class _Bound:
    """The objects a token is bound to, as ``{name, uid}`` claims."""

    pod: dict[str, str] | None = None
    secret: dict[str, str] | None = None
    node: dict[str, str] | None = None


class ServiceAccountTokens:
    """Issues ServiceAccount tokens for one cluster run and authenticates them.

    ``store`` is read on the event loop that serves the API (lookups only). ``key`` defaults to
    fresh random bytes, so tokens die with the run; it never leaves this object.
    """

    def __init__(self, store: Store, *, issuer: str = DEFAULT_ISSUER,
                 audiences: Sequence[str] | None = None, key: bytes | None = None,
                 max_expiration_seconds: int | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.issuer = issuer
        self.api_audiences: tuple[str, ...] = tuple(audiences or (issuer,))
        self._key = key or secrets.token_bytes(64)
        self.max_expiration_seconds = max_expiration_seconds
        self.clock = clock

    def __repr__(self) -> str:  # the key must never show up in a log or a traceback
        return f"ServiceAccountTokens(issuer={self.issuer!r})"

    # -- issuing ----------------------------------------------------------------------------------

    def issue(self, namespace: str, name: str, *, expiration_seconds: int =
              DEFAULT_EXPIRATION_SECONDS, audiences: Sequence[str] | None = None,
              pod: dict[str, Any] | None = None) -> IssuedToken:
        """A token for ServiceAccount ``namespace/name``, bound to ``pod`` if given (how the
        kubelet gets a pod's token; no request validation, so tests may ask for short lives).

        Raises the API's 404 when the ServiceAccount does not exist.
        """
        account = self._get(SERVICE_ACCOUNTS, namespace, name)
        bound = _Bound()
        if pod is not None:
            bound = self._pod_binding(pod)
        return self._sign(account, bound, int(expiration_seconds),
                          list(audiences or self.api_audiences))

    def _sign(self, account: dict[str, Any], bound: _Bound, expiration_seconds: int,
              audiences: list[str]) -> IssuedToken:
        meta = account.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        now = int(self.clock())
        private: dict[str, Any] = {"namespace": namespace,
                                   "serviceaccount": {"name": name, "uid": meta.get("uid", "")}}
        for claim, ref in (("node", bound.node), ("pod", bound.pod), ("secret", bound.secret)):
            if ref is not None:
                private[claim] = ref
        claims = {"aud": audiences, "exp": now + expiration_seconds, "iat": now,
                  "iss": self.issuer, "jti": str(uuid.uuid4()), "kubernetes.io": private,
                  "nbf": now, "sub": service_account_username(namespace, name)}
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        return IssuedToken(token, float(now), float(now + expiration_seconds))

    def _get(self, key: tuple[str, str], namespace: str | None, name: str) -> dict[str, Any]:
        return self.store.get_ref(self.store.resource_type(key), namespace, name)

    def _pod_binding(self, pod: dict[str, Any]) -> _Bound:
        meta = pod.get("metadata") or {}
        node_name = (pod.get("spec") or {}).get("nodeName")
        node = None
        if node_name:
            node = {"name": node_name}
            try:
                node_uid = (self._get(NODES, None, node_name).get("metadata") or {}).get("uid")
            except ApiError:
                node_uid = None  # kube-apiserver still names the node when it is gone
            if node_uid:
                node["uid"] = node_uid
        return _Bound(pod={"name": meta.get("name", ""), "uid": meta.get("uid", "")}, node=node)

    def token_request(self, namespace: str, name: str, body: Any) -> dict[str, Any]:
        """``POST /api/v1/namespaces/NS/serviceaccounts/NAME/token``: the TokenRequest answered."""
        if not isinstance(body, dict):
            raise E.bad_request("the body of the request must be a TokenRequest object")
        kind = body.get("kind")
        if kind and kind != "TokenRequest":
            raise E.bad_request(f"the kind {kind!r} of the object does not match the "
                                "subresource serviceaccounts/token (TokenRequest)")
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        if not isinstance(meta, dict) or not isinstance(spec, dict):
            raise E.bad_request("metadata and spec of a TokenRequest must be objects")
        if meta.get("name") and meta["name"] != name:
            raise E.invalid_object(TOKEN_REQUEST_KIND, name, [E.invalid(
                "metadata.name", meta["name"], "must match the service account name if "
                                               "specified")])
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise E.invalid_object(TOKEN_REQUEST_KIND, name, [E.invalid(
                "metadata.namespace", meta["namespace"], "must match the service account "
                                                         "namespace if specified")])
        account = self._get(SERVICE_ACCOUNTS, namespace, name)
        account_meta = account.get("metadata") or {}
        if meta.get("uid") and meta["uid"] != account_meta.get("uid"):
            raise E.conflict(TOKEN_REQUEST_KIND, name,
                             f"the UID in the token request ({meta['uid']}) does not match the "
                             f"UID of the service account ({account_meta.get('uid')})")
        audiences = spec.get("audiences") or list(self.api_audiences)
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise E.bad_request("spec.audiences must be a list of strings")
        seconds = spec.get("expirationSeconds")
        if seconds is None:
            seconds = DEFAULT_EXPIRATION_SECONDS
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise E.bad_request("spec.expirationSeconds must be an integer")
        errs = []
        if seconds < MIN_EXPIRATION_SECONDS:
            errs.append(E.invalid("spec.expirationSeconds", seconds,
                                  "may not specify a duration less than 10 minutes"))
        if seconds > MAX_EXPIRATION_SECONDS:
            errs.append(E.invalid("spec.expirationSeconds", seconds,
                                  "may not specify a duration larger than 2^32 seconds"))
        if errs:
            raise E.invalid_object(TOKEN_REQUEST_KIND, "", errs)
        ref = spec.get("boundObjectRef")
        bound = self._bound_object(namespace, name, ref) if ref else _Bound()
        if self.max_expiration_seconds and seconds > self.max_expiration_seconds:
            seconds = self.max_expiration_seconds
        issued = self._sign(account, bound, seconds, audiences)
        out_spec: dict[str, Any] = {"audiences": audiences, "expirationSeconds": seconds,
                                    "boundObjectRef": ref or None}
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": account_meta.get("name"), "namespace": namespace,
                             "uid": account_meta.get("uid"),
                             "creationTimestamp": _rfc3339(issued.issued_at)},
                "spec": out_spec,
                "status": {"token": issued.token,
                           "expirationTimestamp": _rfc3339(issued.expires_at)}}

    def _bound_object(self, namespace: str, account: str, ref: Any) -> _Bound:
        if not isinstance(ref, dict):
            raise E.bad_request("spec.boundObjectRef must be an object")
        kind, api_version = ref.get("kind") or "", ref.get("apiVersion") or ""
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        name = ref.get("name") or ""
        if group == "" and kind == "Pod":
            obj = self._get(PODS, namespace, name)
            if ((obj.get("spec") or {}).get("serviceAccountName") or "default") != account:
                raise E.bad_request(f'cannot bind token for serviceaccount "{account}" to pod '
                                    "running with different serviceaccount name.")
            bound = self._pod_binding(obj)
        elif group == "" and kind == "Secret":
            obj = self._get(SECRETS, namespace, name)
            bound = _Bound(secret=_ref(obj))
        elif group == "" and kind == "Node":
            obj = self._get(NODES, None, name)
            bound = _Bound(node=_ref(obj))
        else:
            version = api_version.rpartition("/")[2]
            shown = f"{group}/{version}, Kind={kind}" if group else f"/{version}, Kind={kind}"
            raise E.bad_request(f"cannot bind token to object of type {shown}")
        uid = (obj.get("metadata") or {}).get("uid")
        if ref.get("uid") and ref["uid"] != uid:
            raise E.conflict(kind, name, f"the UID in the bound object reference "
                                         f"({ref['uid']}) does not match the UID in record. The "
                                         "object might have been deleted and then recreated")
        return bound

    # -- authenticating ---------------------------------------------------------------------------

    def authenticate_token(self, token: str) -> UserInfo | None:
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM], issuer=self.issuer,
                                audience=list(self.api_audiences),
                                options={"require": ["exp", "iat", "nbf", "iss", "sub", "aud"],
                                         "verify_exp": False, "verify_nbf": False,
                                         "verify_iat": False})
        except jwt.InvalidTokenError as exc:
            # Not ours, tampered with, or for another audience. The reason only, never the token.
            log.debug("service account token refused: %s", type(exc).__name__)
            return None
        try:
            return self._validate(claims)
        except _Invalid as exc:
            log.debug("service account token refused: %s", exc)
            return None

    def _validate(self, claims: dict[str, Any]) -> UserInfo:
        now = self.clock()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, (int, float)) or not isinstance(nbf, (int, float)):
            raise _Invalid("service account token claims could not be validated")
        if now > exp + LEEWAY_SECONDS:
            raise _Invalid("service account token has expired")
        if now < nbf - LEEWAY_SECONDS:
            raise _Invalid("service account token is not valid yet")
        private = claims.get("kubernetes.io")
        if not isinstance(private, dict):
            raise _Invalid("service account token claims could not be validated")
        namespace = private.get("namespace") or ""
        account_ref = private.get("serviceaccount") or {}
        if not isinstance(namespace, str) or not isinstance(account_ref, dict):
            raise _Invalid("service account token claims could not be validated")
        name = account_ref.get("name") or ""
        if claims.get("sub") != service_account_username(namespace, name):
            raise _Invalid("service account token subject does not match its claims")
        deleted_before = now - LEEWAY_SECONDS
        account = self._live(SERVICE_ACCOUNTS, namespace, account_ref, deleted_before,
                             "service account")
        extra: dict[str, tuple[str, ...]] = {}
        pod_ref, secret_ref, node_ref = (private.get(k) for k in ("pod", "secret", "node"))
        if secret_ref is not None:
            self._live(SECRETS, namespace, secret_ref, deleted_before, "secret")
        if pod_ref is not None:
            pod = self._live(PODS, namespace, pod_ref, deleted_before, "pod")
            extra[EXTRA_POD_NAME] = (str(pod["metadata"]["name"]),)
            extra[EXTRA_POD_UID] = (str(pod["metadata"]["uid"]),)
        if node_ref is not None:
            if pod_ref is None:  # a token bound to the node itself dies with it
                self._live(NODES, None, node_ref, deleted_before, "node")
            if isinstance(node_ref, dict) and node_ref.get("name"):
                extra[EXTRA_NODE_NAME] = (str(node_ref["name"]),)
                if node_ref.get("uid"):
                    extra[EXTRA_NODE_UID] = (str(node_ref["uid"]),)
        if claims.get("jti"):
            extra[EXTRA_CREDENTIAL_ID] = (f"JTI={claims['jti']}",)
        return UserInfo(service_account_username(namespace, name),
                        uid=(account.get("metadata") or {}).get("uid", ""),
                        groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}"),
                        extra=extra)

    def _live(self, key: tuple[str, str], namespace: str | None, ref: Any, deleted_before: float,
              what: str) -> dict[str, Any]:
        """The object a claim names, if it still exists with that uid and is not long deleted."""
        if not isinstance(ref, dict) or not ref.get("name"):
            raise _Invalid("service account token claims could not be validated")
        try:
            obj = self._get(key, namespace, str(ref["name"]))
        except ApiError:
            raise _Invalid(f"bound {what} is gone: service account token has been "
                           "invalidated") from None
        meta = obj.get("metadata") or {}
        deleted = _epoch(meta.get("deletionTimestamp"))
        if deleted is not None and deleted < deleted_before:
            raise _Invalid(f"bound {what} was deleted: service account token has been "
                           "invalidated")
        if ref.get("uid") != meta.get("uid"):
            raise _Invalid(f"{what} UID does not match the token's claim")
        return obj


class _Invalid(Exception):
    """Why a well-signed token is refused (for the debug log; the client only sees 401)."""


def _ref(obj: dict[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    return {"name": meta.get("name", ""), "uid": meta.get("uid", "")}
