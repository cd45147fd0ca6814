"""Snapshots stream between kernel and store in bounded pieces, through the real gateway.

The gateway runs with a kernel message bound of 256 KiB and pieces of 64 KiB; a kernel holds a
namespace of about 3 MB, ten times what one message may carry (the former transport returned
the whole snapshot, base64, in one reply: it could not save this). Idle, the kernel is
suspended: the stored container is more than one message long, and a connect resumes it with
its bytes intact. The same container with one byte of its payload changed is refused at resume
with a clear message and nothing of it is restored. A namespace over the kernelspec's
``maxBytes`` is no snapshot: the kernel is culled with that reason, and nothing is stored.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.lifecycle.kernelmanager import ElasticMappingKernelManager
from elastic_kernels.gateway.lifecycle.suspension import KEY_ENV
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import EVENTS, KubeClient
from elastic_kernels.snapshot import format as F
from elastic_kernels.upstream import utcnow

from .conftest import GatewayFactory, derived_kernelspec
from .gateway.support import KernelWS, api, json_of
from .gatewayproc import wait_until

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow]

MESSAGE_BYTES = 256 * 1024
CHUNK_BYTES = 64 * 1024
NAMESPACE = ("import hashlib, os\n"
             "blob = os.urandom(3_000_000)\n"
             "digest = hashlib.sha256(blob).hexdigest()\n"
             "words = ['suspend', 'resume']\n")
CHECK = "import hashlib\nprint(hashlib.sha256(blob).hexdigest() == digest, words)"


def spec(name: str, max_bytes: int) -> dict[str, Any]:
    doc = derived_kernelspec("python-cpu", name, launchTimeout="60s")
    doc["spec"]["culling"] = {"idleTimeout": "1s", "cullConnected": False, "maxAge": "0",
                              "onCull": "Suspend",
                              "suspend": {"maxBytes": max_bytes, "timeout": "60s"}}
    return doc


async def gateway_with_specs(make_cluster_gateway: GatewayFactory, kube: KubeClient,
                             store: Path, *specs: dict[str, Any]
                             ) -> tuple[ElasticGatewayApp, ElasticMappingKernelManager]:
    gw = await make_cluster_gateway(
        "--CullingDefaults.interval=0.3",
        f"--ElasticMappingKernelManager.snapshot_store={store}",
        f"--ElasticMappingKernelManager.max_kernel_message_bytes={MESSAGE_BYTES}",
        f"--ElasticMappingKernelManager.snapshot_chunk_bytes={CHUNK_BYTES}")
    km: ElasticMappingKernelManager = gw.kernel_manager
    for doc in specs:
        await kube.create(R.KERNELSPECS, doc)
        informer = km._kernelspecs
        assert informer is not None
        await informer.wait_for(lambda o: o is not None, doc["metadata"]["name"], timeout=10)
    return gw, km


def phase(km: ElasticMappingKernelManager, kernel_id: str) -> str:
    record = km.kernel_record(kernel_id) or {}
    return str((record.get("status") or {}).get("phase") or "")


async def define_and_leave(gw: ElasticGatewayApp, km: ElasticMappingKernelManager,
                           name: str) -> str:
    """A kernel of spec ``name`` holding NAMESPACE, its websocket closed (so it goes idle)."""
    kernel_id = await km.start_kernel(kernel_name=name, user="alice")
    ws = await KernelWS.open(gw.url, kernel_id)
    try:
        result = await ws.execute(NAMESPACE, timeout=60)
        assert result["reply"] is not None and result["reply"]["status"] == "ok", result
    finally:
        ws.close()
    return kernel_id


async def run_after_resume(gw: ElasticGatewayApp, kernel_id: str) -> tuple[str, str]:
    """Connect (which resumes) and run CHECK: its stdout, and the stderr notice of the resume."""
    stderr: list[str] = []

    def output(msg: dict[str, Any]) -> None:
        if msg.get("msg_type") == "stream" and msg["content"].get("name") == "stderr":
            stderr.append(msg["content"]["text"])

    ws = await KernelWS.open(gw.url, kernel_id)
    try:
        result = await ws.execute(CHECK, timeout=90, on_output=output)
    finally:
        ws.close()
    assert result["reply"] is not None, result
    return result["stdout"], "".join(stderr)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(KEY_ENV, "s" * 48)
    return tmp_path / "snapshots"


async def test_a_namespace_larger_than_a_message_streams_and_a_changed_byte_is_refused(
        make_cluster_gateway: GatewayFactory, kube: KubeClient, store: Path) -> None:
    gw, km = await gateway_with_specs(make_cluster_gateway, kube, store,
                                      spec("stream-suspend", 16 << 20))
    intact, tampered = await asyncio.gather(define_and_leave(gw, km, "stream-suspend"),
                                            define_and_leave(gw, km, "stream-suspend"))
    for kernel_id in (intact, tampered):
        await wait_until(lambda k=kernel_id: phase(km, k) == R.PHASE_SUSPENDED,
                         f"{kernel_id} suspended", timeout=60)
        model = json_of(await api(gw.url, "GET", f"/api/kernels/{kernel_id}"))
        assert model["execution_state"] == "suspended"
        container = (store / f"{kernel_id}.eksnap").read_bytes()
        assert len(container) > 10 * MESSAGE_BYTES  # many pieces, none over the bound
        header = F.read_header(container)
        assert header["owner"] == "alice" and header["kernel_id"] == kernel_id
        assert {v["name"] for v in header["variables"]} == {"blob", "digest", "words"}
        assert [s["name"] for s in header["skipped"]] == ["hashlib", "os"]

    stdout, notice = await run_after_resume(gw, intact)
    assert stdout == "True ['suspend', 'resume']\n"
    assert "Resumed after suspension: restored 3 variables" in notice, notice

    # One byte in the middle of the payload: the signature fails only after every piece was
    # sent, and the kernel, which only buffered them, is told to drop them.
    path = store / f"{tampered}.eksnap"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    stdout, notice = await run_after_resume(gw, tampered)
    assert "saved variables were refused" in notice, notice
    assert "modified or not signed by this gateway" in notice
    assert stdout == "", "CHECK fails: blob is not defined"
    ws = await KernelWS.open(gw.url, tampered)
    try:
        probe = await ws.execute("print(sorted(k for k in ('blob', 'digest', 'words') "
                                 "if k in globals()))", timeout=30)
    finally:
        ws.close()
    assert probe["stdout"] == "[]\n"


async def test_a_namespace_over_max_bytes_is_culled_with_that_reason(
        make_cluster_gateway: GatewayFactory, kube: KubeClient, store: Path) -> None:
    gw, km = await gateway_with_specs(make_cluster_gateway, kube, store,
                                      spec("small-suspend", 1 << 20))
    kernel_id = await define_and_leave(gw, km, "small-suspend")
    await wait_until(lambda: kernel_id not in km, "the kernel culled", timeout=60)
    gone = await api(gw.url, "GET", f"/api/kernels/{kernel_id}")
    assert gone.code == 404
    reason = json_of(gone).get("message", "")
    assert "not suspended: the snapshot would exceed maxBytes (1048576 bytes)" in reason, reason
    events = (await kube.list(EVENTS))["items"]
    culls = [e["message"] for e in events
             if e["involvedObject"]["name"] == R.kernel_object_name(kernel_id)
             and e["reason"] != "Suspended" and "maxBytes" in e.get("message", "")]
    assert culls, [e["message"] for e in events]
    assert not store.exists() or not list(store.iterdir()), "nothing is stored"


async def test_a_kernel_being_resumed_is_not_suspended_over_its_snapshot(
        make_cluster_gateway: GatewayFactory, kube: KubeClient, store: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_resume's 100 MB case: the resume's new pod was idle (its restore still on the
    way) past idleTimeout, so the culler suspended it again and stored its EMPTY namespace over
    the snapshot being restored. A kernel whose resume is under way is no cull candidate."""
    gw, km = await gateway_with_specs(make_cluster_gateway, kube, store,
                                      spec("stream-suspend", 16 << 20))
    kernel_id = await define_and_leave(gw, km, "stream-suspend")
    await wait_until(lambda: phase(km, kernel_id) == R.PHASE_SUSPENDED, "suspended",
                     timeout=60)
    assert km.snapshots is not None
    restore = km.snapshots.restore
    entered, gate = asyncio.Event(), asyncio.Event()

    async def held_restore(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await gate.wait()
        return await restore(*args, **kwargs)

    monkeypatch.setattr(km.snapshots, "restore", held_restore)
    resume = asyncio.ensure_future(km.resume_kernel(kernel_id))
    try:
        await asyncio.wait_for(entered.wait(), 60)  # the new pod runs; the restore is held
        kernel: Any = km.get_kernel(kernel_id)
        kernel.last_activity = utcnow() - timedelta(hours=1)  # as idle as can be
        culls = await km.culler.run_once()
        assert kernel_id not in {d.kernel.kernel_id for d in culls}
        assert phase(km, kernel_id) == R.PHASE_RUNNING
        header = F.read_header((store / f"{kernel_id}.eksnap").read_bytes())
        assert {v["name"] for v in header["variables"]} == {"blob", "digest", "words"}
    finally:
        gate.set()
        line = await asyncio.wait_for(resume, 60)
    assert "restored 3 variables" in line, line
    assert kernel.last_activity > utcnow() - timedelta(minutes=1), "idle from the resume on"
