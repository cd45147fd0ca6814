"""Kernel pods under Pod Security Admission, GPU isolation of CPU kernels, and the JupyterKernel
rules the API server enforces, all on the local cluster (which enforces PSA from namespace labels
and evaluates CRD CEL rules, transition rules included).

Why here and not only in test_render: "restricted" is what the API server says at admission, and
``NVIDIA_VISIBLE_DEVICES`` is what the kernel process actually sees; both are only true end to end.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import NAMESPACES, PODS, KubeClient, KubeError
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.provisioner.render import RenderRequest, render_kernel

from .conftest import GatewayFactory, derived_kernelspec
from .gateway.support import KernelWS, api, json_of
from .gatewayproc import eventually

pytestmark = pytest.mark.timeout(120)

KERNEL_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
KEY = b"9f1c2d3e4b5a69788796a5b4c3d2e1f0"
PSA = "pod-security.kubernetes.io/"


def templateless(name: str = "python-plain") -> dict[str, Any]:
    """The shipped CPU spec without its template: only our defaults stand between it and PSA."""
    doc = derived_kernelspec("python-cpu", name)
    doc["spec"].pop("templateRef")
    return doc


async def restrict(kube: KubeClient, namespace: str, *, create: bool) -> None:
    labels = {f"{PSA}enforce": "restricted", f"{PSA}enforce-version": "latest"}
    if create:
        await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": namespace, "labels": labels}})
    else:
        await kube.patch(NAMESPACES, namespace, {"metadata": {"labels": labels}})


async def test_templateless_kernel_pod_is_admitted_in_a_restricted_namespace(
        cluster: LocalCluster, kube: KubeClient) -> None:
    await restrict(kube, "restricted", create=True)
    doc = templateless()
    doc["metadata"]["namespace"] = "restricted"
    spec = R.KernelSpecView.from_object(doc)
    assert spec.template_name is None
    pod = render_kernel(RenderRequest(kernel_id=KERNEL_ID, namespace="restricted", user="alice",
                                      spec=spec, key=KEY)).pod
    created = await kube.create(PODS, pod, namespace="restricted")
    assert created["spec"]["securityContext"]["runAsNonRoot"] is True

    # The same pod without our defaults is what a restricted namespace refuses: the test has teeth.
    bare = copy.deepcopy(pod)
    bare["metadata"]["name"] = "kernel-bare"
    del bare["spec"]["securityContext"]
    del bare["spec"]["containers"][0]["securityContext"]
    with pytest.raises(KubeError) as refused:
        await kube.create(PODS, bare, namespace="restricted")
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in refused.value.message

    # A template's opt-out is its own to make, and the namespace refuses it.
    template = R.TemplateView.from_object({
        "kind": "JupyterKernelTemplate",
        "metadata": {"name": "root", "namespace": "restricted"},
        "spec": {"pod": {"securityContext": {"runAsNonRoot": False}}}})
    rooted = render_kernel(RenderRequest(
        kernel_id="1f8fad5b-d9cb-469f-a165-70867728950e", namespace="restricted", user="alice",
        spec=dataclasses.replace(spec, template_name="root"), template=template, key=KEY)).pod
    with pytest.raises(KubeError) as refused:
        await kube.create(PODS, rooted, namespace="restricted")
    assert "runAsNonRoot != true" in refused.value.message


async def test_cpu_kernel_in_a_restricted_namespace_runs_and_sees_no_gpus(
        cluster: LocalCluster, kube: KubeClient, make_cluster_gateway: GatewayFactory) -> None:
    # The gateway's namespace (the kubeconfig's) enforces restricted from here on.
    await restrict(kube, kube.namespace, create=False)
    gateway: ElasticGatewayApp = await make_cluster_gateway()
    await kube.create(R.KERNELSPECS, templateless())

    async def listed() -> bool:
        specs = json_of(await api(gateway.url, "GET", "/api/kernelspecs"))["kernelspecs"]
        return "python-plain" in specs

    await eventually(listed, timeout=30)
    seen: dict[str, str] = {}
    for name in ("python-plain", "python-gpu"):
        started = await api(gateway.url, "POST", "/api/kernels", {"name": name})
        assert started.code == 201, started.body
        kernel_id = json_of(started)["id"]
        ws = await KernelWS.open(gateway.url, kernel_id)
        try:
            result = await ws.execute(
                "import os; print(os.environ.get('NVIDIA_VISIBLE_DEVICES', 'unset'))")
        finally:
            ws.close()
        assert result["reply"]["status"] == "ok", result
        seen[name] = result["stdout"].strip()
        if name == "python-plain":
            await check_kernel_record_rules(kube, kernel_id)
        deleted = await api(gateway.url, "DELETE", f"/api/kernels/{kernel_id}")
        assert deleted.code == 204
    # The CPU kernel sees none; the GPU kernel sees the one the device plugin gave it.
    assert seen["python-plain"] == "void"
    assert seen["python-gpu"] in {"0", "1"}


async def check_kernel_record_rules(kube: KubeClient, kernel_id: str) -> None:
    """A running kernel's record refuses a new owner or id, and takes a new gateway (adoption)."""
    name = R.kernel_object_name(kernel_id)
    for field, value, message in (
        ("user", "mallory", "spec.user is immutable"),
        ("kernelId", "00000000-0000-4000-8000-000000000000", "spec.kernelId is immutable"),
    ):
        with pytest.raises(KubeError) as refused:
            await kube.patch(R.JUPYTERKERNELS, name, {"spec": {field: value}})
        assert refused.value.status == 422
        assert message in refused.value.message
    record = await kube.get(R.JUPYTERKERNELS, name)
    moved = await kube.patch(R.JUPYTERKERNELS, name, {"spec": {"gateway": record["spec"]["gateway"]
                                                              + "-adopted"}})
    assert moved["spec"]["user"] == record["spec"]["user"]
    # Put it back, so the holding gateway still recognises its kernel at shutdown.
    await kube.patch(R.JUPYTERKERNELS, name, {"spec": {"gateway": record["spec"]["gateway"]}})
