"""CRUD semantics of the local API server, through the official client over real HTTP."""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from elastic_kernels.localcluster.store import Store

from .conftest import ServerThread

pytestmark = pytest.mark.timeout(30)


def raw(server: ServerThread, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP request (no client library), for wire-level assertions."""
    req = urllib.request.Request(server.url + path, data=body, method=method,
                                 headers={**server.auth_headers, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, joined(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, joined(exc.headers), exc.read()


def joined(headers: Any) -> dict[str, str]:
    return {key: ", ".join(headers.get_all(key)) for key in set(headers.keys())}


def status_of(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "main", "image": "python:3.11",
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}


def test_default_namespaces_exist(core: client.CoreV1Api) -> None:
    names = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system", "kube-public"} <= names
    assert core.read_namespace("default").status.phase == "Active"


def test_create_fills_system_fields_and_defaults(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_pod("default", pod("p1", app="a"))
    meta = created.metadata
    assert re.fullmatch(r"[0-9a-f-]{36}", meta.uid)
    assert int(meta.resource_version) > 0
    assert meta.generation == 1
    assert meta.namespace == "default"
    assert created.status.phase == "Pending"
    assert created.spec.restart_policy == "Always"
    assert created.spec.termination_grace_period_seconds == 30
    container = created.spec.containers[0]
    assert container.image_pull_policy == "IfNotPresent"
    # requests default to limits, as in a real cluster
    assert container.resources.requests == {"nvidia.com/gpu": "1"}
    wire = json.loads(core.read_namespaced_pod("p1", "default", _preload_content=False).data)
    stamp = wire["metadata"]["creationTimestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
    fetched = core.read_namespaced_pod("p1", "default")
    assert fetched.metadata.uid == meta.uid
    assert fetched.metadata.resource_version == meta.resource_version


def test_resource_version_increases_on_every_write(core: client.CoreV1Api) -> None:
    versions = []
    for i in range(3):
        created = core.create_namespaced_config_map(
            "default", {"metadata": {"name": f"c{i}"}, "data": {"k": "v"}})
        versions.append(int(created.metadata.resource_version))
    updated = core.patch_namespaced_config_map("c0", "default", {"data": {"k": "w"}})
    versions.append(int(updated.metadata.resource_version))
    assert versions == sorted(versions) and len(set(versions)) == 4
    listed = core.list_namespaced_config_map("default")
    assert int(listed.metadata.resource_version) >= versions[-1]


def test_generate_name(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_secret(
        "default", {"metadata": {"generateName": "key-"}, "stringData": {"k": "secret"}})
    assert re.fullmatch(r"key-[a-z0-9]{5}", created.metadata.name)
    assert created.data == {"k": base64.b64encode(b"secret").decode()}
    assert created.type == "Opaque"


def test_errors_are_status_bodies(core: client.CoreV1Api) -> None:
    core.create_namespaced_secret("default", {"metadata": {"name": "s"}, "data": {}})
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret("default", {"metadata": {"name": "s"}})
    body = status_of(exc.value)
    assert (exc.value.status, body["reason"]) == (409, "AlreadyExists")
    assert body["message"] == 'secrets "s" already exists'
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_secret("missing", "default")
    body = status_of(exc.value)
    assert (exc.value.status, body["reason"]) == (404, "NotFound")
    assert body["details"] == {"name": "missing", "kind": "secrets"}
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod("default", {"metadata": {"name": "bad"},
                                              "spec": {"containers": [{"name": "c"}]}})
    body = status_of(exc.value)
    assert (exc.value.status, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"] == [{"reason": "FieldValueRequired",
                                          "message": "Required value",
                                          "field": "spec.containers[0].image"}]
    assert body["message"] == 'Pod "bad" is invalid: spec.containers[0].image: Required value'


def test_name_validation(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map("default", {"metadata": {"name": "Not_Valid"}})
    body = status_of(exc.value)
    assert exc.value.status == 422
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map("default", {"metadata": {}})
    assert "name or generateName is required" in status_of(exc.value)["message"]


def test_namespace_rules(apiserver: ServerThread, core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod("nowhere", pod("p"))
    body = status_of(exc.value)
    assert exc.value.status == 404 and body["message"] == 'namespaces "nowhere" not found'
    mismatched = pod("p")
    mismatched["metadata"]["namespace"] = "kube-system"
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_pod("default", mismatched)
    assert exc.value.status == 400
    assert "does not match the namespace" in status_of(exc.value)["message"]
    with pytest.raises(ApiException) as exc:
        core.delete_namespace("default")
    assert exc.value.status == 403


def test_put_with_stale_resource_version_conflicts(core: client.CoreV1Api) -> None:
    cm = core.create_namespaced_config_map("default", {"metadata": {"name": "c"},
                                                       "data": {"a": "1"}})
    cm.data = {"a": "2"}
    updated = core.replace_namespaced_config_map("c", "default", cm)
    assert updated.data == {"a": "2"}
    assert int(updated.metadata.resource_version) > int(cm.metadata.resource_version)
    cm.data = {"a": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_config_map("c", "default", cm)
    body = status_of(exc.value)
    assert (exc.value.status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]
    # An unconditional update (no resourceVersion) is allowed for built-in kinds.
    cm.metadata.resource_version = None
    assert core.replace_namespaced_config_map("c", "default", cm).data == {"a": "3"}
    with pytest.raises(ApiException) as exc:
        cm.metadata.name = "other"
        core.replace_namespaced_config_map("c", "default", cm)
    assert exc.value.status == 400


def test_noop_update_is_not_a_write(core: client.CoreV1Api) -> None:
    cm = core.create_namespaced_config_map("default", {"metadata": {"name": "c"},
                                                       "data": {"a": "1"}})
    again = core.patch_namespaced_config_map("c", "default", {"data": {"a": "1"}})
    assert again.metadata.resource_version == cm.metadata.resource_version


def test_pod_spec_is_mostly_immutable(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p"))
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_pod("p", "default", {"spec": {"restartPolicy": "Never"}})
    assert exc.value.status == 422
    assert "pod updates may not change fields" in status_of(exc.value)["message"]
    patched = core.patch_namespaced_pod(
        "p", "default", {"spec": {"containers": [{"name": "main", "image": "python:3.12"}]}})
    assert patched.spec.containers[0].image == "python:3.12"
    assert patched.metadata.generation == 2


def test_body_without_content_type_and_malformed_json(apiserver: ServerThread) -> None:
    body = json.dumps({"metadata": {"name": "raw"}, "data": {"x": "y"}}).encode()
    code, headers, data = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps", body)
    assert code == 201 and json.loads(data)["metadata"]["name"] == "raw"
    code, headers, data = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps",
                              b"{not json", {"Content-Type": "application/json"})
    status = json.loads(data)
    assert code == 400 and status["kind"] == "Status" and status["reason"] == "BadRequest"
    code, _, data = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps",
                        b"[1, 2]", {"Content-Type": "application/json"})
    assert code == 400 and json.loads(data)["kind"] == "Status"
    code, _, data = raw(apiserver, "POST", "/api/v1/namespaces/default/configmaps",
                        b"metadata:\n  name: from-yaml\n", {"Content-Type": "application/yaml"})
    assert code == 201 and json.loads(data)["metadata"]["name"] == "from-yaml"


@pytest.mark.parametrize("path", ["/api/v2/pods", "/api/v1/widgets", "/apis/nope.io/v1/things",
                                  "/nothing/here", "/api/v1/namespaces/default/pods/a/b/c/d"])
def test_unknown_paths_are_404_status(apiserver: ServerThread, path: str) -> None:
    code, _, data = raw(apiserver, "GET", path)
    body = json.loads(data)
    assert code == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"


def test_method_not_allowed(apiserver: ServerThread) -> None:
    code, _, data = raw(apiserver, "PUT", "/api/v1/namespaces/default/pods", b"{}")
    assert code == 405 and json.loads(data)["reason"] == "MethodNotAllowed"


def test_list_selectors(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    for name, labels in [("a", {"app": "x", "tier": "web"}), ("b", {"app": "y"}),
                         ("c", {"app": "z", "canary": "true"})]:
        core.create_namespaced_pod("default", pod(name, **labels))
    core.create_namespaced_pod("other", pod("d", app="x"))

    def names(**kwargs: Any) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod("default", **kwargs).items]

    assert names(label_selector="app=x") == ["a"]
    assert names(label_selector="app==x") == ["a"]
    assert names(label_selector="app!=x") == ["b", "c"]
    assert names(label_selector="app in (x, y)") == ["a", "b"]
    assert names(label_selector="app notin (x,y)") == ["c"]
    assert names(label_selector="canary") == ["c"]
    assert names(label_selector="!canary") == ["a", "b"]
    assert names(label_selector="app in (x,y,z),!canary,tier") == ["a"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b,status.phase=Pending") == ["a", "c"]
    assert names(field_selector="spec.nodeName=") == ["a", "b", "c"]
    everywhere = core.list_pod_for_all_namespaces(label_selector="app=x")
    assert sorted((p.metadata.namespace, p.metadata.name) for p in everywhere.items) == [
        ("default", "a"), ("other", "d")]
    assert everywhere.kind == "PodList" and everywhere.metadata.resource_version
    for bad in ("app in (x", "a=b=c", "=x", "app,"):
        with pytest.raises(ApiException) as exc:
            names(label_selector=bad)
        assert exc.value.status == 400, bad
    with pytest.raises(ApiException) as exc:
        names(field_selector="spec.containers=x")
    assert exc.value.status == 400
    assert "field label not supported: spec.containers" in status_of(exc.value)["message"]


def test_list_limit_and_continue(core: client.CoreV1Api) -> None:
    for i in range(5):
        core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
    first = core.list_namespaced_config_map("default", limit=2)
    assert [c.metadata.name for c in first.items] == ["c0", "c1"]
    assert first.metadata.remaining_item_count == 3
    second = core.list_namespaced_config_map("default", limit=2, _continue=first.metadata._continue)
    assert [c.metadata.name for c in second.items] == ["c2", "c3"]
    third = core.list_namespaced_config_map("default", limit=2, _continue=second.metadata._continue)
    assert [c.metadata.name for c in third.items] == ["c4"] and not third.metadata._continue


def test_namespace_deletion_removes_contents(apiserver: ServerThread,
                                             core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_secret("team", {"metadata": {"name": "s"}})
    core.create_namespaced_pod("team", pod("p"))
    core.delete_namespace("team")
    with pytest.raises(ApiException) as exc:
        core.read_namespace("team")
    assert exc.value.status == 404
    store: Store = apiserver.store  # type: ignore[assignment]
    leftovers = apiserver.call(lambda: (store.list(("", "pods"), "team")[0],
                                        store.list(("", "secrets"), "team")[0]))
    assert leftovers == ([], [])


def test_namespace_with_bound_pod_terminates_after_kubelet(apiserver: ServerThread,
                                                           core: client.CoreV1Api) -> None:
    store: Store = apiserver.store  # type: ignore[assignment]
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_pod("team", pod("p"))
    apiserver.call(lambda: store.bind("team", "p", "node-1"))
    core.delete_namespace("team")
    assert core.read_namespace("team").status.phase == "Terminating"
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map("team", {"metadata": {"name": "late"}})
    assert exc.value.status == 403
    assert core.read_namespaced_pod("p", "team").metadata.deletion_timestamp is not None
    # The kubelet finishes the pod's deletion: then the namespace goes away.
    core.delete_namespaced_pod("p", "team", grace_period_seconds=0)
    with pytest.raises(ApiException):
        core.read_namespace("team")


def test_other_builtin_kinds(kube: client.ApiClient, core: client.CoreV1Api) -> None:
    svc = core.create_namespaced_service("default", {
        "metadata": {"name": "svc"}, "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}})
    assert svc.spec.cluster_ip and svc.spec.ports[0].protocol == "TCP"
    sa = core.create_namespaced_service_account("default", {"metadata": {"name": "runner"}})
    assert sa.metadata.uid
    node = core.create_node({"metadata": {"name": "n1", "labels": {"gpu": "yes"}},
                             "status": {"capacity": {"cpu": "4"}}})
    assert node.status.capacity == {"cpu": "4"}
    assert [n.metadata.name for n in core.list_node(label_selector="gpu=yes").items] == ["n1"]
    leases = client.CoordinationV1Api(kube)
    lease = leases.create_namespaced_lease("default", {
        "metadata": {"name": "gw"}, "spec": {"holderIdentity": "gw-1", "leaseDurationSeconds": 15}})
    lease.spec.holder_identity = "gw-2"
    assert leases.replace_namespaced_lease("gw", "default", lease).spec.holder_identity == "gw-2"


def test_core_and_events_v1_share_storage(apiserver: ServerThread, kube: client.ApiClient,
                                          core: client.CoreV1Api) -> None:
    p = core.create_namespaced_pod("default", pod("p"))
    core.create_namespaced_event("default", {
        "metadata": {"name": "e1"}, "reason": "Scheduled", "message": "assigned", "type": "Normal",
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingComponent": "default-scheduler",
        "reportingInstance": "default-scheduler-1", "action": "Binding",
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default",
                           "uid": p.metadata.uid},
        "source": {"component": "default-scheduler"}})
    events = client.EventsV1Api(kube)
    created = events.create_namespaced_event("default", {
        "metadata": {"name": "e2"}, "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "kubelet", "reportingInstance": "node-1", "action": "Pulling",
        "reason": "Pulling", "note": "pulling image", "type": "Normal",
        "regarding": {"kind": "Pod", "name": "p", "namespace": "default", "uid": p.metadata.uid}})
    assert created.note == "pulling image" and created.regarding.name == "p"
    as_core = core.read_namespaced_event("e2", "default")
    assert as_core.message == "pulling image" and as_core.involved_object.name == "p"
    as_v1 = events.read_namespaced_event("e1", "default")
    assert as_v1.note == "assigned" and as_v1.regarding.uid == p.metadata.uid
    selected = core.list_namespaced_event(
        "default", field_selector=f"involvedObject.uid={p.metadata.uid},reason=Scheduled")
    assert [e.metadata.name for e in selected.items] == ["e1"]
    selected = events.list_namespaced_event("default", field_selector="regarding.name=p")
    assert sorted(e.metadata.name for e in selected.items) == ["e1", "e2"]
    # (the client refuses to send this one itself, so go around it)
    code, _, data = raw(apiserver, "POST", "/apis/events.k8s.io/v1/namespaces/default/events",
                        json.dumps({"metadata": {"name": "e3"}, "note": "x",
                                    "regarding": {"kind": "Pod", "name": "p"}}).encode())
    assert code == 422
    fields = {c["field"] for c in json.loads(data)["details"]["causes"]}
    assert {"eventTime", "reportingController", "action"} <= fields


def test_delete_responses(core: client.CoreV1Api) -> None:
    core.create_namespaced_secret("default", {"metadata": {"name": "s"}})
    status = core.delete_namespaced_secret("s", "default")  # this client returns plain dicts
    assert status["kind"] == "Status" and status["status"] == "Success"
    assert status["details"]["name"] == "s"
    core.create_namespaced_pod("default", pod("p"))
    deleted = core.delete_namespaced_pod("p", "default")  # unbound: removed at once
    assert deleted.kind == "Pod" and deleted.metadata.name == "p"
    with pytest.raises(ApiException):
        core.read_namespaced_pod("p", "default")
    for i in range(3):
        core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}",
                                                                   "labels": {"g": str(i % 2)}}})
    core.delete_collection_namespaced_config_map("default", label_selector="g=0")
    assert [c.metadata.name for c in core.list_namespaced_config_map("default").items] == ["c1"]


def test_delete_preconditions(core: client.CoreV1Api) -> None:
    cm = core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    with pytest.raises(ApiException) as exc:
        core.delete_namespaced_config_map("c", "default", body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid="not-the-uid")))
    assert exc.value.status == 409
    core.delete_namespaced_config_map("c", "default", body=client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid=cm.metadata.uid)))


def test_discovery(kube: client.ApiClient, apiserver: ServerThread) -> None:
    version = client.VersionApi(kube).get_code()
    assert version.major == "1" and version.git_version.startswith("v1.")
    core_resources = client.CoreV1Api(kube).get_api_resources()
    by_name = {r.name: r for r in core_resources.resources}
    assert by_name["pods"].namespaced and by_name["pods"].short_names == ["po"]
    assert {"pods/status", "pods/log", "secrets", "namespaces", "nodes", "events"} <= set(by_name)
    assert not by_name["nodes"].namespaced
    groups = {g.name for g in client.ApisApi(kube).get_api_versions().groups}
    assert {"events.k8s.io", "coordination.k8s.io", "apiextensions.k8s.io"} <= groups
    code, headers, data = raw(apiserver, "GET", "/apis", headers={
        "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
                  "application/json"})
    body = json.loads(data)
    assert code == 200 and "as=APIGroupDiscoveryList" in headers["Content-Type"]
    assert body["kind"] == "APIGroupDiscoveryList"
    leases = [r for item in body["items"] if item["metadata"]["name"] == "coordination.k8s.io"
              for v in item["versions"] for r in v["resources"]]
    assert leases[0]["resource"] == "leases" and leases[0]["scope"] == "Namespaced"


def test_table_output(apiserver: ServerThread, core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p"))
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    code, headers, data = raw(apiserver, "GET", "/api/v1/namespaces/default/pods",
                              headers={"Accept": accept})
    table = json.loads(data)
    assert code == 200 and table["kind"] == "Table" and "as=Table" in headers["Content-Type"]
    assert [c["name"] for c in table["columnDefinitions"]][:5] == [
        "Name", "Ready", "Status", "Restarts", "Age"]
    assert table["rows"][0]["cells"][:4] == ["p", "0/1", "Pending", 0]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_protobuf_accept_gets_json(apiserver: ServerThread, core: client.CoreV1Api) -> None:
    code, headers, data = raw(apiserver, "GET", "/api/v1/namespaces/default", headers={
        "Accept": "application/vnd.kubernetes.protobuf, application/json"})
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(data)["metadata"]["name"] == "default"


def test_openapi_documents(apiserver: ServerThread) -> None:
    code, _, data = raw(apiserver, "GET", "/openapi/v3")
    index = json.loads(data)["paths"]
    assert code == 200 and "api/v1" in index
    code, _, data = raw(apiserver, "GET", index["api/v1"]["serverRelativeURL"])
    doc = json.loads(data)
    schemas = doc["components"]["schemas"]
    pod_schema = schemas["io.k8s.api.core.v1.Pod"]
    assert pod_schema["x-kubernetes-group-version-kind"] == [
        {"group": "", "kind": "Pod", "version": "v1"}]
    containers = schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert containers["x-kubernetes-patch-strategy"] == "merge"
    patch_op = doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch_op["parameters"]]
    code, _, data = raw(apiserver, "GET", "/openapi/v2", headers={"Accept": "application/json"})
    assert code == 200 and "io.k8s.api.core.v1.Pod" in json.loads(data)["definitions"]


def test_unexpected_exception_is_500_and_server_survives(apiserver: ServerThread,
                                                         core: client.CoreV1Api) -> None:
    store: Store = apiserver.store  # type: ignore[assignment]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    original = store.list_refs
    apiserver.call(lambda: setattr(store, "list_refs", broken))
    try:
        with pytest.raises(ApiException) as exc:
            core.list_namespaced_pod("default")
        body = status_of(exc.value)
        assert exc.value.status == 500 and "boom" in body["message"]
    finally:
        apiserver.call(lambda: setattr(store, "list_refs", original))
    assert core.list_namespaced_pod("default").items == []


def test_unknown_fields_of_builtin_kinds(apiserver: ServerThread, core: client.CoreV1Api) -> None:
    body = {"metadata": {"name": "p", "bogus": 1}, "spec": {
        "containers": [{"name": "main", "image": "python:3.11", "imagee": "typo"}], "extra": 1}}
    code, headers, data = raw(apiserver, "POST", "/api/v1/namespaces/default/pods",
                              json.dumps(body).encode())
    created = json.loads(data)
    assert code == 201 and "extra" not in created["spec"] and "bogus" not in created["metadata"]
    assert "imagee" not in created["spec"]["containers"][0]
    assert 'unknown field \\"spec.containers[0].imagee\\"' in headers["Warning"]
    body["metadata"]["name"] = "q"
    code, _, data = raw(apiserver, "POST",
                        "/api/v1/namespaces/default/pods?fieldValidation=Strict",
                        json.dumps(body).encode())
    assert code == 400
    assert 'strict decoding error: unknown field "metadata.bogus"' in json.loads(data)["message"]
