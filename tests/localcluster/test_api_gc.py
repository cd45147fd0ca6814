"""Deletion semantics: finalizers, graceful pod deletion, ownerReference garbage collection."""

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


def owner_ref(owner: dict[str, Any], block: bool = True) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": block}


def pod(name: str, owners: list[dict] | None = None, finalizers: list[str] | None = None,
        grace: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owners:
        meta["ownerReferences"] = owners
    if finalizers:
        meta["finalizers"] = finalizers
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "python:3.11"}]}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"metadata": meta, "spec": spec}


def exists(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
        return True
    except ApiException as exc:
        assert exc.status == 404
        return False


@pytest.fixture
def store(apiserver: ServerThread) -> Store:
    assert apiserver.store is not None
    return apiserver.store


@pytest.fixture
def kernel(custom: client.CustomObjectsApi, widgets: dict) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, widget("owner"))


def test_background_deletion_collects_dependents(core: client.CoreV1Api,
                                                 custom: client.CustomObjectsApi,
                                                 kernel: dict) -> None:
    core.create_namespaced_pod("default", pod("p", [owner_ref(kernel)]))
    core.create_namespaced_secret("default", {"metadata": {
        "name": "s", "ownerReferences": [owner_ref(kernel)]}})
    core.create_namespaced_secret("default", {"metadata": {"name": "unrelated"}})
    custom.delete_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "owner")
    assert not exists(core.read_namespaced_pod, "p", "default")
    assert not exists(core.read_namespaced_secret, "s", "default")
    assert exists(core.read_namespaced_secret, "unrelated", "default")


def test_dependent_with_another_live_owner_survives(core: client.CoreV1Api,
                                                    custom: client.CustomObjectsApi,
                                                    kernel: dict) -> None:
    other = core.create_namespaced_config_map("default", {"metadata": {"name": "other"}})
    other_ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "other",
                 "uid": other.metadata.uid}
    core.create_namespaced_secret("default", {"metadata": {
        "name": "shared", "ownerReferences": [owner_ref(kernel, block=False), other_ref]}})
    custom.delete_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "owner")
    assert exists(core.read_namespaced_secret, "shared", "default")
    core.delete_namespaced_config_map("other", "default")
    assert not exists(core.read_namespaced_secret, "shared", "default")


def test_object_created_for_a_missing_owner_is_collected(core: client.CoreV1Api) -> None:
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost",
             "uid": "00000000-0000-0000-0000-000000000000"}
    created = core.create_namespaced_secret("default", {"metadata": {
        "name": "orphaned", "ownerReferences": [ghost]}})
    assert created.metadata.name == "orphaned"
    assert not exists(core.read_namespaced_secret, "orphaned", "default")


def test_orphan_deletion_keeps_dependents_without_owner_refs(core: client.CoreV1Api,
                                                             custom: client.CustomObjectsApi,
                                                             kernel: dict) -> None:
    core.create_namespaced_pod("default", pod("p", [owner_ref(kernel)]))
    custom.delete_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "owner",
                                           propagation_policy="Orphan")
    assert not exists(custom.get_namespaced_custom_object, GROUP, "v1", "default", WIDGETS,
                      "owner")
    survivor = core.read_namespaced_pod("p", "default")
    assert not survivor.metadata.owner_references


def test_foreground_deletion_waits_for_blocking_dependents(apiserver: ServerThread, store: Store,
                                                           core: client.CoreV1Api,
                                                           custom: client.CustomObjectsApi,
                                                           kernel: dict) -> None:
    core.create_namespaced_pod("default", pod("p", [owner_ref(kernel)]))
    core.create_namespaced_secret("default", {"metadata": {
        "name": "s", "ownerReferences": [owner_ref(kernel)]}})
    apiserver.call(lambda: store.bind("default", "p", "node-1"))  # a running pod
    custom.delete_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "owner",
                                           body=client.V1DeleteOptions(
                                               propagation_policy="Foreground"))
    owner = custom.get_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "owner")
    assert owner["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in owner["metadata"]["finalizers"]
    assert not exists(core.read_namespaced_secret, "s", "default")
    terminating = core.read_namespaced_pod("p", "default")
    assert terminating.metadata.deletion_timestamp is not None
    # the kubelet finishes the pod; then the owner goes too
    core.delete_namespaced_pod("p", "default", grace_period_seconds=0)
    assert not exists(custom.get_namespaced_custom_object, GROUP, "v1", "default", WIDGETS,
                      "owner")


def test_finalizers_block_deletion_until_removed(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {
        "name": "c", "finalizers": ["example.com/keep"]}})
    core.delete_namespaced_config_map("c", "default")
    held = core.read_namespaced_config_map("c", "default")
    assert held.metadata.deletion_timestamp is not None
    assert held.metadata.deletion_grace_period_seconds == 0
    with pytest.raises(ApiException) as exc:  # no new finalizers while being deleted
        core.patch_namespaced_config_map("c", "default", {"metadata": {
            "finalizers": ["example.com/keep", "example.com/more"]}})
    assert exc.value.status == 422
    core.patch_namespaced_config_map("c", "default", {"metadata": {"finalizers": None}})
    assert not exists(core.read_namespaced_config_map, "c", "default")


def test_graceful_pod_deletion(apiserver: ServerThread, store: Store,
                               core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p", grace=20))
    apiserver.call(lambda: store.bind("default", "p", "node-1"))
    first = core.delete_namespaced_pod("p", "default")
    assert first.metadata.deletion_grace_period_seconds == 20
    assert core.read_namespaced_pod("p", "default").metadata.deletion_timestamp is not None
    shorter = core.delete_namespaced_pod("p", "default", grace_period_seconds=5)
    assert shorter.metadata.deletion_grace_period_seconds == 5
    longer = core.delete_namespaced_pod("p", "default", grace_period_seconds=60)
    assert longer.metadata.deletion_grace_period_seconds == 5  # grace only ever shortens
    core.delete_namespaced_pod("p", "default", grace_period_seconds=0)
    assert not exists(core.read_namespaced_pod, "p", "default")


def test_terminal_or_unbound_pods_are_removed_at_once(apiserver: ServerThread, store: Store,
                                                      core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("done"))
    apiserver.call(lambda: store.bind("default", "done", "node-1"))
    core.patch_namespaced_pod_status("done", "default", {"status": {"phase": "Succeeded"}})
    core.delete_namespaced_pod("done", "default")
    assert not exists(core.read_namespaced_pod, "done", "default")


def test_pod_with_finalizer_waits_for_both(apiserver: ServerThread, store: Store,
                                           core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p", finalizers=["example.com/f"]))
    apiserver.call(lambda: store.bind("default", "p", "node-1"))
    core.delete_namespaced_pod("p", "default")
    core.delete_namespaced_pod("p", "default", grace_period_seconds=0)  # kubelet is done
    held = core.read_namespaced_pod("p", "default")
    assert held.metadata.deletion_grace_period_seconds == 0
    core.patch_namespaced_pod("p", "default", {"metadata": {"finalizers": None}})
    assert not exists(core.read_namespaced_pod, "p", "default")


def test_delete_options_as_query_parameters(apiserver: ServerThread, core: client.CoreV1Api,
                                            custom: client.CustomObjectsApi,
                                            kernel: dict) -> None:
    core.create_namespaced_pod("default", pod("p", [owner_ref(kernel)]))
    path = f"/apis/{GROUP}/v1/namespaces/default/{WIDGETS}/owner?propagationPolicy=Orphan"
    req = urllib.request.Request(apiserver.url + path, method="DELETE",
                                 headers=apiserver.auth_headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    assert not core.read_namespaced_pod("p", "default").metadata.owner_references
    req = urllib.request.Request(apiserver.url + "/api/v1/namespaces/default/pods/p"
                                                 "?propagationPolicy=Sideways", method="DELETE",
                                 headers=apiserver.auth_headers)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 422 and json.loads(exc.value.read())["kind"] == "Status"
    req = urllib.request.Request(apiserver.url + "/api/v1/namespaces/default/pods/p"
                                                 "?gracePeriodSeconds=abc", method="DELETE",
                                 headers=apiserver.auth_headers)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 400


def test_store_delete_contract(apiserver: ServerThread, store: Store) -> None:
    """The scheduler and kubelet use the Store directly; the same rules apply there."""
    def scenario() -> list[Any]:
        pods = ("", "pods")
        store.create(pods, "default", pod("p"))
        store.bind("default", "p", "node-1")
        marked = store.delete(pods, "default", "p", grace_period_seconds=3)
        still = store.get(pods, "default", "p")
        removed = store.delete(pods, "default", "p", grace_period_seconds=0)
        gone = [o["metadata"]["name"] for o in store.list(pods, "default")[0]]
        return [marked["metadata"]["deletionGracePeriodSeconds"],
                still["metadata"]["deletionTimestamp"] is not None,
                removed["metadata"]["name"], gone]
    assert apiserver.call(scenario) == [3, True, "p", []]
