"""``kubectl apply`` of the install and of the kernelspecs on the local cluster: accepted as is.

The admin's own commands, in the admin guide's order: the kustomize base (CRDs, namespace, RBAC,
gateway, cull job, notebook server, NetworkPolicy), then the kernelspecs into its namespace.
A second apply changes nothing, and a malformed kernelspec is refused at apply time with the
field that is wrong.
"""

from __future__ import annotations

import pytest
import yaml

from elastic_kernels.localcluster.cluster import LocalCluster
from tests.conftest import derived_kernelspec

from .conftest import Kubectl
from .manifests import DEPLOY, KERNELSPECS, NAMESPACE, JSON, ident

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(90)]


async def test_admin_applies_the_install_and_the_kernelspecs(
        install_cluster: LocalCluster, kubectl: Kubectl, base_docs: list[JSON]) -> None:
    out = await kubectl("apply", "-k", str(DEPLOY))
    assert "role.rbac.authorization.k8s.io/elastic-kernels-gateway created" in out
    assert "deployment.apps/elastic-kernels-gateway created" in out
    out = await kubectl("apply", "-n", NAMESPACE, "-k", str(KERNELSPECS))
    assert "jupyterkernelspec.elastic.jupyter.org/python-gpu created" in out

    stored = set()
    for doc in base_docs:
        kind, namespace, name = ident(doc)
        args = ["get", kind.lower(), name] + (["-n", namespace] if namespace else [])
        obj = await kubectl.json(*args)
        stored.add(ident(obj))
        if kind == "Role":
            assert obj["rules"] == doc["rules"]
    assert stored == {ident(d) for d in base_docs}

    # The namespace enforces Pod Security restricted, and the kernel-pod policy is bound to it.
    ns = await kubectl.json("get", "namespace", NAMESPACE)
    for mode in ("enforce", "warn", "audit"):
        assert ns["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}"] == "restricted"
    binding = await kubectl.json("get", "validatingadmissionpolicybinding",
                                 "elastic-kernels-kernel-pods")
    assert binding["spec"]["validationActions"] == ["Deny"]

    specs = await kubectl.json("get", "-n", NAMESPACE, "jupyterkernelspecs")
    assert sorted(i["metadata"]["name"] for i in specs["items"]) == ["python-cpu", "python-gpu"]
    gpu = next(i for i in specs["items"] if i["metadata"]["name"] == "python-gpu")
    assert gpu["spec"]["resources"]["limits"]["nvidia.com/gpu"] == 1

    again = await kubectl("apply", "-k", str(DEPLOY))
    assert "created" not in again and "configured" not in again, again

    bad = derived_kernelspec("python-cpu", "bad-spec", launchTimeout="soon")
    refused = await kubectl.run("apply", "-n", NAMESPACE, "-f", "-",
                                stdin=yaml.safe_dump(bad))
    assert refused.returncode != 0
    assert "spec.launchTimeout" in refused.stderr, refused.stderr
