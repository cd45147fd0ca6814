"""Users and ownership, end to end: tokens name users, kernels belong to whoever started them.

Gateways run on the local cluster (kernels in pods) and are driven over real HTTP and websocket.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.web.auth import (
    ElasticIdentityProvider,
    ElasticUser,
    UsersFileError,
    hash_token,
    parse_users,
)
from elastic_kernels.gateway.web.ownership import KernelOwnership
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import PODS, SECRETS, KubeClient
from elastic_kernels.localcluster.cluster import LocalCluster

from .gateway.support import TOKEN, KernelWS, api, json_of
from .gatewayproc import GatewayProcess, wait_until
from .gatewayfixtures import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    ALICE_TOKEN,
    BOB_TOKEN,
    OPS_TOKEN,
    GatewayFactory,
    eventually,
    make_users_gateway,
    users_file,
    users_gateway,
)

pytestmark = pytest.mark.timeout(90)

KERNELSPEC = "python-cpu"


async def start(url: str, token: str, **body: object) -> dict:
    response = await api(url, "POST", "/api/kernels", {"name": KERNELSPEC, **body}, token=token)
    assert response.code == 201, response.body
    return json_of(response)


async def not_found_everywhere(url: str, token: str, kernel_id: str) -> None:
    """Every kernel endpoint answers exactly as it does for an id that does not exist."""
    ghost = "00000000-1111-4222-8333-444444444444"
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/interrupt"),
                           ("POST", "/restart")):
        real = await api(url, method, f"/api/kernels/{kernel_id}{suffix}", token=token)
        fake = await api(url, method, f"/api/kernels/{ghost}{suffix}", token=token)
        assert real.code == fake.code == 404, (method, suffix, real.code, real.body)
        assert json_of(real) == json.loads(fake.body.decode().replace(ghost, kernel_id))
    with pytest.raises(HTTPClientError) as info:
        await KernelWS.open(url, kernel_id, token=token)
    assert info.value.code == 404
    assert json_of(info.value.response) == {"message": f"Kernel does not exist: {kernel_id}",
                                            "reason": "NoSuchKernel"}


async def test_users_reach_only_their_own_kernels(
        users_gateway: ElasticGatewayApp, kube: KubeClient) -> None:
    url = users_gateway.url
    # The client claims to be someone else; the gateway knows better.
    alice = await start(url, ALICE_TOKEN, env={"KERNEL_USERNAME": "mallory"})
    bob = await start(url, BOB_TOKEN)
    a_id, b_id = alice["id"], bob["id"]
    assert alice["elastic"]["user"] == "alice" and bob["elastic"]["user"] == "bob"

    async def listed(token: str) -> set[str]:
        response = await api(url, "GET", "/api/kernels", token=token)
        assert response.code == 200, response.body
        return {k["id"] for k in json_of(response)}

    assert await listed(ALICE_TOKEN) == {a_id}
    assert await listed(BOB_TOKEN) == {b_id}
    assert await listed(ADMIN_TOKEN) == await listed(OPS_TOKEN) == {a_id, b_id}

    await not_found_everywhere(url, BOB_TOKEN, a_id)
    await not_found_everywhere(url, ALICE_TOKEN, b_id)
    # Everything else stays available to any user.
    for path in ("/api/status", "/api/kernelspecs", f"/api/kernelspecs/{KERNELSPEC}", "/api"):
        assert (await api(url, "GET", path, token=BOB_TOKEN)).code == 200, path
    # No token, or an unknown one: nothing.
    for token in (None, "not-a-token-at-all-0123456789", ALICE_TOKEN[:-1]):
        assert (await api(url, "GET", "/api/kernels", token=token)).code == 403
        assert (await api(url, "GET", f"/api/kernels/{a_id}", token=token)).code == 403

    # The kernel runs as the authenticated user, whatever the client's env said.
    ws = await KernelWS.open(url, a_id, token=ALICE_TOKEN)
    try:
        result = await ws.execute("import os; print(os.environ['KERNEL_USERNAME'])")
    finally:
        ws.close()
    assert result["stdout"] == "alice\n"
    record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(a_id))
    assert record["spec"]["user"] == "alice"
    assert "mallory" not in json.dumps(record)
    pod = await kube.get(PODS, R.kernel_pod_name(a_id))
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["KERNEL_USERNAME"] == "alice"

    # Admins act on anyone's kernel: connect, interrupt, restart, shut down.
    ws = await KernelWS.open(url, b_id, token=OPS_TOKEN)
    try:
        result = await ws.execute("print('admin was here')")
    finally:
        ws.close()
    assert result["stdout"] == "admin was here\n"
    assert (await api(url, "POST", f"/api/kernels/{b_id}/interrupt", token=OPS_TOKEN)).code == 204
    restarted = await api(url, "POST", f"/api/kernels/{b_id}/restart", token=ADMIN_TOKEN)
    assert restarted.code == 200, restarted.body
    assert json_of(restarted)["elastic"]["user"] == "bob"  # still bob's after a restart
    assert await listed(BOB_TOKEN) == {b_id}
    assert (await api(url, "DELETE", f"/api/kernels/{b_id}", token=ADMIN_TOKEN)).code == 204
    assert await listed(BOB_TOKEN) == set()

    # The owner acts on their own.
    assert (await api(url, "POST", f"/api/kernels/{a_id}/interrupt",
                      token=ALICE_TOKEN)).code == 204
    assert (await api(url, "DELETE", f"/api/kernels/{a_id}", token=ALICE_TOKEN)).code == 204
    assert await listed(ADMIN_TOKEN) == set()


async def test_per_user_kernel_limit(make_users_gateway: GatewayFactory) -> None:
    gateway = await make_users_gateway("--KernelOwnership.max_kernels_per_user=2")
    url = gateway.url
    # Concurrent starts cannot slip past the limit together.
    responses = await asyncio.gather(*(
        api(url, "POST", "/api/kernels", {"name": KERNELSPEC}, token=ALICE_TOKEN)
        for _ in range(4)))
    codes = sorted(r.code for r in responses)
    assert codes == [201, 201, 403, 403], [(r.code, r.body) for r in responses]
    refused = json_of(next(r for r in responses if r.code == 403))
    assert refused["reason"] == "KernelLimitExceeded"
    assert "may have at most 2" in refused["message"] and "'alice'" in refused["message"]

    # Counted per user: bob is not affected; admins are exempt.
    await start(url, BOB_TOKEN)
    for _ in range(3):
        await start(url, OPS_TOKEN)
    again = await api(url, "POST", "/api/kernels", {"name": KERNELSPEC}, token=ALICE_TOKEN)
    assert again.code == 403
    assert json_of(again)["message"].startswith("Kernel limit reached: user 'alice' has 2 kernels")

    # Shutting one down makes room again.
    mine = [r for r in responses if r.code == 201]
    assert (await api(url, "DELETE", f"/api/kernels/{json_of(mine[0])['id']}",
                      token=ALICE_TOKEN)).code == 204
    await start(url, ALICE_TOKEN)


async def test_users_secret_is_watched(
        make_users_gateway: GatewayFactory, kube: KubeClient) -> None:
    carol, dave = "carol-token-" + "c" * 20, "dave-token-" + "d" * 20

    def secret(doc: dict) -> dict:
        return {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "gateway-users"},
                "data": {"users.yaml": base64.b64encode(json.dumps(doc).encode()).decode()}}

    await kube.create(SECRETS, secret({"tokens": [{"user": "carol", "token": carol}]}))
    gateway = await make_users_gateway("--users-secret=gateway-users", users=None)
    url = gateway.url
    assert (await api(url, "GET", "/api/kernels", token=carol)).code == 200
    assert (await api(url, "GET", "/api/kernels", token=dave)).code == 403

    async def code(token: str, expected: int) -> bool:
        return (await api(url, "GET", "/api/kernels", token=token)).code == expected

    # Rotation: carol's token revoked, dave's added, without a restart.
    await kube.replace(SECRETS, "gateway-users", secret(
        {"tokens": [{"user": "dave", "tokenSha256": hash_token(dave)}]}))
    await eventually(lambda: code(dave, 200))
    assert await code(carol, 403)

    # A broken update leaves the tokens in force; deleting the Secret revokes them.
    broken = secret({})
    broken["data"]["users.yaml"] = base64.b64encode(b"tokens: [{user: x}]").decode()
    with logged(gateway, "keeping the tokens read before") as seen:
        await kube.replace(SECRETS, "gateway-users", broken)
        await wait_until(seen.is_set, "the broken users Secret is read")
    assert await code(dave, 200)
    await kube.delete(SECRETS, "gateway-users")
    await eventually(lambda: code(dave, 403))
    assert await code(ADMIN_TOKEN, 200)


@contextmanager
def logged(gateway: ElasticGatewayApp, text: str) -> Iterator[asyncio.Event]:
    """An event set when the gateway logs a record containing ``text``: a test waits on what
    the gateway did instead of sleeping and hoping it did it."""
    seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if text in record.getMessage():
                seen.set()

    handler = Watch(logging.DEBUG)
    gateway.log.addHandler(handler)
    try:
        yield seen
    finally:
        gateway.log.removeHandler(handler)


# -- the users document and the provider, in process ------------------------------------------

def test_users_document_errors_name_the_entry_never_the_token() -> None:
    secret = "hunter2-hunter2-hunter2"
    cases = [
        ("tokens: [", "not valid YAML or JSON"),
        ("[1, 2]", "must be a mapping with a 'tokens' list"),
        ("tokens: []\nextra: 1", "unknown top-level keys: extra"),
        ("tokens: [5]", "tokens[0]: must be a mapping"),
        (f"tokens: [{{user: '', token: {secret}}}]", "'user' must be a non-empty string"),
        (f"tokens: [{{user: ' x', token: {secret}}}]", "without leading or trailing"),
        (f"tokens: [{{user: a, token: {secret}, tokenSha256: {'0' * 64}}}]", "exactly one of"),
        ("tokens: [{user: a}]", "exactly one of"),
        ("tokens: [{user: a, token: short}]", "at least 16 characters"),
        (f"tokens: [{{user: a, token: {secret}, admin: 'yes'}}]", "'admin' must be true"),
        (f"tokens: [{{user: a, token: {secret}, role: admin}}]", "unknown keys role"),
        ("tokens: [{user: a, tokenSha256: abc}]", "64 hexadecimal digits"),
        (f"tokens: [{{user: a, token: {secret}}}, {{user: b, tokenSha256: {hash_token(secret)}}}]",
         "the same token is also given to user 'a'"),
    ]
    for text, expected in cases:
        with pytest.raises(UsersFileError) as info:
            parse_users(text, "users file f.yaml")
        message = str(info.value)
        assert expected in message, (text, message)
        assert message.startswith("users file f.yaml")
        assert secret not in message and hash_token(secret) not in message

    entries, plaintext = parse_users(
        f"tokens: [{{user: a, token: {secret}}}, {{user: a, token: {secret}}},"
        f" {{user: b, tokenSha256: {hash_token('b' * 20).upper()}, admin: true}}]", "doc")
    assert [(e.user, e.admin) for e in entries] == [("a", False), ("b", True)]
    assert plaintext == {secret}


def test_provider_compares_every_entry_in_constant_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "ELASTIC_KERNELS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "users.json"
    tokens = {f"user{i}": f"token-of-user-{i}-0123456789" for i in range(5)}
    path.write_text(json.dumps(
        {"tokens": [{"user": u, "token": tok} for u, tok in tokens.items()]}))
    provider = ElasticIdentityProvider(users_file=str(path), users_file_check_interval=0.0)
    # With users configured and no token given, nobody is an admin by a generated token.
    assert provider.token == "" and not provider.token_generated

    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for user, token in tokens.items():
        calls.clear()
        entry = provider.lookup(token)
        assert entry is not None and entry.user == user and not entry.admin
        assert len(calls) == 5  # no early exit on a match
    calls.clear()
    assert provider.lookup("token-of-nobody-0123456789") is None
    assert len(calls) == 5
    assert provider.lookup("") is None

    # A bad users file stops the gateway at startup, saying where, not what.
    path.write_text(json.dumps({"tokens": [{"user": "x", "token": "short-secret"}]}))
    caplog.set_level(logging.INFO)
    with pytest.raises(SystemExit):
        ElasticIdentityProvider(users_file=str(path))
    assert "tokens[0] (user 'x'): 'token' must be a string of at least 16" in caplog.text
    assert "short-secret" not in caplog.text


async def test_users_file_changes_apply_without_restart(
        make_users_gateway: GatewayFactory, users_file: Path) -> None:
    gateway = await make_users_gateway(
        "--ElasticIdentityProvider.users_file_check_interval=0.05", token=None)
    url = gateway.url
    assert "token required; users file" in gateway.startup_line()
    assert (await api(url, "GET", "/api/kernels", token=ALICE_TOKEN)).code == 200
    assert (await api(url, "GET", "/api/kernels", token=ADMIN_TOKEN)).code == 403  # none given
    erin = "erin-token-" + "e" * 20
    users_file.write_text(json.dumps({"tokens": [{"user": "erin", "token": erin}]}))

    async def erin_in() -> bool:
        return (await api(url, "GET", "/api/kernels", token=erin)).code == 200

    async def erin_in_after(seen: asyncio.Event) -> bool:
        # The file is checked on requests: keep asking until one has read the broken version.
        return await erin_in() and seen.is_set()

    await eventually(erin_in)
    assert (await api(url, "GET", "/api/kernels", token=ALICE_TOKEN)).code == 403
    # A broken edit keeps the last good table.
    with logged(gateway, "keeping the tokens read before") as seen:
        users_file.write_text("tokens: [")
        await eventually(lambda: erin_in_after(seen))
    assert await erin_in()


async def test_ownership_holds_across_replicas(
        cluster: LocalCluster, tmp_path: Path, users_file: Path) -> None:
    """Two gateway processes on one cluster: the owner comes from the JupyterKernel record."""
    args = (f"--users-file={users_file}", "--KernelOwnership.max_kernels_per_user=1")
    a = await GatewayProcess.start(cluster, tmp_path, "a", *args)
    try:
        b = await GatewayProcess.start(cluster, tmp_path, "b", *args)
        try:
            kernel_id = (await start(a.url, ALICE_TOKEN))["id"]
            # Through the replica that does not hold it: bob learns nothing (nor makes B
            # re-attach someone else's kernel), alice finds it and uses it.
            await not_found_everywhere(b.url, BOB_TOKEN, kernel_id)
            assert "Re-attached kernel" not in b.log
            got = await api(b.url, "GET", f"/api/kernels/{kernel_id}", token=ALICE_TOKEN)
            assert got.code == 200, got.body
            assert json_of(got)["elastic"]["user"] == "alice"
            await b.wait_for_log(f"Re-attached kernel {kernel_id}", timeout=5)
            ws = await KernelWS.open(b.url, kernel_id, token=ALICE_TOKEN)
            try:
                assert (await ws.execute("print('via b')"))["stdout"] == "via b\n"
            finally:
                ws.close()
            # The limit counts the kernel records, so alice's kernel on A counts on B.
            refused = await api(b.url, "POST", "/api/kernels", {"name": KERNELSPEC},
                                token=ALICE_TOKEN)
            assert refused.code == 403, refused.body
            assert "has 1 kernel and may have at most 1" in json_of(refused)["message"]
            listed = await api(b.url, "GET", "/api/kernels", token=TOKEN)  # the admin token
            assert kernel_id in {k["id"] for k in json_of(listed)}
            deleted = await api(b.url, "DELETE", f"/api/kernels/{kernel_id}", token=ALICE_TOKEN)
            assert deleted.code == 204, deleted.body
        finally:
            await b.stop()
    finally:
        await a.stop()


def test_status_shows_others_queued_kernels_anonymously() -> None:
    status = {"kernels": 3, "gpu_queue": [
        {"kernel_id": "k1", "user": "alice", "gpus": 1, "position": 1},
        {"kernel_id": "k2", "user": "bob", "gpus": 2, "position": 2},
    ], "lease": "gw"}
    policy = KernelOwnership()
    bob = policy.status_for(ElasticUser("bob"), status)
    assert bob["gpu_queue"] == [{"gpus": 1, "position": 1},
                                {"kernel_id": "k2", "user": "bob", "gpus": 2, "position": 2}]
    assert bob["kernels"] == 3 and bob["lease"] == "gw"
    assert policy.status_for(ElasticUser("ops", admin=True), status) == status
    assert status["gpu_queue"][0]["user"] == "alice"  # the gateway's own copy is untouched
