"""A pod's ``persistentVolumeClaim`` volume as the directory of the volume its claim is bound to.

What the kubelet's volume manager does before it can mount a claim: read the claim, check that
it is bound and not being deleted, read its volume, and use the volume's directory (``hostPath``
or ``local`` path; the local-path provisioner makes ``hostPath`` volumes, ``localpath.py``). A
claim that is missing or not bound yet keeps the pod in ContainerCreating with a FailedMount
Event worded like the kubelet's; the kubelet retries when claims or volumes change.

``readOnly`` (on the claim source or the volumeMount) is recorded on the mount but not enforced:
pod processes run as this user without a mount namespace, so nothing can make a directory
read-only for one process and writable for another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from collections.abc import Mapping

from .claims import volume_path
from .podenv import ObjectLookup

JSON = dict[str, Any]


class ClaimNotReady(Exception):
    """The claim cannot be mounted yet; ``message`` is the kubelet's FailedMount text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _failed(volume: str, why: str) -> ClaimNotReady:
    return ClaimNotReady(f"Unable to attach or mount volumes: unmounted volumes=[{volume}], "
                         f"unattached volumes=[], failed to process volumes=[{volume}]: {why}")


def claim_directory(volume: Mapping[str, Any], namespace: str, lookup: ObjectLookup) -> Path:
    """The host directory behind a ``persistentVolumeClaim`` volume (created if missing, as a
    ``DirectoryOrCreate`` hostPath is); raises ClaimNotReady while it cannot be mounted."""
    name = str(volume.get("name") or "")
    claim_name = str((volume.get("persistentVolumeClaim") or {}).get("claimName") or "")
    where = f"error processing PVC {namespace}/{claim_name}"
    claim = lookup("persistentvolumeclaims", namespace, claim_name)
    if claim is None:
        raise _failed(name, f"{where}: failed to fetch PVC from API server: "
                            f'persistentvolumeclaims "{claim_name}" not found')
    if (claim.get("metadata") or {}).get("deletionTimestamp"):
        raise _failed(name, f"{where}: can't start pod because PVC is being deleted")
    volume_name = (claim.get("spec") or {}).get("volumeName")
    if not volume_name or (claim.get("status") or {}).get("phase") != "Bound":
        raise _failed(name, f"{where}: PVC is not bound")
    pv = lookup("persistentvolumes", namespace, str(volume_name))
    if pv is None:
        raise _failed(name, f'{where}: failed to fetch PV "{volume_name}" from API server: '
                            f'persistentvolumes "{volume_name}" not found')
    path = volume_path(pv)
    if path is None:
        kinds = [k for k in (pv.get("spec") or {}) if k not in ("capacity", "accessModes")]
        raise _failed(name, f'{where}: volume "{volume_name}" has no hostPath or local path '
                            f"that the local cluster can mount (spec: {', '.join(sorted(kinds))})")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
