"""CustomResourceDefinitions: registration, schema validation, pruning, tables, removal."""

from __future__ import annotations

import copy
import json
import urllib.request
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import GROUP, WIDGET_CRD, WIDGETS, ServerThread, widget

pytestmark = pytest.mark.timeout(30)


def request(server: ServerThread, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **server.auth_headers,
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def causes(exc: ApiException) -> list[tuple[str, str]]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status" and body["reason"] == "Invalid" and exc.status == 422
    return [(c.get("field", ""), c["message"]) for c in body["details"]["causes"]]


def create(custom: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, body)


def test_crd_becomes_established_and_served(kube: client.ApiClient, widgets: dict) -> None:
    conditions = {c["type"]: c["status"] for c in widgets["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert widgets["status"]["acceptedNames"]["kind"] == "Widget"
    assert widgets["status"]["storedVersions"] == ["v1"]
    assert widgets["spec"]["names"]["listKind"] == "WidgetList"
    groups = {g.name: g for g in client.ApisApi(kube).get_api_versions().groups}
    assert groups[GROUP].preferred_version.group_version == f"{GROUP}/v1"
    resources = client.CustomObjectsApi(kube).get_api_resources(GROUP, "v1")
    by_name = {r.name: r for r in resources.resources}
    assert by_name[WIDGETS].kind == "Widget" and by_name[WIDGETS].short_names == ["wd"]
    assert by_name[WIDGETS].namespaced and f"{WIDGETS}/status" in by_name


def test_custom_object_crud(custom: client.CustomObjectsApi, widgets: dict) -> None:
    created = create(custom, widget("w1", replicas=2, tags=["a"]))
    assert created["apiVersion"] == f"{GROUP}/v1" and created["kind"] == "Widget"
    assert created["metadata"]["uid"] and created["spec"]["color"] == "red"  # defaulted
    create(custom, {**widget("w2"), "metadata": {"name": "w2", "labels": {"team": "x"}}})
    listed = custom.list_namespaced_custom_object(GROUP, "v1", "default", WIDGETS)
    assert listed["kind"] == "WidgetList" and listed["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in listed["items"]] == ["w1", "w2"]
    selected = custom.list_namespaced_custom_object(GROUP, "v1", "default", WIDGETS,
                                                    label_selector="team=x")
    assert [i["metadata"]["name"] for i in selected["items"]] == ["w2"]
    everywhere = custom.list_cluster_custom_object(GROUP, "v1", WIDGETS,
                                                   field_selector="metadata.name=w1")
    assert [i["metadata"]["name"] for i in everywhere["items"]] == ["w1"]
    with pytest.raises(ApiException) as exc:
        create(custom, widget("w1"))
    assert exc.value.status == 409
    assert json.loads(exc.value.body)["message"] == f'{WIDGETS}.{GROUP} "w1" already exists'
    custom.delete_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w1")
    with pytest.raises(ApiException) as exc:
        custom.get_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w1")
    assert exc.value.status == 404
    assert json.loads(exc.value.body)["details"] == {"name": "w1", "group": GROUP,
                                                     "kind": WIDGETS}


@pytest.mark.parametrize("spec,field,message", [
    ({"user": 5}, "spec.user",
     'Invalid value: "integer": spec.user in body must be of type string: "integer"'),
    ({"user": "Bad_Name"}, "spec.user",
     "Invalid value: \"Bad_Name\": spec.user in body should match '^[a-z][a-z0-9-]*$'"),
    ({"user": ""}, "spec.user",
     'Invalid value: "": spec.user in body should be at least 1 chars long'),
    ({"user": "a" * 21}, "spec.user", "Too long: may not be more than 20 bytes"),
    ({"color": "purple"}, "spec.color",
     'Unsupported value: "purple": supported values: "red", "green", "blue"'),
    ({"replicas": 9}, "spec.replicas",
     "Invalid value: 9: spec.replicas in body should be less than or equal to 8"),
    ({"replicas": -1}, "spec.replicas",
     "Invalid value: -1: spec.replicas in body should be greater than or equal to 0"),
    ({"ratio": 0}, "spec.ratio", "Invalid value: 0: spec.ratio in body should be greater than 0"),
    ({"enabled": "yes"}, "spec.enabled",
     'Invalid value: "string": spec.enabled in body must be of type boolean: "string"'),
    ({"created": "yesterday"}, "spec.created",
     'Invalid value: "yesterday": spec.created in body must be of type date-time: "yesterday"'),
    ({"port": True}, "spec.port",
     'Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean"'),
    ({"tags": []}, "spec.tags", "Invalid value: 0: spec.tags in body should have at least 1 items"),
    ({"tags": ["a", "b", "c", "d"]}, "spec.tags", "Too many: 4: must have at most 3 items"),
    ({"tags": ["a", 1]}, "spec.tags[1]",
     'Invalid value: "integer": spec.tags[1] in body must be of type string: "integer"'),
    ({"resources": {"gpu": "two"}}, "spec.resources.gpu",
     'Invalid value: "string": spec.resources.gpu in body must be of type integer: "string"'),
    ({"containers": [{"image": "x"}]}, "spec.containers[0].name", "Required value"),
    ({"labels": {"a": 1}}, "spec.labels.a",
     'Invalid value: "integer": spec.labels.a in body must be of type string: "integer"'),
])
def test_schema_violations_are_422_with_field_paths(custom: client.CustomObjectsApi,
                                                    widgets: dict, spec: dict, field: str,
                                                    message: str) -> None:
    body = widget("bad")
    body["spec"].update(spec)
    with pytest.raises(ApiException) as exc:
        create(custom, body)
    assert (field, message) in causes(exc.value)
    text = json.loads(exc.value.body)["message"]
    assert text.startswith(f'Widget.{GROUP} "bad" is invalid: ') and f"{field}: {message}" in text


def test_required_fields(custom: client.CustomObjectsApi, widgets: dict) -> None:
    with pytest.raises(ApiException) as exc:
        create(custom, {"apiVersion": f"{GROUP}/v1", "kind": "Widget",
                        "metadata": {"name": "empty"}})
    assert ("spec", "Required value") in causes(exc.value)
    with pytest.raises(ApiException) as exc:
        create(custom, {**widget("nouser"), "spec": {"replicas": 1}})
    assert ("spec.user", "Required value") in causes(exc.value)


def test_valid_values_and_int_or_string(custom: client.CustomObjectsApi, widgets: dict) -> None:
    for i, port in enumerate([8080, "http"]):
        created = create(custom, widget(f"w{i}", port=port, ratio=0.5, enabled=True,
                                        created="2026-01-01T00:00:00Z", tags=["a", "b"]))
        assert created["spec"]["port"] == port


def test_unknown_fields_are_pruned(apiserver: ServerThread, custom: client.CustomObjectsApi,
                                   widgets: dict) -> None:
    body = widget("w", resources={"gpu": 1, "bogus": True}, extra={"anything": {"goes": [1]}})
    body["spec"]["unknown"] = "dropped"
    body["topLevel"] = 1
    body["metadata"]["labels"] = {"kept": "yes"}
    body["metadata"]["madeUp"] = "dropped"
    created = create(custom, body)
    assert "unknown" not in created["spec"] and "topLevel" not in created
    assert created["spec"]["resources"] == {"gpu": 1}
    assert created["spec"]["extra"] == {"anything": {"goes": [1]}}  # preserve-unknown-fields
    assert created["metadata"]["labels"] == {"kept": "yes"} and "madeUp" not in created["metadata"]
    stored = custom.get_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w")
    assert "unknown" not in stored["spec"]
    # pruning also happens on updates
    patched = custom.patch_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w",
                                                    {"spec": {"more": "junk", "replicas": 3}})
    assert "more" not in patched["spec"] and patched["spec"]["replicas"] == 3


def test_field_validation_modes(apiserver: ServerThread, widgets: dict) -> None:
    body = widget("w")
    body["spec"]["junk"] = 1
    path = f"/apis/{GROUP}/v1/namespaces/default/{WIDGETS}"
    code, _, status = request(apiserver, "POST", path + "?fieldValidation=Strict", body)
    assert code == 400 and 'unknown field "spec.junk"' in status["message"]
    code, headers, created = request(apiserver, "POST", path + "?fieldValidation=Warn", body)
    assert code == 201 and "junk" not in created["spec"]
    assert 'unknown field \\"spec.junk\\"' in headers["Warning"]


def test_printer_columns_in_table(apiserver: ServerThread, custom: client.CustomObjectsApi,
                                  widgets: dict) -> None:
    create(custom, widget("w", replicas=2, color="blue"))
    custom.patch_namespaced_custom_object_status(GROUP, "v1", "default", WIDGETS, "w",
                                                 {"status": {"phase": "Running"}})
    code, headers, table = request(
        apiserver, "GET", f"/apis/{GROUP}/v1/namespaces/default/{WIDGETS}",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"})
    assert code == 200 and table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name", "User", "Color", "Phase", "Replicas", "Age"]
    cells = table["rows"][0]["cells"]
    assert cells[:5] == ["w", "alice", "blue", "Running", 2]
    assert cells[5].endswith("s")  # a human age like "0s"


def test_invalid_crds_are_rejected(kube: client.ApiClient) -> None:
    api = client.ApiextensionsV1Api(kube)
    bad = copy.deepcopy(WIDGET_CRD)
    bad["metadata"]["name"] = "wrong.example.com"
    bad["spec"]["versions"][0]["storage"] = False
    with pytest.raises(ApiException) as exc:
        api.create_custom_resource_definition(bad)
    fields = {f for f, _ in causes(exc.value)}
    assert {"metadata.name", "spec.versions"} <= fields


def test_crd_update_changes_schema_and_columns(apiserver: ServerThread, kube: client.ApiClient,
                                               custom: client.CustomObjectsApi,
                                               widgets: dict) -> None:
    api = client.ApiextensionsV1Api(kube)
    crd = kube.sanitize_for_serialization(
        api.read_custom_resource_definition(f"{WIDGETS}.{GROUP}"))
    version = crd["spec"]["versions"][0]
    version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["size"] = {
        "type": "integer", "maximum": 3}
    version["additionalPrinterColumns"] = [{"name": "Size", "type": "integer",
                                            "jsonPath": ".spec.size"}]
    api.replace_custom_resource_definition(f"{WIDGETS}.{GROUP}", crd)
    assert create(custom, widget("w", size=2))["spec"]["size"] == 2
    with pytest.raises(ApiException) as exc:
        create(custom, widget("w2", size=5))
    assert causes(exc.value)[0][0] == "spec.size"
    code, _, table = request(
        apiserver, "GET", f"/apis/{GROUP}/v1/namespaces/default/{WIDGETS}/w",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size"]
    assert table["rows"][0]["cells"] == ["w", 2]


def test_crd_deletion_removes_objects_and_unserves(apiserver: ServerThread,
                                                   kube: client.ApiClient,
                                                   custom: client.CustomObjectsApi,
                                                   widgets: dict) -> None:
    create(custom, widget("w"))
    client.ApiextensionsV1Api(kube).delete_custom_resource_definition(f"{WIDGETS}.{GROUP}")
    with pytest.raises(ApiException) as exc:
        custom.list_namespaced_custom_object(GROUP, "v1", "default", WIDGETS)
    assert exc.value.status == 404
    groups = {g.name for g in client.ApisApi(kube).get_api_versions().groups}
    assert GROUP not in groups
    # re-creating the CRD serves an empty collection again
    client.ApiextensionsV1Api(kube).create_custom_resource_definition(WIDGET_CRD)
    assert custom.list_namespaced_custom_object(GROUP, "v1", "default", WIDGETS)["items"] == []


def test_openapi_v3_has_custom_schema(apiserver: ServerThread, widgets: dict) -> None:
    code, _, index = request(apiserver, "GET", "/openapi/v3")
    url = index["paths"][f"apis/{GROUP}/v1"]["serverRelativeURL"]
    code, _, doc = request(apiserver, "GET", url)
    schema = doc["components"]["schemas"]["com.example.v1.Widget"]
    assert schema["x-kubernetes-group-version-kind"] == [
        {"group": GROUP, "kind": "Widget", "version": "v1"}]
    assert schema["properties"]["spec"]["required"] == ["user"]


def test_printer_column_json_paths() -> None:
    from elastic_kernels.localcluster.apiserver import jsonpath_values

    obj = {"spec": {"resources": {"limits": {"nvidia.com/gpu": 2}}, "items": [{"n": 1}, {"n": 2}]},
           "status": {"conditions": [{"type": "Ready", "status": "True"},
                                     {"type": "Done", "status": "False"}]}}
    assert jsonpath_values(obj, r".spec.resources.limits.nvidia\.com/gpu") == [2]
    assert jsonpath_values(obj, ".spec.resources.limits['nvidia.com/gpu']") == [2]
    assert jsonpath_values(obj, '.status.conditions[?(@.type=="Done")].status') == ["False"]
    assert jsonpath_values(obj, ".spec.items[*].n") == [1, 2]
    assert jsonpath_values(obj, ".spec.items[-1].n") == [2]
    assert jsonpath_values(obj, ".spec.missing.deeper") == []
