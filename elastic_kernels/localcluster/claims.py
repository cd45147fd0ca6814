"""Plain facts about PersistentVolumeClaims, PersistentVolumes and StorageClasses.

Pure functions over the stored dicts, shared by the storage rules (``storagerules.py``), the
provisioner and binder (``pvcontroller.py``), the scheduler's volume filters (``volumefit.py``),
the kubelet (``claimmounts.py``) and ``kubectl get`` tables, so that "which class", "is it
bound", "does this volume satisfy that claim" are answered one way everywhere, as
``k8s.io/component-helpers/storage/volume`` answers them for the real components.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from collections.abc import Iterable, Mapping

from .errors import ApiError
from .objectmeta import meta_of
from .quantities import QuantityError, parse_quantity
from .selectors import label_selector_from_dict

JSON = dict[str, Any]

PVCS = ("", "persistentvolumeclaims")
PVS = ("", "persistentvolumes")
STORAGE_CLASSES = ("storage.k8s.io", "storageclasses")

RWO = "ReadWriteOnce"
ROX = "ReadOnlyMany"
RWX = "ReadWriteMany"
RWOP = "ReadWriteOncePod"
#: In the order ``kubectl get`` prints them (helper.GetAccessModesAsString).
ACCESS_MODES = (RWO, ROX, RWX, RWOP)
_SHORT = {RWO: "RWO", ROX: "ROX", RWX: "RWX", RWOP: "RWOP"}

DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
BETA_DEFAULT_CLASS_ANNOTATION = "storageclass.beta.kubernetes.io/is-default-class"
BETA_CLASS_ANNOTATION = "volume.beta.kubernetes.io/storage-class"

#: Finalizers the real API server's admission adds so that storage in use is never removed.
PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def access_modes_text(modes: Iterable[str] | None) -> str:
    """``RWO,RWX``: the modes present, in kubectl's fixed order."""
    present = set(modes or ())
    return ",".join(_SHORT[m] for m in ACCESS_MODES if m in present)


def claim_class(pvc: Mapping[str, Any]) -> str:
    """The claim's class: the beta annotation wins over ``spec.storageClassName`` ("" = none)."""
    annotations = meta_of(pvc).get("annotations") or {}
    if BETA_CLASS_ANNOTATION in annotations:
        return str(annotations[BETA_CLASS_ANNOTATION])
    return str(_spec(pvc).get("storageClassName") or "")


def volume_class(pv: Mapping[str, Any]) -> str:
    """The volume's class, read the same way as a claim's."""
    return claim_class(pv)


def is_default_class(sc: Mapping[str, Any]) -> bool:
    annotations = meta_of(sc).get("annotations") or {}
    return (annotations.get(DEFAULT_CLASS_ANNOTATION) == "true"
            or annotations.get(BETA_DEFAULT_CLASS_ANNOTATION) == "true")


def default_class(classes: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The default StorageClass; with several, the newest (then the first by name), as the
    DefaultStorageClass admission plugin picks since 1.26."""
    defaults = sorted((c for c in classes if is_default_class(c)),
                      key=lambda c: str(meta_of(c).get("name") or ""))
    if not defaults:
        return None
    return max(defaults, key=lambda c: str(meta_of(c).get("creationTimestamp") or ""))


def quantity(value: Any) -> Decimal | None:
    try:
        return parse_quantity(value)
    except QuantityError:
        return None


def requested_storage(pvc: Mapping[str, Any]) -> Decimal | None:
    requests = (_spec(pvc).get("resources") or {}).get("requests") or {}
    return quantity(requests.get("storage")) if "storage" in requests else None


def volume_capacity(pv: Mapping[str, Any]) -> Decimal | None:
    capacity = _spec(pv).get("capacity") or {}
    return quantity(capacity.get("storage")) if "storage" in capacity else None


def pod_claims(pod: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(volume name, claim name, readOnly) of each ``persistentVolumeClaim`` volume."""
    out = []
    for volume in _spec(pod).get("volumes") or []:
        source = volume.get("persistentVolumeClaim") if isinstance(volume, dict) else None
        if isinstance(source, dict):
            out.append((str(volume.get("name") or ""), str(source.get("claimName") or ""),
                        bool(source.get("readOnly"))))
    return out


def is_bound(pvc: Mapping[str, Any]) -> bool:
    return bool(_spec(pvc).get("volumeName")) and (
        (pvc.get("status") or {}).get("phase") == "Bound")


def claim_key(pvc: Mapping[str, Any]) -> tuple[str, str]:
    meta = meta_of(pvc)
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def claim_ref_matches(pv: Mapping[str, Any], pvc: Mapping[str, Any]) -> bool:
    """The volume's ``claimRef`` names this claim (and, if it carries a uid, this very one)."""
    ref = _spec(pv).get("claimRef") or {}
    if not ref:
        return False
    meta = meta_of(pvc)
    if (ref.get("namespace"), ref.get("name")) != (meta.get("namespace"), meta.get("name")):
        return False
    return not ref.get("uid") or ref.get("uid") == meta.get("uid")


def volume_path(pv: Mapping[str, Any]) -> str | None:
    """Where the volume's files are on this host: ``hostPath.path`` or ``local.path``."""
    spec = _spec(pv)
    for source in ("hostPath", "local"):
        path = (spec.get(source) or {}).get("path")
        if path:
            return str(path)
    return None


def volume_satisfies(pv: Mapping[str, Any], pvc: Mapping[str, Any]) -> bool:
    """Whether an unclaimed (or pre-bound) volume can serve the claim, as the binder's
    ``FindMatchingVolume`` decides: same class and volume mode, every requested access mode,
    enough capacity, and the claim's label selector."""
    spec, claim_spec = _spec(pv), _spec(pvc)
    ref = spec.get("claimRef")
    if ref and not claim_ref_matches(pv, pvc):
        return False
    if meta_of(pv).get("deletionTimestamp"):
        return False
    if volume_class(pv) != claim_class(pvc):
        return False
    if (spec.get("volumeMode") or "Filesystem") != (claim_spec.get("volumeMode") or "Filesystem"):
        return False
    if not set(claim_spec.get("accessModes") or ()) <= set(spec.get("accessModes") or ()):
        return False
    want, have = requested_storage(pvc), volume_capacity(pv)
    if want is None or have is None or have < want:
        return False
    selector = claim_spec.get("selector")
    if selector:
        try:
            return label_selector_from_dict(selector).matches(dict(meta_of(pv).get("labels") or {}))
        except (KeyError, TypeError, ApiError):
            return False  # a selector nothing can match (validation words it for the client)
    return True
