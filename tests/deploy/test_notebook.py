"""The notebook server Deployment's command line, relaying to the gateway's, runs kernels.

Both run as processes on this machine from the rendered manifests; only what a cluster provides
differs: the gateway's Service name becomes its loopback URL, and ports are picked freely.
A kernel is started, used and shut down through JupyterLab's own REST and websocket API, so the
notebook server really relays to the gateway (``--gateway-url``, the token from the Secret's
variable, the NoDelay websocket class).
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path

import pytest

from elastic_kernels.localcluster.cluster import LocalCluster
from tests.gateway.support import KernelWS, api, json_of

from .conftest import Kubectl
from .manifests import KERNELSPECS, NAMESPACE, JSON
from .session import (
    GatewayProcess,
    ServerProcess,
    admin_kubeconfig,
    container_of,
    gateway_env,
    host_command,
    new_token,
    wait_serving,
)

pytestmark = pytest.mark.timeout(120)

LAB_URL = re.compile(r"(http://127\.0\.0\.1:\d+)/lab")


async def test_notebook_server_relays_kernels_to_the_gateway(
        install_cluster: LocalCluster, kubectl: Kubectl, base_docs: list[JSON],
        tmp_path: Path) -> None:
    await kubectl.apply_docs(base_docs)
    await kubectl("apply", "-n", NAMESPACE, "-k", str(KERNELSPECS))
    kubeconfig = admin_kubeconfig(install_cluster, tmp_path / "gateway.kubeconfig")
    gateway_token, lab_token = new_token(), new_token()

    container = container_of(base_docs, "Deployment", "elastic-kernels-gateway")
    gateway = GatewayProcess(
        host_command(container, {"POD_IP": "127.0.0.1", "POD_NAMESPACE": NAMESPACE,
                                 "POD_NAME": "gateway-nb-test"}, ["--port=0"]),
        gateway_env(kubeconfig, tmp_path / "gw", gateway_token), tmp_path / "gateway.log")

    notebook = container_of(base_docs, "Deployment", "elastic-kernels-notebook")
    env_names = {e["name"] for e in notebook["env"]}
    assert {"JUPYTER_GATEWAY_AUTH_TOKEN", "JUPYTER_TOKEN", "KERNEL_LAUNCH_TIMEOUT"} <= env_names
    root = tmp_path / "home"
    root.mkdir()
    try:
        gateway_url = await gateway.start()
        # jupyter_server reports a wrong URL for --port=0, so pick a free port here.
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        argv = host_command(notebook, {"POD_IP": "127.0.0.1"}, [
            f"--port={port}", f"--gateway-url={gateway_url}", f"--ServerApp.root_dir={root}"])
        if os.geteuid() == 0:
            argv.append("--allow-root")  # the image runs it as uid 1000; this host may be root
        env = gateway_env(kubeconfig, tmp_path / "nb", "unused")
        env.pop("KUBECONFIG")
        env.pop("ELASTIC_KERNELS_TOKEN")
        env.update({"JUPYTER_GATEWAY_AUTH_TOKEN": gateway_token, "JUPYTER_TOKEN": lab_token,
                    "KERNEL_LAUNCH_TIMEOUT": "60"})
        lab = ServerProcess(argv, env, tmp_path / "lab.log")
        try:
            lab_url = await lab.start(timeout=90, pattern=LAB_URL)
            await wait_serving(lab_url)
            specs = await api(lab_url, "GET", "/api/kernelspecs", token=lab_token)
            assert specs.code == 200, specs.body
            assert sorted(json_of(specs)["kernelspecs"]) == ["python-cpu", "python-gpu"]
            started = await api(lab_url, "POST", "/api/kernels", {"name": "python-cpu"},
                                token=lab_token)
            assert started.code == 201, started.body
            kernel_id = json_of(started)["id"]
            ws = await KernelWS.open(lab_url, kernel_id, token=lab_token)
            try:
                marker = uuid.uuid4().hex
                result = await ws.execute(f"print('{marker}')", timeout=60)
                assert result["reply"]["status"] == "ok" and result["stdout"].strip() == marker
            finally:
                ws.close()
            # The gateway holds the kernel (the notebook server only relays).
            held = await api(gateway_url, "GET", f"/api/kernels/{kernel_id}",
                             token=gateway_token)
            assert held.code == 200 and json_of(held)["elastic"]["pod"]
            deleted = await api(lab_url, "DELETE", f"/api/kernels/{kernel_id}", token=lab_token)
            assert deleted.code == 204
            gone = await api(gateway_url, "GET", f"/api/kernels/{kernel_id}",
                             token=gateway_token)
            assert gone.code == 404
        finally:
            await lab.stop()
    finally:
        await gateway.stop()
    assert gateway_token not in (tmp_path / "lab.log").read_text()
    assert gateway_token not in (tmp_path / "gateway.log").read_text()
