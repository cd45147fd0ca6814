"""What every stored object shares: its metadata rules, timestamps, and copies of JSON objects.

``validate_meta`` checks an object's ``metadata`` as kube-apiserver's ObjectMeta validation does
(names per kind, labels and annotations, finalizer names, ownerReferences) and words each error
the same way. ``deep_copy`` is the store's copy of JSON-shaped data and ``now_rfc3339`` its clock.
``meta_of`` and ``rv_of`` read an object's metadata and resourceVersion the forgiving way the
controllers, the scheduler and the kubelet need (an object without them reads as empty and oldest).

Called by the store (``store.py``) on every create and update, and by the built-in kind rules
(``kindrules.py``) for the name rules they share. Nothing here may be overridden; a kind with
other name rules is listed in ``DNS_LABEL_NAMES`` (``resources.py``) or ``PATH_SEGMENT_NAMES``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from . import errors as E
from .errors import FieldError
from .resources import DNS_LABEL_NAMES, ResourceKey, ResourceType
from .selectors import label_key_error, label_value_error

#: Standard finalizers: delete dependents first (foreground), or orphan them.
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"

_RBAC = "rbac.authorization.k8s.io"
#: Kinds whose names need only be valid URL path segments (kube-apiserver's ValidateRBACName).
PATH_SEGMENT_NAMES: frozenset[ResourceKey] = frozenset(
    {(_RBAC, "roles"), (_RBAC, "rolebindings"), (_RBAC, "clusterroles"),
     (_RBAC, "clusterrolebindings")})

#: The alphabet of generateName suffixes (apiserver's, without vowels and look-alike digits).
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                  "characters, '-' or '.', and must start and end with an alphanumeric character "
                  "(e.g. 'example.com', regex used for validation is "
                  "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or "
             "'-', and must start and end with an alphanumeric character (e.g. 'my-name',  or "
             "'123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")


def now_rfc3339(offset_seconds: float = 0) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def meta_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata``, or an empty one: what is read from a watch or an index need not have it."""
    return obj.get("metadata") or {}


def rv_of(obj: Mapping[str, Any]) -> int:
    """The resourceVersion as a number, to tell which of two copies of an object is newer (the
    store's are integers); 0, the oldest, when it has none."""
    try:
        return int(meta_of(obj).get("resourceVersion") or 0)
    except ValueError:
        return 0


def deep_copy(value: Any) -> Any:
    """Copy JSON-shaped data; about twice as fast as copy.deepcopy for API objects."""
    kind = type(value)
    if kind is dict:
        return {k: deep_copy(v) for k, v in value.items()}
    if kind is list:
        return [deep_copy(v) for v in value]
    return value


def generated_name(prefix: str) -> str:
    """``metadata.generateName`` made into a name, with a random suffix as the server adds."""
    return prefix + "".join(random.choice(_NAME_CHARS) for _ in range(5))


def validate_meta(rtype: ResourceType, meta: dict[str, Any], errs: list[FieldError]) -> None:
    """Append to ``errs`` what is wrong with ``meta`` for an object of ``rtype``."""
    name = meta.get("name")
    if isinstance(name, str) and name:
        if rtype.key in DNS_LABEL_NAMES:
            if len(name) > 63 or not DNS_LABEL_RE.match(name):
                errs.append(E.invalid("metadata.name", name, LABEL_MSG))
        elif rtype.key in PATH_SEGMENT_NAMES:
            # RBAC names are path segments (system:discovery, system:serviceaccount:...).
            if name in (".", ".."):
                errs.append(E.invalid("metadata.name", name, f"may not be '{name}'"))
            for illegal in ("/", "%"):
                if illegal in name:
                    errs.append(E.invalid("metadata.name", name,
                                          f"may not contain '{illegal}'"))
        elif rtype.storage_key != ("", "events"):
            if len(name) > 253 or not _DNS_SUBDOMAIN_RE.match(name):
                errs.append(E.invalid("metadata.name", name, _SUBDOMAIN_MSG))
        elif "/" in name or name in (".", ".."):
            errs.append(E.invalid("metadata.name", name, "may not contain '/'"))
    for field_name in ("labels", "annotations"):
        values = meta.get(field_name)
        if values is None:
            continue
        if not isinstance(values, dict):
            errs.append(E.invalid(f"metadata.{field_name}", values, "must be a map"))
            continue
        for key, value in values.items():
            why = label_key_error(key)
            if why:
                errs.append(E.invalid(f"metadata.{field_name}", key, why))
            if not isinstance(value, str):
                errs.append(E.invalid(f"metadata.{field_name}", value, "must be a string"))
            elif field_name == "labels":
                why = label_value_error(value)
                if why:
                    errs.append(E.invalid("metadata.labels", value, why))
    _validate_finalizers(meta.get("finalizers"), errs)
    _validate_owner_references(meta.get("ownerReferences"), errs)


def _validate_finalizers(finalizers: Any, errs: list[FieldError]) -> None:
    if finalizers is None:
        return
    if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
        errs.append(E.invalid("metadata.finalizers", finalizers, "must be a list of strings"))
        return
    for index, fin in enumerate(finalizers):
        if "/" not in fin and fin not in (FOREGROUND, ORPHAN, "kubernetes"):
            errs.append(E.invalid(f"metadata.finalizers[{index}]", fin,
                                  "name is neither a standard finalizer name nor is it "
                                  "fully qualified"))


def _validate_owner_references(owners: Any, errs: list[FieldError]) -> None:
    if owners is None:
        return
    if not isinstance(owners, list):
        errs.append(E.invalid("metadata.ownerReferences", owners, "must be a list"))
        return
    controllers = 0
    for index, ref in enumerate(owners):
        path = f"metadata.ownerReferences[{index}]"
        if not isinstance(ref, dict):
            errs.append(E.invalid(path, ref, "must be an object"))
            continue
        for req in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(req):
                errs.append(E.invalid(f"{path}.{req}", ref.get(req, ""),
                                      f"{req} must not be empty"))
        if ref.get("controller"):
            controllers += 1
    if controllers > 1:
        errs.append(E.invalid("metadata.ownerReferences", owners,
                              "Only one reference can have Controller set to true"))
