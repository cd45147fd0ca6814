"""The gateway Deployment's pod, run by the local cluster with in-cluster config, serves kernels.

The pod is the Deployment's own template (command, args, env, volumes, service account), so this
proves the manifest's command line and environment. One change: the manifest's ``--ip=0.0.0.0``
(every interface of the pod's own network namespace) becomes ``--ip=$(POD_IP)``, because the
local cluster's pods are processes on this host and must bind their private 127.x address only.
The token comes from the Secret, and the Kubernetes client configures itself from
``KUBERNETES_SERVICE_HOST``/``PORT`` and the mounted service-account token and CA, over HTTPS,
exactly as in a real pod. Then a notebook-server-like client runs a whole kernel session through
it, and not one API call the pod made was refused: the local cluster enforces the gateway's Role
(and OwnerReferencesPermissionEnforcement) as kube-apiserver does.
"""

from __future__ import annotations

import pytest

from elastic_kernels.kube import config as kube_config
from elastic_kernels.localcluster.cluster import LocalCluster
from tests.gateway.support import api

from .conftest import Kubectl
from .manifests import DEPLOY, JSON, KERNELSPECS, NAMESPACE, find
from .session import (
    denials_of,
    kernel_session,
    local_pod,
    new_token,
    requests_since,
    service_account_user,
    wait_serving,
)

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(120)]

POD_NAME = "elastic-kernels-gateway-0"


def _integrated(cluster: LocalCluster) -> str:
    """What is still missing for in-cluster configuration on the local cluster ("" if nothing)."""
    missing = []
    if not getattr(cluster.apiserver, "tls_url", None):
        missing.append("the local API server's TLS listener (APIServer(tls=...).tls_url)")
    if not hasattr(kube_config, "service_account_dir"):
        missing.append("kube/config.py locating the service-account dir via LOCALCLUSTER_MOUNTS")
    return "; ".join(missing)


def gateway_pod(base: list[JSON]) -> JSON:
    """A pod exactly as the gateway Deployment's ReplicaSet would create it."""
    return local_pod(find(base, "Deployment", "elastic-kernels-gateway"), POD_NAME, NAMESPACE)


async def test_gateway_pod_serves_kernels_with_in_cluster_config(
        install_cluster: LocalCluster, kubectl: Kubectl, base_docs: list[JSON]) -> None:
    missing = _integrated(install_cluster)
    assert not missing, f"the local cluster lacks in-cluster support: {missing}"
    await kubectl("apply", "-k", str(DEPLOY))
    await kubectl("apply", "-n", NAMESPACE, "-k", str(KERNELSPECS))
    token = new_token()
    await kubectl("create", "secret", "generic", "-n", NAMESPACE,
                  "elastic-kernels-gateway-token", f"--from-literal=token={token}")
    await kubectl.apply_docs([gateway_pod(base_docs)])
    try:
        await kubectl("wait", "-n", NAMESPACE, "--for=jsonpath={.status.phase}=Running",
                      f"pod/{POD_NAME}", "--timeout=60s")
        pod = await kubectl.json("get", "-n", NAMESPACE, "pod", POD_NAME)
        ip = pod["status"]["podIP"]
        assert ip.startswith("127.") and ip != "127.0.0.1"
        url = f"http://{ip}:8888"
        await wait_serving(url)

        # Without the token nothing but /api answers.
        denied = await api(url, "GET", "/api/kernels", token=None)
        assert denied.code in (401, 403)
        # From here until the session ends, only the gateway pod talks to the API server.
        before = install_cluster.request_counter.snapshot()
        facts = await kernel_session(url, token, "python-gpu")
        used = requests_since(install_cluster, before)
        assert facts["first"][0] == "42" and facts["after_restart"] == "False"
        # ...authenticated as its ServiceAccount, by the token the kubelet mounted.
        assert service_account_user("elastic-kernels-gateway") in \
            install_cluster.request_counter.users()
        assert facts["kernelspecs"] == ["python-cpu", "python-gpu"]

        # The pod has no kubeconfig: the API calls below came over the HTTPS service address
        # the kubelet gave it, trusted through the mounted ca.crt.
        assert not any(e["name"] == "KUBECONFIG" for c in pod["spec"]["containers"]
                       for e in c.get("env", []))
        assert install_cluster.kubelet is not None and install_cluster.apiserver is not None
        service = install_cluster.kubelet.service_env
        assert f"https://{service['KUBERNETES_SERVICE_HOST']}:" \
               f"{service['KUBERNETES_SERVICE_PORT']}" == install_cluster.apiserver.tls_url
        logs = await kubectl("logs", "-n", NAMESPACE, POD_NAME)
        assert f"serving http://{ip}:8888/" in logs
        assert token not in logs
    finally:
        await kubectl("delete", "-n", NAMESPACE, "pod", POD_NAME, "--wait=true",
                      "--timeout=60s")
    # Every call the pod made, from startup on, was allowed by the gateway's Role.
    assert ("create", "elastic.jupyter.org", "jupyterkernels", "") in used
    assert denials_of(install_cluster, service_account_user("elastic-kernels-gateway")) == []
