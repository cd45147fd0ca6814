"""The Helm chart's ``prepull`` values: the gateway's ImagePrepuller options and its Role's
DaemonSet rule come and go together (the default install, with both, is test_helm's comparison
with the kustomize base; test_rbac runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import Kubectl
from .manifests import find, pod_spec
from .test_helm import install

pytestmark = [pytest.mark.timeout(120)]


def _prepull_args(docs: list[dict]) -> list[str]:
    (container,) = pod_spec(find(docs, "Deployment", "elastic-kernels-gateway"))["containers"]
    return [a for a in container["args"] if a.startswith("--ImagePrepuller.")]


def _daemonset_rules(docs: list[dict]) -> list[dict]:
    return [r for r in find(docs, "Role", "elastic-kernels-gateway")["rules"]
            if "daemonsets" in r.get("resources", [])]


async def test_prepull_values(install_cluster: LocalCluster, kubectl: Kubectl,
                              tmp_path: Path) -> None:
    docs = await install(install_cluster, kubectl, tmp_path, "pull-on", {"prepull": {
        "pauseImage": "mirror.example/pause:3.10", "extraImages": ["a/b:1", "c/d:2"]}})
    assert _prepull_args(docs) == ["--ImagePrepuller.enabled=True",
                                   "--ImagePrepuller.pause_image=mirror.example/pause:3.10",
                                   "--ImagePrepuller.extra_images=a/b:1",
                                   "--ImagePrepuller.extra_images=c/d:2"]
    assert _daemonset_rules(docs) == [{"apiGroups": ["apps"], "resources": ["daemonsets"],
                                       "verbs": ["get", "list", "watch", "create", "patch",
                                                 "delete"]}]
    (tmp_path / "off").mkdir()
    off = await install(install_cluster, kubectl, tmp_path / "off", "pull-off",
                        {"prepull": {"enabled": False}})
    assert _prepull_args(off) == [] and _daemonset_rules(off) == []
