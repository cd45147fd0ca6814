"""Running the install's own command lines on this machine, and a representative kernel session.

The gateway and cull commands come from the rendered manifests (``kubectl kustomize deploy/``),
with the downward-API variables filled in as the kubelet would, so a test proves the manifests'
command lines, not copies of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import secrets
import sys
import typing as t
from collections import Counter
from pathlib import Path

import yaml

from elastic_kernels.localcluster.cluster import LocalCluster
from tests.gateway.support import KernelWS, api, json_of

from .manifests import JSON, NAMESPACE, find, pod_spec

Request = tuple[str, str, str, str]  # verb, group, resource, subresource
SERVING = re.compile(r"serving (http://\S+?)/? \[")


def container_of(docs: list[JSON], kind: str, name: str) -> JSON:
    (container,) = pod_spec(find(docs, kind, name))["containers"]
    return t.cast(JSON, container)


def expand(args: list[str], env: t.Mapping[str, str]) -> list[str]:
    """``$(VAR)`` references, expanded as the kubelet does (unknown ones stay as written)."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), a)
            for a in args]


WILDCARD_FLAGS = ("--ip=0.0.0.0", "--ip=::", "--ip=")
LOOPBACK_FLAG = "--ip=127.0.0.1"


def host_command(container: JSON, env: t.Mapping[str, str],
                 overrides: t.Sequence[str] = ()) -> list[str]:
    """The container's command line for this host: the venv's console script, then its args.

    ``overrides`` (``--flag=value``) replace the manifest's arguments of the same flag. The
    manifests' servers listen on every interface (``--ip=0.0.0.0``), right in a pod's own network
    namespace; here that would be every interface of this host, so they listen on loopback.
    """
    command = list(container["command"])
    command[0] = str(Path(sys.executable).parent / command[0])
    replaced = {o.split("=", 1)[0] for o in overrides}
    args = [LOOPBACK_FLAG if a in WILDCARD_FLAGS else a
            for a in expand(list(container.get("args", [])), env)
            if a.split("=", 1)[0] not in replaced]
    return command + args + list(overrides)


def local_pod(deployment: JSON, name: str, namespace: str) -> JSON:
    """A pod as the Deployment's ReplicaSet would create it, for the local cluster to run.

    One change: the manifest's ``--ip=0.0.0.0`` (every interface of the pod's own network
    namespace) becomes ``--ip=$(POD_IP)``, the pod's private 127.x address: the local cluster's
    pods are processes on this host.
    """
    template = copy.deepcopy(deployment["spec"]["template"])
    (container,) = template["spec"]["containers"]
    assert "--ip=0.0.0.0" in container["args"]
    container["args"] = ["--ip=$(POD_IP)" if a == "--ip=0.0.0.0" else a
                         for a in container["args"]]
    container["env"].insert(0, {"name": "POD_IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": template["metadata"]["labels"],
                         **({"annotations": template["metadata"]["annotations"]}
                            if template["metadata"].get("annotations") else {})},
            "spec": template["spec"]}


def admin_kubeconfig(cluster: LocalCluster, path: Path) -> Path:
    return cluster.write_kubeconfig(path, namespace=NAMESPACE)


def gateway_env(kubeconfig: Path, workdir: Path, token: str) -> dict[str, str]:
    """What the gateway process gets: its token, a kubeconfig, and private Jupyter dirs."""
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER", "ELASTIC_KERNELS", "KUBERNETES_"))}
    env.update({"KUBECONFIG": str(kubeconfig), "ELASTIC_KERNELS_TOKEN": token,
                "HOME": str(home), "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
                "JUPYTER_CONFIG_DIR": str(workdir / "config"),
                "JUPYTER_DATA_DIR": str(workdir / "data"), "JUPYTER_NO_CONFIG": "1"})
    return env


class ServerProcess:
    """A server (gateway, JupyterLab) as a child process; ``url`` once it serves.

    Always stopped by ``stop()`` (SIGTERM, then SIGKILL to its process group after ``grace``).
    """

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60, pattern: re.Pattern[str] = SERVING) -> str:
        """Start the process; return the first URL ``pattern`` finds in its output."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        assert self.proc.stdout is not None
        out = self.log.open("ab")
        try:
            async with asyncio.timeout(timeout):
                while not self.url:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise AssertionError(f"{self.argv[0]} exited ({await self.proc.wait()}): "
                                             f"{self.log.read_text()[-3000:]}")
                    out.write(line)
                    out.flush()
                    m = pattern.search(line.decode(errors="replace"))
                    if m:
                        self.url = m.group(1)
        except BaseException:
            out.close()
            raise
        self._drain = asyncio.create_task(self._keep_reading(out))
        return self.url

    async def _keep_reading(self, out: t.BinaryIO) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            async for line in self.proc.stdout:
                out.write(line)
        finally:
            out.close()

    async def stop(self, grace: float = 20) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await proc.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 5)
        return proc.returncode


async def kernel_session(url: str, token: str, kernel_name: str) -> dict[str, t.Any]:
    """Start, execute, interrupt, restart, execute again and shut down one kernel via the API."""
    facts: dict[str, t.Any] = {}
    specs = await api(url, "GET", "/api/kernelspecs", token=token)
    assert specs.code == 200, specs.body
    facts["kernelspecs"] = sorted(json_of(specs)["kernelspecs"])
    started = await api(url, "POST", "/api/kernels", {"name": kernel_name}, token=token)
    assert started.code == 201, started.body
    kernel = json_of(started)
    kid = kernel["id"]
    ws = await KernelWS.open(url, kid, token=token)
    try:
        first = await ws.execute("import os; x = 6 * 7; print(x, os.getpid())", timeout=60)
        assert first["reply"]["status"] == "ok", first
        facts["first"] = first["stdout"].split()
    finally:
        ws.close()
    interrupted = await api(url, "POST", f"/api/kernels/{kid}/interrupt", token=token)
    assert interrupted.code == 204, interrupted.body
    restarted = await api(url, "POST", f"/api/kernels/{kid}/restart", token=token)
    assert restarted.code == 200, restarted.body
    ws = await KernelWS.open(url, kid, token=token)
    try:
        second = await ws.execute("print('x' in globals())", timeout=60)
        assert second["reply"]["status"] == "ok", second
        facts["after_restart"] = second["stdout"].strip()
    finally:
        ws.close()
    model = await api(url, "GET", f"/api/kernels/{kid}", token=token)
    assert model.code == 200, model.body
    facts["model"] = json_of(model)
    deleted = await api(url, "DELETE", f"/api/kernels/{kid}", token=token)
    assert deleted.code == 204, deleted.body
    facts["kernel_id"] = kid
    return facts


def requests_since(cluster: LocalCluster, snapshot: Counter) -> dict[Request, int]:
    """Resource requests made after ``snapshot``, by (verb, group, resource, subresource).

    Every one of them must be in the install's namespace: the Roles are namespaced.
    """
    used: Counter[Request] = Counter()
    for (verb, group, resource, sub, namespace), n in cluster.request_counter.since(
            snapshot).items():
        assert namespace == NAMESPACE, (verb, group, resource, sub, namespace)
        used[(verb, group, resource, sub)] += n
    return dict(used)


def requests_by(cluster: LocalCluster, user: str) -> dict[Request, int]:
    """Resource requests ``user`` made, by (verb, group, resource, subresource).

    Every one of them must be in the install's namespace: the Roles are namespaced.
    """
    used: Counter[Request] = Counter()
    for (who, verb, group, resource, sub, namespace), n in \
            cluster.request_counter.by_user().items():
        if who != user:
            continue
        assert namespace == NAMESPACE, (verb, group, resource, sub, namespace)
        used[(verb, group, resource, sub)] += n
    return dict(used)


def denials_of(cluster: LocalCluster, user: str) -> list[tuple[str, ...]]:
    """Requests of ``user`` that authorization refused (verb, group or path, resource, ...)."""
    return sorted(key[1:] for key in cluster.request_counter.denied if key[0] == user)


def service_account_user(name: str) -> str:
    return f"system:serviceaccount:{NAMESPACE}:{name}"


async def service_account_kubeconfig(cluster: LocalCluster, kubectl: t.Any, name: str,
                                     path: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ``name`` of the install's namespace,
    with a token from ``kubectl create token`` (the cluster's CA, as in the admin's)."""
    token = (await kubectl("create", "token", name, "-n", NAMESPACE, "--duration=1h")).strip()
    return cluster.write_kubeconfig(path, namespace=NAMESPACE, token=token)


GatewayProcess = ServerProcess


async def wait_serving(url: str, timeout: float = 60) -> None:
    """Until GET /api (the probes' endpoint; no token needed) answers 200.

    A server may log its URL a moment before it accepts connections.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            if (await api(url, "GET", "/api", token=None)).code == 200:
                return
        except OSError:
            pass
        if loop.time() > deadline:
            raise AssertionError(f"{url}/api did not answer within {timeout:.0f}s")
        await asyncio.sleep(0.2)


def new_token() -> str:
    return secrets.token_hex(16)


def dump(path: Path, docs: list[JSON]) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path
