"""``SelfSubjectAccessReview`` and ``SelfSubjectRulesReview``: the caller asks what it may do.

``kubectl auth can-i VERB RESOURCE`` sends the first and prints yes or no (exit 0 or 1);
``kubectl auth can-i --list`` sends the second and prints the rules. Both are answered from the
same authorizer that judges real requests, so "can-i says yes" means the request will pass.
Neither is stored; the answer is the request with ``status`` filled in, as kube-apiserver's.
"""

from __future__ import annotations

from typing import Any

from . import errors as E
from .authn import UserInfo
from .authz import Attributes, Authorizer

JSON = dict[str, Any]
GROUP = "authorization.k8s.io"
API_VERSION = f"{GROUP}/v1"


def _string(obj: JSON, key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _checked(body: Any, kind: str) -> JSON:
    if not isinstance(body, dict) or body.get("kind") not in (None, kind):
        raise E.bad_request(f"the body of the request must be a {kind} object")
    spec = body.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise E.bad_request("spec must be an object")
    return body


def self_subject_access_review(user: UserInfo, body: Any, authorizer: Authorizer) -> JSON:
    """The answer to ``POST selfsubjectaccessreviews`` made by ``user``."""
    body = _checked(body, "SelfSubjectAccessReview")
    spec = body.get("spec") or {}
    resource = spec.get("resourceAttributes")
    nonresource = spec.get("nonResourceAttributes")
    errs = []
    if resource is not None and nonresource is not None:
        errs.append(E.invalid("spec.nonResourceAttributes", nonresource,
                              "cannot be specified in combination with resourceAttributes"))
    elif resource is None and nonresource is None:
        errs.append(E.invalid("spec.resourceAttributes", None,
                              "exactly one of nonResourceAttributes or resourceAttributes must "
                              "be specified"))
    if errs:
        raise E.invalid_object(f"SelfSubjectAccessReview.{GROUP}", "", errs)
    if isinstance(resource, dict):
        attrs = Attributes(user, _string(resource, "verb"), True, "",
                           _string(resource, "group"), _string(resource, "version"),
                           _string(resource, "resource"), _string(resource, "subresource"),
                           _string(resource, "namespace"), _string(resource, "name"))
    elif isinstance(nonresource, dict):
        attrs = Attributes(user, _string(nonresource, "verb"), path=_string(nonresource, "path"))
    else:
        raise E.bad_request("resourceAttributes and nonResourceAttributes must be objects")
    decision = authorizer.authorize(attrs)
    status: JSON = {"allowed": decision.allowed}
    if decision.reason:
        status["reason"] = decision.reason
    return {"kind": "SelfSubjectAccessReview", "apiVersion": API_VERSION,
            "metadata": {**(body.get("metadata") or {}), "creationTimestamp": None},
            "spec": spec, "status": status}


def self_subject_rules_review(user: UserInfo, body: Any, authorizer: Authorizer) -> JSON:
    """The answer to ``POST selfsubjectrulesreviews`` made by ``user``."""
    body = _checked(body, "SelfSubjectRulesReview")
    namespace = _string(body.get("spec") or {}, "namespace")
    if not namespace:
        raise E.bad_request("no namespace on request")
    rules = authorizer.rules_for(user, namespace)
    status: JSON = {"resourceRules": [r.as_api() for r in rules.resource_rules],
                    "nonResourceRules": [r.as_api() for r in rules.non_resource_rules],
                    "incomplete": False}
    if rules.errors:
        unique = list(dict.fromkeys(rules.errors))
        status["evaluationError"] = (unique[0] if len(unique) == 1
                                     else "[" + ", ".join(unique) + "]")
    return {"kind": "SelfSubjectRulesReview", "apiVersion": API_VERSION,
            "metadata": {"creationTimestamp": None}, "spec": {}, "status": status}
