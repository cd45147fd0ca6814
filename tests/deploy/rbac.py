"""What a Role grants, as (verb, group, resource, subresource) tuples, for "granted but unused"
checks. Whether a request is allowed is the local cluster's RBAC authorizer's to say."""

from __future__ import annotations

from collections.abc import Iterable

from .manifests import JSON

Grant = tuple[str, str, str, str]  # verb, group, resource, subresource


def grants(rules: list[JSON]) -> set[Grant]:
    """Every (verb, group, resource, subresource) the rules name explicitly (no wildcards);
    a rule limited by ``resourceNames`` counts as granting its verbs."""
    out: set[Grant] = set()
    for rule in rules:
        for word in (*rule.get("apiGroups", []), *rule.get("resources", []),
                     *rule.get("verbs", [])):
            if word == "*":
                raise AssertionError(f"wildcard in rule {rule}: least privilege names things")
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                resource, _, sub = res.partition("/")
                for verb in rule["verbs"]:
                    out.add((verb, group, resource, sub))
    return out


def fmt(items: Iterable[Grant]) -> list[str]:
    return sorted(f"{v} {g or 'core'}/{r}{'/' + s if s else ''}" for v, g, r, s in items)
