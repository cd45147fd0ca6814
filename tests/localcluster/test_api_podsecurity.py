"""Pod Security Admission from namespace labels, through the official client and kubectl.

Messages are kube-apiserver's (pod-security-admission's checks, their order and words), so a pod
this cluster admits into a restricted namespace is one a real cluster admits too.
"""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from elastic_kernels.localcluster.podsecurity import describe, violations
from elastic_kernels.provisioner.render import render_kernel

from ..test_render import request as render_request
from .test_api_kubectl import KUBECTL, Kubectl, kubectl  # noqa: F401 - the kubectl fixture

pytestmark = pytest.mark.timeout(60)
PSA = "pod-security.kubernetes.io/"


def pod(name: str, **container: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "kernel", "image": "python:3.11", **container}]}}


def namespace(core: client.CoreV1Api, name: str, **labels: str) -> None:
    core.create_namespace({"metadata": {"name": name,
                                        "labels": {PSA + k.replace("_", "-"): v
                                                   for k, v in labels.items()}}})


def refusal(exc: ApiException) -> tuple[int, str, str]:
    body = json.loads(exc.body)
    return exc.status, body["reason"], body["message"]


def test_restricted_message_for_a_plain_pod() -> None:
    assert describe(violations("restricted", pod("x"))) == (
        'allowPrivilegeEscalation != false (container "kernel" must set '
        'securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container '
        '"kernel" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod '
        'or container "kernel" must set securityContext.runAsNonRoot=true), seccompProfile (pod '
        'or container "kernel" must set securityContext.seccompProfile.type to "RuntimeDefault" '
        'or "Localhost")')
    assert violations("baseline", pod("x")) == []
    assert violations("privileged", pod("x", securityContext={"privileged": True})) == []


def test_baseline_checks_in_order() -> None:
    bad = pod("x", securityContext={"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]},
                                    "procMount": "Unmasked"},
              ports=[{"containerPort": 80, "hostPort": 8080}])
    bad["spec"].update(hostNetwork=True, hostPID=True,
                       volumes=[{"name": "root", "hostPath": {"path": "/"}}],
                       securityContext={"sysctls": [{"name": "kernel.msgmax", "value": "1"}],
                                        "seccompProfile": {"type": "Unconfined"}})
    assert describe(violations("baseline", bad)) == (
        'non-default capabilities (container "kernel" must not include "SYS_ADMIN" in '
        "securityContext.capabilities.add), host namespaces (hostNetwork, hostPID), hostPath "
        'volumes (volume "root"), hostPort (container "kernel" uses hostPort 8080), privileged '
        '(container "kernel" must not set securityContext.privileged=true), procMount (container '
        '"kernel" must not set securityContext.procMount to "Unmasked"), seccompProfile (pod must '
        'not set securityContext.seccompProfile.type to "Unconfined"), forbidden sysctls '
        "(kernel.msgmax)")
    restricted = [reason for reason, _ in violations("restricted", bad)]
    assert "non-default capabilities" not in restricted  # superseded by the restricted check
    assert "restricted volume types" in restricted and "runAsUser=0" not in restricted


def test_privileged_pod_refused_in_baseline_namespace(core: client.CoreV1Api) -> None:
    namespace(core, "base", enforce="baseline")
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("base", pod("x", securityContext={"privileged": True}))
    assert refusal(info.value) == (
        403, "Forbidden", 'pods "x" is forbidden: violates PodSecurity "baseline:latest": '
        'privileged (container "kernel" must not set securityContext.privileged=true)')
    core.create_namespaced_pod("base", pod("fine"))
    # the tests' default namespace has no labels: privileged
    core.create_namespaced_pod("default", pod("x", securityContext={"privileged": True}))


def test_enforce_version_and_label_changes(core: client.CoreV1Api) -> None:
    namespace(core, "strict", enforce="restricted", enforce_version="v1.30")
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("strict", pod("x"))
    assert 'violates PodSecurity "restricted:v1.30": allowPrivilegeEscalation != false' in \
        refusal(info.value)[2]
    core.patch_namespace("strict", {"metadata": {"labels": {PSA + "enforce": "privileged"}}})
    core.create_namespaced_pod("strict", pod("x"))


@pytest.mark.kubectl
def test_kubectl_prints_refusal_and_warnings(core: client.CoreV1Api, kubectl: Kubectl) -> None:
    namespace(core, "warned", enforce="baseline", warn="restricted")
    out = kubectl("create", "-n", "warned", "-f", kubectl.write("ok.yaml", pod("ok")), ok=True)
    assert "pod/ok created" in out
    proc = subprocess.run([str(KUBECTL), "create", "-n", "warned", "-f",
                           kubectl.write("w.yaml", pod("w"))], capture_output=True, text=True,
                          env=kubectl.env, timeout=30)
    assert proc.returncode == 0
    assert ('Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation '
            '!= false (container "kernel" must set securityContext.allowPrivilegeEscalation=false)'
            in proc.stderr)
    err = kubectl("create", "-n", "warned", "-f",
                  kubectl.write("p.yaml", pod("p", securityContext={"privileged": True})),
                  ok=False)
    assert ('pods "p" is forbidden: violates PodSecurity "baseline:latest": privileged '
            '(container "kernel" must not set securityContext.privileged=true)') in err


def test_shipped_kernel_pod_admitted_in_restricted_namespace(core: client.CoreV1Api) -> None:
    namespace(core, "kernels", enforce="restricted", warn="restricted")
    rendered = copy.deepcopy(render_kernel(render_request()).pod)
    rendered["metadata"].pop("ownerReferences", None)  # no JupyterKernel here; PSA ignores them
    assert violations("restricted", rendered) == []
    created = core.create_namespaced_pod("kernels", rendered)
    assert created.metadata.namespace == "kernels"
