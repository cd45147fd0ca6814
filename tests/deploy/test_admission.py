"""The install's ValidatingAdmissionPolicy on the local cluster: what no kernel pod may be.

``kubectl apply -k deploy/`` installs the policy and its binding; then kernel pods are created
with ``--dry-run=server`` (admission runs in full, nothing is stored or started). A pod exactly
as the provisioner renders it from the shipped kernelspecs is admitted; the same pod made
privileged, sharing the node's namespaces, mounting a hostPath or running as the gateway's or the
cull job's ServiceAccount is refused with the policy's own message (Pod Security, enforced from
the namespace's ``restricted`` label, refuses much of that first; the test relaxes the label to
see the policy alone). Pods that are not kernel pods
are none of the policy's business, and the binding holds in the install's namespace only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import yaml

from elastic_kernels.kube.resources import KernelSpecView, TemplateView
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.provisioner.render import RenderRequest, render_kernel

from .conftest import Kubectl
from .manifests import DEPLOY, KERNELSPECS, NAMESPACE, JSON, find, load_docs

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(90)]

POLICY = "elastic-kernels-kernel-pods"


def _shipped(kind: str, name: str) -> JSON:
    for path in sorted(KERNELSPECS.glob("*.yaml")):
        for doc in load_docs(path.read_text(), str(path)):
            if doc.get("kind") == kind and doc["metadata"]["name"] == name:
                doc["metadata"]["namespace"] = NAMESPACE
                return doc
    raise LookupError(f"{kind} {name} in {KERNELSPECS}")


def kernel_pod(namespace: str = NAMESPACE) -> JSON:
    """A CPU kernel's pod, as the gateway would create it (the provisioner's pure renderer)."""
    rendered = render_kernel(RenderRequest(
        kernel_id="6f1d2c1e-0000-4000-8000-000000000001", namespace=namespace, user="alice",
        spec=KernelSpecView.from_object(_shipped("JupyterKernelSpec", "python-cpu")),
        template=TemplateView.from_object(_shipped("JupyterKernelTemplate", "cpu")),
        key=b"0123456789abcdef0123456789abcdef", gateway_id="gateway-0"))
    return copy.deepcopy(rendered.pod)


def _privileged(pod: JSON) -> None:
    pod["spec"]["containers"][0].setdefault("securityContext", {})["privileged"] = True


def _host_network(pod: JSON) -> None:
    pod["spec"]["hostNetwork"] = True


def _host_pid(pod: JSON) -> None:
    pod["spec"]["hostPID"] = True


def _host_path(pod: JSON) -> None:
    pod["spec"].setdefault("volumes", []).append(
        {"name": "node-root", "hostPath": {"path": "/"}})


def _gateway_sa(pod: JSON) -> None:
    pod["spec"]["serviceAccountName"] = "elastic-kernels-gateway"


def _cull_sa(pod: JSON) -> None:
    pod["spec"]["serviceAccountName"] = "elastic-kernels-cull"


async def _create(kubectl: Kubectl, pod: JSON):
    return await kubectl.run("create", "--dry-run=server", "-o", "name", "-f", "-",
                             stdin=yaml.safe_dump(pod))


async def test_the_install_refuses_dangerous_kernel_pods(
        install_cluster: LocalCluster, kubectl: Kubectl, base_docs: list[JSON]) -> None:
    await kubectl("apply", "-k", str(DEPLOY))
    policy = await kubectl.json("get", "validatingadmissionpolicy", POLICY)
    binding = await kubectl.json("get", "validatingadmissionpolicybinding", POLICY)
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]

    normal = await _create(kubectl, kernel_pod())
    assert normal.returncode == 0, normal.stderr
    assert normal.stdout.strip().startswith("pod/")

    # Pod Security (restricted, from the namespace's labels) refuses a privileged pod first.
    pod = kernel_pod()
    _privileged(pod)
    refused = await _create(kubectl, pod)
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr, refused.stderr
    # The policy holds on its own where the namespace is labelled less strictly.
    await kubectl("label", "--overwrite", "namespace", NAMESPACE,
                  "pod-security.kubernetes.io/enforce=privileged")

    messages = {v["message"] for v in find(base_docs, "ValidatingAdmissionPolicy",
                                           POLICY)["spec"]["validations"]}
    changes: list[tuple[Callable[[JSON], None], str]] = [
        (_privileged, "privileged"), (_host_network, "hostNetwork"), (_host_pid, "hostPID"),
        (_host_path, "hostPath"), (_gateway_sa, "elastic-kernels-gateway"),
        (_cull_sa, "elastic-kernels-cull")]
    for change, words in changes:
        pod = kernel_pod()
        change(pod)
        refused = await _create(kubectl, pod)
        assert refused.returncode != 0, f"{change.__name__} was admitted"
        err = refused.stderr
        assert f"ValidatingAdmissionPolicy '{POLICY}' with binding '{POLICY}' denied" in err, err
        assert words in err, err
        assert any(m in err for m in messages), err

    # Not a kernel pod (no kernel labels): the policy does not judge it; Pod Security does.
    other = kernel_pod()
    other["metadata"]["labels"] = {"app": "something-else"}
    _gateway_sa(other)
    assert (await _create(kubectl, other)).returncode == 0


async def test_the_binding_holds_in_the_install_namespace_only(
        install_cluster: LocalCluster, kubectl: Kubectl) -> None:
    await kubectl("apply", "-k", str(DEPLOY))
    await kubectl("create", "namespace", "elsewhere")
    pod = kernel_pod("elsewhere")
    _gateway_sa(pod)
    admitted = await _create(kubectl, pod)
    assert admitted.returncode == 0, admitted.stderr
