"""The provisioner on the local cluster, driven by jupyter_client as any jupyter_server would.

Real pods, real processes, real ZeroMQ. No timing thresholds: "fails fast" is shown by failing
with the cause long before a generous launch timeout could have expired.
"""

from __future__ import annotations

import asyncio
from typing import Any
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from jupyter_client.kernelspec import NoSuchKernel

from elastic_kernels.gateway.lifecycle.kernelmanager import ElasticKernelManager
from elastic_kernels.kernelspecs import ElasticKernelSpecManager
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import EVENTS, PODS, SECRETS, KubeError
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.provisioner import KernelLaunchError
from elastic_kernels.provisioner.provisioner import start_kernel_watches

from .conftest import derived_kernelspec

pytestmark = pytest.mark.timeout(90)

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


@pytest_asyncio.fixture
async def ksm(conn: ClusterConnection) -> AsyncIterator[ElasticKernelSpecManager]:
    manager = ElasticKernelSpecManager()
    await manager.start_watching()
    yield manager


class Kernels:
    """Starts kernel managers and always shuts them down."""

    def __init__(self, ksm: ElasticKernelSpecManager) -> None:
        self.ksm = ksm
        self.managers: list[ElasticKernelManager] = []

    async def start(self, name: str, **kwargs: Any) -> ElasticKernelManager:
        km = ElasticKernelManager(kernel_name=name, kernel_spec_manager=self.ksm)
        self.managers.append(km)
        await km.start_kernel(**kwargs)
        return km

    async def close(self) -> None:
        for km in self.managers:
            if km.has_kernel:
                try:
                    await km.shutdown_kernel(now=True)
                except Exception:
                    pass


@pytest_asyncio.fixture
async def kernels(ksm: ElasticKernelSpecManager) -> AsyncIterator[Kernels]:
    k = Kernels(ksm)
    try:
        yield k
    finally:
        await k.close()


async def apply_spec(conn: ClusterConnection, ksm: ElasticKernelSpecManager,
                     doc: dict[str, Any]) -> None:
    """Create a kernelspec CR and wait until the watch has delivered it."""
    await conn.client.create(R.KERNELSPECS, doc)
    informer = await conn.informer(R.KERNELSPECS)
    await informer.wait_for(lambda o: o is not None, doc["metadata"]["name"], timeout=10)


async def run_code(km: ElasticKernelManager, code: str) -> tuple[str, dict]:
    """Execute code; return its stdout and the execute_reply content."""
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        out: list[str] = []

        def on_output(msg: dict) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        reply = await kc.execute_interactive(code, output_hook=on_output, timeout=30)
        return "".join(out), reply["content"]
    finally:
        kc.stop_channels()


def writes(delta: dict) -> int:
    return sum(n for (verb, *_), n in delta.items() if verb in WRITE_VERBS)


def reads(delta: dict) -> int:
    return sum(n for (verb, *_), n in delta.items() if verb in ("get", "list"))


def diff(after: dict, before: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


async def test_gpu_kernel_runs_in_a_pod_and_costs_four_writes(
        cluster: LocalCluster, conn: ClusterConnection, kernels: Kernels) -> None:
    await start_kernel_watches()
    before = dict(cluster.request_counter.snapshot())
    km = await kernels.start("python-gpu", elastic_user="alice")
    start_cost = diff(dict(cluster.request_counter.snapshot()), before)
    assert writes(start_cost) <= 4, start_cost
    assert reads(start_cost) == 0, start_cost

    out, reply = await run_code(km, "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])")
    assert reply["status"] == "ok"
    assert out.strip() in {"0", "1"}

    prov = km.provisioner
    record = await conn.client.get(R.JUPYTERKERNELS, R.kernel_object_name(km.kernel_id))
    status = record["status"]
    assert status["phase"] == "Running"
    assert status["podName"] == prov.pod_name
    assert status["gpus"] == 1
    assert status["node"].startswith("local-node-")
    assert status["podIP"].startswith("127.") and status["podIP"] != "127.0.0.1"
    assert record["spec"]["user"] == "alice"

    # A running kernel costs nothing: liveness comes from the watch cache.
    idle_from = dict(cluster.request_counter.snapshot())
    for _ in range(5):
        assert await km.is_alive()
        await asyncio.sleep(0.3)
    idle = diff(dict(cluster.request_counter.snapshot()), idle_from)
    assert idle == {}, idle

    pod_name = prov.pod_name
    await km.shutdown_kernel()
    pods = await conn.informer(PODS, label_selector=R.KERNEL_POD_SELECTOR)
    await pods.wait_for(lambda p: p is None, pod_name, timeout=20)
    for resource, name in ((R.JUPYTERKERNELS, R.kernel_object_name(km.kernel_id)),
                           (SECRETS, R.key_secret_name(km.kernel_id))):
        with pytest.raises(KubeError) as err:
            await conn.client.get(resource, name)
        assert err.value.not_found


async def test_restart_gives_a_new_pod_with_the_same_kernel_id(
        conn: ClusterConnection, kernels: Kernels) -> None:
    km = await kernels.start("python-cpu")
    _, reply = await run_code(km, "x = 42")
    assert reply["status"] == "ok"
    first_pod = km.provisioner.pod_name
    kernel_id = km.kernel_id

    await km.restart_kernel()
    assert km.kernel_id == kernel_id
    assert km.provisioner.pod_name != first_pod
    out, reply = await run_code(km, "print('x' in globals())")
    assert out.strip() == "False"
    record = await conn.client.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
    assert record["status"]["restartCount"] == 1
    assert record["status"]["podName"] == km.provisioner.pod_name
    pods = await conn.informer(PODS, label_selector=R.KERNEL_POD_SELECTOR)
    await pods.wait_for(lambda p: p is None, first_pod, timeout=20)


async def test_interrupt_by_message_raises_keyboardinterrupt(kernels: Kernels) -> None:
    km = await kernels.start("python-cpu")
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        msg_id = kc.execute("print('spinning', flush=True)\nwhile True: pass")
        # Wait until the loop runs, then interrupt over the control channel. (The kernel says
        # "busy" before the cell's code starts; an interrupt in between can be lost.)
        while True:
            msg = await kc.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "stream" and "spinning" in msg["content"]["text"]:
                break
        await km.interrupt_kernel()
        while True:
            reply = await kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()


async def test_unavailable_image_fails_fast_with_the_pull_error(
        conn: ClusterConnection, ksm: ElasticKernelSpecManager, kernels: Kernels) -> None:
    await apply_spec(conn, ksm, derived_kernelspec(
        "python-cpu", "bad-image", image="registry.example/does-not-exist:1",
        launchTimeout="10m"))
    with pytest.raises(KernelLaunchError) as err:
        await kernels.start("bad-image")
    assert err.value.reason in ("ErrImagePull", "ImagePullBackOff")
    assert "does-not-exist" in err.value.message
    # The failed start leaves nothing behind but an Event that says why.
    kid = kernels.managers[-1].kernel_id
    with pytest.raises(KubeError):
        await conn.client.get(R.JUPYTERKERNELS, R.kernel_object_name(kid))
    events = await conn.client.list(EVENTS)
    assert any(e["involvedObject"]["name"] == R.kernel_object_name(kid)
               and "does-not-exist" in e["message"] for e in events["items"])


async def test_gpu_shortage_waits_until_the_launch_timeout_and_says_why(
        conn: ClusterConnection, ksm: ElasticKernelSpecManager, kernels: Kernels) -> None:
    doc = derived_kernelspec("python-gpu", "too-many-gpus", launchTimeout="2s")
    doc["spec"]["resources"]["limits"]["nvidia.com/gpu"] = 3  # nodes have 2 each
    await apply_spec(conn, ksm, doc)
    with pytest.raises(KernelLaunchError) as err:
        await kernels.start("too-many-gpus")
    assert err.value.reason == "LaunchTimeout"
    assert err.value.status_code == 504
    assert "nvidia.com/gpu" in err.value.message
    assert "Insufficient nvidia.com/gpu" in err.value.message


async def test_unschedulable_for_other_reasons_fails_fast(
        conn: ClusterConnection, ksm: ElasticKernelSpecManager, kernels: Kernels) -> None:
    await conn.client.create(R.TEMPLATES, {
        "apiVersion": R.API_VERSION, "kind": "JupyterKernelTemplate",
        "metadata": {"name": "nowhere"},
        "spec": {"pod": {"nodeSelector": {"disktype": "holographic"}}},
    })
    templates = await conn.informer(R.TEMPLATES)
    await templates.wait_for(lambda o: o is not None, "nowhere", timeout=10)
    await apply_spec(conn, ksm, derived_kernelspec(
        "python-cpu", "nowhere", templateRef={"name": "nowhere"}, launchTimeout="10m"))
    with pytest.raises(KernelLaunchError) as err:
        await kernels.start("nowhere")
    assert err.value.reason == "Unschedulable"
    assert "didn't match Pod's node affinity/selector" in err.value.message


async def test_a_kernel_that_exits_fails_the_start_with_its_exit_code(
        conn: ClusterConnection, ksm: ElasticKernelSpecManager, kernels: Kernels) -> None:
    await apply_spec(conn, ksm, derived_kernelspec(
        "python-cpu", "exits", launchTimeout="10m",
        argv=["python", "-c", "import sys; sys.exit(3)", "{connection_file}"]))
    with pytest.raises(KernelLaunchError) as err:
        await kernels.start("exits")
    assert "code 3" in err.value.message


async def test_missing_template_is_a_clear_error(
        conn: ClusterConnection, ksm: ElasticKernelSpecManager, kernels: Kernels) -> None:
    await apply_spec(conn, ksm, derived_kernelspec(
        "python-cpu", "orphan-spec", templateRef={"name": "no-such-template"}))
    with pytest.raises(KernelLaunchError) as err:
        await kernels.start("orphan-spec")
    assert err.value.reason == "TemplateNotFound"
    assert "no-such-template" in err.value.message


async def test_kernelspecs_follow_the_custom_resources(
        conn: ClusterConnection, ksm: ElasticKernelSpecManager) -> None:
    specs = await ksm.get_all_specs()
    assert {"python-cpu", "python-gpu"} <= set(specs)
    gpu = specs["python-gpu"]["spec"]
    assert gpu["display_name"] == "Python on GPU"
    assert gpu["metadata"]["kernel_provisioner"]["provisioner_name"] == R.PROVISIONER_NAME

    await apply_spec(conn, ksm, derived_kernelspec("python-cpu", "fresh", displayName="Fresh"))
    assert (await ksm.get_all_specs())["fresh"]["spec"]["display_name"] == "Fresh"
    assert ksm.get_kernel_spec("fresh").display_name == "Fresh"

    await conn.client.delete(R.KERNELSPECS, "fresh")
    informer = await conn.informer(R.KERNELSPECS)
    await informer.wait_for(lambda o: o is None, "fresh", timeout=10)
    assert "fresh" not in await ksm.get_all_specs()
    with pytest.raises(NoSuchKernel):
        ksm.get_kernel_spec("fresh")


async def test_kernelspecs_missed_at_startup_are_known_once_the_watch_catches_up(
        conn: ClusterConnection) -> None:
    """A first list that does not come in time (a slow API server at gateway startup) must not
    leave the kernelspecs unknown for good: the watch goes on, and a start finds its spec."""
    manager = ElasticKernelSpecManager()
    conn.sync_timeout = 0.0  # no API server answers that fast
    with pytest.raises(KubeError):
        await manager.start_watching()
    conn.sync_timeout = 30.0
    # The shared watch catches up by itself; the manager's lookups see it without a new start.
    await conn.informer(R.KERNELSPECS)
    assert manager.view("python-cpu").name == "python-cpu"
