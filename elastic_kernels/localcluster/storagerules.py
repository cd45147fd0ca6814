"""Defaults and validation of PersistentVolumeClaims, PersistentVolumes and StorageClasses.

What kube-apiserver's registry strategies and ``pkg/apis/core/validation`` do for the storage
kinds, worded as they word it, so that a template that the local cluster accepts is one a real
cluster accepts too (and a bad one fails here first):

* a claim needs access modes (known ones; ``ReadWriteOncePod`` alone) and
  ``resources.requests.storage`` above zero; its spec is immutable once created except
  ``resources.requests`` (bound claims only, never below what was provisioned),
  ``volumeAttributesClassName``, the binder setting ``volumeName`` and a class set once on a
  claim that had none;
* a volume needs a capacity of ``storage`` only, access modes, exactly one volume source
  (``local`` with a node affinity), a reclaim policy of Delete, Recycle or Retain (default
  Retain); its source and volume mode are immutable;
* a class needs a provisioner; reclaim policy (default Delete) and binding mode (default
  Immediate) are checked; parameters, provisioner, reclaim policy and binding mode are immutable.

Called by ``kindrules.py`` for these kinds. The mutating admission that fills in a claim's
default class and the protection finalizers is ``storageadmission.py``.
"""

from __future__ import annotations

from typing import Any

from . import errors as E
from .claims import ACCESS_MODES, RWOP, quantity
from .errors import FieldError
from .objectmeta import now_rfc3339

JSON = dict[str, Any]

PVCS = ("", "persistentvolumeclaims")
PVS = ("", "persistentvolumes")
STORAGE_CLASSES = ("storage.k8s.io", "storageclasses")

_VOLUME_MODES = ["Block", "Filesystem"]
_PV_RECLAIM = ["Delete", "Recycle", "Retain"]
_SC_RECLAIM = ["Delete", "Retain"]
_BINDING_MODES = ["Immediate", "WaitForFirstConsumer"]
#: PersistentVolumeSpec fields that are not a volume source.
_PV_NON_SOURCE = frozenset({"capacity", "accessModes", "claimRef", "persistentVolumeReclaimPolicy",
                            "storageClassName", "mountOptions", "volumeMode", "nodeAffinity",
                            "volumeAttributesClassName"})
_PVC_IMMUTABLE_MSG = ("spec is immutable after creation except resources.requests and "
                      "volumeAttributesClassName for bound claims")


def _spec(obj: JSON, errs: list[FieldError]) -> JSON | None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errs.append(E.required("spec"))
        return None
    return spec


def _access_modes(modes: Any, path: str, errs: list[FieldError]) -> None:
    if not modes:
        errs.append(E.required(path, "at least 1 access mode is required"))
        return
    if not isinstance(modes, list):
        errs.append(E.invalid(path, modes, "must be a list"))
        return
    for mode in modes:
        if mode not in ACCESS_MODES:
            errs.append(E.not_supported(path, mode, sorted(ACCESS_MODES)))
    if RWOP in modes and len(modes) > 1:
        errs.append(E.forbidden(path, "may not use ReadWriteOncePod with other access modes"))


def _volume_mode(spec: JSON, errs: list[FieldError]) -> None:
    spec.setdefault("volumeMode", "Filesystem")
    if spec["volumeMode"] not in _VOLUME_MODES:
        errs.append(E.not_supported("spec.volumeMode", spec["volumeMode"], _VOLUME_MODES))


def _positive_storage(value: Any, path: str, errs: list[FieldError]) -> None:
    amount = quantity(value)
    if amount is None:
        errs.append(E.invalid(path, value, "quantities must match the regular expression "
                                           "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))
    elif amount <= 0:
        errs.append(E.invalid(path, str(value), "must be greater than zero"))


# --- PersistentVolumeClaim ----------------------------------------------------------------------


def prepare_claim(obj: JSON, errs: list[FieldError]) -> None:
    """Defaults and validation of a new claim; it starts Pending."""
    validate_claim(obj, errs)
    obj["status"] = {"phase": "Pending"}


def validate_claim(obj: JSON, errs: list[FieldError]) -> None:
    spec = _spec(obj, errs)
    if spec is None:
        return
    _access_modes(spec.get("accessModes"), "spec.accessModes", errs)
    requests = (spec.get("resources") or {}).get("requests") or {}
    if "storage" not in requests:
        errs.append(E.required("spec.resources[storage]"))
    else:
        _positive_storage(requests["storage"], "spec.resources[storage]", errs)
    _volume_mode(spec, errs)


def validate_claim_update(old: JSON, new: JSON, errs: list[FieldError]) -> None:
    """The spec may change only where a real server lets it (see the module docstring)."""
    validate_claim(new, errs)
    if errs:
        return
    old_spec, new_spec = old.get("spec") or {}, new["spec"]
    bound = (old.get("status") or {}).get("phase") == "Bound"

    def masked(spec: JSON, other: JSON) -> JSON:
        out = {k: v for k, v in spec.items() if k not in ("resources", "volumeAttributesClassName")}
        if not old_spec.get("volumeName"):
            out.pop("volumeName", None)  # the binder (or a user) binds it once
        if not old_spec.get("storageClassName"):
            out.pop("storageClassName", None)  # a class set afterwards (retroactive default)
        resources = dict(spec.get("resources") or {})
        if bound:
            resources.pop("requests", None)
        out["resources"] = resources
        return out

    if masked(old_spec, new_spec) != masked(new_spec, old_spec):
        errs.append(E.forbidden("spec", _PVC_IMMUTABLE_MSG))
        return
    new_size = quantity(((new_spec.get("resources") or {}).get("requests") or {}).get("storage"))
    capacity = quantity(((old.get("status") or {}).get("capacity") or {}).get("storage"))
    if new_size is not None and capacity is not None and new_size < capacity:
        # Shrinking is allowed back down to what was provisioned (volume expansion recovery).
        errs.append(E.forbidden("spec.resources.requests.storage",
                                "field can not be less than status.capacity"))


# --- PersistentVolume ---------------------------------------------------------------------------


def prepare_volume(obj: JSON, errs: list[FieldError]) -> None:
    """Defaults and validation of a new volume; it starts Pending until the binder sees it."""
    spec = _spec(obj, errs)
    if spec is None:
        return
    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
    validate_volume(obj, errs)
    obj["status"] = {"phase": "Pending", "lastPhaseTransitionTime": now_rfc3339()}


def validate_volume(obj: JSON, errs: list[FieldError]) -> None:
    spec = _spec(obj, errs)
    if spec is None:
        return
    capacity = spec.get("capacity")
    if not capacity:
        errs.append(E.required("spec.capacity"))
    elif not isinstance(capacity, dict) or set(capacity) != {"storage"}:
        errs.append(E.not_supported("spec.capacity", capacity, ["storage"]))
    else:
        _positive_storage(capacity["storage"], "spec.capacity[storage]", errs)
    _access_modes(spec.get("accessModes"), "spec.accessModes", errs)
    policy = spec.get("persistentVolumeReclaimPolicy")
    if policy not in _PV_RECLAIM:
        errs.append(E.not_supported("spec.persistentVolumeReclaimPolicy", policy, _PV_RECLAIM))
    _volume_mode(spec, errs)
    sources = [k for k in spec if k not in _PV_NON_SOURCE and spec[k] is not None]
    if not sources:
        errs.append(E.required("spec", "must specify a volume type"))
    for extra in sources[1:]:
        errs.append(E.forbidden(f"spec.{extra}", "may not specify more than 1 volume type"))
    for source in ("hostPath", "local"):
        if source in sources and not (spec.get(source) or {}).get("path"):
            errs.append(E.required(f"spec.{source}.path"))
    if "local" in sources and not spec.get("nodeAffinity"):
        errs.append(E.required("spec.nodeAffinity", "Local volume requires node affinity"))


def validate_volume_update(old: JSON, new: JSON, errs: list[FieldError]) -> None:
    validate_volume(new, errs)
    if errs:
        return
    old_spec, new_spec = old.get("spec") or {}, new["spec"]

    def source(spec: JSON) -> JSON:
        return {k: v for k, v in spec.items() if k not in _PV_NON_SOURCE}

    if source(old_spec) != source(new_spec):
        errs.append(E.forbidden("spec.persistentvolumesource",
                                "spec.persistentvolumesource is immutable after creation"))
    if old_spec.get("volumeMode") != new_spec.get("volumeMode"):
        errs.append(E.invalid("spec.volumeMode", new_spec.get("volumeMode"),
                              "field is immutable"))
    if old_spec.get("nodeAffinity") and old_spec.get("nodeAffinity") != new_spec.get(
            "nodeAffinity"):
        errs.append(E.invalid("spec.nodeAffinity", new_spec.get("nodeAffinity"),
                              "field is immutable"))


# --- StorageClass -------------------------------------------------------------------------------


def prepare_class(obj: JSON, errs: list[FieldError]) -> None:
    obj.setdefault("reclaimPolicy", "Delete")
    obj.setdefault("volumeBindingMode", "Immediate")
    validate_class(obj, errs)


def validate_class(obj: JSON, errs: list[FieldError]) -> None:
    if not obj.get("provisioner"):
        errs.append(E.required("provisioner"))
    if obj.get("reclaimPolicy") not in _SC_RECLAIM:
        errs.append(E.not_supported("reclaimPolicy", obj.get("reclaimPolicy"), _SC_RECLAIM))
    if obj.get("volumeBindingMode") not in _BINDING_MODES:
        errs.append(E.not_supported("volumeBindingMode", obj.get("volumeBindingMode"),
                                    _BINDING_MODES))


def validate_class_update(old: JSON, new: JSON, errs: list[FieldError]) -> None:
    new.setdefault("reclaimPolicy", old.get("reclaimPolicy"))
    new.setdefault("volumeBindingMode", old.get("volumeBindingMode"))
    validate_class(new, errs)
    if (old.get("parameters") or {}) != (new.get("parameters") or {}):
        errs.append(E.forbidden("parameters", "updates to parameters are forbidden."))
    if old.get("provisioner") != new.get("provisioner"):
        errs.append(E.forbidden("provisioner", "updates to provisioner are forbidden."))
    if old.get("reclaimPolicy") != new.get("reclaimPolicy"):
        errs.append(E.forbidden("reclaimPolicy", "updates to reclaimPolicy are forbidden."))
    if old.get("volumeBindingMode") != new.get("volumeBindingMode"):
        errs.append(E.invalid("volumeBindingMode", new.get("volumeBindingMode"),
                              "field is immutable"))


# --- dispatch (kindrules) -----------------------------------------------------------------------


def prepare_create(key: tuple[str, str], obj: JSON, errs: list[FieldError]) -> bool:
    """Default and validate a new storage object; False if ``key`` is not a storage kind."""
    if key == PVCS:
        prepare_claim(obj, errs)
    elif key == PVS:
        prepare_volume(obj, errs)
    elif key == STORAGE_CLASSES:
        prepare_class(obj, errs)
    else:
        return False
    return True


def prepare_update(key: tuple[str, str], old: JSON, new: JSON, errs: list[FieldError]) -> bool:
    """Validate an update of a storage object; False if ``key`` is not a storage kind."""
    if key == PVCS:
        validate_claim_update(old, new, errs)
    elif key == PVS:
        validate_volume_update(old, new, errs)
    elif key == STORAGE_CLASSES:
        validate_class_update(old, new, errs)
    else:
        return False
    return True
