"""Jupyter Enterprise Gateway 3.3 with its Kubernetes process proxy, on the local cluster.

Everything comes from PyPI, unchanged, into ``bench/.venv-eg`` (gitignored):

* ``pip install "jupyter-enterprise-gateway==3.3.*" "ipykernel<7"`` (the server, its Kubernetes
  client, and what its ``elyra/kernel-py`` image carries: ipykernel < 7, pycryptodomex);
* ``pip download --no-binary :all:`` of the same release: its sdist holds ``etc/``, i.e. the
  ``python_kubernetes`` kernelspec, ``launch_kubernetes.py`` + ``kernel-pod.yaml.j2`` and the
  kernel image's ``bootstrap-kernel.sh`` + ``launch_ipykernel.py``.

How it runs here, and the only adaptations (each one what a real deployment provides):

* The EG server runs as a host process (not a pod) with *in-cluster* configuration, as in its
  Helm chart: ``KUBERNETES_SERVICE_HOST/PORT`` point at the local API server's HTTPS listener,
  and the service-account token (a real one for the ServiceAccount ``enterprise-gateway``, from
  the TokenRequest API, as its pod would mount) and CA come from a directory that
  ``bench/eg_site/sitecustomize.py`` substitutes for the fixed ``/var/run/secrets/...`` path.
  The local cluster enforces RBAC, so that account gets what EG's Helm chart gives it: the
  ClusterRoles ``enterprise-gateway-controller`` (bound to it cluster-wide) and
  ``kernel-controller`` (which EG binds in each kernel's namespace, ``EG_KERNEL_CLUSTER_ROLE``
  as the chart sets it).
* The kernelspec is installed as EG's kernelspecs tarball installs it (argv paths pointing at
  its ``scripts/``), image ``elyra/kernel-py:<version>``.  The pod template gains one env entry,
  ``POD_IP`` from the downward API, used only by the site hook to keep EG's ``0.0.0.0`` binds on
  the pod's loopback address.
* The kubelet runs image ``elyra/kernel-py:<version>`` with the image's ``CMD``,
  ``bootstrap-kernel.sh``, with the EG virtualenv's ``python`` first on ``PATH`` (the image's
  conda Python) and ``KERNEL_LAUNCHERS_DIR`` at the sdist's launchers (the image's layout):
  :func:`image_policy`.

Everything else is EG's defaults: a namespace (and RoleBinding) per kernel, 0.5 s pod polling,
30 s launch timeout, its response socket (on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from . import common as C

VENV = C.BENCH / ".venv-eg"
EG_REQUIREMENT = "jupyter-enterprise-gateway==3.3.*"
KERNEL_REQUIREMENT = "ipykernel<7"  # what the elyra/kernel-py image pins
SITE = C.BENCH / "eg_site"
KERNEL_NAME = "python_kubernetes"
SERVICE_ACCOUNT = "enterprise-gateway"
#: A day: longer than any benchmark run, as the kubelet would keep a mounted token fresh.
SA_TOKEN_SECONDS = 24 * 3600
RBAC = "rbac.authorization.k8s.io"
#: EG 3.3's Helm chart (templates/eg-clusterrole.yaml), without its Spark operator rules.
CONTROLLER_ROLE = "enterprise-gateway-controller"
KERNEL_ROLE = "kernel-controller"
CLUSTER_ROLES: dict[str, list[dict[str, list[str]]]] = {
    CONTROLLER_ROLE: [
        {"apiGroups": [""], "resources": ["pods", "namespaces", "services", "configmaps",
                                          "secrets", "persistentvolumes",
                                          "persistentvolumeclaims"],
         "verbs": ["get", "watch", "list", "create", "delete"]},
        {"apiGroups": [RBAC], "resources": ["rolebindings"],
         "verbs": ["get", "list", "create", "delete"]},
    ],
    KERNEL_ROLE: [
        {"apiGroups": [""], "resources": ["pods"],
         "verbs": ["get", "watch", "list", "create", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "create"]},
        {"apiGroups": [""], "resources": ["services", "persistentvolumeclaims"],
         "verbs": ["list"]},
    ],
}


class SetupError(RuntimeError):
    """EG could not be installed or prepared; the message carries the tool's own error text."""


def _run(argv: list[str], what: str, timeout: float = 900) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        noise = "WARNING: Location"
        err = "\n".join(line for line in (proc.stderr + proc.stdout).splitlines()
                        if noise not in line)
        raise SetupError(f"{what} failed (exit {proc.returncode}): {err[-1500:]}")
    return proc.stdout


def base_python() -> str:
    """The interpreter this virtualenv was made from (EG gets its own, clean one)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_installed() -> dict[str, str]:
    """Create ``bench/.venv-eg`` and fetch EG's sdist (once); return its versions."""
    python = VENV / "bin" / "python"
    marker = VENV / ".bench-installed"
    if not marker.exists():
        if not python.exists():
            _run([base_python(), "-m", "venv", str(VENV)], "creating bench/.venv-eg")
        _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q",
              EG_REQUIREMENT, KERNEL_REQUIREMENT], f"pip install {EG_REQUIREMENT}")
        marker.write_text("ok\n")
    info = eg_versions()
    etc = VENV / "eg-etc"
    if not (etc / "kernel-launchers").is_dir():
        sdist_dir = VENV / "sdist"
        sdist_dir.mkdir(exist_ok=True)
        version = info["jupyter-enterprise-gateway"]
        _run([str(python), "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
              "--no-binary", ":all:", "-d", str(sdist_dir),
              f"jupyter-enterprise-gateway=={version}"], "pip download of EG's sdist")
        archives = sorted(sdist_dir.glob("jupyter_enterprise_gateway-*.tar.gz"))
        if not archives:
            raise SetupError(f"no EG sdist in {sdist_dir}")
        with tarfile.open(archives[-1]) as tar:
            members = [m for m in tar.getmembers()
                       if re.match(r"^[^/]+/etc/(kernel-launchers|kernelspecs)/", m.name)]
            tar.extractall(sdist_dir, members=members, filter="data")
        shutil.rmtree(etc, ignore_errors=True)
        shutil.copytree(sdist_dir / archives[-1].name[:-len(".tar.gz")] / "etc", etc)
    return info


def eg_versions() -> dict[str, str]:
    python = VENV / "bin" / "python"
    code = ("import json\nfrom importlib.metadata import version\n"
            "names=['jupyter-enterprise-gateway','jupyter_server','jupyter_client','ipykernel',"
            "'pyzmq','tornado','kubernetes']\n"
            "print(json.dumps({n: version(n) for n in names}))")
    return json.loads(_run([str(python), "-c", code], "reading EG's versions"))


def image_name(version: str) -> str:
    return f"elyra/kernel-py:{version}"


def image_policy(version: str) -> Any:
    """The local kubelet's mapping for EG's kernel image (its CMD, its Python, its layout)."""
    from elastic_kernels.localcluster.images import ImagePolicy
    launchers = VENV / "eg-etc" / "kernel-launchers"
    path = os.pathsep.join([str(VENV / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    entry = ["/usr/bin/env", f"PATH={path}", f"KERNEL_LAUNCHERS_DIR={launchers}",
             "KERNEL_LANGUAGE=python", "bash", str(launchers / "bootstrap" / "bootstrap-kernel.sh")]
    return ImagePolicy(entrypoints={image_name(version): entry})


def install_kernelspec(data_dir: Path, version: str) -> Path:
    """EG's python_kubernetes kernelspec, laid out as its kernelspecs tarball installs it."""
    etc = VENV / "eg-etc"
    target = data_dir / "kernels" / KERNEL_NAME
    shutil.rmtree(target, ignore_errors=True)
    (target / "scripts").mkdir(parents=True)
    src_scripts = etc / "kernel-launchers" / "kubernetes" / "scripts"
    shutil.copy2(src_scripts / "launch_kubernetes.py", target / "scripts")
    template = (src_scripts / "kernel-pod.yaml.j2").read_text()
    marker = "    env:\n"
    if marker not in template:
        raise SetupError("EG's kernel-pod.yaml.j2 has no container env: block to extend")
    template = template.replace(marker, marker + (
        "    - name: POD_IP  # bench: lets bench/eg_site keep 0.0.0.0 binds on the pod address\n"
        "      valueFrom:\n        fieldRef:\n          fieldPath: status.podIP\n"), 1)
    (target / "scripts" / "kernel-pod.yaml.j2").write_text(template)
    spec = json.loads((etc / "kernelspecs" / KERNEL_NAME / "kernel.json").read_text())
    spec["argv"] = [str(target / "scripts" / "launch_kubernetes.py") if a.endswith(
        "launch_kubernetes.py") else a for a in spec["argv"]]
    spec["metadata"]["process_proxy"]["config"]["image_name"] = image_name(version)
    (target / "kernel.json").write_text(json.dumps(spec, indent=2))
    return target


# --- in-cluster credentials -----------------------------------------------------------------

async def _create(client: Any, path: str, body: dict[str, Any]) -> None:
    from elastic_kernels.kube.client import KubeError
    try:
        await client.request("POST", path, body=body)
    except KubeError as e:
        if not e.already_exists:
            raise


async def service_account_token(cluster: Any, name: str) -> str:
    """A token for ServiceAccount ``name`` (created if missing) in the cluster's namespace,
    bound to EG's ClusterRoles as its Helm chart binds it."""
    client = await C.kube_client(cluster)
    base = f"/api/v1/namespaces/{cluster.namespace}/serviceaccounts"
    try:
        await _create(client, base, {"metadata": {"name": name}})
        for role, rules in CLUSTER_ROLES.items():
            await _create(client, f"/apis/{RBAC}/v1/clusterroles",
                          {"metadata": {"name": role}, "rules": rules})
        await _create(client, f"/apis/{RBAC}/v1/clusterrolebindings", {
            "metadata": {"name": CONTROLLER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": name,
                          "namespace": cluster.namespace}],
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": CONTROLLER_ROLE}})
        answer = await client.request("POST", f"{base}/{name}/token", body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": SA_TOKEN_SECONDS}})
        return str(answer["status"]["token"])
    finally:
        await client.close()


# --- the EG server -----------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def enterprise_gateway(cluster: Any, workdir: Path, version: str
                             ) -> AsyncIterator[C.Server]:
    home = workdir / "eg"
    env = C.private_jupyter_env(home)
    install_kernelspec(home / "data", version)
    sa_dir = home / "serviceaccount"
    sa_dir.mkdir(parents=True, exist_ok=True)
    # The kernel pods' temp dir (EG's launcher writes each kernel's connection file there), so
    # those files, keys included, go away with the benchmark's directory.
    tmpdir = home / "tmp"
    tmpdir.mkdir(mode=0o700, exist_ok=True)
    tls_port = int(cluster.apiserver.tls_url.rsplit(":", 1)[1])
    sa_token = await service_account_token(cluster, SERVICE_ACCOUNT)
    fd = os.open(sa_dir / "token", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(sa_token)
    (sa_dir / "ca.crt").write_bytes(cluster.ca_pem)
    (sa_dir / "namespace").write_text(cluster.namespace)
    token = "eg-" + uuid.uuid4().hex
    env.update({
        "PATH": os.pathsep.join([str(VENV / "bin"), env.get("PATH", "/usr/bin:/bin")]),
        "PYTHONPATH": str(SITE),
        "KUBERNETES_SERVICE_HOST": C.HOST, "KUBERNETES_SERVICE_PORT": str(tls_port),
        "BENCH_EG_SERVICEACCOUNT": str(sa_dir),
        "EG_NAMESPACE": cluster.namespace,
        "EG_KERNEL_CLUSTER_ROLE": KERNEL_ROLE,
        "EG_RESPONSE_IP": C.HOST, "EG_RESPONSE_PORT": str(C.free_port()),
        "EG_PROHIBITED_LOCAL_IPS": "",
        # What EG passes from its own environment to launch_kubernetes.py (and so, by
        # extend_pod_env, into the kernel pod): the venv's PATH and the site hook.
        "EG_INHERITED_ENVS": "PATH,PYTHONPATH,BENCH_EG_SERVICEACCOUNT,LANG,TMPDIR",
        "TMPDIR": str(tmpdir),
    })
    env.pop("VIRTUAL_ENV", None)

    def argv(port: int) -> list[str]:
        return [str(VENV / "bin" / "jupyter"), "enterprisegateway", f"--ip={C.HOST}",
                f"--port={port}", "--port_retries=0",
                f"--EnterpriseGatewayApp.auth_token={token}",
                f"--EnterpriseGatewayApp.default_kernel_name={KERNEL_NAME}",
                "--log-level=WARN"]

    async with C.run_server("enterprise gateway", argv, env, token, home / "eg.log",
                            ready_path="/api") as server:
        server.extra["tls_port"] = tls_port
        server.extra["tmpdir"] = tmpdir
        yield server


def kernel_connection_file(tmpdir: Path, kernel_id: str) -> Path | None:
    """EG's launcher writes the kernel's connection file to the pod's temp dir."""
    found = sorted(tmpdir.glob(f"kernel-{kernel_id}_*.json"))
    return found[-1] if found else None


async def eg_connection_info(cluster: Any, tmpdir: Path, kernel_id: str) -> C.JSON:
    """The EG kernel's connection info: its own file, with its pod's IP (as EG itself uses)."""
    path = kernel_connection_file(tmpdir, kernel_id)
    if path is None:
        raise RuntimeError(f"no connection file for EG kernel {kernel_id} in {tmpdir}")
    info = json.loads(path.read_text())
    client = await C.kube_client(cluster)
    try:
        from elastic_kernels.kube.client import PODS
        pods = await client.list(PODS, all_namespaces=True,
                                 label_selector=f"kernel_id={kernel_id}")
    finally:
        await client.close()
    items = pods.get("items") or []
    if not items:
        raise RuntimeError(f"no pod for EG kernel {kernel_id}")
    info["ip"] = items[0]["status"]["podIP"]
    return info
