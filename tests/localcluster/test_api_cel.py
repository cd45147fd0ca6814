"""CEL on the local API server: CRD x-kubernetes-validations and ValidatingAdmissionPolicies.

Rules run in the CEL project's own runtime; refusals carry kube-apiserver's wording, so a manifest
or a policy that passes here passes on a real cluster.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from .test_api_kubectl import KUBECTL, Kubectl, kubectl  # noqa: F401 - the kubectl fixture

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION = "elastic.jupyter.org", "v1alpha1"

KERNELSPEC = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "JupyterKernelSpec",
              "metadata": {"name": "x"},
              "spec": {"displayName": "Python", "language": "python", "image": "python:3.11",
                       "argv": ["python", "-m", "ipykernel_launcher", "-f"]}}

GADGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "gadgets.example.com"},
    "spec": {"group": "example.com", "scope": "Namespaced",
             "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget",
                       "listKind": "GadgetList"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {
                     "type": "object",
                     "x-kubernetes-validations": [{
                         "rule": "self.metadata.name.startsWith('g-')",
                         "messageExpression": "'name ' + self.metadata.name + ' lacks g-'"}],
                     "properties": {"spec": {
                         "type": "object",
                         "x-kubernetes-validations": [{
                             "rule": "self.min <= self.max", "fieldPath": ".min",
                             "message": "min must not exceed max"}],
                         "properties": {
                             "owner": {"type": "string", "x-kubernetes-validations": [
                                 {"rule": "self == oldSelf", "message": "owner is immutable"}]},
                             "min": {"type": "integer"}, "max": {"type": "integer"}}}}}}}]}}


def message(exc: ApiException) -> tuple[int, str, str]:
    body = json.loads(exc.body)
    return exc.status, body["reason"], body["message"]


@pytest.fixture
def kernelspecs(kube: client.ApiClient) -> None:
    crd = yaml.safe_load((ROOT / "deploy/crds/jupyterkernelspecs.yaml").read_text())
    client.ApiextensionsV1Api(kube).create_custom_resource_definition(crd)


@pytest.fixture
def gadgets(kube: client.ApiClient) -> None:
    client.ApiextensionsV1Api(kube).create_custom_resource_definition(GADGET_CRD)


def test_crd_rule_rejects_a_bad_kernelspec(custom: client.CustomObjectsApi,
                                           kernelspecs: None) -> None:
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", "jupyterkernelspecs",
                                               KERNELSPEC)
    assert message(info.value) == (
        422, "Invalid", 'JupyterKernelSpec.elastic.jupyter.org "x" is invalid: spec.argv: '
        'Invalid value: "array": argv must contain the placeholder {connection_file}')
    good = copy.deepcopy(KERNELSPEC)
    good["spec"]["argv"].append("{connection_file}")
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", "jupyterkernelspecs", good)
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object(GROUP, VERSION, "default", "jupyterkernelspecs",
                                              "x", {"spec": {"argv": ["python"]}})
    assert info.value.status == 422


@pytest.mark.kubectl
def test_kubectl_shows_the_rule_message(kubectl: Kubectl, kernelspecs: None) -> None:
    err = kubectl("apply", "-f", kubectl.write("ks.yaml", KERNELSPEC), ok=False)
    assert ('The JupyterKernelSpec "x" is invalid: spec.argv: Invalid value: "array": argv must '
            "contain the placeholder {connection_file}") in err


def test_transition_rule_allows_create_and_refuses_change(custom: client.CustomObjectsApi,
                                                          gadgets: None) -> None:
    body = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g-1"},
            "spec": {"owner": "ana", "min": 1, "max": 2}}
    custom.create_namespaced_custom_object("example.com", "v1", "default", "gadgets", body)
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object("example.com", "v1", "default", "gadgets", "g-1",
                                              {"spec": {"owner": "bob"}})
    assert message(info.value)[2] == ('Gadget.example.com "g-1" is invalid: spec.owner: Invalid '
                                      'value: "string": owner is immutable')
    custom.patch_namespaced_custom_object("example.com", "v1", "default", "gadgets", "g-1",
                                          {"spec": {"max": 5}})
    with pytest.raises(ApiException) as info:
        custom.patch_namespaced_custom_object("example.com", "v1", "default", "gadgets", "g-1",
                                              {"spec": {"min": 9}})
    assert message(info.value)[2] == ('Gadget.example.com "g-1" is invalid: spec.min: Invalid '
                                      'value: "object": min must not exceed max')
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object("example.com", "v1", "default", "gadgets",
                                               {**body, "metadata": {"name": "h"}})
    assert message(info.value)[2] == ('Gadget.example.com "h" is invalid: <nil>: Invalid value: '
                                      '"object": name h lacks g-')


NO_HOSTPATH = {
    "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": "no-hostpath"},
    "spec": {"failurePolicy": "Fail",
             "matchConstraints": {"resourceRules": [{
                 "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["pods"]}]},
             "variables": [{"name": "volumes",
                            "expression": "has(object.spec.volumes) ? object.spec.volumes : []"}],
             "validations": [{"expression": "!variables.volumes.exists(v, has(v.hostPath))",
                              "message": "hostPath volumes are not allowed",
                              "reason": "Forbidden"}]}}
BINDING = {
    "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
    "metadata": {"name": "no-hostpath-kernels"},
    "spec": {"policyName": "no-hostpath", "validationActions": ["Deny"],
             "matchResources": {"namespaceSelector": {"matchLabels": {"kernels": "yes"}}}}}


def hostpath_pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "python:3.11"}],
                     "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}


def test_policy_denies_hostpath_pods(kube: client.ApiClient, core: client.CoreV1Api) -> None:
    admission = client.AdmissionregistrationV1Api(kube)
    admission.create_validating_admission_policy(NO_HOSTPATH)
    admission.create_validating_admission_policy_binding(BINDING)
    core.create_namespace({"metadata": {"name": "kernels", "labels": {"kernels": "yes"}}})
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("kernels", hostpath_pod("x"))
    assert message(info.value) == (
        403, "Forbidden", "pods \"x\" is forbidden: ValidatingAdmissionPolicy 'no-hostpath' with "
        "binding 'no-hostpath-kernels' denied request: hostPath volumes are not allowed")
    core.create_namespaced_pod("default", hostpath_pod("x"))  # not selected by the binding
    plain = hostpath_pod("other")
    del plain["spec"]["volumes"]
    core.create_namespaced_pod("kernels", plain)


@pytest.mark.kubectl
def test_kubectl_policy_warn_and_default_message(kubectl: Kubectl) -> None:
    policy = copy.deepcopy(NO_HOSTPATH)
    del policy["spec"]["validations"][0]["message"]
    del policy["spec"]["validations"][0]["reason"]
    binding = copy.deepcopy(BINDING)
    binding["spec"]["validationActions"] = ["Warn", "Deny"]
    del binding["spec"]["matchResources"]
    kubectl("create", "-f", kubectl.write("vap.yaml", policy, binding))
    err = kubectl("create", "-f", kubectl.write("pod.yaml", hostpath_pod("x")), ok=False)
    # reason Invalid (the default) with the denial as its cause: kubectl words it as the
    # Kubernetes documentation shows
    assert ("The pods \"x\" is invalid: : ValidatingAdmissionPolicy 'no-hostpath' with binding "
            "'no-hostpath-kernels' denied request: failed expression: "
            "!variables.volumes.exists(v, has(v.hostPath))") in err
    binding["spec"]["validationActions"] = ["Warn"]
    kubectl("apply", "-f", kubectl.write("b.yaml", binding))
    proc = subprocess.run([str(KUBECTL), "create", "-f", kubectl.write("p2.yaml",
                                                                          hostpath_pod("other"))],
                          capture_output=True, text=True, env=kubectl.env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert ("Warning: Validation failed for ValidatingAdmissionPolicy 'no-hostpath' with binding "
            "'no-hostpath-kernels': failed expression:") in proc.stderr
