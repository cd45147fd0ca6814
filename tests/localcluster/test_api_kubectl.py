"""The real kubectl against the local API server: discovery, OpenAPI, tables, apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import GROUP, WIDGET_CRD, WIDGETS

KUBECTL = Path(sys.executable).parent / "kubectl"

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(60)]


class Kubectl:
    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(workdir)}
        self.workdir = workdir

    def __call__(self, *args: str, ok: bool = True, stdin: str | None = None) -> str:
        proc = subprocess.run([str(KUBECTL), *args], capture_output=True, text=True,
                              env=self.env, input=stdin, timeout=30, cwd=self.workdir)
        if ok:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
            return proc.stdout
        assert proc.returncode != 0, f"kubectl {' '.join(args)} unexpectedly succeeded"
        return proc.stderr

    def write(self, name: str, *docs: dict[str, Any]) -> str:
        path = self.workdir / name
        path.write_text(yaml.safe_dump_all(docs))
        return str(path)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    if not KUBECTL.exists():
        pytest.fail(f"kubectl is expected at {KUBECTL} (installed by the test extra)")
    return Kubectl(kubeconfig, tmp_path)


def rows(table_text: str) -> list[list[str]]:
    return [line.split() for line in table_text.strip().splitlines()]


POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "web", "labels": {"app": "web"}},
       "spec": {"containers": [{"name": "main", "image": "python:3.11",
                                "env": [{"name": "A", "value": "1"}]}]}}

SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
          "stringData": {"token": "s3cr3t"}}


def test_api_resources_and_version(kubectl: Kubectl) -> None:
    out = kubectl("api-resources")
    table = {r[0]: r for r in rows(out)[1:]}
    assert table["pods"][1:] == ["po", "v1", "true", "Pod"]
    assert table["namespaces"][1:] == ["ns", "v1", "false", "Namespace"]
    assert table["leases"][1:] == ["coordination.k8s.io/v1", "true", "Lease"]
    assert "Server Version: v1.37" in kubectl("version")


def test_pods(kubectl: Kubectl) -> None:
    path = kubectl.write("pod.yaml", POD)
    assert "pod/web created" in kubectl("create", "-f", path)
    out = rows(kubectl("get", "pods"))
    assert out[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert out[1][:4] == ["web", "0/1", "Pending", "0"]
    listed = kubectl.json("get", "pods")
    assert listed["kind"] == "List" and listed["items"][0]["metadata"]["name"] == "web"
    assert listed["items"][0]["kind"] == "Pod"
    described = kubectl("describe", "pod", "web")
    assert "Name:" in described and "web" in described and "python:3.11" in described
    # client-side apply: strategic merge patch built from our OpenAPI document
    changed = {**POD, "metadata": {"name": "web", "labels": {"app": "web", "tier": "gpu"}}}
    assert "pod/web configured" in kubectl("apply", "-f", kubectl.write("pod2.yaml", changed))
    assert kubectl.json("get", "pod", "web")["metadata"]["labels"] == {"app": "web", "tier": "gpu"}
    assert "pod/web configured" in kubectl("apply", "-f", kubectl.write("pod3.yaml", POD))
    assert kubectl.json("get", "pod", "web")["metadata"]["labels"] == {"app": "web"}
    current = kubectl.json("get", "pod", "web")
    current["metadata"]["annotations"] = {"note": "replaced"}
    assert "pod/web replaced" in kubectl("replace", "-f", "-", stdin=json.dumps(current))
    assert kubectl.json("get", "pod", "web")["metadata"]["annotations"]["note"] == "replaced"
    assert 'pod "web" deleted' in kubectl("delete", "pod", "web")
    assert 'pods "web" not found' in kubectl("get", "pod", "web", ok=False)


def test_secrets(kubectl: Kubectl) -> None:
    path = kubectl.write("secret.yaml", SECRET)
    assert "secret/creds created" in kubectl("create", "-f", path)
    assert rows(kubectl("get", "secrets"))[1][:3] == ["creds", "Opaque", "1"]
    assert "token:" in kubectl("describe", "secret", "creds")
    assert "s3cr3t" not in kubectl("describe", "secret", "creds")
    assert "secret/creds configured" in kubectl(
        "apply", "-f", kubectl.write("secret2.yaml", {**SECRET, "stringData": {"token": "new"}}))
    data = kubectl.json("get", "secret", "creds")["data"]
    assert data == {"token": "bmV3"}
    current = kubectl.json("get", "secret", "creds")
    current["data"]["extra"] = "eA=="
    assert "secret/creds replaced" in kubectl("replace", "-f", "-", stdin=json.dumps(current))
    assert rows(kubectl("get", "secret", "creds"))[1][2] == "2"
    assert 'secret "creds" deleted' in kubectl("delete", "-f", path)


def test_custom_resources_with_printer_columns(kubectl: Kubectl) -> None:
    assert "created" in kubectl("apply", "-f", kubectl.write("crd.yaml", WIDGET_CRD))
    assert f"{WIDGETS}.{GROUP}" in kubectl("get", "crd")
    resources = kubectl("api-resources", "--api-group", GROUP)
    assert "widgets" in resources and "wd" in resources
    cr = {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "w1"},
          "spec": {"user": "alice", "replicas": 2}}
    path = kubectl.write("w1.yaml", cr)
    assert "widget.example.com/w1 created" in kubectl("create", "-f", path)
    out = rows(kubectl("get", "widgets"))
    assert out[0] == ["NAME", "USER", "COLOR", "PHASE", "REPLICAS", "AGE"]
    assert out[1][:4] == ["w1", "alice", "red", "2"]  # empty PHASE collapses in split()
    assert rows(kubectl("get", "wd", "w1"))[1][0] == "w1"
    changed = {**cr, "spec": {"user": "bob", "replicas": 3}}
    assert "configured" in kubectl("apply", "-f", kubectl.write("w1b.yaml", changed))
    assert rows(kubectl("get", "widgets"))[1][:4] == ["w1", "bob", "red", "3"]
    described = kubectl("describe", "widget", "w1")
    assert "User:" in described and "bob" in described
    current = kubectl.json("get", "widget", "w1")
    current["spec"]["color"] = "green"
    assert "replaced" in kubectl("replace", "-f", "-", stdin=json.dumps(current))
    assert kubectl.json("get", "widget", "w1")["spec"]["color"] == "green"
    bad = {**cr, "metadata": {"name": "w2"}, "spec": {"user": "carol", "replicas": 99}}
    err = kubectl("apply", "-f", kubectl.write("bad.yaml", bad), ok=False)
    assert "spec.replicas: Invalid value: 99" in err
    typo = {**cr, "metadata": {"name": "w3"}, "spec": {"user": "dave", "replicsa": 1}}
    err = kubectl("create", "-f", kubectl.write("typo.yaml", typo), ok=False)
    assert 'unknown field "spec.replicsa"' in err
    assert "deleted" in kubectl("delete", "-f", path)
    assert f'{WIDGETS}.{GROUP} "w1" not found' in kubectl("get", "widget", "w1", ok=False)


def test_get_all_namespaces_and_selectors(kubectl: Kubectl) -> None:
    kubectl("create", "-f", kubectl.write("ns.yaml", {"apiVersion": "v1", "kind": "Namespace",
                                                      "metadata": {"name": "team"}}))
    kubectl("create", "-f", kubectl.write("p.yaml", {**POD, "metadata": {
        "name": "a", "namespace": "team", "labels": {"app": "xa"}}}))
    kubectl("create", "-f", kubectl.write("q.yaml", {**POD, "metadata": {
        "name": "b", "labels": {"app": "yb"}}}))
    out = rows(kubectl("get", "pods", "-A", "-l", "app in (xa,yb)"))
    assert out[0][:2] == ["NAMESPACE", "NAME"]
    assert sorted((r[0], r[1]) for r in out[1:]) == [("default", "b"), ("team", "a")]
    out = rows(kubectl("get", "pods", "-A", "--field-selector", "metadata.namespace=team"))
    assert [r[1] for r in out[1:]] == ["a"]
    err = kubectl("get", "pods", "--field-selector", "spec.bogus=1", ok=False)
    assert "field label not supported" in err
    kubectl("delete", "namespace", "team")
    assert "NotFound" in kubectl("get", "namespace", "team", ok=False)


def test_server_side_apply_does_not_crash(kubectl: Kubectl) -> None:
    path = kubectl.write("cm.yaml", {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": "cfg"}, "data": {"a": "1"}})
    assert "serverside-applied" in kubectl("apply", "--server-side", "-f", path)
    assert kubectl.json("get", "configmap", "cfg")["data"] == {"a": "1"}


def test_generators_that_send_protobuf(kubectl: Kubectl, tmp_path: Path) -> None:
    assert "namespace/gen created" in kubectl("create", "namespace", "gen")
    binary = tmp_path / "blob"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "configmap/cfg created" in kubectl("create", "configmap", "cfg", "-n", "gen",
                                              "--from-literal=a=b", f"--from-file={binary}")
    cfg = kubectl.json("get", "configmap", "cfg", "-n", "gen")
    assert cfg["data"] == {"a": "b"} and cfg["binaryData"] == {"blob": "//4A"}
    assert "secret/tok created" in kubectl("create", "secret", "generic", "tok", "-n", "gen",
                                           "--from-literal=token=abc", "--type=example.com/t")
    secret = kubectl.json("get", "secret", "tok", "-n", "gen")
    assert secret["type"] == "example.com/t" and secret["data"] == {"token": "YWJj"}
    assert "serviceaccount/robot created" in kubectl("create", "serviceaccount", "robot",
                                                     "-n", "gen")
    err = kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", ok=False)
    assert "send the object as JSON" in err


def test_apply_deployment_merges_containers_by_name(kubectl: Kubectl) -> None:
    """Stored only (no controller), but re-apply must merge the pod template like a real server."""
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gw"},
              "spec": {"selector": {"matchLabels": {"app": "gw"}}, "template": {
                  "metadata": {"labels": {"app": "gw"}},
                  "spec": {"containers": [
                      {"name": "gw", "image": "gw:1", "env": [{"name": "A", "value": "1"}],
                       "ports": [{"containerPort": 8888}]},
                      {"name": "side", "image": "side:1"}]}}}}
    assert "deployment.apps/gw created" in kubectl("apply", "-f", kubectl.write("d1.yaml", deploy))
    deploy["spec"]["template"]["spec"]["containers"][0]["image"] = "gw:2"
    deploy["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "B", "value": "2"})
    assert "configured" in kubectl("apply", "-f", kubectl.write("d2.yaml", deploy))
    stored = kubectl.json("get", "deployment", "gw")
    assert stored["metadata"]["generation"] == 2
    gw, side = stored["spec"]["template"]["spec"]["containers"]
    assert (gw["image"], side["image"]) == ("gw:2", "side:1")
    assert gw["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert gw["ports"] == [{"containerPort": 8888}]
