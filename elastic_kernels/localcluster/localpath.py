"""The local-path provisioner: a claim's volume is a directory under the cluster's work directory.

Like rancher's local-path-provisioner, which kind and k3s ship, a dynamically provisioned volume
is a ``hostPath`` PersistentVolume on a directory named after the claim
(``<workdir>/volumes/pvc-<uid>_<namespace>_<name>``), sized as the claim asks (the size is a
label: nothing enforces it on a directory), with the class's reclaim policy.

Why ``volumeBindingMode: Immediate`` for the default class, where rancher's uses
``WaitForFirstConsumer``: rancher must wait for the scheduler to pick a node because its
directory lives on one node's disk. Every simulated node here shares this host's filesystem, so
a volume made at once is reachable from whichever node the pod lands on; binding at once makes
``kubectl get pvc`` show ``Bound`` as soon as the claim exists and lets a pod that uses a claim
that cannot bind report what a real cluster reports (``pod has unbound immediate
PersistentVolumeClaims``). A class of this provisioner with ``WaitForFirstConsumer`` works too:
its claims are provisioned once a pod uses them. ReadWriteOnce is then enforced by the scheduler
(``volumefit.py``) rather than by a node affinity on the volume.

The directory operations are blocking file-system calls: callers run them in a thread.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from .claims import DEFAULT_CLASS_ANNOTATION, claim_class

JSON = dict[str, Any]

PROVISIONER = "elastic-kernels.local/local-path"
DEFAULT_CLASS = "local-path"
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
#: Set on a claim its class's provisioner is working on (as the PV controller does).
STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"


def default_storage_class() -> JSON:
    """The class a fresh local cluster has, marked default."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": DEFAULT_CLASS,
                     "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def volume_name(pvc: Mapping[str, Any]) -> str:
    return f"pvc-{(pvc.get('metadata') or {}).get('uid', '')}"


def volume_dir(root: Path, pvc: Mapping[str, Any]) -> Path:
    meta = pvc.get("metadata") or {}
    return root / f"{volume_name(pvc)}_{meta.get('namespace', '')}_{meta.get('name', '')}"


def provisioned_volume(pvc: Mapping[str, Any], storage_class: Mapping[str, Any],
                       path: Path) -> JSON:
    """The PersistentVolume made for ``pvc``: pre-bound to it (``claimRef`` with its uid)."""
    meta = pvc.get("metadata") or {}
    spec = pvc.get("spec") or {}
    requests = (spec.get("resources") or {}).get("requests") or {}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": volume_name(pvc),
                     "annotations": {PROVISIONED_BY: str(storage_class.get("provisioner", ""))}},
        "spec": {
            "capacity": {"storage": requests.get("storage")},
            "accessModes": list(spec.get("accessModes") or []),
            "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy") or "Delete",
            "storageClassName": claim_class(pvc),
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                         "namespace": meta.get("namespace"), "name": meta.get("name"),
                         "uid": meta.get("uid"),
                         "resourceVersion": meta.get("resourceVersion")},
        },
    }


def make_dir(path: Path) -> None:
    """Create a volume's directory (its parent readable by this user only: it holds user data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    path.mkdir(exist_ok=True)


def owns(root: Path, path: str | None) -> bool:
    """Whether ``path`` is a volume directory this provisioner made under ``root`` (never
    anything else: a Delete policy on a hand-made hostPath volume must not remove host files)."""
    if not path:
        return False
    candidate = Path(path)
    return candidate.parent == root and candidate.name.startswith("pvc-")


def remove_dir(root: Path, path: str) -> None:
    if owns(root, path):
        shutil.rmtree(path, ignore_errors=True)
