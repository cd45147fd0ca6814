"""A container's environment, resolved the way the kubelet resolves it.

Order and precedence follow the kubelet (``makeEnvironmentVariables``): service variables first,
then ``envFrom`` sources in order, then ``env`` entries in order, later entries overriding
earlier ones. Literal ``value`` strings (not ``valueFrom`` results) get ``$(VAR)`` expansion
against what is defined so far; ``command`` and ``args`` are expanded against the final
environment. A missing non-optional Secret/ConfigMap (or key) is a ``ConfigError`` whose text is
what the real kubelet puts in the ``CreateContainerConfigError`` waiting message.
"""

from __future__ import annotations

import base64
import re
from decimal import Decimal
from typing import Any
from collections.abc import Callable, Mapping

from .quantities import QuantityError, ceil_div, parse_quantity

JSON = dict[str, Any]
#: (plural, namespace, name) -> object or None when it does not exist
ObjectLookup = Callable[[str, str, str], "JSON | None"]

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ConfigError(Exception):
    """The container cannot be configured yet (reason CreateContainerConfigError)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def expand(text: str, mapping: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: ``$$`` escapes, unknown references stay verbatim."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close < 0:
                out.append(text[i:])
                break
            name = text[i + 2:close]
            out.append(mapping[name] if name in mapping else text[i:close + 1])
            i = close + 1
        else:
            out.append(ch + nxt)
            i += 2
    return "".join(out)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward-API ``fieldRef`` value."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(a.get("ip", "") for a in status.get("hostIPs") or []),
        "status.podIPs": ",".join(a.get("ip", "") for a in status.get("podIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(items.items()))
    m = _LABEL_REF.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ConfigError(f'unsupported fieldPath: "{path}"')


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def resource_value(pod: Mapping[str, Any], ref: Mapping[str, Any], default_container: str,
                   node_allocatable: Mapping[str, Decimal]) -> str:
    """A ``resourceFieldRef`` value; an unset limit falls back to node allocatable (real)."""
    container_name = ref.get("containerName") or default_container
    container = next((c for c in (pod.get("spec") or {}).get("containers") or []
                      if c.get("name") == container_name), None)
    if container is None:
        raise ConfigError(f'container "{container_name}" not found for resourceFieldRef')
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in ("cpu", "memory", "ephemeral-storage"):
        raise ConfigError(f'unsupported container resource: "{resource}"')
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None and kind == "requests":
        raw = (resources.get("limits") or {}).get(name)
    try:
        value = parse_quantity(raw) if raw is not None else node_allocatable.get(name, Decimal(0))
        divisor = parse_quantity(ref.get("divisor") or "1")
    except QuantityError as e:
        raise ConfigError(str(e)) from None
    if value == 0 and kind == "requests":
        return "0"
    return str(ceil_div(value, divisor))


def _decoded(obj: JSON, kind: str) -> dict[str, str]:
    """A Secret's or ConfigMap's keys as text (secret data is base64 in the API)."""
    out: dict[str, str] = {}
    if kind == "secrets":
        for key, value in (obj.get("data") or {}).items():
            out[key] = base64.b64decode(value or "").decode("utf-8", errors="replace")
        for key, value in (obj.get("stringData") or {}).items():
            out.setdefault(key, value)
    else:
        out.update({k: str(v) for k, v in (obj.get("data") or {}).items()})
        for key, value in (obj.get("binaryData") or {}).items():
            out.setdefault(key, base64.b64decode(value or "").decode("utf-8", errors="replace"))
    return out


_KIND_WORD = {"secrets": ("secret", "Secret"), "configmaps": ("configmap", "ConfigMap")}


def _source(lookup: ObjectLookup, kind: str, namespace: str, name: str,
            optional: bool) -> dict[str, str] | None:
    obj = lookup(kind, namespace, name)
    if obj is None:
        if optional:
            return None
        raise ConfigError(f'{_KIND_WORD[kind][0]} "{name}" not found')
    return _decoded(obj, kind)


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], lookup: ObjectLookup, *,
                  service_env: Mapping[str, str] | None = None,
                  node_allocatable: Mapping[str, Decimal] | None = None) -> dict[str, str]:
    """The container's declared environment (service vars, envFrom, env), in kubelet order."""
    namespace = (pod.get("metadata") or {}).get("namespace") or "default"
    env: dict[str, str] = dict(service_env or {})
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, field in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            ref = source.get(field)
            if not ref:
                continue
            data = _source(lookup, kind, namespace, ref.get("name", ""), bool(ref.get("optional")))
            for key, value in (data or {}).items():
                if _ENV_NAME.match(prefix + key):  # invalid names are skipped, as in real
                    env[prefix + key] = value
    for var in container.get("env") or []:
        name = var.get("name", "")
        if "valueFrom" not in var:
            env[name] = expand(str(var.get("value") or ""), env)
            continue
        value_from = var.get("valueFrom") or {}
        resolved = _value_from(pod, container, value_from, lookup, namespace,
                               node_allocatable or {})
        if resolved is not None:
            env[name] = resolved
    return env


def _value_from(pod: Mapping[str, Any], container: Mapping[str, Any], value_from: JSON,
                lookup: ObjectLookup, namespace: str,
                node_allocatable: Mapping[str, Decimal]) -> str | None:
    if "fieldRef" in value_from:
        return field_value(pod, (value_from["fieldRef"] or {}).get("fieldPath", ""))
    if "resourceFieldRef" in value_from:
        return resource_value(pod, value_from["resourceFieldRef"] or {}, container.get("name", ""),
                              node_allocatable)
    for kind, field in (("configmaps", "configMapKeyRef"), ("secrets", "secretKeyRef")):
        ref = value_from.get(field)
        if ref is None:
            continue
        optional = bool(ref.get("optional"))
        name, key = ref.get("name", ""), ref.get("key", "")
        data = _source(lookup, kind, namespace, name, optional)
        if data is None:
            return None
        if key not in data:
            if optional:
                return None
            raise ConfigError(f"couldn't find key {key} in {_KIND_WORD[kind][1]} "
                              f"{namespace}/{name}")
        return data[key]
    raise ConfigError("valueFrom must name fieldRef, resourceFieldRef, configMapKeyRef or "
                      "secretKeyRef")


def expand_command(container: Mapping[str, Any], env: Mapping[str, str],
                   entrypoint: list[str] | None = None) -> list[str]:
    """``command`` (or the image entrypoint) + ``args``, each ``$(VAR)``-expanded."""
    command = [str(c) for c in container.get("command") or entrypoint or []]
    args = [str(a) for a in container.get("args") or []]
    return [expand(part, env) for part in command + args]
