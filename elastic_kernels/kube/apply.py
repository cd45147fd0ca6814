"""Create-or-update of manifest files, for the demo and the local cluster's ``--apply``.

Production installs use ``kubectl apply``; this exists so the demo needs no kubectl binary. It
understands the kinds this project ships (CRDs, our custom resources, and the common core kinds)
and refuses any other kind by name rather than guessing its URL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from collections.abc import Iterable

import yaml

from .client import CRDS, NAMESPACES, KubeClient, KubeError, Resource
from . import resources as R

JSON = dict[str, Any]

KNOWN: dict[tuple[str, str], Resource] = {
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): CRDS,
    ("v1", "Namespace"): NAMESPACES,
    ("v1", "ConfigMap"): Resource("", "v1", "configmaps", "ConfigMap"),
    ("v1", "Secret"): Resource("", "v1", "secrets", "Secret"),
    ("v1", "ServiceAccount"): Resource("", "v1", "serviceaccounts", "ServiceAccount"),
    # The demo's notebooks folder as the user's volume: a static volume and its claim.
    ("v1", "PersistentVolume"): Resource("", "v1", "persistentvolumes", "PersistentVolume",
                                         namespaced=False),
    ("v1", "PersistentVolumeClaim"): Resource("", "v1", "persistentvolumeclaims",
                                              "PersistentVolumeClaim"),
    (R.API_VERSION, R.KERNELSPECS.kind): R.KERNELSPECS,
    (R.API_VERSION, R.TEMPLATES.kind): R.TEMPLATES,
    (R.API_VERSION, R.JUPYTERKERNELS.kind): R.JUPYTERKERNELS,
}


class ManifestError(ValueError):
    """A manifest cannot be applied; says which file and document."""


def load_manifests(paths: Iterable[str | Path]) -> list[tuple[str, JSON]]:
    """YAML documents from files and directories (``*.yaml``/``*.yml``, sorted), with origins.

    ``kustomization.yaml`` files are skipped: they are instructions for kustomize, not objects.
    """
    docs: list[tuple[str, JSON]] = []
    for p in paths:
        path = Path(p)
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        for f in files:
            if f.name in ("kustomization.yaml", "kustomization.yml"):
                continue
            try:
                loaded = list(yaml.safe_load_all(f.read_text()))
            except (OSError, yaml.YAMLError) as e:
                raise ManifestError(f"{f}: {e}") from None
            for i, doc in enumerate(loaded):
                if doc is None:
                    continue
                if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                    raise ManifestError(f"{f} document {i + 1}: not a Kubernetes object")
                docs.append((f"{f} document {i + 1}", doc))
    return docs


async def apply_manifests(client: KubeClient, docs: list[tuple[str, JSON]],
                          namespace: str | None = None) -> list[str]:
    """Create each object, or replace it when it exists; CRDs first, then wait until served."""
    applied: list[str] = []
    docs = sorted(docs, key=lambda d: d[1]["kind"] != "CustomResourceDefinition")
    for origin, doc in docs:
        resource = KNOWN.get((doc["apiVersion"], doc["kind"]))
        if resource is None:
            raise ManifestError(f"{origin}: kind {doc['apiVersion']}/{doc['kind']} is not "
                                "supported here; use kubectl apply")
        name = (doc.get("metadata") or {}).get("name")
        if not name:
            raise ManifestError(f"{origin}: metadata.name is required")
        ns = (doc.get("metadata") or {}).get("namespace") or namespace
        try:
            try:
                await client.create(resource, doc, ns)
            except KubeError as e:
                if not e.already_exists:
                    raise
                current = await client.get(resource, name, ns)
                body = dict(doc)
                body["metadata"] = {**(doc.get("metadata") or {}),
                                    "resourceVersion": current["metadata"]["resourceVersion"]}
                await client.replace(resource, name, body, ns)
        except KubeError as e:
            raise ManifestError(f"{origin}: {e}") from None
        if resource is CRDS:
            await _wait_established(client, name)
        applied.append(f"{doc['kind']}/{name}")
    return applied


async def _wait_established(client: KubeClient, name: str, timeout: float = 10.0) -> None:
    """A CRD's resource is served only once Established; applying its CRs before fails."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        crd = await client.get(CRDS, name)
        conditions = (crd.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            return
        if loop.time() > deadline:
            raise ManifestError(f"CustomResourceDefinition {name} was not established "
                                f"within {timeout}s")
        await asyncio.sleep(0.05)
