"""Request accounting, bearer-token identities and the pod log provider."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from elastic_kernels.localcluster.authn import Authenticator, StaticTokens, UserInfo

from .conftest import ServerThread, api_client

pytestmark = pytest.mark.timeout(30)


def pod(name: str, containers: tuple[str, ...] = ("main",)) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"containers": [{"name": c, "image": "python:3.11"} for c in containers]}}


def test_counter_records_verbs_and_diffs(apiserver: ServerThread,
                                         core: client.CoreV1Api) -> None:
    counter = apiserver.counter
    before = counter.snapshot()
    core.create_namespaced_pod("default", pod("p"))
    core.read_namespaced_pod("p", "default")
    core.list_namespaced_pod("default")
    core.list_pod_for_all_namespaces()
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"a": "b"}}})
    core.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running"}})
    core.replace_namespaced_pod("p", "default", core.read_namespaced_pod("p", "default"))
    list(watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=1,
                              resource_version=core.list_namespaced_pod(
                                  "default").metadata.resource_version))
    core.delete_namespaced_pod("p", "default")
    core.delete_collection_namespaced_pod("default")
    diff = counter.since(before)
    assert diff == {
        ("create", "", "pods", "", "default"): 1,
        ("get", "", "pods", "", "default"): 2,
        ("list", "", "pods", "", "default"): 2,
        ("list", "", "pods", "", ""): 1,
        ("patch", "", "pods", "", "default"): 1,
        ("patch", "", "pods", "status", "default"): 1,
        ("update", "", "pods", "", "default"): 1,
        ("watch", "", "pods", "", "default"): 1,
        ("delete", "", "pods", "", "default"): 1,
        ("deletecollection", "", "pods", "", "default"): 1,
    }
    assert counter.total(diff, verbs=["create", "update", "patch", "delete"]) == 5
    assert sum(counter.writes(diff).values()) == 6
    assert sum(counter.reads(diff).values()) == 6
    client.VersionApi(core.api_client).get_code()
    assert counter.since(before) == diff  # discovery is counted apart
    assert counter.nonresource["/version"] >= 1
    counter.reset()
    assert counter.snapshot() == {}


@pytest.mark.apiserver_options(server={"authenticator": Authenticator([StaticTokens({
    "admin-token": UserInfo("admin", groups=("system:masters",)),
    "gw-token": UserInfo("system:serviceaccount:x:gw")})])})
def test_tokens_map_to_users(apiserver: ServerThread) -> None:
    anonymous = client.CoreV1Api(api_client(apiserver.url))
    with pytest.raises(ApiException) as exc:
        anonymous.list_namespaced_pod("default")
    assert exc.value.status == 401 and json.loads(exc.value.body)["reason"] == "Unauthorized"
    wrong = client.CoreV1Api(api_client(apiserver.url, "nope"))
    with pytest.raises(ApiException) as exc:
        wrong.list_namespaced_pod("default")
    assert exc.value.status == 401
    admin_client = api_client(apiserver.url, "admin-token")
    rbac = client.RbacAuthorizationV1Api(admin_client)
    rbac.create_namespaced_role("default", {
        "metadata": {"name": "pod-lister"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    rbac.create_namespaced_role_binding("default", {
        "metadata": {"name": "gw"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "pod-lister"},
        "subjects": [{"kind": "ServiceAccount", "name": "gw", "namespace": "x"}]})
    gateway = client.CoreV1Api(api_client(apiserver.url, "gw-token"))
    gateway.list_namespaced_pod("default")
    with pytest.raises(ApiException) as exc:
        gateway.list_namespaced_secret("default")
    assert exc.value.status == 403
    admin = client.CoreV1Api(admin_client)
    admin.create_namespaced_secret("default", {"metadata": {"name": "s"}})
    by_user = apiserver.counter.by_user()
    assert by_user[("system:serviceaccount:x:gw", "list", "", "pods", "", "default")] == 1
    assert by_user[("admin", "create", "", "secrets", "", "default")] == 1
    assert apiserver.counter.users() == {"admin", "system:serviceaccount:x:gw"}
    # A refused request is not counted as served, but as denied.
    assert apiserver.counter.denied == {
        ("system:serviceaccount:x:gw", "list", "", "secrets", "", "default"): 1}


def test_logs_default_to_not_running(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p"))
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod_log("p", "default")
    assert exc.value.status == 400
    assert "is not running" in json.loads(exc.value.body)["message"]
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod_log("missing", "default")
    assert exc.value.status == 404


def test_log_provider_is_pluggable(apiserver: ServerThread, core: client.CoreV1Api) -> None:
    calls: list[tuple[str, str, str]] = []

    async def provider(namespace: str, name: str, container: str) -> str:
        calls.append((namespace, name, container))
        await asyncio.sleep(0)
        return "".join(f"{container} line {i}\n" for i in range(5))

    assert apiserver.server is not None
    apiserver.server.log_provider = provider
    core.create_namespaced_pod("default", pod("p", ("main", "side")))
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod_log("p", "default")
    assert exc.value.status == 400 and "choose one of: [main side]" in exc.value.body
    text = core.read_namespaced_pod_log("p", "default", container="side", tail_lines=2)
    assert text == "side line 3\nside line 4\n"
    assert calls == [("default", "p", "side")]
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod_log("p", "default", container="nope")
    assert exc.value.status == 400
    apiserver.server.log_provider = lambda ns, name, container: "plain\n"
    assert core.read_namespaced_pod_log("p", "default", container="main") == "plain\n"
    assert apiserver.counter.snapshot()[("get", "", "pods", "log", "default")] == 4
