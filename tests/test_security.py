"""Attacks a hostile user (or a careless admin) tried on the gateway, each one now refused.

Every test goes through real HTTP against a gateway on the local cluster (and, for the file
read, through a notebook server started with ``--gateway-url``), and failed on the code before
the fix:

* kernelspec resources: ``/kernelspecs/{name}/{path}`` served files from the gateway's working
  directory, because a kernelspec from a custom resource has no resource directory; now only a
  CR's own logos are served, and every other path is a JSON 404 without touching the disk;
* ``/api/elastic/status`` named another user's kernel in a queue entry's ``reclaimed`` field;
* a template could run kernel code under the gateway's own ServiceAccount;
* deleting the users file did not revoke its tokens;
* unauthenticated requests were redirected to a ``/login`` page that does not exist;
* ``JPY_SESSION_NAME`` was documented as passed to kernels, but the gateway dropped it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import typing as t
from pathlib import Path
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pytest

from elastic_kernels.gateway.web.auth import ElasticUser
from elastic_kernels.gateway.lifecycle.gpuqueue import Waiter
from elastic_kernels.gateway.web.ownership import KernelOwnership
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import PODS, KubeClient

from .conftest import derived_kernelspec, example_kernelspec
from .gateway.support import KernelWS, api, json_of
from .gatewayfixtures import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    ALICE_TOKEN,
    BOB_TOKEN,
    GatewayFactory,
    eventually,
    make_users_gateway,
    users_file,
)

pytestmark = pytest.mark.timeout(90)

SPEC = "python-cpu"
#: A real 1x1 PNG: what an admin puts in a JupyterKernelSpec's ``logos``.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
SECRET_TEXT = "the gateway's working directory must never be served"


async def raw_get(base_url: str, path: str, token: str | None = ADMIN_TOKEN) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..`` or escapes)."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    auth = f"Authorization: token {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
def hostile_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The gateway's working directory holds files that look like kernelspec resources, a
    secret, and a symlink out of it; none of them may be served or listed."""
    cwd = tmp_path / "gateway-cwd"
    cwd.mkdir()
    (cwd / "secret.txt").write_text(SECRET_TEXT)
    (cwd / "logo-64x64.png").write_bytes(PNG)
    (cwd / "kernel.js").write_text("alert('not from a kernelspec')")
    (cwd / "passwd-link").symlink_to("/etc/passwd")
    monkeypatch.chdir(cwd)
    return cwd


TRAVERSALS = [
    "secret.txt",
    "passwd-link",
    "logo-64x64.png",
    "kernel.js",
    "../secret.txt",
    "..%2fsecret.txt",
    "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "....//....//etc/passwd",
    "logo-64x64.png/../secret.txt",
]


async def test_kernelspec_resources_never_read_the_disk(
        hostile_cwd: Path, make_users_gateway: GatewayFactory, kube: KubeClient) -> None:
    spec = derived_kernelspec(SPEC, "python-logo")
    spec["spec"]["logos"] = {"logo-64x64.png": base64.b64encode(PNG).decode()}
    await kube.create(R.KERNELSPECS, spec)
    gateway = await make_users_gateway()
    url = gateway.url.rstrip("/")

    async def listed() -> dict[str, t.Any]:
        specs = json_of(await api(url, "GET", "/api/kernelspecs", token=ALICE_TOKEN))
        assert "python-logo" in specs["kernelspecs"]
        return t.cast("dict[str, t.Any]", specs["kernelspecs"])

    specs = await eventually(listed)
    # The CR's own logo is listed and served; the working directory's files are not listed.
    assert specs[SPEC]["resources"] == {}
    assert list(specs["python-logo"]["resources"]) == ["logo-64x64"]
    one = json_of(await api(url, "GET", "/api/kernelspecs/python-logo", token=ALICE_TOKEN))
    assert one["resources"] == specs["python-logo"]["resources"]
    assert json_of(await api(url, "GET", f"/api/kernelspecs/{SPEC}",
                             token=ALICE_TOKEN))["resources"] == {}
    logo = await api(url, "GET", urlsplit(one["resources"]["logo-64x64"]).path,
                     token=ALICE_TOKEN)
    assert logo.code == 200 and logo.body == PNG
    assert logo.headers["Content-Type"] == "image/png"
    assert logo.headers["X-Content-Type-Options"] == "nosniff"

    for name in (SPEC, "python-logo", "no-such-spec"):
        for path in TRAVERSALS:
            if (name, path) == ("python-logo", "logo-64x64.png"):
                continue  # the one real resource
            code, body = await raw_get(url, f"/kernelspecs/{name}/{path}", token=ALICE_TOKEN)
            assert code in (400, 404), (name, path, code, body[:200])
            assert SECRET_TEXT.encode() not in body and b"root:" not in body, (name, path)
            if code == 404:
                assert "message" in json.loads(body), (name, path, body[:200])
    # Without a token: refused before anything else, as JSON, not a redirect to a login page.
    code, body = await raw_get(url, "/kernelspecs/python-logo/logo-64x64.png", token=None)
    assert code == 403 and "message" in json.loads(body)


async def test_kernelspec_resources_through_a_notebook_server(
        hostile_cwd: Path, make_users_gateway: GatewayFactory, tmp_path: Path,
        kube: KubeClient) -> None:
    """The same request, proxied by a notebook server with --gateway-url, finds nothing.

    A plain notebook server answers 500 (upstream then looks for the file on its own disk, and
    trips over the gateway's kernelspec); with our notebook-server extension it is a 404.
    """
    from .gateway.test_notebook_server import run_notebook_server

    spec = derived_kernelspec(SPEC, "python-logo")
    spec["spec"]["logos"] = {"logo-64x64.png": base64.b64encode(PNG).decode()}
    await kube.create(R.KERNELSPECS, spec)
    gateway = await make_users_gateway()
    for extension, codes in (([], (404, 500)),
                             (["--ServerApp.jpserver_extensions=elastic_kernels.notebook=True"],
                              (404,))):
        async for server in run_notebook_server(gateway, tmp_path, extension,
                                                gateway_token=ALICE_TOKEN):
            for path in ("secret.txt", "..%2fsecret.txt", "passwd-link"):
                response = await api(server.url, "GET", f"/kernelspecs/{SPEC}/{path}",
                                     token=server.token)
                assert response.code in codes, (path, response.code)
                assert SECRET_TEXT.encode() not in response.body
            url, token = server.url, server.token
            logo = await eventually(lambda: _logo(url, token))  # noqa: B023 - awaited here
            assert logo == PNG


async def _logo(url: str, token: str) -> bytes:
    response = await api(url, "GET", "/kernelspecs/python-logo/logo-64x64.png", token=token)
    assert response.code == 200, response.code
    return t.cast(bytes, response.body)


async def test_unauthenticated_requests_get_json_not_a_login_redirect(
        make_users_gateway: GatewayFactory) -> None:
    gateway = await make_users_gateway()
    url = gateway.url.rstrip("/")
    for path in ("/api/kernels", "/api/kernelspecs", f"/api/kernelspecs/{SPEC}",
                 "/api/elastic/status", f"/kernelspecs/{SPEC}/logo-64x64.png", "/login",
                 "/api/kernels/00000000-0000-0000-0000-000000000000"):
        for token in (None, "wrong-token-of-some-length"):
            code, body = await raw_get(url, path, token=token)
            assert code in (401, 403, 404), (path, code)
            assert "message" in json.loads(body), (path, body[:200])


async def test_status_names_no_other_users_kernel(make_users_gateway: GatewayFactory) -> None:
    """A queue entry tells its owner that a GPU was reclaimed, never whose kernel it was."""
    gateway = await make_users_gateway()
    waiter = Waiter("k-alice", "alice", 1, "default", "pod-alice", 0, 0,
                    datetime.now(timezone.utc), gated=False)
    waiter.reclaimed = "k-bob-victim"
    status = {"gpu_queue": [waiter.model(1)]}
    owners = KernelOwnership(parent=gateway)
    seen = owners.status_for(ElasticUser(username="alice"), status)
    assert "k-bob-victim" not in json.dumps(seen)
    assert seen["gpu_queue"][0]["reclaimed"] is True
    admin = owners.status_for(ElasticUser(username="ops", admin=True), status)
    assert admin["gpu_queue"][0]["reclaimed_kernel"] == "k-bob-victim"


async def test_template_may_not_run_kernels_as_the_gateway(
        make_users_gateway: GatewayFactory, kube: KubeClient) -> None:
    template = next(d for d in _shipped(SPEC) if d["kind"] == "JupyterKernelTemplate")
    template["metadata"] = {"name": "as-gateway"}
    template["spec"]["pod"]["serviceAccountName"] = "elastic-kernels-gateway"
    await kube.create(R.TEMPLATES, template)
    await kube.create(R.KERNELSPECS, derived_kernelspec(SPEC, "python-as-gateway",
                                                        templateRef={"name": "as-gateway"}))
    gateway = await make_users_gateway()

    async def refused() -> bool:
        response = await api(gateway.url, "POST", "/api/kernels",
                             {"name": "python-as-gateway"}, token=ALICE_TOKEN)
        if response.code == 404:
            return False  # the gateway has not seen the new spec yet
        assert response.code == 403, response.body
        assert "elastic-kernels-gateway" in json_of(response)["message"]
        return True

    await eventually(refused)
    assert [p for p in (await kube.list(PODS))["items"] if "as-gateway" in json.dumps(p)] == []
    assert (await kube.list(R.JUPYTERKERNELS))["items"] == []


async def test_removed_users_file_revokes_its_tokens(
        make_users_gateway: GatewayFactory, users_file: Path) -> None:
    gateway = await make_users_gateway("--ElasticIdentityProvider.users_file_check_interval=0.2")
    assert (await api(gateway.url, "GET", "/api/kernels", token=ALICE_TOKEN)).code == 200
    os.unlink(users_file)

    async def revoked() -> bool:
        codes = [(await api(gateway.url, "GET", "/api/kernels", token=token)).code
                 for token in (ALICE_TOKEN, BOB_TOKEN)]
        return codes == [403, 403]

    await eventually(revoked, timeout=10)
    # The operator's own token does not come from the file and keeps working.
    assert (await api(gateway.url, "GET", "/api/kernels", token=ADMIN_TOKEN)).code == 200


async def test_session_name_reaches_the_kernel(make_users_gateway: GatewayFactory) -> None:
    gateway = await make_users_gateway()
    started = await api(gateway.url, "POST", "/api/kernels", {
        "name": SPEC, "env": {"JPY_SESSION_NAME": "/home/alice/work/analysis.ipynb",
                              "NOT_ALLOWED": "dropped"}}, token=ALICE_TOKEN)
    assert started.code == 201, started.body
    ws = await KernelWS.open(gateway.url, json_of(started)["id"], token=ALICE_TOKEN)
    try:
        result = await ws.execute(
            "import os; print(os.environ.get('JPY_SESSION_NAME'), "
            "os.environ.get('NOT_ALLOWED'))")
        assert result["stdout"] == "/home/alice/work/analysis.ipynb None\n"
    finally:
        ws.close()


def _shipped(name: str) -> list[dict[str, t.Any]]:
    spec = example_kernelspec(name)
    import yaml

    from .conftest import KERNELSPECS

    docs: list[dict[str, t.Any]] = []
    for path in KERNELSPECS.glob("*.yaml"):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d and "kind" in d
                    and d["kind"].startswith("JupyterKernel"))
    template_name = spec["spec"]["templateRef"]["name"]
    return [d for d in docs if d["metadata"]["name"] in (name, template_name)]
