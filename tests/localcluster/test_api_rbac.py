"""RBAC authorization of the local API server, as the official client and kubectl 1.37 see it.

A ServiceAccount with no bindings may do nothing but discovery and the self-reviews, and each
refusal is kube-apiserver's 403 word for word (resources, subresources, cluster scope,
non-resource URLs); a Role bound by a RoleBinding grants exactly its verbs, resources,
subresources and resourceNames (including a list or watch pinned to one name by a field
selector); a ClusterRole bound by a RoleBinding grants only in that namespace, by a
ClusterRoleBinding everywhere; ``system:masters`` may do anything; ``kubectl auth can-i`` answers
from the same rules; and OwnerReferencesPermissionEnforcement refuses ``blockOwnerDeletion``
without ``update`` on the owner's finalizers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .conftest import ServerThread, api_client

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(60)]

KUBECTL = Path(sys.executable).parent / "kubectl"
RBAC = "rbac.authorization.k8s.io"
ROBOT = "system:serviceaccount:default:robot"


def status_403(message: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "Forbidden", "details": details, "code": 403}


def body_of(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    return dict(json.loads(exc.value.body))


class Kubectl:
    """kubectl with the test server's kubeconfig, as the admin or with another token."""

    def __init__(self, kubeconfig: Path, home: Path) -> None:
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "HOME": str(home)}

    def run(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = [f"--token={token}"] if token else []
        return subprocess.run([str(KUBECTL), f"--kubeconfig={self.kubeconfig}", *extra, *args],
                              check=False, capture_output=True, text=True, env=self.env,
                              timeout=30)


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    home = tmp_path / "home"
    home.mkdir()
    return Kubectl(kubeconfig, home)


@pytest.fixture
def admin(apiserver: ServerThread) -> Iterator[client.ApiClient]:
    api = api_client(apiserver.url, apiserver.admin_token)
    try:
        yield api
    finally:
        api.close()


def service_account_token(admin: client.ApiClient, name: str, namespace: str = "default") -> str:
    core = client.CoreV1Api(admin)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    answer = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}})
    return str(answer.status.token)


@pytest.fixture
def robot(admin: client.ApiClient) -> str:
    """A token of ServiceAccount default/robot, which nothing is bound to (yet)."""
    return service_account_token(admin, "robot")


@pytest.fixture
def as_robot(apiserver: ServerThread, robot: str) -> Iterator[client.ApiClient]:
    api = api_client(apiserver.url, robot)
    try:
        yield api
    finally:
        api.close()


def raw(apiserver: ServerThread, method: str, path: str, token: str,
        body: Any = None) -> tuple[int, Any]:
    """One request with ``token`` ("" for none): (status, decoded JSON body or text)."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = ("application/merge-patch+json" if method == "PATCH"
                                   else "application/json")
    request = urllib.request.Request(apiserver.url + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def role(name: str, rules: list[dict[str, Any]], kind: str = "Role") -> dict[str, Any]:
    return {"apiVersion": f"{RBAC}/v1", "kind": kind, "metadata": {"name": name},
            "rules": rules}


def binding(name: str, role_name: str, *, role_kind: str = "Role",
            subject: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": role_name},
            "subjects": [subject or {"kind": "ServiceAccount", "name": "robot",
                                     "namespace": "default"}]}


# --- nothing bound: 403 everywhere but discovery and the self-reviews --------------------------

def test_an_unbound_service_account_is_refused_in_kube_apiserver_words(
        apiserver: ServerThread, robot: str, as_robot: client.ApiClient) -> None:
    core = client.CoreV1Api(as_robot)
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_pod("x", "default", {"metadata": {"labels": {"a": "b"}}})
    assert exc.value.status == 403
    assert body_of(exc) == status_403(
        f'pods "x" is forbidden: User "{ROBOT}" cannot patch resource "pods" in API group "" '
        'in the namespace "default"', {"name": "x", "kind": "pods"})
    # A subresource is named resource/subresource.
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_pod_log("x", "default")
    assert body_of(exc) == status_403(
        f'pods "x" is forbidden: User "{ROBOT}" cannot get resource "pods/log" in API group "" '
        'in the namespace "default"', {"name": "x", "kind": "pods"})
    # A list names no object; a cluster-scoped resource is refused "at the cluster scope".
    with pytest.raises(ApiException) as exc:
        core.list_node()
    assert body_of(exc) == status_403(
        f'nodes is forbidden: User "{ROBOT}" cannot list resource "nodes" in API group "" at '
        "the cluster scope", {"kind": "nodes"})
    with pytest.raises(ApiException) as exc:
        core.list_pod_for_all_namespaces(watch=False)
    assert body_of(exc)["message"].endswith('cannot list resource "pods" in API group "" at '
                                            "the cluster scope")
    # A group's resources carry the group, in the message and in the details.
    with pytest.raises(ApiException) as exc:
        client.RbacAuthorizationV1Api(as_robot).list_namespaced_role("default")
    assert body_of(exc) == status_403(
        f'roles.{RBAC} is forbidden: User "{ROBOT}" cannot list resource "roles" in API group '
        f'"{RBAC}" in the namespace "default"', {"group": RBAC, "kind": "roles"})
    # A watch is its own verb; a missing resource is refused, not "not found".
    code, answer = raw(apiserver, "GET", "/api/v1/namespaces/default/secrets?watch=true", robot)
    assert code == 403 and answer["message"].endswith(
        'cannot watch resource "secrets" in API group "" in the namespace "default"')
    code, answer = raw(apiserver, "GET", "/apis/example.com/v1/namespaces/x/gizmos/g", robot)
    assert (code, answer["message"]) == (403, (f'gizmos.example.com "g" is forbidden: User '
                                               f'"{ROBOT}" cannot get resource "gizmos" in API '
                                               'group "example.com" in the namespace "x"'))
    # A non-resource URL is a path.
    code, answer = raw(apiserver, "GET", "/logs", robot)
    assert (code, answer) == (403, status_403(
        f'forbidden: User "{ROBOT}" cannot get path "/logs"', {}))
    code, answer = raw(apiserver, "DELETE", "/api/v1/namespaces/default/configmaps", robot)
    assert code == 403 and 'cannot deletecollection resource "configmaps"' in answer["message"]

    # What every authenticated user may do: discovery, health, and ask about itself.
    for path in ("/api", "/apis", "/api/v1", "/version", "/healthz", "/openapi/v2"):
        assert raw(apiserver, "GET", path, robot)[0] == 200, path
    review = client.AuthenticationV1Api(as_robot).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    assert review.status.user_info.username == ROBOT
    assert apiserver.counter.denied[(ROBOT, "patch", "", "pods", "", "default")] == 1


def test_kubectl_shows_the_refusal_and_can_i_says_no(
        kubectl: Kubectl, robot: str) -> None:
    result = kubectl.run("get", "pods", "-n", "default", token=robot)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f'Error from server (Forbidden): pods is forbidden: User "{ROBOT}" cannot list '
        'resource "pods" in API group "" in the namespace "default"')
    result = kubectl.run("auth", "can-i", "list", "pods", "-n", "default", token=robot)
    assert (result.returncode, result.stdout.strip()) == (1, "no")
    result = kubectl.run("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                         token=robot)
    assert (result.returncode, result.stdout) == (0, ROBOT), result.stderr
    # The admin of the kubeconfig (system:masters) may do anything, anywhere.
    result = kubectl.run("auth", "can-i", "*", "*", "--all-namespaces")
    assert (result.returncode, result.stdout.strip()) == (0, "yes"), result.stderr


# --- a Role through a RoleBinding: exactly what it says -----------------------------------------

def test_a_role_grants_exactly_its_verbs_names_and_subresources(
        apiserver: ServerThread, admin: client.ApiClient, robot: str,
        as_robot: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role("default", role("reader", [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"],
         "resourceNames": ["users"]},
        {"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]},
    ]))
    rbac.create_namespaced_role_binding("default", binding("robot-reads", "reader"))
    admin_core = client.CoreV1Api(admin)
    admin_core.create_namespaced_secret("default", {"metadata": {"name": "users"},
                                                    "stringData": {"users.yaml": "tokens: []"}})
    admin_core.create_namespaced_secret("default", {"metadata": {"name": "other"}})
    admin_core.create_namespaced_pod("default", {"metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "c", "image": "python:3.11"}]}})
    core = client.CoreV1Api(as_robot)

    assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["p"]
    assert core.read_namespaced_pod("p", "default").metadata.name == "p"
    assert core.read_namespaced_pod_status("p", "default").metadata.name == "p"  # */status
    with pytest.raises(ApiException) as exc:  # authorized, then not running: 400, not 403
        core.read_namespaced_pod_log("p", "default")
    assert exc.value.status == 400
    for call, verb in ((lambda: core.delete_namespaced_pod("p", "default"), "delete"),
                       (lambda: core.patch_namespaced_pod("p", "default", {}), "patch"),
                       (lambda: core.create_namespaced_pod("default", {}), "create")):
        with pytest.raises(ApiException) as exc:
            call()
        assert exc.value.status == 403 and f"cannot {verb} resource" in body_of(exc)["message"]
    with pytest.raises(ApiException) as exc:  # a subresource needs its own grant
        core.patch_namespaced_pod_status("p", "default", {})
    assert 'cannot patch resource "pods/status"' in body_of(exc)["message"]
    with pytest.raises(ApiException) as exc:  # the same Role grants nothing elsewhere
        core.list_namespaced_pod("kube-public")
    assert 'in the namespace "kube-public"' in body_of(exc)["message"]
    # list but not watch
    assert core.list_namespaced_service("default").items is not None
    code, answer = raw(apiserver, "GET", "/api/v1/namespaces/default/services?watch=1", robot)
    assert code == 403 and 'cannot watch resource "services"' in answer["message"]

    # resourceNames: by name only -- get, and a list or watch pinned to it by a field selector.
    assert core.read_namespaced_secret("users", "default").metadata.name == "users"
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_secret("other", "default")
    assert body_of(exc)["message"] == (f'secrets "other" is forbidden: User "{ROBOT}" cannot get '
                                       'resource "secrets" in API group "" in the namespace '
                                       '"default"')
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_secret("default")
    assert exc.value.status == 403
    pinned = core.list_namespaced_secret("default", field_selector="metadata.name=users")
    assert [s.metadata.name for s in pinned.items] == ["users"]
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_secret("default", field_selector="metadata.name=other")
    assert body_of(exc)["details"] == {"name": "other", "kind": "secrets"}
    code, text = raw(apiserver, "GET", "/api/v1/namespaces/default/secrets?watch=true&"
                                       "fieldSelector=metadata.name%3Dusers&timeoutSeconds=1",
                     robot)
    events = [text] if isinstance(text, dict) else [json.loads(line)
                                                    for line in text.splitlines()]
    assert code == 200 and [e["object"]["metadata"]["name"] for e in events] == ["users"]
    code, _ = raw(apiserver, "GET", "/api/v1/namespaces/default/secrets?watch=true&"
                                    "fieldSelector=metadata.name%3Dother&timeoutSeconds=1", robot)
    assert code == 403

    # SelfSubjectAccessReview says which binding allowed it.
    review = client.AuthorizationV1Api(as_robot).create_self_subject_access_review({
        "spec": {"resourceAttributes": {"namespace": "default", "verb": "watch",
                                        "resource": "secrets", "name": "users"}}})
    assert review.status.allowed
    assert review.status.reason == ('RBAC: allowed by RoleBinding "robot-reads/default" of Role '
                                    '"reader" to ServiceAccount "robot/default"')
    review = client.AuthorizationV1Api(as_robot).create_self_subject_access_review({
        "spec": {"resourceAttributes": {"namespace": "default", "verb": "list",
                                        "resource": "secrets"}}})
    assert not review.status.allowed


def test_kubectl_auth_can_i_answers_from_the_same_rules(
        admin: client.ApiClient, kubectl: Kubectl, robot: str) -> None:
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role("default", role("logs", [
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"],
         "resourceNames": ["settings"]},
    ]))
    rbac.create_namespaced_role_binding("default", binding("robot-logs", "logs"))

    def can_i(*args: str) -> str:
        result = kubectl.run("auth", "can-i", *args, "-n", "default", token=robot)
        assert result.returncode in (0, 1), result.stderr
        return result.stdout.strip()

    assert can_i("get", "pods") == "yes"
    assert can_i("get", "pods", "--subresource=log") == "yes"
    assert can_i("get", "pods", "--subresource=exec") == "no"
    assert can_i("list", "pods") == "no"
    assert can_i("update", "configmaps/settings") == "yes"
    assert can_i("update", "configmaps/other") == "no"
    assert can_i("get", "/healthz") == "yes"
    assert can_i("get", "/logs") == "no"
    listed = kubectl.run("auth", "can-i", "--list", "-n", "default", token=robot)
    assert listed.returncode == 0, listed.stderr
    lines = [line.split() for line in listed.stdout.splitlines()]
    assert ["pods", "[]", "[]", "[get]"] in lines
    assert ["configmaps", "[]", "[settings]", "[update]"] in lines
    assert ["selfsubjectaccessreviews.authorization.k8s.io", "[]", "[]", "[create]"] in lines
    assert any(row[:1] == ["[/healthz]"] for row in lines)


# --- ClusterRoles ------------------------------------------------------------------------------

def test_a_cluster_role_bound_in_a_namespace_grants_only_there(
        admin: client.ApiClient, as_robot: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(admin)
    client.CoreV1Api(admin).create_namespace({"metadata": {"name": "team"}})
    rbac.create_cluster_role(role("pod-lister", [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}], "ClusterRole"))
    rbac.create_namespaced_role_binding("team", binding("robot-lists", "pod-lister",
                                                        role_kind="ClusterRole"))
    core = client.CoreV1Api(as_robot)
    assert core.list_namespaced_pod("team").items == []
    for call in (lambda: core.list_namespaced_pod("default"),
                 lambda: core.list_pod_for_all_namespaces()):
        with pytest.raises(ApiException) as exc:
            call()
        assert exc.value.status == 403

    # Bound by a ClusterRoleBinding, the same ClusterRole grants in every namespace and across
    # them; here to a group every ServiceAccount of "default" is in.
    rbac.create_cluster_role_binding(binding(
        "default-accounts-list", "pod-lister", role_kind="ClusterRole",
        subject={"kind": "Group", "name": "system:serviceaccounts:default",
                 "apiGroup": RBAC}))
    assert core.list_namespaced_pod("default").items == []
    assert core.list_pod_for_all_namespaces().items == []
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_secret("team")
    assert exc.value.status == 403

    # Deleting the binding takes the grant away at once.
    rbac.delete_cluster_role_binding("default-accounts-list")
    with pytest.raises(ApiException) as exc:
        core.list_pod_for_all_namespaces()
    assert exc.value.status == 403


def test_a_binding_to_a_missing_role_says_so(admin: client.ApiClient,
                                             as_robot: client.ApiClient) -> None:
    client.RbacAuthorizationV1Api(admin).create_namespaced_role_binding(
        "default", binding("dangling", "ghost"))
    with pytest.raises(ApiException) as exc:
        client.CoreV1Api(as_robot).list_namespaced_pod("default")
    assert body_of(exc)["message"] == (
        f'pods is forbidden: User "{ROBOT}" cannot list resource "pods" in API group "" in the '
        f'namespace "default": RBAC: role.{RBAC} "ghost" not found')


def test_users_and_groups_are_subjects_and_masters_may_do_anything(
        apiserver: ServerThread, admin: client.ApiClient) -> None:
    # The admin token is a user in system:masters: no binding needed for anything.
    core = client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": "elsewhere"}})
    core.create_namespaced_config_map("elsewhere", {"metadata": {"name": "c"}})
    assert raw(apiserver, "GET", "/logs", apiserver.admin_token)[0] == 404  # allowed; no route
    review = client.AuthorizationV1Api(admin).create_self_subject_rules_review(
        {"spec": {"namespace": "elsewhere"}})
    assert review.status.resource_rules[0].verbs == ["*"]
    # The anonymous user reaches health and version through system:public-info-viewer, a
    # ClusterRoleBinding like any other: without it, anonymous requests are refused.
    assert raw(apiserver, "GET", "/healthz", "")[0] == 200
    client.RbacAuthorizationV1Api(admin).delete_cluster_role_binding("system:public-info-viewer")
    code, answer = raw(apiserver, "GET", "/healthz", "")
    assert (code, answer["message"]) == (
        403, 'forbidden: User "system:anonymous" cannot get path "/healthz"')


# --- OwnerReferencesPermissionEnforcement ------------------------------------------------------

def owned_secret(name: str, owner: dict[str, Any], block: bool | None) -> dict[str, Any]:
    ref: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                           "uid": owner["metadata"]["uid"], "controller": True}
    if block is not None:
        ref["blockOwnerDeletion"] = block
    return {"metadata": {"name": name, "ownerReferences": [ref]}}


def test_block_owner_deletion_needs_update_on_the_owners_finalizers(
        admin: client.ApiClient, as_robot: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role("default", role("writer", [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]}]))
    rbac.create_namespaced_role_binding("default", binding("robot-writes", "writer"))
    owner = admin.sanitize_for_serialization(client.CoreV1Api(admin).create_namespaced_config_map(
        "default", {"metadata": {"name": "owner"}}))
    core = client.CoreV1Api(as_robot)

    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret("default", owned_secret("blocking", owner, True))
    assert body_of(exc) == status_403(
        'secrets "blocking" is forbidden: cannot set blockOwnerDeletion if an ownerReference '
        "refers to a resource you can't set finalizers on: , <nil>",
        {"name": "blocking", "kind": "secrets"})
    # Not blocking: creating may set any ownerReference (whoever may create may not have).
    core.create_namespaced_secret("default", owned_secret("plain", owner, False))
    # Changing an existing object's ownerReferences needs delete on that object.
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_secret("plain", "default", {"metadata": {"ownerReferences": None}})
    assert body_of(exc)["message"] == ('secrets "plain" is forbidden: cannot set an ownerRef on '
                                       "a resource you can't delete: , <nil>")
    core.patch_namespaced_secret("plain", "default", {"metadata": {"labels": {"a": "b"}}})

    # update on configmaps/finalizers (for that owner only) is what it takes.
    rbac.create_namespaced_role("default", role("finalizer", [
        {"apiGroups": [""], "resources": ["configmaps/finalizers"], "verbs": ["update"],
         "resourceNames": ["owner"]}]))
    rbac.create_namespaced_role_binding("default", binding("robot-finalizes", "finalizer"))
    created = core.create_namespaced_secret("default", owned_secret("blocking", owner, True))
    assert created.metadata.owner_references[0].block_owner_deletion is True
    # An owner of a kind the server does not know cannot be checked, so it is refused.
    unknown = owned_secret("stray", owner, True)
    unknown["metadata"]["ownerReferences"][0].update(apiVersion="example.com/v1", kind="Gizmo")
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret("default", unknown)
    assert body_of(exc)["message"] == (
        'secrets "stray" is forbidden: cannot set blockOwnerDeletion in this case because '
        "cannot find RESTMapping for APIVersion example.com/v1 Kind Gizmo: no matches for kind "
        '"Gizmo" in version "example.com/v1"')
    # The admin (system:masters) needs nothing more.
    client.CoreV1Api(admin).create_namespaced_secret("default",
                                                     owned_secret("by-admin", owner, True))
