"""Secrets stay secret: no kernel key and no token in logs, API answers, Events, pods or records.

One gateway on the local cluster runs a representative session with every logger at DEBUG:
starts (one with a client trying to smuggle values in), executes, an interrupt, a restart, a
failed start, a refused request, junk on a websocket, shutdowns and the gateway's own stop.
Meanwhile watches record *every version* of every Secret (that is where the keys are read
from), Pod, JupyterKernel and Event. Then every kernel key (hex, and base64 as stored) and every
token is searched for in everything captured.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import typing as t
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.redaction import REDACTED, redact_text
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import EVENTS, PODS, SECRETS, KubeClient, Resource
from elastic_kernels.kube.informer import Informer
from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import derived_kernelspec
from .gateway import support
from .gateway.support import KernelWS
from .gatewayfixtures import (  # noqa: F401 - fixtures
    ADMIN_TOKEN,
    ALICE_TOKEN,
    ALL_TOKENS,
    BOB_TOKEN,
    OPS_TOKEN,
    eventually,
    users_file,
)

pytestmark = pytest.mark.timeout(120)


class Recorder(logging.Handler):
    """Keeps every record it sees, fully formatted (message, exception text, stack)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class Captured:
    """Everything a client, the cluster or an operator could see."""

    def __init__(self) -> None:
        self.responses: list[str] = []
        self.ws_messages: list[str] = []
        self.objects: list[str] = []
        self.keys: set[str] = set()

    async def api(self, url: str, method: str, path: str, body: t.Any = None,
                  token: str | None = ALICE_TOKEN, raw_body: bytes | None = None) -> t.Any:
        response = await support.api(url, method, path, body, token=token, raw_body=raw_body)
        self.responses.append(f"{response.code} {dict(response.headers)!r} "
                              f"{(response.body or b'').decode('utf-8', 'replace')}")
        return response

    def watch(self, resource: Resource, obj: dict) -> None:
        self.objects.append(json.dumps(obj))
        if resource is SECRETS and (obj.get("metadata") or {}).get("name", "").endswith("-key"):
            self.keys.add(base64.b64decode(obj["data"]["key"]).decode())


class RecordingWS(KernelWS):
    captured: Captured

    async def recv(self, timeout: float = 20) -> dict[str, t.Any] | None:
        raw = await asyncio.wait_for(self.ws.read_message(), timeout)
        if raw is None:
            return None
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        self.captured.ws_messages.append(text)
        return t.cast("dict[str, t.Any]", json.loads(text))


async def ws_open(captured: Captured, url: str, kernel_id: str,
                  token: str = ALICE_TOKEN) -> RecordingWS:
    ws = await RecordingWS.open(url, kernel_id, token=token, in_query=True)
    ws.__class__ = RecordingWS
    ws.captured = captured
    return t.cast(RecordingWS, ws)


async def session(app: ElasticGatewayApp, captured: Captured, kube: KubeClient) -> None:
    url = app.url
    api = captured.api
    started = await api(url, "POST", "/api/kernels", {"name": "python-cpu", "env": {
        "KERNEL_USERNAME": "mallory", "KERNEL_EXPERIMENT_NAME": "x", "EK_KEY_FILE": "/etc/passwd",
        "KERNEL_ID": "1"}})
    assert started.code == 201, started.body
    kernel_id = json.loads(started.body)["id"]
    ws = await ws_open(captured, url, kernel_id)
    try:
        result = await ws.execute("import os; print(os.environ['KERNEL_USERNAME'])")
        assert result["stdout"] == "alice\n"
        # Junk and unknown messages are logged as dropped, with their reason only.
        ws.ws.write_message('{"header": {"msg_type": "execute_request"}, "content": []}')
        ws.ws.write_message('{"no": "channel", "junk": "' + "j" * 1000 + '"}')
        ws.send("no_such_request", {})
        msg_id = await ws.start_busy("while True: pass")
        assert (await api(url, "POST", f"/api/kernels/{kernel_id}/interrupt")).code == 204
        await ws.wait_for(lambda m: m["msg_type"] == "execute_reply"
                          and m["parent_header"].get("msg_id") == msg_id)
    finally:
        ws.close()
    restarted = await api(url, "POST", f"/api/kernels/{kernel_id}/restart", token=OPS_TOKEN)
    assert restarted.code == 200, restarted.body
    ws = await ws_open(captured, url, kernel_id)
    try:
        assert (await ws.execute("print(6 * 7)"))["stdout"] == "42\n"
    finally:
        ws.close()
    # A second user's kernel, seen by an admin.
    bobs = await api(url, "POST", "/api/kernels", {"name": "python-cpu"}, token=BOB_TOKEN)
    assert bobs.code == 201, bobs.body
    for token in (ADMIN_TOKEN, OPS_TOKEN, BOB_TOKEN):
        assert (await api(url, "GET", "/api/kernels", token=token)).code == 200
    await api(url, "GET", f"/api/kernels?token={BOB_TOKEN}", token=None)
    await api(url, "GET", "/api/elastic/status")
    await api(url, "GET", "/metrics")
    await api(url, "GET", "/api/me", token=OPS_TOKEN)
    # Failures: an image that cannot be pulled, a refused env value, a wrong token.
    await kube.create(R.KERNELSPECS, derived_kernelspec(
        "python-cpu", "broken-image", image="example.org/does-not-exist:1"))

    async def listed() -> bool:
        specs = await api(url, "GET", "/api/kernelspecs")
        return "broken-image" in json.loads(specs.body)["kernelspecs"]

    await eventually(listed)
    failed = await api(url, "POST", "/api/kernels", {"name": "broken-image"})
    assert failed.code == 500, failed.body
    refused = await api(url, "POST", "/api/kernels",
                        {"name": "python-cpu", "env": {"KERNEL_EXPERIMENT_NAME": "a\x00b"}})
    assert refused.code == 400, refused.body
    assert (await api(url, "GET", "/api/kernels", token=ALICE_TOKEN + "x")).code == 403
    # Browsers and websocket clients put the token in the URL; errors log the URL (tornado).
    ghost = "00000000-1111-4222-8333-444444444444"
    for path in (f"/api/kernels/{ghost}?token={ALICE_TOKEN}",
                 f"/api/kernels/{kernel_id}/restart?token={BOB_TOKEN}",
                 f"/api/kernels/not-an-id?token={ALICE_TOKEN}"):
        assert (await api(url, "POST" if "restart" in path else "GET", path,
                          token=None)).code == 404
    with pytest.raises(HTTPClientError):
        await ws_open(captured, url, ghost)
    assert (await api(url, "DELETE", f"/api/kernels/{kernel_id}")).code == 204
    # bob's kernel is left for the gateway's stop to shut down.


async def test_no_key_or_token_leaks_anywhere(
        cluster: LocalCluster, jupyter_home: Path, users_file: Path, kube: KubeClient,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    captured = Captured()
    watches = [Informer(kube, resource, kube.namespace) for resource in
               (SECRETS, PODS, R.JUPYTERKERNELS, EVENTS)]
    for informer in watches:
        informer.add_listener(
            lambda _type, obj, _old, r=informer.resource: captured.watch(r, obj))
        await informer.start()

    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    recorder = Recorder()
    root.addHandler(recorder)
    app = ElasticGatewayApp()
    try:
        app.initialize(argv=[
            "--ip=127.0.0.1", "--port=0", f"--token={ADMIN_TOKEN}", f"--users-file={users_file}",
            f"--kubeconfig={cluster.kubeconfig_path}", "--log-level=DEBUG",
            f"--ServerApp.root_dir={jupyter_home / 'root'}",
            "--ElasticGatewayApp.install_signal_handlers=False",
            "--ElasticMappingKernelManager.shutdown_kernels_on_exit=True",
        ])
        app.log.addHandler(recorder)
        await app.start_serving()
        try:
            await session(app, captured, kube)
        finally:
            await asyncio.wait_for(app.stop_serving(), 60)
        await eventually(lambda: _no_kernels_left(kube))
    finally:
        app.log.removeHandler(recorder)
        root.removeHandler(recorder)
        root.setLevel(old_level)
        for informer in watches:
            await informer.stop()
    out, err = capfd.readouterr()
    caplog_lines = [logging.Formatter("%(name)s %(message)s").format(r) for r in caplog.records]

    # The session really produced what is searched (no vacuous pass).
    assert len(captured.keys) >= 3, captured.keys  # alice's, bob's and the failed start's
    assert all(len(k) == 64 for k in captured.keys)
    assert len(recorder.lines) > 100 and len(caplog_lines) > 50  # debug volume varies by timing
    assert any("Kernel started" in line for line in recorder.lines)
    assert any("Dropped websocket message" in line for line in recorder.lines)
    # tornado logs a failed request's URL, token included; the gateway's filter removed it.
    assert any("?token=[redacted] (127.0.0.1): Kernel does not exist" in line
               for line in recorder.lines)
    assert any(json.loads(o).get("kind") == "Event" and "does-not-exist" in o
               for o in captured.objects)
    assert len(captured.ws_messages) > 10 and len(captured.responses) > 15

    places = {
        "logs (recorder)": "\n".join(recorder.lines),
        "logs (caplog)": "\n".join(caplog_lines),
        "stdout/stderr": out + err,
        "API responses": "\n".join(captured.responses),
        "websocket messages": "\n".join(captured.ws_messages),
        "Pods, JupyterKernels, Events": "\n".join(
            o for o in captured.objects if json.loads(o).get("kind") != "Secret"),
    }
    secrets = {f"kernel key {k[:6]}...": k for k in captured.keys}
    secrets.update({f"kernel key {k[:6]}... (base64)": base64.b64encode(k.encode()).decode()
                    for k in captured.keys})
    secrets.update({f"token {tok[:6]}...": tok for tok in ALL_TOKENS})
    leaks = [f"{what} in {where}" for where, text in places.items()
             for what, value in secrets.items() if value in text]
    assert leaks == []


async def _no_kernels_left(kube: KubeClient) -> bool:
    return not (await kube.list(R.JUPYTERKERNELS))["items"]


def test_redaction_scrubs_keys_and_tokens_from_any_log_record(
        caplog: pytest.LogCaptureFixture) -> None:
    """The gateway's log filter, on records that would carry a secret (e.g. from a library)."""
    key = "0123456789abcdef" * 4
    b64 = base64.b64encode(key.encode()).decode()
    token = "tok-" + "z" * 30
    text = (f"conn {{'key': b'{key}', 'ip': '127.0.0.5'}} stored {b64} "
            f"GET /api/kernels?token={token}&x=1 Authorization: token {token} "
            f"image@sha256:{key}")
    scrubbed = redact_text(text, {token})
    assert key not in scrubbed.replace(f"sha256:{key}", "") and b64 not in scrubbed
    assert token not in scrubbed
    assert scrubbed.count(REDACTED) >= 4
    assert f"image@sha256:{key}" in scrubbed  # image digests are not secrets
    assert "'ip': '127.0.0.5'" in scrubbed
