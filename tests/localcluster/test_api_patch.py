"""Patch types and status subresource semantics, through the official client over HTTP."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from elastic_kernels.localcluster.store import Store

from .conftest import GROUP, WIDGETS, ServerThread, widget

pytestmark = pytest.mark.timeout(30)


def pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app": "k"}, "finalizers": ["example.com/a"]},
            "spec": {"containers": [
                {"name": "main", "image": "python:3.11",
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 8888}]},
                {"name": "side", "image": "busybox:1"}],
                "volumes": [{"name": "v1", "emptyDir": {}}]}}


def send_patch(server: ServerThread, path: str, body: Any, content_type: str) -> tuple[int, dict]:
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(),
                                 method="PATCH", headers={"Content-Type": content_type,
                                                          **server.auth_headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


POD_PATH = "/api/v1/namespaces/default/pods/p"
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"


def test_strategic_merge_patch_merges_lists_by_key(apiserver: ServerThread,
                                                   core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p"))
    code, body = send_patch(apiserver, POD_PATH, {
        "metadata": {"labels": {"tier": "gpu"}, "finalizers": ["example.com/b"]},
        "spec": {"containers": [{"name": "main", "image": "python:3.12"}]},
    }, SMP)
    assert code == 200, body
    main, side = body["spec"]["containers"]
    assert (main["name"], main["image"], side["name"]) == ("main", "python:3.12", "side")
    assert main["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert body["metadata"]["labels"] == {"app": "k", "tier": "gpu"}
    assert body["metadata"]["finalizers"] == ["example.com/a", "example.com/b"]
    # env is immutable on a pod, as a real cluster says
    code, body = send_patch(apiserver, POD_PATH, {
        "spec": {"containers": [{"name": "main", "env": [{"name": "A", "$patch": "delete"}]}]},
    }, SMP)
    assert code == 422 and "pod updates may not change fields" in body["message"]
    # null removes a map key
    code, body = send_patch(apiserver, POD_PATH, {"metadata": {"labels": {"tier": None}}}, SMP)
    assert code == 200 and body["metadata"]["labels"] == {"app": "k"}


def test_strategic_merge_patch_on_mutable_lists(apiserver: ServerThread,
                                                core: client.CoreV1Api) -> None:
    core.create_namespaced_service("default", {"metadata": {"name": "svc"}, "spec": {
        "ports": [{"name": "http", "port": 80}, {"name": "zmq", "port": 5555}]}})
    path = "/api/v1/namespaces/default/services/svc"
    code, body = send_patch(apiserver, path, {"spec": {"ports": [
        {"port": 80, "targetPort": 8080}, {"port": 9999, "name": "extra"},
        {"port": 5555, "$patch": "delete"}]}}, SMP)
    assert code == 200, body
    assert [(p["port"], p["targetPort"]) for p in body["spec"]["ports"]] == [(80, 8080),
                                                                            (9999, 9999)]
    core.create_namespaced_service_account("default", {
        "metadata": {"name": "sa"}, "secrets": [{"name": "a"}, {"name": "b"}]})
    path = "/api/v1/namespaces/default/serviceaccounts/sa"
    code, body = send_patch(apiserver, path, {"secrets": [{"name": "c"}]}, SMP)
    assert [s["name"] for s in body["secrets"]] == ["a", "b", "c"]
    code, body = send_patch(apiserver, path, {"secrets": [{"name": "z"}, {"$patch": "replace"}]},
                            SMP)
    assert [s["name"] for s in body["secrets"]] == ["z"]
    code, body = send_patch(apiserver, path, {"secrets": [{"nome": "typo"}]}, SMP)
    assert code == 400 and body["kind"] == "Status"


def test_strategic_patch_of_status_conditions(apiserver: ServerThread,
                                              core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p"))
    path = POD_PATH + "/status"
    code, body = send_patch(apiserver, path, {"status": {"conditions": [
        {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}]}}, SMP)
    assert code == 200, body
    code, body = send_patch(apiserver, path, {"status": {"conditions": [
        {"type": "Ready", "status": "True"}]}}, SMP)
    assert [(c["type"], c["status"]) for c in body["status"]["conditions"]] == [
        ("PodScheduled", "True"), ("Ready", "True")]


def test_merge_patch_replaces_lists(apiserver: ServerThread, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p"))
    code, body = send_patch(apiserver, POD_PATH, {"metadata": {
        "finalizers": ["example.com/z"], "annotations": {"a": "b"}}}, MERGE)
    assert code == 200
    assert body["metadata"]["finalizers"] == ["example.com/z"]
    assert body["metadata"]["annotations"] == {"a": "b"}
    patched = core.patch_namespaced_pod("p", "default", {"metadata": {"annotations": {"a": None}}})
    assert not patched.metadata.annotations


def test_json_patch(apiserver: ServerThread, core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"},
                                                  "data": {"a": "1"}})
    path = "/api/v1/namespaces/default/configmaps/c"
    code, body = send_patch(apiserver, path, [
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "replace", "path": "/data/a", "value": "2"},
        {"op": "add", "path": "/data/b", "value": "3"}], JSONPATCH)
    assert code == 200 and body["data"] == {"a": "2", "b": "3"}
    code, body = send_patch(apiserver, path, [{"op": "test", "path": "/data/a", "value": "1"},
                                              {"op": "remove", "path": "/data/a"}], JSONPATCH)
    assert code == 422 and body["kind"] == "Status" and body["reason"] == "Invalid"
    code, body = send_patch(apiserver, path, [{"op": "remove", "path": "/data/zzz"}], JSONPATCH)
    assert code == 422
    code, body = send_patch(apiserver, path, [{"op": "frobnicate", "path": "/data"}], JSONPATCH)
    assert code == 400
    code, body = send_patch(apiserver, path, {"op": "not a list"}, JSONPATCH)
    assert code == 400
    # patches through the client
    patched = client.CoreV1Api(core.api_client).patch_namespaced_config_map(
        "c", "default", [{"op": "add", "path": "/data/c", "value": "4"}])
    assert patched.data == {"a": "2", "b": "3", "c": "4"}


def test_unknown_patch_content_type_is_415(apiserver: ServerThread,
                                           core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    code, body = send_patch(apiserver, "/api/v1/namespaces/default/configmaps/c", {},
                            "application/json")
    assert code == 415 and body["reason"] == "UnsupportedMediaType"


def test_patch_with_stale_resource_version_conflicts(core: client.CoreV1Api) -> None:
    cm = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    core.patch_namespaced_config_map("c", "default", {"data": {"x": "1"}})
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_config_map("c", "default", {
            "metadata": {"resourceVersion": cm.metadata.resource_version}, "data": {"x": "2"}})
    assert exc.value.status == 409


def test_pod_status_subresource(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_pod("default", {**pod("p"), "status": {"phase": "Running"}})
    assert created.status.phase == "Pending"  # status is reset on create
    # main resource writes ignore status
    updated = core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"x": "1"}},
                                                         "status": {"phase": "Running"}})
    assert updated.status.phase == "Pending" and updated.metadata.labels["x"] == "1"
    # /status writes change only status
    status = core.patch_namespaced_pod_status("p", "default", {
        "metadata": {"labels": {"y": "2"}}, "status": {"phase": "Running", "podIP": "127.1.0.5"},
        "spec": {"restartPolicy": "Never"}})
    assert status.status.phase == "Running" and status.status.pod_ip == "127.1.0.5"
    assert "y" not in status.metadata.labels and status.spec.restart_policy == "Always"
    assert status.metadata.generation == updated.metadata.generation
    read = core.read_namespaced_pod_status("p", "default")
    assert read.status.pod_ip == "127.1.0.5"
    assert [p.metadata.name for p in core.list_namespaced_pod(
        "default", field_selector="status.phase=Running").items] == ["p"]


def test_custom_resource_status_subresource_and_generation(
        custom: client.CustomObjectsApi, widgets: dict) -> None:
    created = custom.create_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, {
        **widget("w", replicas=1), "status": {"phase": "Running"}})
    assert "status" not in created  # dropped on create: status is a subresource
    assert created["metadata"]["generation"] == 1
    spec_change = custom.patch_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w",
                                                        {"spec": {"replicas": 2},
                                                         "status": {"phase": "Failed"}})
    assert spec_change["metadata"]["generation"] == 2 and "status" not in spec_change
    meta_change = custom.patch_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w",
                                                        {"metadata": {"labels": {"a": "b"}}})
    assert meta_change["metadata"]["generation"] == 2
    status = custom.patch_namespaced_custom_object_status(
        GROUP, "v1", "default", WIDGETS, "w",
        {"status": {"phase": "Running"}, "spec": {"replicas": 7}})
    assert status["status"] == {"phase": "Running"} and status["spec"]["replicas"] == 2
    assert status["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object_status(GROUP, "v1", "default", WIDGETS, "w",
                                                     {"status": {"phase": "Exploded"}})
    assert exc.value.status == 422
    assert json.loads(exc.value.body)["details"]["causes"][0]["field"] == "status.phase"
    replaced = custom.get_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w")
    replaced["status"] = {"phase": "Failed", "message": "gone"}
    result = custom.replace_namespaced_custom_object_status(GROUP, "v1", "default", WIDGETS,
                                                            "w", replaced)
    assert result["status"] == {"phase": "Failed", "message": "gone"}


def test_custom_resources_reject_strategic_merge(apiserver: ServerThread,
                                                 custom: client.CustomObjectsApi,
                                                 widgets: dict) -> None:
    custom.create_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, widget("w"))
    path = f"/apis/{GROUP}/v1/namespaces/default/{WIDGETS}/w"
    code, body = send_patch(apiserver, path, {"spec": {"replicas": 1}}, SMP)
    assert code == 415 and body["reason"] == "UnsupportedMediaType"
    code, body = send_patch(apiserver, path, {"spec": {"replicas": 1}}, MERGE)
    assert code == 200 and body["spec"]["replicas"] == 1
    code, body = send_patch(apiserver, path, [{"op": "replace", "path": "/spec/replicas",
                                               "value": 99}], JSONPATCH)
    assert code == 422 and body["details"]["causes"][0]["field"] == "spec.replicas"


def test_custom_resource_put_requires_resource_version(custom: client.CustomObjectsApi,
                                                       widgets: dict) -> None:
    created = custom.create_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, widget("w"))
    body = {**created}
    body["metadata"] = {k: v for k, v in created["metadata"].items() if k != "resourceVersion"}
    with pytest.raises(ApiException) as exc:
        custom.replace_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w", body)
    assert exc.value.status == 422
    created["spec"]["user"] = "bob"
    assert custom.replace_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w",
                                                   created)["spec"]["user"] == "bob"
    with pytest.raises(ApiException) as exc:  # created still holds the old version
        custom.replace_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w", created)
    assert exc.value.status == 409


def test_server_side_apply_creates_and_updates(apiserver: ServerThread,
                                               core: client.CoreV1Api) -> None:
    path = "/api/v1/namespaces/default/configmaps/applied?fieldManager=test"
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"},
            "data": {"a": "1"}}
    code, result = send_patch(apiserver, path, body, "application/apply-patch+yaml")
    assert code == 201 and result["data"] == {"a": "1"}
    code, result = send_patch(apiserver, path, {**body, "data": {"a": "2"}},
                              "application/apply-patch+yaml")
    assert code == 200 and result["data"] == {"a": "2"}


def test_bind_subresource(apiserver: ServerThread, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p"))
    # Like a real server, the answer is a Status (which this client cannot parse as a
    # V1Binding: a known client quirk), hence the raw response.
    response = core.create_namespaced_binding("default", {
        "metadata": {"name": "p"}, "target": {"apiVersion": "v1", "kind": "Node",
                                              "name": "node-1"}}, _preload_content=False)
    assert response.status == 201 and json.loads(response.data)["status"] == "Success"
    bound = core.read_namespaced_pod("p", "default")
    assert bound.spec.node_name == "node-1"
    assert any(c.type == "PodScheduled" and c.status == "True" for c in bound.status.conditions)
    store: Store = apiserver.store  # type: ignore[assignment]
    with pytest.raises(Exception) as exc:
        apiserver.call(lambda: store.bind("default", "p", "node-2"))
    assert getattr(exc.value, "code", None) == 409
