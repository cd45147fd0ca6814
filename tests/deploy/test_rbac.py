"""The Roles grant what the gateway and the cull job use, and nothing they do not.

The local API server records every request as (verb, group, resource, subresource, namespace).
A real session runs the manifests' own command lines against it -- the gateway (start, execute,
interrupt, restart, shut down a kernel, and a start that fails) and the cull job (deleting an
orphaned kernel) -- and each recorded request must be allowed by that component's Role.
Conversely every grant must have been used, except the few listed below with the reason they
are needed although this session does not exercise them.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from elastic_kernels.kube import resources as R
from elastic_kernels.localcluster.cluster import LocalCluster
from tests.conftest import derived_kernelspec
from tests.gateway.support import api, json_of

from .conftest import Kubectl
from .manifests import DEPLOY, KERNELSPECS, NAMESPACE, JSON, find, load_docs
from .rbac import Grant, allows, fmt, grants
from .session import (
    GatewayProcess,
    admin_kubeconfig,
    container_of,
    gateway_env,
    host_command,
    kernel_session,
    new_token,
    requests_since,
)

pytestmark = pytest.mark.timeout(150)

GROUP = R.GROUP
LEASES = "coordination.k8s.io"

#: Granted and needed, but possibly not exercised by the session in this test -- with the reason.
#: (Code that starts using one of them needs no change here; a grant outside these lists that
#: the session does not use fails the test, and so does a request no grant allows.)
GATEWAY_UNEXERCISED: dict[Grant, str] = {
    ("get", "", "pods", ""): "hydrating a kernel another replica started reads its pod",
    ("get", "", "pods", "log"): "a crashed kernel's last output goes into the start error",
    ("get", "", "secrets", ""): "hydrating a kernel reads its key from the kernel's Secret",
    ("delete", "", "secrets", ""): "cleanup when a start fails between Secret and Pod creation",
    ("get", GROUP, "jupyterkernels", ""): "hydration by kernel id on another replica",
    ("list", GROUP, "jupyterkernels", ""): "the shared JupyterKernel watch (startup hydration)",
    ("watch", GROUP, "jupyterkernels", ""): "the shared JupyterKernel watch (startup hydration)",
    ("patch", GROUP, "jupyterkernels", ""): "adopting a kernel: spec.gateway (gateway/lease.py)",
    ("create", LEASES, "leases", ""): "the gateway's own Lease, created at startup",
    ("get", LEASES, "leases", ""): "renewing the gateway's Lease (gateway/lease.py)",
    ("patch", LEASES, "leases", ""): "renewing the gateway's Lease (gateway/lease.py)",
    ("delete", LEASES, "leases", ""): "releasing the Lease on a deliberate shutdown",
}
CULL_UNEXERCISED: dict[Grant, str] = {
    ("get", GROUP, "jupyterkernels", ""): "re-reading a record after a conflicting write, to "
                                          "tell 'culled by someone else' from 'fresh activity'",
}


def role_rules(path: Path) -> list[JSON]:
    (role,) = load_docs(path.read_text(), str(path))
    assert role["kind"] == "Role"
    return role["rules"]


def check(rules: list[JSON], used: dict, unexercised: dict[Grant, str], who: str) -> None:
    denied = [k for k in used if not allows(rules, *k)]
    assert not denied, f"the {who} Role does not allow: {fmt(denied)}"
    granted = grants(rules)
    unused = granted - set(used)
    unexplained = unused - set(unexercised)
    assert not unexplained, f"the {who} Role grants what nobody used: {fmt(unexplained)}"
    # The list of exceptions stays honest: each one is granted.
    assert set(unexercised) <= granted, fmt(set(unexercised) - granted)


def test_the_checker_itself() -> None:
    rules = [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get"]}]
    assert allows(rules, "get", "", "pods", "log")
    assert not allows(rules, "get", "", "pods", "exec")
    assert not allows(rules, "list", "", "pods")
    assert not allows(rules, "get", "apps", "pods")
    with pytest.raises(AssertionError, match="does not allow"):
        check(rules, {("delete", "", "pods", ""): 1}, {}, "test")
    with pytest.raises(AssertionError, match="grants what nobody used"):
        check(rules, {("get", "", "pods", ""): 1}, {}, "test")


async def test_gateway_and_cull_use_exactly_what_their_roles_grant(
        install_cluster: LocalCluster, kubectl: Kubectl, base_docs: list[JSON],
        tmp_path: Path) -> None:
    cluster = install_cluster
    await kubectl.apply_docs(base_docs)
    await kubectl("apply", "-n", NAMESPACE, "-k", str(KERNELSPECS))
    # A kernelspec whose image cannot be pulled: the failure path writes status and an Event.
    await kubectl.apply_docs([derived_kernelspec("python-cpu", "broken-image",
                                           image="registry.example/does-not-exist:1")],
                       "-n", NAMESPACE)
    kubeconfig = admin_kubeconfig(cluster, tmp_path / "gateway.kubeconfig")
    token = new_token()

    # --- the gateway, from the Deployment's container ----------------------------------------
    container = container_of(base_docs, "Deployment", "elastic-kernels-gateway")
    argv = host_command(container, {"POD_IP": "127.0.0.1", "POD_NAMESPACE": NAMESPACE,
                                    "POD_NAME": "gateway-rbac-test"}, ["--port=0"])
    gateway = GatewayProcess(argv, gateway_env(kubeconfig, tmp_path / "gw", token),
                             tmp_path / "gateway.log")
    before = cluster.request_counter.snapshot()
    try:
        url = await gateway.start()
        facts = await kernel_session(url, token, "python-cpu")
        failed = await api(url, "POST", "/api/kernels", {"name": "broken-image"}, token=token)
        assert failed.code >= 400 and "ErrImagePull" in json_of(failed).get("message", ""), \
            failed.body
    finally:
        await gateway.stop()
    gateway_used = requests_since(cluster, before)
    assert facts["first"][0] == "42" and facts["after_restart"] == "False"
    assert facts["kernelspecs"] == ["broken-image", "python-cpu", "python-gpu"]

    # --- the cull job, from the CronJob's container, on an orphaned kernel ---------------------
    kernel_id = "5b1f0c3e-8a52-4d0e-9d0a-0c1de2a3b4c5"
    record = {"apiVersion": R.API_VERSION, "kind": "JupyterKernel",
              "metadata": {"name": R.kernel_object_name(kernel_id)},
              "spec": {"kernelId": kernel_id, "user": "alice", "kernelSpec": "python-cpu",
                       "gateway": "a-gateway-that-is-gone"}}
    await kubectl.apply_docs([record], "-n", NAMESPACE)
    cron = container_of(base_docs, "CronJob", "elastic-kernels-cull")
    argv = host_command(cron, {"POD_NAMESPACE": NAMESPACE},
                        [f"--kubeconfig={kubeconfig}", "--orphan-grace=0"])
    before = cluster.request_counter.snapshot()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    cull_used = requests_since(cluster, before)
    assert kernel_id in out.decode() and "rphan" in out.decode(), out.decode()
    gone = await kubectl.run("get", "-n", NAMESPACE, "jupyterkernel",
                             R.kernel_object_name(kernel_id))
    assert gone.returncode != 0 and "NotFound" in gone.stderr

    print("gateway:", fmt(gateway_used), "\ncull:", fmt(cull_used), file=sys.stderr)
    check(role_rules(DEPLOY / "gateway" / "role.yaml"), gateway_used, GATEWAY_UNEXERCISED,
          "gateway")
    check(role_rules(DEPLOY / "cull" / "role.yaml"), cull_used, CULL_UNEXERCISED, "cull")
    # The Roles checked are the ones the install applies.
    assert find(base_docs, "Role", "elastic-kernels-gateway")["rules"] == \
        role_rules(DEPLOY / "gateway" / "role.yaml")
