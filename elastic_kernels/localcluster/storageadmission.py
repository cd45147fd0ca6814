"""The mutating admission a new claim or volume passes: a default class and protection.

Two of kube-apiserver's default admission plugins, for the objects the local-path provisioner
serves:

* DefaultStorageClass: a claim that names no class (``storageClassName`` unset, no beta
  annotation; an explicit ``""`` means "no class" and is kept) gets the default StorageClass, the
  newest if several are marked default; without a default it stays classless;
* StorageObjectInUseProtection: every new claim gets the ``kubernetes.io/pvc-protection``
  finalizer and every new volume ``kubernetes.io/pv-protection``, so that deleting one still in
  use only marks it; the PV controller (``pvcontroller.py``) removes the finalizer once no pod
  uses the claim, or the volume is no longer bound.

The store runs it on every create of those kinds, before their validation (``storagerules.py``),
as the API server runs mutating admission before validation.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable, Iterable

from .claims import (BETA_CLASS_ANNOTATION, PV_PROTECTION, PVC_PROTECTION, PVCS, PVS,
                     default_class)

JSON = dict[str, Any]


def _add_finalizer(obj: JSON, finalizer: str) -> None:
    meta = obj.setdefault("metadata", {})
    finalizers = list(meta.get("finalizers") or [])
    if finalizer not in finalizers:
        meta["finalizers"] = finalizers + [finalizer]


def admit_create(key: tuple[str, str], obj: JSON,
                 storage_classes: Callable[[], Iterable[JSON]]) -> None:
    """Mutate a new claim or volume in place (other kinds are left alone)."""
    if key == PVCS:
        spec = obj.get("spec")
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        if (isinstance(spec, dict) and spec.get("storageClassName") is None
                and BETA_CLASS_ANNOTATION not in annotations):
            default = default_class(storage_classes())
            if default is not None:
                spec["storageClassName"] = default["metadata"]["name"]
        _add_finalizer(obj, PVC_PROTECTION)
    elif key == PVS:
        _add_finalizer(obj, PV_PROTECTION)
