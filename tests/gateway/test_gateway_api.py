"""The gateway's REST and websocket API, end to end over HTTP, websocket and ZeroMQ."""

from __future__ import annotations

import logging
import socket
import typing as t

import pytest
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado.httpclient import HTTPClientError

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.transport.connection import ElasticChannelsConnection
from elastic_kernels.gateway.web.errors import KernelStartError

from .conftest import GatewayFactory
from .promtext import scrape
from .support import KERNEL_NAME, LOGO, TOKEN, KernelWS, api, json_of, start_kernel


def server_socket_nodelay(handler: t.Any) -> int:
    """TCP_NODELAY of the gateway's own end of a websocket connection."""
    sock = handler.ws_connection.stream.socket
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


@pytest.mark.timeout(30)
async def test_token_is_required(gateway: ElasticGatewayApp) -> None:
    for path in ("/api/kernels", "/api/kernelspecs", "/api/elastic/status", "/metrics"):
        anonymous = await api(gateway.url, "GET", path, token=None)
        assert anonymous.code in (401, 403), (path, anonymous.code)
        wrong = await api(gateway.url, "GET", path, token="not-the-token")
        assert wrong.code in (401, 403), (path, wrong.code)
        assert (await api(gateway.url, "GET", path)).code == 200, path
    refused = await api(gateway.url, "POST", "/api/kernels", {"name": KERNEL_NAME}, token=None)
    assert refused.code in (401, 403)
    assert gateway.kernel_manager.list_kernel_ids() == []
    with pytest.raises(HTTPClientError) as info:
        await KernelWS.open(gateway.url, "00000000-0000-0000-0000-000000000000", token=None)
    assert info.value.code in (401, 403)


@pytest.mark.timeout(30)
async def test_kernelspecs_are_listed(gateway: ElasticGatewayApp) -> None:
    listing = json_of(await api(gateway.url, "GET", "/api/kernelspecs"))
    assert KERNEL_NAME in listing["kernelspecs"]
    assert listing["kernelspecs"][KERNEL_NAME]["spec"]["display_name"] == "Elastic test Python"
    one = await api(gateway.url, "GET", f"/api/kernelspecs/{KERNEL_NAME}")
    assert one.code == 200
    assert json_of(one)["name"] == KERNEL_NAME
    resources = listing["kernelspecs"][KERNEL_NAME]["resources"]
    assert resources["logo-64x64"].endswith(f"/kernelspecs/{KERNEL_NAME}/logo-64x64.png")
    logo = await api(gateway.url, "GET", f"/kernelspecs/{KERNEL_NAME}/logo-64x64.png")
    assert logo.code == 200 and logo.body == LOGO
    missing = await api(gateway.url, "GET", "/api/kernelspecs/no-such-spec")
    assert missing.code == 404
    assert "no-such-spec" in json_of(missing)["message"]


@pytest.mark.timeout(60)
async def test_kernel_lifecycle(
    make_gateway: GatewayFactory,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await make_gateway("--log-level=DEBUG")
    # A secret in the gateway's environment must not reach kernels (nor logs, checked below).
    monkeypatch.setenv("ELASTIC_KERNELS_TOKEN", TOKEN)
    assert issubclass(gateway.kernel_websocket_connection_class, ElasticChannelsConnection)
    model = await start_kernel(
        gateway.url, env={"KERNEL_FOO": "bar", "NOT_ALLOWED": "leak", "PATH_EXTRA": "x"}
    )
    kernel_id = model["id"]
    assert model["name"] == KERNEL_NAME
    assert "elastic" not in model  # the stock kernel manager has no elastic_model()
    listed = json_of(await api(gateway.url, "GET", "/api/kernels"))
    assert [k["id"] for k in listed] == [kernel_id]
    assert json_of(await api(gateway.url, "GET", f"/api/kernels/{kernel_id}"))["id"] == kernel_id

    ws = await KernelWS.open(gateway.url, kernel_id)
    try:
        handlers = list(gateway.open_websockets)
        assert len(handlers) == 1
        assert server_socket_nodelay(handlers[0]) == 1

        result = await ws.execute("print(1+1)")
        assert result["reply"]["status"] == "ok"
        assert result["stdout"] == "2\n"

        env = await ws.execute(
            "import os; print(os.environ.get('KERNEL_FOO'), os.environ.get('NOT_ALLOWED'),"
            " os.environ.get('ELASTIC_KERNELS_TOKEN'))"
        )
        assert env["stdout"] == "bar None None\n"

        # Interrupt a busy loop through the REST API.
        msg_id = await ws.start_busy("while True: pass")
        interrupted = await api(gateway.url, "POST", f"/api/kernels/{kernel_id}/interrupt")
        assert interrupted.code == 204
        error = await ws.wait_for(
            lambda m: m["msg_type"] == "error" and m["parent_header"].get("msg_id") == msg_id
        )
        assert error["content"]["ename"] == "KeyboardInterrupt"

        # Restart: same id, a fresh interpreter (the variable is gone), still reachable.
        await ws.execute("marker = 41")
        restarted = await api(gateway.url, "POST", f"/api/kernels/{kernel_id}/restart")
        assert restarted.code == 200, restarted.body
        assert json_of(restarted)["id"] == kernel_id
    finally:
        ws.close()
    ws = await KernelWS.open(gateway.url, kernel_id, in_query=True)
    try:
        after = await ws.execute("print('marker' in globals())")
        assert after["stdout"] == "False\n"
    finally:
        ws.close()
    by_query = await api(gateway.url, "GET", f"/api/kernels?token={TOKEN}", token=None)
    assert by_query.code == 200

    deleted = await api(gateway.url, "DELETE", f"/api/kernels/{kernel_id}")
    assert deleted.code == 204
    gone = await api(gateway.url, "GET", f"/api/kernels/{kernel_id}")
    assert gone.code == 404
    assert json_of(gone)["message"] == f"Kernel does not exist: {kernel_id}"
    assert json_of(await api(gateway.url, "GET", "/api/kernels")) == []

    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert f"/api/kernels/{kernel_id}/interrupt" in logged  # the requests were logged...
    assert TOKEN not in logged  # ...without the token


@pytest.mark.timeout(30)
async def test_bad_requests_get_clear_errors(gateway: ElasticGatewayApp) -> None:
    cases: list[tuple[str, str, bytes, int, str]] = [
        ("POST", "/api/kernels", b"{not json", 400, "not valid JSON"),
        ("POST", "/api/kernels", b"[1, 2]", 400, "must be a JSON object"),
        ("POST", "/api/kernels", b'{"name": 5}', 400, "'name' must be a string"),
        ("POST", "/api/kernels", b'{"env": {"A": 1}}', 400, "'env' must be an object"),
        ("POST", "/api/kernels", b'{"env": [1]}', 400, "'env' must be an object"),
        ("POST", "/api/kernels", b"\xff\xfe", 400, "not UTF-8"),
        ("POST", "/api/kernels", b'{"name": "no-such-spec"}', 404, "No such kernel spec"),
    ]
    unknown = "11111111-2222-3333-4444-555555555555"
    for method, path in (
        ("GET", f"/api/kernels/{unknown}"),
        ("DELETE", f"/api/kernels/{unknown}"),
        ("POST", f"/api/kernels/{unknown}/interrupt"),
        ("POST", f"/api/kernels/{unknown}/restart"),
        ("GET", "/api/kernels/not-a-kernel-id"),
    ):
        cases.append((method, path, b"", 404, "Kernel does not exist"))
    cases.append(("GET", "/api/no-such-endpoint", b"", 404, "No such endpoint"))
    for method, path, body, code, text in cases:
        response = await api(gateway.url, method, path, raw_body=body)
        assert response.code == code, (method, path, body, response.code, response.body)
        assert response.headers["Content-Type"].startswith("application/json")
        assert text in json_of(response)["message"], (path, body, response.body)
    with pytest.raises(HTTPClientError) as info:
        await KernelWS.open(gateway.url, unknown)
    assert info.value.code == 404
    # ...and the gateway still serves everyone.
    assert (await api(gateway.url, "GET", "/api")).code == 200
    assert gateway.kernel_manager.list_kernel_ids() == []
    status = json_of(await api(gateway.url, "GET", "/api/elastic/status"))
    assert status["kernels"] == 0


@pytest.mark.timeout(60)
async def test_websocket_survives_bad_frames_and_rejects_oversize(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway("--ElasticGatewayApp.websocket_max_message_size=65536")
    kernel_id = (await start_kernel(gateway.url))["id"]
    ws = await KernelWS.open(gateway.url, kernel_id)
    bystander = await KernelWS.open(gateway.url, kernel_id)
    try:
        for junk in ("not json", "[1, 2, 3]", '{"channel": "nope"}', '{"channel": "shell"}'):
            ws.ws.write_message(junk)
        ws.ws.write_message(b"\x00\x01binary-garbage", binary=True)
        result = await ws.execute("print('still here')")
        assert result["stdout"] == "still here\n"

        status = json_of(await api(gateway.url, "GET", "/api/elastic/status"))
        assert status["kernels"] == 1
        assert status["connections"] == 2
        assert status["gateway_id"] == gateway.gateway_id
        metrics = await scrape(gateway.url)
        gid = gateway.gateway_id
        assert metrics.value("elastic_kernels_kernels", gateway_id=gid) == 1
        assert metrics.value("elastic_kernels_websocket_connections", gateway_id=gid) == 2
        # jupyter_server's local kernel manager has no elastic_model: no phase to report.
        assert metrics.value("elastic_kernels_kernels_by_phase", gateway_id=gid,
                             phase="Unknown") == 1

        ws.ws.write_message("x" * 70000)
        assert await ws.recv_until_closed() == 1009
        other = await bystander.execute("print('unaffected')")
        assert other["stdout"] == "unaffected\n"
    finally:
        ws.close()
        bystander.close()
    assert (await api(gateway.url, "GET", "/api")).code == 200


class HookedKernelManager(AsyncMappingKernelManager):
    """A local kernel manager with the optional hooks the Kubernetes one implements."""

    hydrate_calls: list[str] = []

    async def start_kernel(self, **kwargs: t.Any) -> str:  # type: ignore[override]
        name = kwargs.get("kernel_name")
        if name == "quota":
            raise KernelStartError(
                403, "GPU quota exceeded: 2 of 2 GPUs in use (100%)", "QuotaExceeded"
            )
        if name == "cluster-down":
            raise KernelStartError(503, "Kubernetes API unreachable", "ClusterUnavailable")
        if name == "slow":
            raise TimeoutError("pod not ready after 1 s")
        if name == "boom":
            raise RuntimeError("launcher exploded")
        return t.cast(str, await super().start_kernel(**kwargs))

    def elastic_model(self, kernel_id: str) -> dict[str, t.Any]:
        return {
            "phase": "Running",
            "reason": "",
            "message": "",
            "node": "node-1",
            "gpus": 0,
            "pod": f"kernel-{kernel_id[:8]}",
            "queue_position": None,
        }

    async def hydrate_kernel(self, kernel_id: str) -> bool:
        self.hydrate_calls.append(kernel_id)
        return False

    def elastic_status(self) -> dict[str, t.Any]:
        return {"gpu_queue": []}


@pytest.mark.timeout(60)
async def test_kernel_manager_hooks(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(kernel_manager_class=HookedKernelManager)
    assert isinstance(gateway.kernel_manager, HookedKernelManager)
    for name, code, reason, text in [
        ("quota", 403, "QuotaExceeded", "GPU quota exceeded: 2 of 2 GPUs in use (100%)"),
        ("cluster-down", 503, "ClusterUnavailable", "Kubernetes API unreachable"),
        ("slow", 504, "KernelStartTimeout", "did not start in time: pod not ready after 1 s"),
        ("boom", 500, "KernelStartFailed", "RuntimeError: launcher exploded"),
    ]:
        response = await api(gateway.url, "POST", "/api/kernels", {"name": name})
        assert response.code == code, (name, response.body)
        body = json_of(response)
        assert body["reason"] == reason
        assert text in body["message"]
    assert gateway.kernel_start_failures == 4
    unknown_spec = await api(gateway.url, "POST", "/api/kernels", {"name": "no-such-spec"})
    assert unknown_spec.code == 404

    model = await start_kernel(gateway.url)
    kernel_id = model["id"]
    assert model["elastic"]["pod"] == f"kernel-{kernel_id[:8]}"
    assert json_of(await api(gateway.url, "GET", f"/api/kernels/{kernel_id}"))["elastic"][
        "phase"
    ] == "Running"
    listed = json_of(await api(gateway.url, "GET", "/api/kernels"))
    assert listed[0]["elastic"]["node"] == "node-1"
    status = json_of(await api(gateway.url, "GET", "/api/elastic/status"))
    assert status["gpu_queue"] == [] and status["kernels"] == 1

    # Starts by kernelspec and outcome: the failure's reason, its status class without one, and
    # never a made-up kernelspec name as a label.
    metrics = await scrape(gateway.url)
    gid = gateway.gateway_id
    for spec, outcome in [("quota", "QuotaExceeded"), ("cluster-down", "ClusterUnavailable"),
                          ("slow", "KernelStartTimeout"), ("boom", "KernelStartFailed"),
                          ("(unknown)", "NoSuchKernelSpec"), (KERNEL_NAME, "ok")]:
        assert metrics.value("elastic_kernels_kernel_start_seconds_count", gateway_id=gid,
                             kernelspec=spec, outcome=outcome) == 1, (spec, outcome)
        assert metrics.value("elastic_kernels_kernel_starts_total", gateway_id=gid,
                             outcome=outcome) == 1, outcome
    assert "no-such-spec" not in metrics.text
    assert metrics.type_of("elastic_kernels_kernel_start_seconds") == "histogram"
    assert metrics.value("elastic_kernels_kernel_start_failures_total", gateway_id=gid) == 5
    assert metrics.value("elastic_kernels_kernels_by_phase", gateway_id=gid,
                         phase="Running") == 1
    assert metrics.value("elastic_kernels_gpu_queue_length", gateway_id=gid) == 0

    restarted = await api(gateway.url, "POST", f"/api/kernels/{kernel_id}/restart")
    assert restarted.code == 200, restarted.body
    metrics = await scrape(gateway.url)
    assert metrics.value("elastic_kernels_kernel_restart_seconds_count", gateway_id=gid,
                         outcome="ok") == 1

    unknown = "99999999-8888-7777-6666-555555555555"
    assert (await api(gateway.url, "GET", f"/api/kernels/{unknown}")).code == 404
    assert unknown in HookedKernelManager.hydrate_calls


@pytest.mark.timeout(30)
async def test_port_in_use_is_reported(make_gateway: GatewayFactory) -> None:
    first = await make_gateway()
    with pytest.raises(SystemExit):
        await make_gateway(f"--port={first.port}")
    assert (await api(first.url, "GET", "/api")).code == 200


@pytest.mark.timeout(60)
async def test_sequential_websocket_opens_see_first_output(gateway: ElasticGatewayApp) -> None:
    """Each new websocket's iopub subscription is live before the client proceeds."""
    kernel_id = (await start_kernel(gateway.url))["id"]
    for i in range(6):
        ws = await KernelWS.open(gateway.url, kernel_id)
        try:
            result = await ws.execute(f"print({i})")
            assert result["stdout"] == f"{i}\n"
        finally:
            ws.close()
