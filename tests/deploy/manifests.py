"""Reading, building and judging the install manifests (shared by the tests in this package).

Three judges, each independent of the code under test: ``kubectl kustomize`` builds the base,
``kubernetes_validate`` (strict, the Kubernetes 1.37 JSON schemas) judges built-in kinds, and our
CRDs' own ``openAPIV3Schema`` -- applied by the local cluster's structural-schema code, exactly as
its API server would on ``kubectl apply`` -- judges every custom resource.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Iterator

import kubernetes_validate
import yaml

from elastic_kernels.localcluster.schema import StructuralSchema
from tests.kubectl import KUBECTL

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CRDS = DEPLOY / "crds"
KERNELSPECS = REPO / "kernelspecs"
CHART = DEPLOY / "helm" / "elastic-kernels"
K8S_VERSION = "1.37"
NAMESPACE = "elastic-kernels"
CR_GROUP = "elastic.jupyter.org"

JSON = dict[str, Any]


def load_docs(text: str, source: str = "<text>") -> list[JSON]:
    """Every non-empty YAML document; a document that is not a mapping is an error."""
    docs = []
    for index, doc in enumerate(yaml.safe_load_all(text)):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ValueError(f"{source}: document {index} is a {type(doc).__name__}, not a mapping")
        docs.append(doc)
    return docs


def manifest_files() -> list[Path]:
    """Plain manifests under deploy/ and kernelspecs/ (Helm templates are YAML once rendered)."""
    files = sorted(p for root in (DEPLOY, KERNELSPECS) for p in root.rglob("*.yaml")
                   if "helm" not in p.relative_to(REPO).parts)
    return files


def kustomize(path: Path | str) -> list[JSON]:
    """``kubectl kustomize PATH``, parsed."""
    result = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{result.stderr}")
    return load_docs(result.stdout, f"kustomize {path}")


def is_custom(doc: JSON) -> bool:
    return str(doc.get("apiVersion", "")).split("/")[0] == CR_GROUP


def validate_builtin(doc: JSON) -> None:
    """Strict validation against the Kubernetes JSON schemas; raises with the field path."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def crd_schemas(crd_docs: Iterable[JSON] | None = None) -> dict[str, StructuralSchema]:
    """kind -> the storage version's structural schema, from deploy/crds."""
    if crd_docs is None:
        crd_docs = [d for p in sorted(CRDS.glob("*.yaml"))
                    for d in load_docs(p.read_text(), str(p))]
    schemas = {}
    for crd in crd_docs:
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        schemas[crd["spec"]["names"]["kind"]] = StructuralSchema(
            version["schema"]["openAPIV3Schema"])
    return schemas


def cr_problems(doc: JSON, schemas: dict[str, StructuralSchema]) -> list[str]:
    """What the API server would refuse (errors) or silently drop (unknown fields) in a CR."""
    kind = doc.get("kind", "")
    schema = schemas.get(kind)
    if schema is None:
        return [f"no CRD for kind {kind!r}"]
    copy = yaml.safe_load(yaml.safe_dump(doc))
    problems = [f"unknown field {path} (the API server would drop it)"
                for path in schema.prune(copy)]
    problems += [str(e) for e in schema.validate(copy)]
    return problems


#: Cluster-scoped kinds that kustomize's built-in schema does not know: its namespace setting
#: gives them a metadata.namespace, which kubectl and the API server ignore.
UNKNOWN_CLUSTER_SCOPED = frozenset({"ValidatingAdmissionPolicy",
                                    "ValidatingAdmissionPolicyBinding"})


def ident(doc: JSON) -> tuple[str, str, str]:
    """(kind, namespace, name): how the comparisons name an object."""
    meta = doc.get("metadata") or {}
    kind = doc.get("kind", "")
    namespace = "" if kind in UNKNOWN_CLUSTER_SCOPED else meta.get("namespace", "")
    return (kind, namespace, meta.get("name", ""))


def by_ident(docs: Iterable[JSON]) -> dict[tuple[str, str, str], JSON]:
    out: dict[tuple[str, str, str], JSON] = {}
    for doc in docs:
        key = ident(doc)
        if key in out:
            raise AssertionError(f"{key} appears twice")
        out[key] = doc
    return out


def find(docs: Iterable[JSON], kind: str, name: str) -> JSON:
    for doc in docs:
        if doc.get("kind") == kind and (doc.get("metadata") or {}).get("name") == name:
            return doc
    raise LookupError(f"no {kind} {name}")


def pod_spec(doc: JSON) -> JSON:
    """The pod template's spec of a Deployment or CronJob."""
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, leaf) of a JSON value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, value


def differences(expected: Any, got: Any) -> list[str]:
    """Paths where two JSON values differ, for readable assertion messages."""
    a, b = dict(walk(expected)), dict(walk(got))
    return [f"{path}: {a.get(path, '<absent>')!r} != {b.get(path, '<absent>')!r}"
            for path in sorted(set(a) | set(b)) if a.get(path, ...) != b.get(path, ...)]
