"""Hostile input, end to end on the local cluster: every bad request gets a clear 4xx (or the
websocket drops the frame, or closes with a code), and the gateway keeps serving everyone else.

"alice" throws the junk; "bob" has a kernel with an open websocket and state in it, and checks at
the end that his kernel, and new starts, still work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import struct
import typing as t
import uuid
from urllib.parse import quote

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import KubeClient

from .conftest import derived_kernelspec
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
V1 = "v1.kernel.websocket.jupyter.org"


async def bystander(url: str) -> tuple[str, KernelWS]:
    """bob's kernel, with state and an open websocket, to check the junk did not touch it."""
    response = await api(url, "POST", "/api/kernels", {"name": SPEC}, token=BOB_TOKEN)
    assert response.code == 201, response.body
    kernel_id = json_of(response)["id"]
    ws = await KernelWS.open(url, kernel_id, token=BOB_TOKEN)
    assert (await ws.execute("state = 'kept'"))["reply"]["status"] == "ok"
    return kernel_id, ws


async def still_serving(url: str, bob_ws: KernelWS) -> None:
    assert (await bob_ws.execute("print(state)"))["stdout"] == "kept\n"
    started = await api(url, "POST", "/api/kernels", {"name": SPEC}, token=BOB_TOKEN)
    assert started.code == 201, started.body
    ws = await KernelWS.open(url, json_of(started)["id"], token=BOB_TOKEN)
    try:
        assert (await ws.execute("print('fresh')"))["stdout"] == "fresh\n"
    finally:
        ws.close()
    assert (await api(url, "GET", "/api/status", token=BOB_TOKEN)).code == 200


async def test_hostile_rest_requests(make_users_gateway: GatewayFactory) -> None:
    gateway = await make_users_gateway()
    url = gateway.url
    bob_id, bob_ws = await bystander(url)
    long_name = "n" * 100_000
    cases: list[tuple[str, str, bytes, int, str]] = [
        ("POST", "/api/kernels", b"{not json", 400, "not valid JSON"),
        ("POST", "/api/kernels", b'{"name": "x"', 400, "not valid JSON"),
        ("POST", "/api/kernels", b"[1, 2]", 400, "must be a JSON object, not list"),
        ("POST", "/api/kernels", b"null", 400, "must be a JSON object, not NoneType"),
        ("POST", "/api/kernels", b'"python-cpu"', 400, "must be a JSON object, not str"),
        ("POST", "/api/kernels", b"\xff\xfe{}", 400, "not UTF-8"),
        ("POST", "/api/kernels", b"[" * 100_000, 400, "not valid JSON"),
        ("POST", "/api/kernels", b'{"name": 5}', 400, "'name' must be a string"),
        ("POST", "/api/kernels", b'{"name": ["python-cpu"]}', 400, "'name' must be a string"),
        ("POST", "/api/kernels", b'{"name": "no-such-spec"}', 404, "No such kernel spec"),
        ("POST", "/api/kernels", b'{"name": "../../../etc/passwd"}', 404, "No such kernel spec"),
        ("POST", "/api/kernels", b'{"name": "a\\u0000b"}', 404, "No such kernel spec"),
        ("POST", "/api/kernels", json.dumps({"name": long_name}).encode(), 404,
         "No such kernel spec"),
        ("POST", "/api/kernels", b'{"name": "python-cpu", "env": "A=1"}', 400,
         "'env' must be an object"),
        ("POST", "/api/kernels", b'{"name": "python-cpu", "env": {"KERNEL_X": 1}}', 400,
         "'env' must be an object mapping names to string values"),
        ("POST", "/api/kernels", b'{"name": "python-cpu", "env": {"KERNEL_X": null}}', 400,
         "'env' must be an object mapping names to string values"),
        ("POST", "/api/kernels",
         b'{"name": "python-cpu", "env": {"KERNEL_EXPERIMENT_NAME": "a\\u0000b"}}', 400,
         "'KERNEL_EXPERIMENT_NAME' from the client is refused: the value contains the control "
         "character U+0000"),
        ("POST", "/api/kernels", json.dumps(
            {"name": SPEC, "env": {"KERNEL_EXPERIMENT_NAME": "v" * 5000}}).encode(), 400,
         "longer than 4096 characters"),
        ("POST", "/api/kernels", b"{}" + b" " * (2 * 1024 * 1024), 413, "larger than"),
        ("GET", "/api/kernels/not-a-uuid", b"", 404, "Kernel does not exist: not-a-uuid"),
        ("GET", "/api/kernels/%2e%2e%2f%2e%2e%2fetc%2fpasswd", b"", 404, "Kernel does not exist"),
        ("GET", "/api/kernels/../../etc/passwd", b"", 404, ""),
        ("DELETE", "/api/kernels/" + "a" * 5000, b"", 404, "Kernel does not exist: aaa"),
        ("GET", f"/api/kernels/{bob_id.upper()}", b"", 404, "Kernel does not exist"),
        ("GET", f"/api/kernels/{bob_id}x", b"", 404, "Kernel does not exist"),
        ("POST", f"/api/kernels/{bob_id}/explode", b"", 404, "No such kernel endpoint"),
        ("POST", f"/api/kernels/{bob_id}/restart", b"", 404, "Kernel does not exist"),
        ("PUT", "/api/kernels", b"{}", 405, ""),
        ("GET", "/api/kernelspecs/../../etc", b"", 404, ""),
    ]
    for method, path, body, code, text in cases:
        response = await api(url, method, path, raw_body=body, token=ALICE_TOKEN)
        shown = (method, path[:60], body[:60], response.code, (response.body or b"")[:300])
        assert response.code == code, shown
        assert response.headers["Content-Type"].startswith("application/json"), shown
        message = json_of(response)["message"]
        assert text in message, shown
        assert len(message) <= 600, shown  # what was sent is not echoed back whole
    # Headers over tornado's 64 KiB are not read at all: that one connection is closed.
    try:
        huge = await api(url, "GET", "/api/kernels/" + "b" * 100_000, token=ALICE_TOKEN)
    except HTTPClientError as e:  # closed before any answer (tornado: "Stream closed")
        huge_code = e.code
    else:
        huge_code = huge.code
    assert huge_code == 599 or 400 <= huge_code < 500, huge_code
    # A thousand client variables the kernelspec does not allow: dropped, the kernel starts.
    many = {f"KERNEL_JUNK_{i}": "x" * 100 for i in range(2000)}
    many["KERNEL_EXPERIMENT_NAME"] = "ok"
    started = await api(url, "POST", "/api/kernels", {"name": SPEC, "env": many},
                        token=ALICE_TOKEN)
    assert started.code == 201, started.body[:300]
    ws = await KernelWS.open(url, json_of(started)["id"], token=ALICE_TOKEN)
    try:
        result = await ws.execute(
            "import os; print(os.environ['KERNEL_EXPERIMENT_NAME'],"
            " sum(k.startswith('KERNEL_JUNK') for k in os.environ))")
    finally:
        ws.close()
    assert result["stdout"] == "ok 0\n"
    try:
        await still_serving(url, bob_ws)
    finally:
        bob_ws.close()


async def test_kernelspec_whose_template_is_missing(
        make_users_gateway: GatewayFactory, kube: KubeClient) -> None:
    gateway = await make_users_gateway()
    url = gateway.url
    broken = derived_kernelspec(SPEC, "orphan", templateRef={"name": "no-such-template"})
    await kube.create(R.KERNELSPECS, broken)

    async def listed() -> bool:
        specs = json_of(await api(url, "GET", "/api/kernelspecs", token=ALICE_TOKEN))
        return "orphan" in specs["kernelspecs"]

    await eventually(listed)
    response = await api(url, "POST", "/api/kernels", {"name": "orphan"}, token=ALICE_TOKEN)
    body = json_of(response)
    assert response.code in (400, 409, 422, 500, 503), response.body
    assert body["reason"] == "TemplateNotFound"
    assert "no-such-template" in body["message"] and "orphan" in body["message"]
    assert gateway.kernel_manager.list_kernel_ids() == []
    assert not (await kube.list(R.JUPYTERKERNELS))["items"]  # nothing left half-made
    # The rest of the gateway is fine.
    ok = await api(url, "POST", "/api/kernels", {"name": SPEC}, token=ALICE_TOKEN)
    assert ok.code == 201, ok.body


# -- websocket frames ---------------------------------------------------------------------------

def v1_frame(channel: str, header: t.Any, content: t.Any = None, *,
             parent: bytes = b"{}", metadata: bytes = b"{}",
             buffers: t.Sequence[bytes] = ()) -> bytes:
    """A frame of the v1 kernel websocket protocol (as JupyterLab sends)."""
    parts = [channel.encode("utf-8", "surrogatepass"), json.dumps(header).encode(), parent,
             metadata, json.dumps(content if content is not None else {}).encode(), *buffers]
    count = len(parts) + 1
    offsets, position = [], 8 * (count + 1)
    for part in parts:
        offsets.append(position)
        position += len(part)
    offsets.append(position)
    head = count.to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + b"".join(parts)


def v1_parse(frame: bytes) -> dict[str, t.Any]:
    count = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1): 8 * (i + 2)], "little") for i in range(count)]
    parts = [frame[offsets[i]: offsets[i + 1]] for i in range(count - 1)]
    header, parent, _, content = (json.loads(p) for p in parts[1:5])
    return {"channel": parts[0].decode(), "header": header, "parent_header": parent,
            "content": content, "msg_type": header["msg_type"]}


def header(msg_type: str) -> dict[str, t.Any]:
    return {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": uuid.uuid4().hex,
            "username": "alice", "date": "2026-01-01T00:00:00Z", "version": "5.3"}


async def v1_open(url: str, kernel_id: str) -> WebSocketClientConnection:
    ws_url = url.replace("http://", "ws://").rstrip("/")
    request = HTTPRequest(
        f"{ws_url}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}",
        headers={"Authorization": f"token {ALICE_TOKEN}"})
    ws = await websocket_connect(request, subprotocols=[V1])
    assert ws.selected_subprotocol == V1
    return ws


async def v1_execute(ws: WebSocketClientConnection, code: str) -> str:
    msg_header = header("execute_request")
    ws.write_message(v1_frame("shell", msg_header, {"code": code, "silent": False}), binary=True)
    out = ""
    while True:
        raw = await asyncio.wait_for(ws.read_message(), 20)
        assert raw is not None, "closed"
        msg = v1_parse(t.cast(bytes, raw))
        if msg["parent_header"].get("msg_id") != msg_header["msg_id"]:
            continue
        if msg["msg_type"] == "stream":
            out += msg["content"]["text"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out


async def test_hostile_websocket_frames(
        make_users_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture) -> None:
    gateway = await make_users_gateway(
        f"--ElasticGatewayApp.websocket_max_message_size={1024 * 1024}")
    url = gateway.url
    gateway.log.addHandler(caplog.handler)  # the app's logger does not propagate to the root
    bob_id, bob_ws = await bystander(url)
    started = await api(url, "POST", "/api/kernels", {"name": SPEC}, token=ALICE_TOKEN)
    kernel_id = json_of(started)["id"]

    legacy = await KernelWS.open(url, kernel_id, token=ALICE_TOKEN)
    good = {"header": header("kernel_info_request"), "parent_header": {}, "metadata": {},
            "content": {}, "channel": "shell"}

    def variant(**changes: t.Any) -> str:
        return json.dumps({**good, **changes})

    text_junk = [
        "not json", "[1, 2, 3]", '"a string"', "null", "[" * 50_000,
        variant(channel=5), variant(channel="iopub"), variant(channel="hb"),
        variant(channel="c" * 100_000), variant(header=None), variant(header="h"),
        variant(header={"msg_id": "1"}), variant(header={**header("x"), "msg_type": 7}),
        variant(content=[1]), variant(parent_header="p"), variant(metadata=[]),
        variant(buffers=["not bytes"]),
        json.dumps({"header": header("kernel_info_request"), "content": {}, "junk": "j" * 10_000}),
        variant(header=header("no_such_request_type")),  # well formed: the kernel ignores it
    ]
    for junk in text_junk:
        legacy.ws.write_message(junk)
    struct_bomb = struct.pack("!i", 2**31 - 1) + b"\0" * 8
    bad_offsets = struct.pack("!iI", 1, 10_000) + b"{}"
    for junk_bytes in (b"\x00", struct_bomb, bad_offsets, struct.pack("!i", -1) + b"\0" * 8):
        legacy.ws.write_message(junk_bytes, binary=True)
    assert (await legacy.execute("print('legacy ok')"))["stdout"] == "legacy ok\n"

    v1 = await v1_open(url, kernel_id)
    try:
        count_bomb = (2**40).to_bytes(8, "little") + b"\0" * 64
        frames: list[bytes | str] = [
            count_bomb,
            (2**64 - 1).to_bytes(8, "little") + b"\0" * 16,
            b"\x01\x02",
            (3).to_bytes(8, "little") + (32).to_bytes(8, "little") * 3 + b"abc",
            v1_frame("shell", header("execute_request"))[:40],
            v1_frame("iopub", header("execute_request"), {"code": "1"}),
            v1_frame("nope", header("execute_request"), {"code": "1"}),
            v1_frame("shell", "not a header object"),
            v1_frame("shell", header("execute_request"), parent=b"[]"),
            "a text frame on the binary protocol",
        ]
        broken_channel = bytearray(v1_frame("shell", header("kernel_info_request")))
        broken_channel[8 * 7] = 0xFF  # the channel name's first byte: not UTF-8
        frames.append(bytes(broken_channel))
        for frame in frames:
            v1.write_message(frame, binary=isinstance(frame, bytes))
        assert await v1_execute(v1, "print('v1 ok')") == "v1 ok\n"
    finally:
        v1.close()

    dropped = [r.getMessage() for r in caplog.records
               if "Dropped websocket message" in r.getMessage()]
    # Every malformed frame was dropped, each with its reason; the two well-formed ones (an
    # unknown message type, a message without a channel) went to the kernel.
    assert len(dropped) == len(text_junk) - 2 + 4 + len(frames), dropped
    assert all(len(m) < 300 for m in dropped)  # reasons, not payloads
    assert any("cannot send on channel 'iopub'" in m for m in dropped)
    assert any("declares 1099511627776 offsets" in m for m in dropped)
    assert any("binary message declares 2147483647 parts" in m for m in dropped)
    assert any("the channel name is not UTF-8" in m for m in dropped)

    # Too big: that connection closes with 1009, and only that one.
    legacy.ws.write_message("x" * (1024 * 1024 + 1))
    assert await legacy.recv_until_closed() == 1009
    with pytest.raises(HTTPClientError) as info:
        await KernelWS.open(url, "../../etc", token=ALICE_TOKEN)
    assert info.value.code == 404
    try:
        await still_serving(url, bob_ws)
    finally:
        bob_ws.close()
    again = await KernelWS.open(url, kernel_id, token=ALICE_TOKEN)
    try:
        assert (await again.execute("print('alice again')"))["stdout"] == "alice again\n"
    finally:
        again.close()
    assert (await api(url, "GET", "/api/kernels", token=ADMIN_TOKEN)).code == 200
    gateway.log.removeHandler(caplog.handler)


# -- fuzzing (seeded, so a failure replays) ---------------------------------------------------

SCALAR_TEXTS = ["", "x", "python-cpu", "\x00", "\ud800", "é✓漢", "$(HOME)", "../..", "%s%n",
                "a" * 5000, "{", "null", "\n\r\t", "KERNEL_USERNAME"]
MSG_TYPES = ["kernel_info_request", "execute_request", "complete_request", "inspect_request",
             "history_request", "comm_info_request", "is_complete_request", "input_reply",
             "comm_open", "comm_msg", "comm_close", "no_such_request", ""]
SAFE_CODE = ["", "1", "x = 1", "import sys", "print('fuzz')", "raise ValueError('fuzz')",
             "# comment", "1/0"]


def random_json(rng: random.Random, depth: int = 0) -> t.Any:
    kind = rng.choice(["null", "bool", "int", "float", "str", "list", "dict"]
                      if depth < 3 else ["null", "bool", "int", "str"])
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**70), rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e-300, float(rng.randint(0, 9))])
    if kind == "str":
        return rng.choice(SCALAR_TEXTS + [rng.choice(SCALAR_TEXTS) * rng.randint(1, 3)])
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["name", "env", "kernel_id", "path", "KERNEL_X", *SCALAR_TEXTS[:8]]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(4)
        at = rng.randint(0, len(data))
        if op == 0:
            del data[at:]
        elif op == 1 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            data[at:at] = data[: rng.randint(0, 32)]
    return bytes(data)


def random_message(rng: random.Random) -> dict[str, t.Any]:
    msg_type = rng.choice(MSG_TYPES)
    content: dict[str, t.Any] = {"code": rng.choice(SAFE_CODE), "silent": rng.random() < 0.5}
    head = header(msg_type)
    msg: dict[str, t.Any] = {"header": head, "parent_header": {}, "metadata": {},
                             "content": content,
                             "channel": rng.choice(["shell", "shell", "control", "stdin",
                                                    "iopub", "hb", rng.choice(SCALAR_TEXTS)])}
    for _ in range(rng.randint(0, 3)):  # break something
        where = rng.choice([msg, head, content])
        key = rng.choice(list(where) + ["extra"])
        if key == "code" or (where is head and key == "msg_type" and rng.random() < .5):
            continue  # the kernel runs only code from SAFE_CODE, and never a shutdown
        if rng.random() < 0.3:
            where.pop(key, None)
        else:
            where[key] = random_json(rng)
    return msg


@pytest.mark.timeout(120)
async def test_fuzzed_requests_frames_and_messages(
        make_users_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture) -> None:
    # Seeded so that a failure replays; EK_FUZZ_SEED explores further.
    rng = random.Random(int(os.environ.get("EK_FUZZ_SEED", "20240531")))
    gateway = await make_users_gateway("--KernelOwnership.max_kernels_per_user=3")
    url = gateway.url
    gateway.log.addHandler(caplog.handler)
    try:
        bob_id, bob_ws = await bystander(url)
        target = json_of(await api(url, "POST", "/api/kernels", {"name": SPEC},
                                   token=ALICE_TOKEN))["id"]
        ids = [target, bob_id, str(uuid.uuid4()), "x", "%00", "a" * 300, target.upper()]
        codes: dict[int, int] = {}
        for _ in range(300):
            body = json.dumps(random_json(rng)).encode()
            if rng.random() < 0.4:
                body = mutate(rng, body)
            method, path = rng.choice([
                ("POST", "/api/kernels"), ("POST", "/api/kernels"),
                ("GET", f"/api/kernels/{rng.choice(ids)}"),
                ("DELETE", f"/api/kernels/{rng.choice(ids[1:])}"),
                ("POST", f"/api/kernels/{rng.choice(ids[1:])}/"
                         + rng.choice(["restart", "interrupt", "x"])),
                ("GET", "/api/kernelspecs/" + quote(
                    rng.choice(SCALAR_TEXTS[:9]).encode("utf-8", "surrogatepass"), safe="")),
            ])
            response = await api(url, method, path, raw_body=body, token=ALICE_TOKEN)
            codes[response.code] = codes.get(response.code, 0) + 1
            assert response.code < 500, (method, path, body[:200], response.body[:300])
            if response.code == 201:  # a random body that happened to start a kernel
                new_id = json_of(response)["id"]
                assert (await api(url, "DELETE", f"/api/kernels/{new_id}",
                                  token=ALICE_TOKEN)).code == 204
        assert codes.get(400, 0) > 50 and codes.get(404, 0) > 50, codes

        legacy = await KernelWS.open(url, target, token=ALICE_TOKEN)
        v1 = await v1_open(url, target)
        try:
            for i in range(400):
                msg = random_message(rng)
                if rng.random() < 0.5:
                    frame: str | bytes = json.dumps(msg, default=str)
                    if rng.random() < 0.3:
                        frame = mutate(rng, frame.encode()).decode("utf-8", "replace")
                    legacy.ws.write_message(frame)
                else:
                    channel = msg.pop("channel", "shell")
                    raw = v1_frame(channel if isinstance(channel, str) else "shell",
                                   msg.get("header"), msg.get("content"))
                    v1.write_message(mutate(rng, raw) if rng.random() < 0.5 else raw,
                                     binary=True)
                if i % 100 == 99:  # the connections stay usable throughout
                    for _ in range(20):
                        # ipykernel aborts requests queued behind a failed execute ("1/0")
                        alive = await legacy.execute("print('alive')")
                        if alive["reply"]["status"] != "aborted":
                            break
                        await asyncio.sleep(0.1)
                    assert alive["stdout"] == "alive\n", alive
            for _ in range(20):
                out = await v1_execute(v1, "print('v1 alive')")
                if out:
                    break
                await asyncio.sleep(0.1)  # aborted behind a failed execute, as above
            assert out == "v1 alive\n"
        finally:
            legacy.close()
            v1.close()
        await still_serving(url, bob_ws)
        bob_ws.close()
    finally:
        gateway.log.removeHandler(caplog.handler)
    crashes = [r for r in caplog.records
               if r.levelno >= logging.ERROR and ("Uncaught exception" in r.getMessage()
                                                  or r.name.startswith("tornado"))]
    assert crashes == []
