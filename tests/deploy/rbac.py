"""RBAC rule matching, as the API server's authorizer does for namespaced resource requests."""

from __future__ import annotations

from collections.abc import Iterable

from .manifests import JSON

Grant = tuple[str, str, str, str]  # verb, group, resource, subresource


def allows(rules: list[JSON], verb: str, group: str, resource: str, subresource: str = "") -> bool:
    target = f"{resource}/{subresource}" if subresource else resource
    for rule in rules:
        if rule.get("resourceNames"):
            continue  # name-limited rules cannot authorise list/watch/create; not used here
        groups, resources, verbs = (rule.get(k) or [] for k in ("apiGroups", "resources", "verbs"))
        if ((group in groups or "*" in groups) and (target in resources or "*" in resources)
                and (verb in verbs or "*" in verbs)):
            return True
    return False


def grants(rules: list[JSON]) -> set[Grant]:
    """Every (verb, group, resource, subresource) the rules name explicitly (no wildcards)."""
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
