"""Warm pools (issue 15), end to end on the local cluster: pool pods started ahead, claimed by
starts that bind the user, the client's env and a fresh key late; refilled; first reclaimed
under GPU pressure; refused (in the kernelspec's status) for templates with per-user volumes.

An in-process gateway; pool pods are real local processes with ipykernel imported. No timing
thresholds: "a claim creates no pod" is shown by the kernel's pod being a pool pod.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from elastic_kernels.gateway.lifecycle.kernelmanager import ElasticMappingKernelManager
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import PODS, SECRETS, KubeClient
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.provisioner import pool

from .conftest import GatewayFactory, derived_kernelspec, example_kernelspec, running_cluster
from .gateway.promtext import scrape
from .gateway.support import KernelWS

pytestmark = pytest.mark.timeout(180)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """One node with two simulated GPUs (so a GPU pool pod can be what stands in the way)."""
    async with running_cluster(tmp_path, nodes=1, crash_backoff_seconds=None) as c:
        yield c


async def apply(kube: KubeClient, km: ElasticMappingKernelManager, doc: dict[str, Any],
                resource: Any = R.KERNELSPECS) -> None:
    await kube.create(resource, doc)
    informer = await ClusterConnection.instance().informer(resource)
    await informer.wait_for(lambda o: o is not None, doc["metadata"]["name"], timeout=10)


async def pool_pods(spec: str) -> list[dict[str, Any]]:
    informer = await ClusterConnection.instance().informer(
        PODS, label_selector=R.POOL_POD_SELECTOR)
    return [p for p in informer.items() if pool.pool_spec_name(p) == spec
            and not p["metadata"].get("deletionTimestamp")]


async def ready_names(spec: str) -> set[str]:
    return {p["metadata"]["name"] for p in await pool_pods(spec) if pool.is_ready(p)}


async def eventually(check: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 90) -> None:
    """Bounded wait for a condition read from the watch caches (no event to wait on for it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


async def wait_ready(spec: str, n: int) -> set[str]:
    found: set[str] = set()

    async def check() -> bool:
        nonlocal found
        found = await ready_names(spec)
        return len(found) == n

    await eventually(check, f"{n} pool pods of {spec} are ready")
    return found


async def kernel_key(kube: KubeClient, kernel_id: str) -> str:
    secret = await kube.get(SECRETS, R.key_secret_name(kernel_id))
    return base64.b64decode(secret["data"]["key"]).decode()


async def test_a_start_claims_a_pool_pod_binds_late_and_the_pool_refills(
        make_cluster_gateway: GatewayFactory, kube: KubeClient) -> None:
    gw = await make_cluster_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    doc = derived_kernelspec("python-cpu", "cpu-pooled", warmPool={"size": 2})
    await apply(kube, km, doc)
    first = await wait_ready("cpu-pooled", 2)

    # Before any claim: the pool pods and their Secrets hold no kernel key, id or user.
    before = [p for p in await pool_pods("cpu-pooled")]
    secrets_before = (await kube.list(SECRETS))["items"]
    for p in before:
        env = {e["name"] for e in p["spec"]["containers"][0]["env"]}
        assert not env & {"KERNEL_ID", "KERNEL_USERNAME", "EK_KERNEL_ID", "EK_KEY_FILE"}
        assert all(not (v.get("secret") or {}).get("secretName", "").startswith("kernel-")
                   for v in p["spec"]["volumes"])
        assert p["metadata"]["ownerReferences"][0]["kind"] == R.KERNELSPEC_KIND
    records_before = (await kube.list(R.JUPYTERKERNELS))["items"]
    assert records_before == []  # pool pods are no kernels: nothing to hydrate, cull or sweep

    alice = await km.start_kernel(kernel_name="cpu-pooled", user="alice",
                                  env={"KERNEL_EXPERIMENT_NAME": "exp-1"})
    prov = km.get_kernel(alice).provisioner
    assert prov.pod_name in first  # claimed: no new pod was created for it
    pod = await kube.get(PODS, prov.pod_name)
    assert pod["metadata"]["labels"][R.LABEL_KERNEL_ID] == alice
    assert pod["metadata"]["ownerReferences"][0]["kind"] == R.KERNEL_KIND

    ws = await KernelWS.open(gw.url, alice)
    try:
        await ws.kernel_info()
        out = await ws.execute("import os; print(os.environ['KERNEL_USERNAME'], "
                               "os.environ['KERNEL_EXPERIMENT_NAME'], os.environ['KERNEL_ID'])")
        assert out["stdout"].split() == ["alice", "exp-1", alice]
    finally:
        ws.close()

    key_a = await kernel_key(kube, alice)
    dumped = json.dumps([before, secrets_before])
    assert key_a not in dumped
    assert base64.b64encode(key_a.encode()).decode() not in dumped

    # Refilled in the background, with new pods.
    refilled = await wait_ready("cpu-pooled", 2)
    assert prov.pod_name not in refilled

    bob = await km.start_kernel(kernel_name="cpu-pooled", user="bob")
    assert km.get_kernel(bob).provisioner.pod_name in refilled | first
    key_b = await kernel_key(kube, bob)
    assert key_b != key_a
    ws = await KernelWS.open(gw.url, bob)
    try:
        await ws.kernel_info()
        out = await ws.execute("import os; print(os.environ['KERNEL_USERNAME'])")
        assert out["stdout"].strip() == "bob"
    finally:
        ws.close()

    metrics = await scrape(gw.url)
    assert metrics.value("elastic_kernels_warm_pool_claims_total", kernelspec="cpu-pooled",
                         outcome="ok") == 2
    assert metrics.value("elastic_kernels_warm_pool_size", kernelspec="cpu-pooled") == 2

    spec = await kube.get(R.KERNELSPECS, "cpu-pooled")
    conditions = {c["type"]: c for c in spec["status"]["conditions"]}
    assert conditions["Poolable"]["status"] == "True"

    # Deleting the kernelspec deletes its pool (not the kernels claimed from it).
    await kube.delete(R.KERNELSPECS, "cpu-pooled")
    await eventually(lambda: _none(pool_pods("cpu-pooled")), "the pool is deleted")
    assert (await kube.get(PODS, prov.pod_name))["metadata"]["labels"][R.LABEL_KERNEL_ID] == alice


async def _none(found: Any) -> bool:
    return not await found


async def test_a_template_with_user_volumes_cannot_pool(
        make_cluster_gateway: GatewayFactory, kube: KubeClient) -> None:
    gw = await make_cluster_gateway()
    km: ElasticMappingKernelManager = gw.kernel_manager
    template = {"apiVersion": R.API_VERSION, "kind": R.TEMPLATE_KIND,
                "metadata": {"name": "per-user"},
                "spec": {"userVolumes": [{
                    "name": "home", "mountPath": "/home/jovyan",
                    "volume": {"persistentVolumeClaim": {"claimName": "claim-{username}"}}}]}}
    await apply(kube, km, template, R.TEMPLATES)
    doc = derived_kernelspec("python-cpu", "homes-pooled", warmPool={"size": 2},
                             templateRef={"name": "per-user"})
    await apply(kube, km, doc)
    specs = await ClusterConnection.instance().informer(R.KERNELSPECS)
    got = await specs.wait_for(
        lambda o: o is not None and bool((o.get("status") or {}).get("conditions")),
        "homes-pooled", timeout=30)
    assert got is not None
    condition = {c["type"]: c for c in got["status"]["conditions"]}["Poolable"]
    assert condition["status"] == "False"
    assert condition["reason"] == "PerUserVolumes"
    assert "per-user volumes (home)" in condition["message"]
    assert got["status"]["warmPool"]["summary"] == "cannot pool"
    assert await pool_pods("homes-pooled") == []


async def test_gpu_pressure_reclaims_a_pool_pod_before_any_kernel(
        make_cluster_gateway: GatewayFactory, kube: KubeClient) -> None:
    gw = await make_cluster_gateway("--CullingDefaults.interval=0.3")
    km: ElasticMappingKernelManager = gw.kernel_manager
    pooled = derived_kernelspec("python-gpu", "gpu-pooled", warmPool={"size": 1},
                                launchTimeout="120s")
    pooled["spec"]["culling"] = {"idleTimeout": "0", "reclaimAfter": "0", "maxAge": "0"}
    other = derived_kernelspec("python-gpu", "gpu-other", launchTimeout="120s")
    # alice's kernel could be reclaimed as well (idle, reclaimAfter 0): the pool pod goes first.
    other["spec"]["culling"] = {"idleTimeout": "0", "reclaimAfter": "0", "maxAge": "0"}
    await apply(kube, km, pooled)
    await apply(kube, km, other)
    (held,) = await wait_ready("gpu-pooled", 1)

    alice = await km.start_kernel(kernel_name="gpu-other", user="alice")  # the second GPU
    bob = await km.start_kernel(kernel_name="gpu-other", user="bob")  # waits: reclaim
    assert alice in km and bob in km
    pods = await ClusterConnection.instance().informer(PODS, label_selector=R.POOL_POD_SELECTOR)
    await pods.wait_for(lambda p: p is None or bool(p["metadata"].get("deletionTimestamp")),
                        held, timeout=30)
    assert km.warm_pools.reclaims["gpu-pooled"] == 1
    record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(alice))
    assert record["status"]["phase"] == "Running"
    metrics = await scrape(gw.url)
    assert metrics.value("elastic_kernels_warm_pool_reclaims_total",
                         kernelspec="gpu-pooled") == 1
    # Both GPUs are users' now: the pool is not refilled into them (a pool pod the scheduler
    # cannot place is deleted at once), so nothing stands in a user's way.
    assert await ready_names("gpu-pooled") == set()


def test_pool_pod_renders_without_any_kernel_secret() -> None:
    doc = example_kernelspec("python-cpu")
    del doc["spec"]["templateRef"]
    spec = R.KernelSpecView.from_object({**doc, "metadata": {
        "name": "p", "namespace": "default", "uid": "u-1", "generation": 3}})
    rendered = pool.render_pool_pod(spec, None, "default", "p-pool-abc", "s" * 64)
    text = json.dumps(rendered.pod)
    assert "KERNEL_USERNAME" not in text and "EK_KEY_FILE" not in text
    assert rendered.pod["spec"]["containers"][0]["command"][:3] == [
        "elastic-kernel-launcher", "--pool", "--"]
    assert rendered.pod["metadata"]["labels"][R.LABEL_COMPONENT] == R.COMPONENT_POOL
    assert "s" * 64 not in text


def _launcher() -> Any:
    """launchers/elastic-kernel-launcher as a module (it is a script without .py)."""
    import importlib.machinery
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "launchers" / "elastic-kernel-launcher"
    loader = importlib.machinery.SourceFileLoader("ek_launcher", str(path))
    spec = importlib.util.spec_from_loader("ek_launcher", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_launcher_opens_what_the_gateway_seals_and_nothing_else() -> None:
    launcher = _launcher()
    secret, nonce = b"p" * 64, bytes(range(32))
    claim = {"kernel_id": "k-1", "key": "a" * 64, "user": "alice",
             "env": {"KERNEL_USERNAME": "alice"}, "working_dir": ""}
    line = pool.seal_claim(secret, nonce, claim).strip()
    assert b"a" * 64 not in line and b"alice" not in line  # sealed, not just signed
    assert launcher.open_claim(secret, nonce, line) == claim
    for wrong_secret, wrong_nonce in ((b"q" * 64, nonce), (secret, bytes(32))):
        with pytest.raises(launcher.LaunchError, match="does not verify"):
            launcher.open_claim(wrong_secret, wrong_nonce, line)
    sealed = json.loads(line)
    flipped = base64.b64decode(sealed["ct"])
    sealed["ct"] = base64.b64encode(bytes([flipped[0] ^ 1]) + flipped[1:]).decode()
    with pytest.raises(launcher.LaunchError, match="does not verify"):
        launcher.open_claim(secret, nonce, json.dumps(sealed).encode())


async def test_a_resume_claims_a_pool_pod(make_cluster_gateway: GatewayFactory,
                                          kube: KubeClient, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from elastic_kernels.gateway.lifecycle.suspension import KEY_ENV
    monkeypatch.setenv(KEY_ENV, "s" * 48)
    gw = await make_cluster_gateway(
        "--CullingDefaults.interval=0.3",
        f"--ElasticMappingKernelManager.snapshot_store={tmp_path / 'snapshots'}")
    km: ElasticMappingKernelManager = gw.kernel_manager
    doc = derived_kernelspec("python-cpu", "cpu-suspend-pooled", warmPool={"size": 1})
    doc["spec"]["culling"] = {"idleTimeout": "1s", "maxAge": "0", "onCull": "Suspend",
                              "suspend": {"maxBytes": 1024 * 1024, "timeout": "30s"}}
    await apply(kube, km, doc)
    await wait_ready("cpu-suspend-pooled", 1)
    kid = await km.start_kernel(kernel_name="cpu-suspend-pooled", user="alice")
    key = await kernel_key(kube, kid)
    ws = await KernelWS.open(gw.url, kid)
    try:
        await ws.kernel_info()
        assert (await ws.execute("x = 41"))["reply"]["status"] == "ok"
    finally:
        ws.close()

    async def suspended() -> bool:
        return km.is_suspended(kid)

    await eventually(suspended, "the idle kernel is suspended")
    pool_now = await wait_ready("cpu-suspend-pooled", 1)  # refilled meanwhile
    line = await km.resume_kernel(kid)
    assert "Resumed after suspension" in line
    assert km.get_kernel(kid).provisioner.pod_name in pool_now
    assert await kernel_key(kube, kid) == key  # the kernel's own key, handed over at claim
    ws = await KernelWS.open(gw.url, kid)
    try:
        out = await ws.execute("print(x + 1)")
        assert out["stdout"].strip() == "42"
    finally:
        ws.close()
