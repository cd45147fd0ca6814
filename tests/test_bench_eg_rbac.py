"""Enterprise Gateway's benchmark account may do what EG does, now that the local cluster
authorizes requests: what EG's Helm chart grants its ServiceAccount (``bench/eg.py``), and no
more. EG itself needs PyPI to install, so its account is asked with ``kubectl auth can-i``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import eg
from elastic_kernels.localcluster.cluster import LocalCluster

from .localcluster.test_api_authn import kubectl

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(60)]

KUBECTL = Path(sys.executable).parent / "kubectl"


async def can_i(cluster: LocalCluster, token: str, *args: str) -> str:
    code, out, err = await kubectl(cluster, "auth", "can-i", *args, token=token)
    assert code in (0, 1), err
    return out.strip()


async def test_the_eg_account_may_manage_kernel_namespaces_and_pods(
        cluster: LocalCluster) -> None:
    token = await eg.service_account_token(cluster, eg.SERVICE_ACCOUNT)
    # A second call (another benchmark run on the same cluster) finds everything in place.
    await eg.service_account_token(cluster, eg.SERVICE_ACCOUNT)
    for args in (("create", "namespaces"), ("delete", "namespaces"),
                 ("create", "pods", "-n", "kernel-ns"), ("list", "pods", "-n", "kernel-ns"),
                 ("watch", "pods", "--all-namespaces"),
                 ("create", "rolebindings", "-n", "kernel-ns")):
        assert await can_i(cluster, token, *args) == "yes", args
    for args in (("list", "nodes"), ("create", "clusterroles"), ("patch", "pods", "-n", "x"),
                 ("create", "jupyterkernels", "-n", "default")):
        assert await can_i(cluster, token, *args) == "no", args
