"""ValidatingAdmissionPolicy and its bindings (``admissionregistration.k8s.io/v1``), in CEL.

Clusters increasingly state rules such as "no hostPath volumes" as ValidatingAdmissionPolicies
rather than webhooks; the project's writes must meet them here as they would there. A policy
matches a request by ``matchConstraints`` (resource rules, namespace and object selectors) and
``matchConditions``; each binding that names it (and whose ``matchResources`` also matches)
evaluates the policy's ``variables`` and ``validations`` with ``object``, ``oldObject``,
``request``, ``params``, ``namespaceObject`` and ``variables``. A failed validation under a
``Deny`` binding refuses the write in kube-apiserver's words (``pods "x" is forbidden:
ValidatingAdmissionPolicy 'p' with binding 'b' denied request: <message>``, with the status
reason and code of the validation's ``reason``, Invalid/422 by default); under ``Warn`` it is a
warning. ``Audit`` has no audit log here. ``paramRef`` is resolved by name (and namespace).
"""

from __future__ import annotations

from typing import Any

from .authn import UserInfo
from .cel import CelError, compile_expression
from .errors import ApiError, go_quote
from .rbac import Listing, Lookup
from .resources import ResourceType
from .selectors import label_selector_from_dict

JSON = dict[str, Any]
POLICIES = ("admissionregistration.k8s.io", "validatingadmissionpolicies")
BINDINGS = ("admissionregistration.k8s.io", "validatingadmissionpolicybindings")
_VARIABLES = ("object", "oldObject", "request", "params", "namespaceObject", "variables",
              "authorizer")
_CODES = {"Unauthorized": 401, "Forbidden": 403, "Invalid": 422, "RequestEntityTooLarge": 413}


def _any(values: Any, wanted: str) -> bool:
    return isinstance(values, list) and ("*" in values or wanted in values)


def _rule_matches(rule: JSON, operation: str, rtype: ResourceType, subresource: str | None,
                  ) -> bool:
    resource = rtype.plural + (f"/{subresource}" if subresource else "")
    wanted = rule.get("resources") or []
    resource_ok = resource in wanted or "*/*" in wanted or (
        not subresource and "*" in wanted) or (
        subresource is not None and f"{rtype.plural}/*" in wanted) or (
        subresource is not None and f"*/{subresource}" in wanted)
    scope = rule.get("scope") or "*"
    scope_ok = scope == "*" or (scope == "Namespaced") == rtype.namespaced
    return (_any(rule.get("apiGroups"), rtype.group) and _any(rule.get("apiVersions"),
                                                               rtype.version)
            and _any(rule.get("operations"), operation) and resource_ok and scope_ok)


def _names_match(rule: JSON, name: str) -> bool:
    names = rule.get("resourceNames") or []
    return not names or name in names


class ValidatingAdmissionPolicies:
    """Evaluates the stored policies and bindings against one write."""

    def __init__(self, lookup: Lookup, listing: Listing) -> None:
        self._lookup = lookup
        self._listing = listing

    def _namespace(self, name: str) -> JSON | None:
        return self._lookup(("", "namespaces"), None, name) if name else None

    def _matches(self, match: JSON | None, operation: str, rtype: ResourceType,
                 subresource: str | None, obj: JSON, old: JSON | None,
                 namespace: JSON | None, require_rules: bool) -> bool:
        match = match or {}
        name = str((obj.get("metadata") or {}).get("name") or "")
        rules = match.get("resourceRules") or []
        if rules or require_rules:
            if not any(_rule_matches(r, operation, rtype, subresource) and _names_match(r, name)
                       for r in rules):
                return False
        if any(_rule_matches(r, operation, rtype, subresource) and _names_match(r, name)
               for r in match.get("excludeResourceRules") or []):
            return False
        selector = match.get("namespaceSelector")
        if selector and rtype.namespaced:
            labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
            if not label_selector_from_dict(selector).matches(labels):
                return False
        elif selector and rtype.key == ("", "namespaces"):
            if not label_selector_from_dict(selector).matches(
                    (obj.get("metadata") or {}).get("labels") or {}):
                return False
        selector = match.get("objectSelector")
        if selector:
            chosen = label_selector_from_dict(selector)
            if not any(chosen.matches((o.get("metadata") or {}).get("labels") or {})
                       for o in (obj, old) if o is not None):
                return False
        return True

    def _request(self, user: UserInfo | None, operation: str, rtype: ResourceType,
                 subresource: str | None, obj: JSON, dry_run: bool) -> JSON:
        meta = obj.get("metadata") or {}
        return {
            "operation": operation, "name": meta.get("name") or "",
            "namespace": meta.get("namespace") or "",
            "kind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
            "resource": {"group": rtype.group, "version": rtype.version,
                         "resource": rtype.plural},
            "subResource": subresource or "", "dryRun": dry_run,
            "userInfo": {"username": user.name if user else "",
                         "groups": list(user.groups) if user else []},
        }

    def validate(self, user: UserInfo | None, operation: str, rtype: ResourceType,
                 subresource: str | None, old: JSON | None, new: JSON, warnings: list[str],
                 dry_run: bool = False) -> None:
        """Raises the first denial of a ``Deny`` binding; appends ``Warn`` bindings' failures."""
        if rtype.key in (POLICIES, BINDINGS):
            return
        policies = {str((p.get("metadata") or {}).get("name")): p
                    for p in self._listing(POLICIES, None)}
        if not policies:
            return
        ns_name = str((new.get("metadata") or {}).get("namespace") or "")
        namespace = self._namespace(ns_name) if rtype.namespaced else None
        request = self._request(user, operation, rtype, subresource, new, dry_run)
        for binding in sorted(self._listing(BINDINGS, None),
                              key=lambda b: str((b.get("metadata") or {}).get("name"))):
            spec = binding.get("spec") or {}
            policy = policies.get(str(spec.get("policyName") or ""))
            if policy is None:
                continue
            pspec = policy.get("spec") or {}
            if not self._matches(pspec.get("matchConstraints"), operation, rtype, subresource,
                                 new, old, namespace, require_rules=True):
                continue
            if spec.get("matchResources") and not self._matches(
                    spec["matchResources"], operation, rtype, subresource, new, old, namespace,
                    require_rules=False):
                continue
            params = self._resolve_params(pspec, spec, ns_name)
            bindings = {"object": None if operation == "DELETE" else new, "oldObject": old,
                        "request": request, "params": params, "namespaceObject": namespace,
                        "variables": {}}
            self._evaluate(policy, binding, bindings, warnings)

    def _resolve_params(self, pspec: JSON, bspec: JSON, namespace: str) -> Any:
        ref = bspec.get("paramRef")
        kind = pspec.get("paramKind")
        if not isinstance(ref, dict) or not isinstance(kind, dict) or not ref.get("name"):
            return None
        plural = str(kind.get("kind") or "").lower() + "s"
        group = str(kind.get("apiVersion") or "").rpartition("/")[0]
        return self._lookup((group, plural), ref.get("namespace") or namespace or None,
                            str(ref["name"]))

    def _evaluate(self, policy: JSON, binding: JSON, bindings: JSON,
                  warnings: list[str]) -> None:
        pspec = policy.get("spec") or {}
        actions = (binding.get("spec") or {}).get("validationActions") or []
        fail_closed = (pspec.get("failurePolicy") or "Fail") == "Fail"
        for condition in pspec.get("matchConditions") or []:
            try:
                if compile_expression(str(condition.get("expression") or ""),
                                      _VARIABLES).evaluate(bindings) is not True:
                    return
            except CelError:
                if not fail_closed:
                    return
        variables: JSON = {}
        bindings["variables"] = variables
        for variable in pspec.get("variables") or []:
            try:
                variables[str(variable.get("name"))] = compile_expression(
                    str(variable.get("expression") or ""), _VARIABLES).evaluate(bindings)
            except CelError:
                continue  # a use of it fails as a missing key, as an erroring variable would
        for validation in pspec.get("validations") or []:
            expression = str(validation.get("expression") or "")
            try:
                ok = compile_expression(expression, _VARIABLES).evaluate(bindings) is True
                message = self._message(validation, bindings, expression)
            except CelError as exc:
                if not fail_closed:
                    continue
                ok, message = False, f"expression '{expression}' resulted in error: {exc}"
            if ok:
                continue
            policy_name = (policy.get("metadata") or {}).get("name")
            binding_name = (binding.get("metadata") or {}).get("name")
            if "Warn" in actions:
                warnings.append(f"Validation failed for ValidatingAdmissionPolicy "
                                f"'{policy_name}' with binding '{binding_name}': {message}")
            if "Deny" in actions:
                reason = str(validation.get("reason") or "Invalid")
                raise self._denial(bindings, reason, f"ValidatingAdmissionPolicy '{policy_name}' "
                                                     f"with binding '{binding_name}' denied "
                                                     f"request: {message}")

    @staticmethod
    def _message(validation: JSON, bindings: JSON, expression: str) -> str:
        text = validation.get("messageExpression")
        if isinstance(text, str) and text:
            try:
                value = compile_expression(text, _VARIABLES).evaluate(bindings)
                if isinstance(value, str) and value.strip():
                    return value
            except CelError:
                pass
        message = validation.get("message")
        if isinstance(message, str) and message:
            return message
        return f"failed expression: {expression.strip()}"

    @staticmethod
    def _denial(bindings: JSON, reason: str, why: str) -> ApiError:
        request = bindings["request"]
        group = request["resource"]["group"]
        resource = request["resource"]["resource"]
        qualified = f"{resource}.{group}" if group else resource
        name = request["name"]
        message = (f"{qualified} {go_quote(name)} is forbidden: {why}" if name
                   else f"{qualified} is forbidden: {why}")
        details: JSON = {"name": name} if name else {}
        if group:
            details["group"] = group
        details["kind"] = resource
        details["causes"] = [{"message": why}]  # as kube-apiserver adds the denial as a cause
        return ApiError(_CODES.get(reason, 422 if reason == "Invalid" else 403), reason,
                        message, details)
