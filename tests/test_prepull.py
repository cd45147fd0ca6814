"""Image pre-pulling (provisioner/prepull.py, gateway/lifecycle/prepull.py, prepullcmd.py) and
"Pulling image" in a start's progress (provisioner/pullprogress.py).

Unit tests render from the shipped kernelspecs. The rest run on the local cluster with simulated
image pulls (``ImagePolicy.pull_seconds``): its DaemonSet controller runs the pre-pull pods and
its kubelet remembers which node holds which image, so "a later start does not pull" is the
kubelet's own Events, as on a real node. Every wait is on a watch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from elastic_kernels.cli import main as cli_main
from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.web.statusstream import SpecFacts, kernel_status
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import DAEMONSETS, EVENTS, KubeClient
from elastic_kernels.kube.informer import Informer
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.localcluster.daemonsets import daemon_pod
from elastic_kernels.localcluster.images import ImagePolicy
from elastic_kernels.localcluster.nodes import NodeConfig, register_node
from elastic_kernels.localcluster.podsecurity import violations
from elastic_kernels.prepullcmd import main as prepull_main
from elastic_kernels.provisioner import prepull
from elastic_kernels.provisioner.pullprogress import REASON_PULLING

from .conftest import KERNELSPECS, GatewayFactory, derived_kernelspec, running_cluster
from .gateway.support import api, json_of

pytestmark = pytest.mark.timeout(90)

JSON = dict[str, Any]
NS = "default"
CPU_IMAGE = "ghcr.io/elastic-kernels/kernel-python:0.1.0"
GPU_IMAGE = "ghcr.io/elastic-kernels/kernel-python-gpu:0.1.0"


def shipped() -> tuple[list[R.KernelSpecView], dict[str, R.TemplateView | None]]:
    specs: list[R.KernelSpecView] = []
    templates: dict[str, R.TemplateView | None] = {}
    for path in sorted(KERNELSPECS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("apiVersion") != R.API_VERSION:
                continue
            doc["metadata"]["namespace"] = NS
            if doc["kind"] == R.KERNELSPEC_KIND:
                specs.append(R.KernelSpecView.from_object(doc))
            elif doc["kind"] == R.TEMPLATE_KIND:
                templates[doc["metadata"]["name"]] = R.TemplateView.from_object(doc)
    return specs, templates


def by_images(daemonsets: Any) -> dict[str, JSON]:
    return {ds["metadata"]["annotations"][prepull.ANNOTATION_IMAGES]: ds for ds in daemonsets}


# -- rendering ---------------------------------------------------------------------------------


def test_one_daemonset_per_placement_from_the_shipped_kernelspecs() -> None:
    specs, templates = shipped()
    rendered = prepull.render_prepull(specs, templates, prepull.PrepullSettings(namespace=NS))
    found = by_images(rendered.daemonsets)
    assert set(found) == {CPU_IMAGE, GPU_IMAGE}
    gpu_pod = found[GPU_IMAGE]["spec"]["template"]["spec"]
    assert gpu_pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu_pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                       "effect": "NoSchedule"}]
    cpu_pod = found[CPU_IMAGE]["spec"]["template"]["spec"]
    # The CPU template only *prefers* non-GPU nodes: its kernels may run anywhere.
    assert "nodeSelector" not in cpu_pod and "affinity" not in cpu_pod
    for ds in rendered.daemonsets:
        pod = ds["spec"]["template"]["spec"]
        assert [c["command"] for c in pod["initContainers"]] == [["true"]]
        assert [c["image"] for c in pod["containers"]] == [prepull.DEFAULT_PAUSE_IMAGE]
        assert len(ds["metadata"]["name"]) <= prepull.MAX_NAME
        assert prepull.owned(ds)
        # What the daemon controller makes of it passes Pod Security "restricted".
        made = daemon_pod({**ds, "metadata": {**ds["metadata"], "uid": "u", "generation": 1}},
                          "node-0")
        assert violations("restricted", made) == []
    again = prepull.render_prepull(list(reversed(specs)), templates,
                                   prepull.PrepullSettings(namespace=NS))
    assert again.daemonsets == rendered.daemonsets  # stable: no needless rollouts


def test_what_is_left_out_and_extra_images() -> None:
    specs, templates = shipped()
    never = R.KernelSpecView.from_object({**derived_kernelspec(
        "python-cpu", "never", image="local/only:1", imagePullPolicy="Never"),
        "apiVersion": R.API_VERSION, "kind": R.KERNELSPEC_KIND})
    orphan = R.KernelSpecView.from_object({**derived_kernelspec(
        "python-cpu", "orphan", image="x/y:1", templateRef={"name": "missing"}),
        "apiVersion": R.API_VERSION, "kind": R.KERNELSPEC_KIND})
    settings = prepull.PrepullSettings(namespace=NS, extra_images=("extra/tool:2",))
    rendered = prepull.render_prepull([*specs, never, orphan], templates, settings)
    assert rendered.skipped == ("never: imagePullPolicy Never",
                                "orphan: template missing does not exist")
    found = by_images(rendered.daemonsets)
    assert set(found) == {f"extra/tool:2,{CPU_IMAGE}", f"extra/tool:2,{GPU_IMAGE}"}
    # Extra images alone, no kernelspecs: one DaemonSet for every node.
    (alone,) = prepull.render_prepull([], {}, settings).daemonsets
    assert "nodeSelector" not in alone["spec"]["template"]["spec"]
    assert prepull.render_prepull([], {}, prepull.PrepullSettings(namespace=NS)).daemonsets == ()


def test_bad_settings_say_which() -> None:
    with pytest.raises(prepull.PrepullError, match="name prefix 'Bad_Prefix'"):
        prepull.PrepullSettings(namespace=NS, name_prefix="Bad_Prefix")
    with pytest.raises(prepull.PrepullError, match="'two words'"):
        prepull.PrepullSettings(namespace=NS, extra_images=("two words",))
    with pytest.raises(prepull.PrepullError, match="command is empty"):
        prepull.PrepullSettings(namespace=NS, command=())


def test_the_command_renders_from_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert prepull_main(["--from", str(KERNELSPECS), "--namespace", "ek",
                         "--extra-image", "extra/tool:2"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert {d["metadata"]["namespace"] for d in docs} == {"ek"}
    assert set(by_images(docs)) == {f"extra/tool:2,{CPU_IMAGE}", f"extra/tool:2,{GPU_IMAGE}"}
    assert prepull_main(["--from", str(KERNELSPECS), "--name-prefix", "UPPER"]) == 2
    assert "name prefix 'UPPER'" in capsys.readouterr().err


def test_the_local_cluster_command_checks_its_pull_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["cluster", "--kubeconfig", str(tmp_path / "kc"),
                     "--image-pull-seconds", "-1"]) == 2
    assert "--image-pull-seconds must be >= 0" in capsys.readouterr().err


def test_the_status_stream_names_the_image_being_pulled() -> None:
    record = {"apiVersion": R.API_VERSION, "kind": R.KERNEL_KIND,
              "metadata": {"name": "k", "namespace": NS,
                           "creationTimestamp": "2026-01-01T00:00:00Z"},
              "spec": {"kernelId": "0" * 8 + "-0000-0000-0000-" + "0" * 12, "user": "u",
                       "kernelSpec": "python-cpu"},
              "status": {"phase": "Pending", "reason": REASON_PULLING,
                         "message": f'Pulling image "{CPU_IMAGE}" on node n'}}
    pod = {"spec": {"nodeName": "n"}, "status": {"containerStatuses": [
        {"state": {"waiting": {"reason": "ContainerCreating"}}}]}}
    model = kernel_status(record, pod, SpecFacts(), None)
    assert model["state"] == f'pulling image "{CPU_IMAGE}" on node n'


# -- on the local cluster ------------------------------------------------------------------------


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[LocalCluster]:
    """Two GPU nodes, and images that take a moment to pull the first time on a node."""
    async with running_cluster(tmp_path, image_policy=ImagePolicy(
            pull_seconds=1.0, preloaded=(prepull.DEFAULT_PAUSE_IMAGE,))) as c:
        yield c


async def until(informer: Informer, check: Callable[[list[JSON]], bool],
                timeout: float = 30) -> list[JSON]:
    """Wait, on the informer's events, until ``check`` holds for all its objects."""
    changed = asyncio.Event()
    unlisten = informer.add_listener(lambda *_: changed.set())
    try:
        async with asyncio.timeout(timeout):
            while not check(informer.items()):
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"never matched; last seen: {summary(informer.items())}") from None
    finally:
        unlisten()
    return informer.items()


def summary(items: list[JSON]) -> list[tuple[str, str, JSON]]:
    return [(ds["metadata"]["name"], ds["metadata"]["annotations"][prepull.ANNOTATION_IMAGES],
             ds.get("status") or {}) for ds in items]


def rolled_out(ds: JSON) -> bool:
    status = ds.get("status") or {}
    return (status.get("observedGeneration") == ds["metadata"].get("generation")
            and status.get("desiredNumberScheduled") is not None
            and status.get("updatedNumberScheduled") == status["desiredNumberScheduled"]
            and status.get("numberReady") == status["desiredNumberScheduled"])


def images_of(items: list[JSON]) -> set[str]:
    return set(by_images(items))


@pytest_asyncio.fixture
async def daemonsets(kube: KubeClient) -> AsyncIterator[Informer]:
    informer = Informer(kube, DAEMONSETS, NS, label_selector=prepull.PREPULL_SELECTOR)
    await informer.start()
    try:
        yield informer
    finally:
        await informer.stop()


async def test_prepull_daemonsets_follow_kernelspecs(
        cluster: LocalCluster, kube: KubeClient, daemonsets: Informer,
        make_cluster_gateway: GatewayFactory) -> None:
    register_node(cluster.store, NodeConfig("cpu-node"))
    await make_cluster_gateway("--ImagePrepuller.enabled=True",
                               "--ImagePrepuller.extra_images=extra/tool:2")
    items = await until(daemonsets, lambda i: images_of(i) == {
        f"extra/tool:2,{CPU_IMAGE}", f"extra/tool:2,{GPU_IMAGE}"} and all(map(rolled_out, i)))
    # The GPU template's images go to the GPU nodes only; the CPU one's everywhere.
    gpu = by_images(items)[f"extra/tool:2,{GPU_IMAGE}"]
    assert gpu["status"]["desiredNumberScheduled"] == 2
    assert by_images(items)[f"extra/tool:2,{CPU_IMAGE}"]["status"][
        "desiredNumberScheduled"] == 3
    assert cluster.kubelet is not None
    assert "ghcr.io/elastic-kernels/kernel-python-gpu:0.1.0" not in cluster.kubelet.pulls.images(
        "cpu-node")
    assert "ghcr.io/elastic-kernels/kernel-python-gpu:0.1.0" in cluster.kubelet.pulls.images(
        "local-node-0")

    # A kernelspec with a new image: its placement's DaemonSet gains it.
    await kube.create(R.KERNELSPECS, derived_kernelspec("python-cpu", "python-new",
                                                        image="example.org/new:1"))
    new_cpu = f"example.org/new:1,extra/tool:2,{CPU_IMAGE}"
    items = await until(daemonsets, lambda i: new_cpu in images_of(i)
                        and all(map(rolled_out, i)))
    assert by_images(items)[new_cpu]["metadata"]["annotations"][
        prepull.ANNOTATION_KERNELSPECS] == "python-cpu,python-new"
    assert "example.org/new:1" in cluster.kubelet.pulls.images("cpu-node")

    # Deleted again: the image goes from the DaemonSet.
    await kube.delete(R.KERNELSPECS, "python-new")
    await until(daemonsets, lambda i: images_of(i) == {
        f"extra/tool:2,{CPU_IMAGE}", f"extra/tool:2,{GPU_IMAGE}"})

    # A template that selects some GPU nodes (by a label): a DaemonSet of its own selecting
    # them; and gone with the last kernelspec that uses it.
    await kube.create(R.TEMPLATES, {
        "apiVersion": R.API_VERSION, "kind": R.TEMPLATE_KIND, "metadata": {"name": "a100"},
        "spec": {"pod": {"nodeSelector": {"nvidia.com/gpu.present": "true",
                                          "kubernetes.io/hostname": "local-node-1"}}}})
    await kube.create(R.KERNELSPECS, derived_kernelspec(
        "python-gpu", "python-a100", image="example.org/a100:1", templateRef={"name": "a100"}))
    a100 = "example.org/a100:1,extra/tool:2"
    items = await until(daemonsets, lambda i: a100 in images_of(i) and all(map(rolled_out, i)))
    ds = by_images(items)[a100]
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.present": "true", "kubernetes.io/hostname": "local-node-1"}
    assert ds["status"]["desiredNumberScheduled"] == 1
    assert "example.org/a100:1" in cluster.kubelet.pulls.images("local-node-1")
    assert "example.org/a100:1" not in cluster.kubelet.pulls.images("local-node-0")
    await kube.delete(R.KERNELSPECS, "python-a100")
    await until(daemonsets, lambda i: a100 not in images_of(i) and len(i) == 2)

    # A DaemonSet deleted by hand is put back.
    await kube.delete(DAEMONSETS, gpu["metadata"]["name"], NS)
    await until(daemonsets, lambda i: any(d["metadata"]["name"] == gpu["metadata"]["name"]
                                          and d["metadata"]["uid"] != gpu["metadata"]["uid"]
                                          for d in i))


async def kernel_pod_events(kube: KubeClient, kernel_id: str) -> tuple[str, list[JSON]]:
    record = await kube.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id), NS)
    pod = record["status"]["podName"]
    events = await kube.list(EVENTS, NS, field_selector=f"involvedObject.name={pod}")
    return pod, events["items"]


async def start(app: ElasticGatewayApp, name: str = "python-cpu") -> str:
    response = await api(app.url, "POST", "/api/kernels", {"name": name})
    assert response.code == 201, response.body
    return str(json_of(response)["id"])


async def test_after_the_prepull_a_start_does_not_pull(
        cluster: LocalCluster, kube: KubeClient, daemonsets: Informer,
        make_cluster_gateway: GatewayFactory) -> None:
    app = await make_cluster_gateway("--ImagePrepuller.enabled=True")
    await until(daemonsets, lambda i: images_of(i) == {CPU_IMAGE, GPU_IMAGE}
                and all(map(rolled_out, i)))
    kernel_id = await start(app)
    _pod, events = await kernel_pod_events(kube, kernel_id)
    reasons = [e["reason"] for e in events]
    assert "Pulling" not in reasons, reasons
    assert [e["message"] for e in events if e["reason"] == "Pulled"] == [
        f'Container image "{CPU_IMAGE}" already present on machine']


async def test_a_cold_pull_shows_pulling_image_in_the_start_progress(
        cluster: LocalCluster, kube: KubeClient,
        make_cluster_gateway: GatewayFactory) -> None:
    app = await make_cluster_gateway()  # no pre-pull: the first start pulls
    records = Informer(kube, R.JUPYTERKERNELS, NS)
    seen: list[tuple[str, str, str]] = []
    records.add_listener(lambda _t, obj, _o: seen.append((
        str((obj.get("status") or {}).get("phase")), str((obj.get("status") or {}).get("reason")),
        str((obj.get("status") or {}).get("message")))))
    await records.start()
    try:
        kernel_id = await start(app)
    finally:
        await records.stop()
    pod, events = await kernel_pod_events(kube, kernel_id)
    (pulling,) = [e for e in events if e["reason"] == "Pulling"]
    node = pulling["source"]["host"]
    assert (REASON_PULLING, f'Pulling image "{CPU_IMAGE}" on node {node}') in [
        (reason, message) for _, reason, message in seen], seen
    # Pulling came before the kernel ran, and nothing of it after.
    progress = [reason for _, reason, _ in seen]
    assert progress[-1] != REASON_PULLING and seen[-1][0] == "Running", seen
    assert progress.index(REASON_PULLING) < len(progress) - 1
    assert pod
