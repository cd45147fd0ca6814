"""Authentication of the local API server, end to end over HTTP(S) as real clients see it.

Nobody gets in without credentials (401 and kube-apiserver's ``Status`` body, on both listeners);
the kubeconfig's per-run admin token works; ServiceAccount tokens from the TokenRequest API
(``kubectl create token``) and the kubelet's projected token authenticate as the ServiceAccount,
and stop working once expired, once their ServiceAccount is deleted, or once the pod they are
bound to is gone; the kubelet renews a pod's token before it expires.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import stat
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from elastic_kernels.localcluster.authn import PUBLIC_INFO_PATHS
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.localcluster.nodes import NodeConfig
from elastic_kernels.localcluster.satokens import ServiceAccountTokens

try:
    from kubelet_fixtures import PODS, pod, running_cluster, wait_pod
except ImportError:  # collected as a package
    from .kubelet_fixtures import PODS, pod, running_cluster, wait_pod

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(60)]

KUBECTL = Path(sys.executable).parent / "kubectl"
UNAUTHORIZED = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
POD_LIST = "/api/v1/namespaces/default/pods"
SECRET_LIST = "/api/v1/namespaces/default/secrets"
WHOAMI = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
SELF_REVIEW = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """A small local cluster (one node, no GPUs, nothing applied), stopped after the test."""
    c = LocalCluster(nodes=1, gpus_per_node=0, workdir=tmp_path / "cluster",
                     crash_backoff_seconds=0.2)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def admin_token(cluster: LocalCluster) -> str:
    """The admin token, read from the kubeconfig as any client reads it."""
    doc = yaml.safe_load(cluster.kubeconfig_path.read_text())
    return str(doc["users"][0]["user"]["token"])


async def call(cluster: LocalCluster, method: str, path: str, *, token: str | None = None,
               body: Any = None, tls: bool = True, authorization: str | None = None
               ) -> tuple[int, Any]:
    """One request to the API server (HTTPS by default, trusting only the cluster's CA)."""
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["Authorization"] = authorization
    data = None
    if body is not None or method in ("POST", "PUT", "PATCH"):
        data = json.dumps(body if body is not None else {}).encode()
        headers["Content-Type"] = "application/json"
    assert cluster.apiserver is not None
    base = cluster.server_url if tls else cluster.apiserver.url
    context = ssl.create_default_context(cadata=cluster.ca_pem.decode())
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(HTTPRequest(base + path, method=method, headers=headers,
                                                  body=data, ssl_options=context,
                                                  request_timeout=20),
                                      raise_error=False)
    finally:
        client.close()
    text = response.body or b""
    if response.headers.get("Content-Type", "").startswith("application/json"):
        return response.code, json.loads(text)
    return response.code, text.decode()


async def kubectl(cluster: LocalCluster, *args: str, token: str | None = None
                  ) -> tuple[int, str, str]:
    """The real kubectl with the cluster's kubeconfig (optionally with another bearer token)."""
    extra = [f"--token={token}"] if token else []
    proc = await asyncio.create_subprocess_exec(
        str(KUBECTL), f"--kubeconfig={cluster.kubeconfig_path}", *extra, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(cluster.workdir)})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return int(proc.returncode or 0), out.decode(), err.decode()


async def whoami(cluster: LocalCluster, token: str) -> dict[str, Any]:
    code, out, err = await kubectl(cluster, "auth", "whoami", "-o", "json", token=token)
    assert code == 0, err
    return dict(json.loads(out)["status"]["userInfo"])


async def authenticated_as(cluster: LocalCluster, token: str, tls: bool = True) -> str | None:
    """Who the API server takes ``token`` for (SelfSubjectReview, which every authenticated
    user may create), or None when it refuses the token (401)."""
    code, answer = await call(cluster, "POST", WHOAMI, body=SELF_REVIEW, token=token, tls=tls)
    if code == 401:
        return None
    assert code == 201, answer
    return str(answer["status"]["userInfo"]["username"])


async def until(predicate: Callable[[], Any], timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# --- no credentials, wrong credentials ---------------------------------------------------------

async def test_kubeconfig_is_private_and_names_the_https_listener(cluster: LocalCluster) -> None:
    assert stat.S_IMODE(os.stat(cluster.kubeconfig_path).st_mode) == 0o600
    doc = yaml.safe_load(cluster.kubeconfig_path.read_text())
    server = doc["clusters"][0]["cluster"]
    assert server["server"].startswith("https://127.0.0.1:")
    assert base64.b64decode(server["certificate-authority-data"]) == cluster.ca_pem
    token = admin_token(cluster)
    assert token != "local-admin" and len(token) >= 32
    cluster.write_kubeconfig(cluster.workdir / "again" / "kubeconfig")
    assert stat.S_IMODE(os.stat(cluster.workdir / "again" / "kubeconfig").st_mode) == 0o600


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
async def test_requests_without_valid_credentials_get_401(cluster: LocalCluster,
                                                          tls: bool) -> None:
    attempts: list[dict[str, Any]] = [
        {}, {"token": "wrong"}, {"token": admin_token(cluster) + "x"},
        {"authorization": "Basic YWRtaW46YWRtaW4="}, {"authorization": "Bearer "},
    ]
    for credentials in attempts:
        for method, path, body in (("GET", POD_LIST, None), ("GET", SECRET_LIST, None),
                                   ("POST", POD_LIST, pod("intruder")),
                                   ("GET", "/api", None), ("GET", "/openapi/v2", None),
                                   ("POST", WHOAMI, SELF_REVIEW)):
            code, answer = await call(cluster, method, path, body=body, tls=tls, **credentials)
            assert (code, answer) == (401, UNAUTHORIZED), (method, path, credentials)
    # Nothing was created, and every request was refused before it was counted.
    code, pods = await call(cluster, "GET", POD_LIST, token=admin_token(cluster), tls=tls)
    assert code == 200 and pods["items"] == []
    assert cluster.request_counter.users() == {"kubernetes-admin"}


async def test_anonymous_users_reach_only_public_info(cluster: LocalCluster) -> None:
    for path in sorted(PUBLIC_INFO_PATHS - {"/version/"}):
        code, _ = await call(cluster, "GET", path)
        assert code == 200, path
        # A bad token is refused everywhere, even where no token is needed.
        assert await call(cluster, "GET", path, token="wrong") == (401, UNAUTHORIZED)
    code, version = await call(cluster, "GET", "/version")
    assert code == 200 and version["major"] == "1"
    for path in ("/", "/healthz/ping", "/apis", "/api/v1"):
        assert await call(cluster, "GET", path) == (401, UNAUTHORIZED), path


# --- the admin ----------------------------------------------------------------------------------

async def test_the_kubeconfig_admin_is_a_cluster_admin(cluster: LocalCluster) -> None:
    code, _, err = await kubectl(cluster, "get", "secrets", "-A")
    assert code == 0, err
    user = await whoami(cluster, admin_token(cluster))
    assert user["username"] == "kubernetes-admin"
    assert user["groups"] == ["system:masters", "system:authenticated"]
    # Both listeners accept it.
    for tls in (True, False):
        code, answer = await call(cluster, "POST", WHOAMI, body=SELF_REVIEW,
                                  token=admin_token(cluster), tls=tls)
        assert code == 201 and answer["status"]["userInfo"]["username"] == "kubernetes-admin"


async def test_credentials_survive_an_api_server_outage(cluster: LocalCluster) -> None:
    assert cluster.apiserver is not None
    url, tls_url = cluster.apiserver.url, cluster.apiserver.tls_url
    code, out, err = await kubectl(cluster, "create", "token", "default")
    assert code == 0, err
    await cluster.stop_apiserver()
    await cluster.start_apiserver()
    assert (cluster.apiserver.url, cluster.apiserver.tls_url) == (url, tls_url)
    assert (await call(cluster, "GET", POD_LIST, token=admin_token(cluster)))[0] == 200
    assert await authenticated_as(cluster, out.strip()) == "system:serviceaccount:default:default"
    assert await call(cluster, "GET", POD_LIST) == (401, UNAUTHORIZED)


# --- ServiceAccount tokens from the TokenRequest API ----------------------------------------------

async def test_kubectl_create_token_authenticates_as_the_service_account(
        cluster: LocalCluster) -> None:
    code, _, err = await kubectl(cluster, "create", "serviceaccount", "robot")
    assert code == 0, err
    code, out, err = await kubectl(cluster, "create", "token", "robot", "--duration=15m")
    assert code == 0, err
    token = out.strip()
    account = (await call(cluster, "GET", "/api/v1/namespaces/default/serviceaccounts/robot",
                          token=admin_token(cluster)))[1]
    user = await whoami(cluster, token)
    assert user["username"] == "system:serviceaccount:default:robot"
    assert user["uid"] == account["metadata"]["uid"]
    assert user["groups"] == ["system:serviceaccounts", "system:serviceaccounts:default",
                              "system:authenticated"]
    assert user["extra"]["authentication.kubernetes.io/credential-id"][0].startswith("JTI=")
    for tls in (True, False):
        assert await authenticated_as(cluster, token, tls) == user["username"]
        # Authenticated, so judged by RBAC: no binding grants it pods (403, not 401).
        code, answer = await call(cluster, "GET", POD_LIST, token=token, tls=tls)
        assert code == 403 and 'User "system:serviceaccount:default:robot" cannot list' \
            in answer["message"]
    assert "system:serviceaccount:default:robot" in cluster.request_counter.users()

    # The token is a signed JWT with kube-apiserver's claims.
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == "system:serviceaccount:default:robot"
    assert claims["iss"] == claims["aud"][0] == "https://kubernetes.default.svc.cluster.local"
    assert claims["exp"] - claims["iat"] == 900 and claims["nbf"] == claims["iat"]
    assert claims["kubernetes.io"] == {"namespace": "default", "serviceaccount": {
        "name": "robot", "uid": account["metadata"]["uid"]}}
    # Tampering with it breaks the signature.
    header, _, signature = token.split(".")
    forged = dict(claims, sub="system:serviceaccount:kube-system:admin")
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    assert (await call(cluster, "GET", POD_LIST, token=f"{header}.{forged_payload}.{signature}")
            == (401, UNAUTHORIZED))

    # A deleted ServiceAccount's tokens stop working, even if one of that name comes back.
    code, _, err = await kubectl(cluster, "delete", "serviceaccount", "robot")
    assert code == 0, err
    assert await call(cluster, "GET", POD_LIST, token=token) == (401, UNAUTHORIZED)
    code, _, err = await kubectl(cluster, "create", "serviceaccount", "robot")
    assert code == 0, err
    assert await call(cluster, "GET", POD_LIST, token=token) == (401, UNAUTHORIZED)


async def test_token_requests_are_validated_as_real(cluster: LocalCluster) -> None:
    code, _, err = await kubectl(cluster, "create", "token", "nobody")
    assert code != 0 and 'serviceaccounts "nobody" not found' in err
    code, _, err = await kubectl(cluster, "create", "token", "default", "--duration=5m")
    assert code != 0 and "may not specify a duration less than 10 minutes" in err
    code, _, err = await kubectl(cluster, "create", "token", "default",
                                 "--bound-object-kind=Pod", "--bound-object-name=missing")
    assert code != 0 and 'pods "missing" not found' in err
    path = "/api/v1/namespaces/default/serviceaccounts/default/token"
    code, answer = await call(cluster, "POST", path, token=admin_token(cluster), body={
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"boundObjectRef": {"kind": "ConfigMap", "apiVersion": "v1", "name": "x"}}})
    assert code == 400 and answer["message"] == ("cannot bind token to object of type "
                                                 "/v1, Kind=ConfigMap")
    code, answer = await call(cluster, "POST", path, token=admin_token(cluster), body={
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["vault"]}})
    assert code == 201 and answer["spec"]["expirationSeconds"] == 3600
    assert answer["metadata"]["name"] == "default" and answer["status"]["expirationTimestamp"]
    # A token for another audience is not one for the API server.
    assert (await call(cluster, "GET", POD_LIST, token=answer["status"]["token"])
            == (401, UNAUTHORIZED))


async def test_expired_tokens_are_rejected(cluster: LocalCluster) -> None:
    code, out, err = await kubectl(cluster, "create", "token", "default", "--duration=10m")
    assert code == 0, err
    token = out.strip()
    tokens = cluster.service_account_tokens
    assert tokens is not None
    assert await authenticated_as(cluster, token) == "system:serviceaccount:default:default"
    try:
        # Within kube-apiserver's 60 s leeway past expiry it still works; after it, never.
        tokens.clock = lambda: time.time() + 600 + 30
        assert await authenticated_as(cluster, token) == "system:serviceaccount:default:default"
        tokens.clock = lambda: time.time() + 600 + 61
        assert await call(cluster, "GET", POD_LIST, token=token) == (401, UNAUTHORIZED)
    finally:
        tokens.clock = time.time
    # The admin's token does not expire.
    assert (await call(cluster, "GET", POD_LIST, token=admin_token(cluster)))[0] == 200


# --- tokens bound to a pod, and the kubelet's projected token ----------------------------------

IN_POD = textwrap.dedent("""
    import json, time
    from kubernetes import client
    from elastic_kernels.kube.config import load_cluster_config, service_account_dir
    cfg = load_cluster_config()
    review = client.AuthenticationV1Api(cfg.api_client).create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    user = review.status.user_info
    print(json.dumps({"host": cfg.host, "source": cfg.source, "user": user.username,
                      "groups": user.groups, "extra": user.extra,
                      "token_file": str(service_account_dir() / "token")}), flush=True)
    time.sleep(120)
""")


async def test_a_pods_token_is_bound_to_it(cluster: LocalCluster) -> None:
    code, _, err = await kubectl(cluster, "create", "serviceaccount", "runner")
    assert code == 0, err
    admin = admin_token(cluster)
    body = pod("client", ["python", "-c", IN_POD], serviceAccountName="runner")
    body["spec"]["terminationGracePeriodSeconds"] = 1
    assert (await call(cluster, "POST", POD_LIST, token=admin, body=body))[0] == 201

    async def logged() -> str:
        code, text = await call(cluster, "GET", f"{POD_LIST}/client/log", token=admin)
        return text if code == 200 and isinstance(text, str) and text.strip() else ""
    await until(logged, 40)
    seen = json.loads(next(line for line in (await logged()).splitlines()
                           if line.startswith("{")))
    # In the pod, the official client configured itself in-cluster: HTTPS, the mounted CA and
    # the kubelet's token, which authenticates as the pod's ServiceAccount, bound to the pod.
    assert seen["source"] == "in-cluster service account"
    assert seen["host"] == cluster.server_url
    assert seen["user"] == "system:serviceaccount:default:runner"
    assert seen["groups"] == ["system:serviceaccounts", "system:serviceaccounts:default",
                              "system:authenticated"]
    pod_obj = (await call(cluster, "GET", f"{POD_LIST}/client", token=admin))[1]
    assert seen["extra"]["authentication.kubernetes.io/pod-name"] == ["client"]
    assert seen["extra"]["authentication.kubernetes.io/pod-uid"] == [pod_obj["metadata"]["uid"]]
    assert seen["extra"]["authentication.kubernetes.io/node-name"] == [
        pod_obj["spec"]["nodeName"]]
    mounted = Path(seen["token_file"]).read_text()
    claims = json.loads(base64.urlsafe_b64decode(mounted.split(".")[1] + "=="))
    assert claims["exp"] - claims["iat"] == 3607
    assert claims["kubernetes.io"]["pod"] == {"name": "client",
                                              "uid": pod_obj["metadata"]["uid"]}

    # kubectl create token --bound-object-kind=Pod: checked against the pod's account, then
    # bound to it like the mounted one.
    code, _, err = await kubectl(cluster, "create", "token", "default",
                                 "--bound-object-kind=Pod", "--bound-object-name=client")
    assert code != 0 and "to pod running with different serviceaccount name" in err
    code, out, err = await kubectl(cluster, "create", "token", "runner",
                                   "--bound-object-kind=Pod", "--bound-object-name=client",
                                   f"--bound-object-uid={pod_obj['metadata']['uid']}")
    assert code == 0, err
    bound = out.strip()
    for token in (mounted, bound):
        assert await authenticated_as(cluster, token) == "system:serviceaccount:default:runner"

    code, _, err = await kubectl(cluster, "delete", "pod", "client", "--wait=true",
                                 "--timeout=30s")
    assert code == 0, err
    for token in (mounted, bound):
        assert await call(cluster, "GET", POD_LIST, token=token) == (401, UNAUTHORIZED)
    # A new pod of the same name does not revive them (its uid differs).
    body["spec"]["containers"][0]["command"] = ["python", "-c", "import time; time.sleep(60)"]
    assert (await call(cluster, "POST", POD_LIST, token=admin, body=body))[0] == 201
    for token in (mounted, bound):
        assert await call(cluster, "GET", POD_LIST, token=token) == (401, UNAUTHORIZED)


async def test_a_pod_of_a_missing_service_account_waits_for_it(cluster: LocalCluster) -> None:
    admin = admin_token(cluster)
    body = pod("early", ["python", "-c", "import time; time.sleep(60)"],
               serviceAccountName="late")
    assert (await call(cluster, "POST", POD_LIST, token=admin, body=body))[0] == 201

    async def failed_mount() -> bool:
        events = (await call(cluster, "GET", "/api/v1/namespaces/default/events",
                             token=admin))[1]["items"]
        return any(e["reason"] == "FailedMount" and 'serviceaccounts "late" not found'
                   in e["message"] for e in events)
    await until(failed_mount)
    code, _, err = await kubectl(cluster, "create", "serviceaccount", "late")
    assert code == 0, err

    async def running() -> bool:
        obj = (await call(cluster, "GET", f"{POD_LIST}/early", token=admin))[1]
        return bool(obj["status"].get("phase") == "Running")
    await until(running)


# --- the kubelet renews tokens ------------------------------------------------------------------

async def test_the_kubelet_renews_tokens_before_they_expire(tmp_path: Path) -> None:
    """A token of a 2 s life is replaced after 1.6 s (80 %) by a new valid one, and so on."""
    nodes = [NodeConfig("node-1", gpus=0)]
    async with running_cluster(nodes, tmp_path, token_seconds=2) as c:
        assert c.kubelet is not None
        issuer: ServiceAccountTokens = c.kubelet.token_issuer
        spec = pod("renewed", ["python", "-c", "import time; time.sleep(60)"])
        spec["spec"]["volumes"] = [{"name": "vault-token", "projected": {"sources": [
            {"serviceAccountToken": {"path": "t", "audience": "vault",
                                     "expirationSeconds": 2}}]}}]
        c.store.create(PODS, "default", spec)
        await wait_pod(c.store, "renewed",
                       lambda p: bool(p and p["status"].get("phase") == "Running"))
        worker = c.kubelet.worker("default", "renewed")
        assert worker is not None and worker.sa_dir is not None
        files = {"api": worker.sa_dir / "token",
                 "vault": worker.volume_dirs["vault-token"] / "t"}
        first = {k: f.read_text() for k, f in files.items()}
        assert issuer.authenticate_token(first["api"]) is not None
        # The projected one is for another audience: the API server does not take it.
        assert issuer.authenticate_token(first["vault"]) is None
        assert json.loads(base64.urlsafe_b64decode(
            first["vault"].split(".")[1] + "=="))["aud"] == ["vault"]
        seen: list[str] = [first["api"]]
        deadline = time.monotonic() + 10
        while len(seen) < 3:
            assert time.monotonic() < deadline, "the token was not renewed"
            await asyncio.sleep(0.1)
            current = files["api"].read_text()
            if current != seen[-1]:
                seen.append(current)
                user = issuer.authenticate_token(current)
                assert user is not None and user.extra[
                    "authentication.kubernetes.io/pod-name"] == ("renewed",)
        assert files["vault"].read_text() != first["vault"]
        assert stat.S_IMODE(os.stat(files["api"]).st_mode) == 0o600
