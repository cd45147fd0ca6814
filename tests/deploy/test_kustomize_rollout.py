"""The admin guide's kustomize install, command by command, on a local cluster that runs
Deployments: the gateway's pods come from its Deployment, ``kubectl rollout status`` finishes,
a gateway pod found by its labels serves a kernel, and a deleted gateway pod is replaced by one
that serves.

The commands are the guide's own (its "Install with kubectl (kustomize)" block, read from
``docs/admin-guide.md``): the namespace, the three Secrets with fresh random values where it says
``$(openssl rand -hex 32)``, ``kubectl apply -k``, the CRDs' ``Established`` wait, the
kernelspecs, ``kubectl rollout status deployment/elastic-kernels-gateway`` and the kernelspec
list. One thing differs, and the guide has a place for it: ``kubectl apply -k`` builds an
overlay of ``deploy/`` of the admin's own ("Your own overlay"), outside the repository, because
the local cluster's pods are processes on this host, with no network namespace of their own:

- the gateway's ``--ip=0.0.0.0`` (every interface of the pod's network namespace) becomes
  ``--ip=$(POD_IP)``, the pod's private 127.x address, as ``session.local_pod`` does for the other
  install tests. On this host ``0.0.0.0:8888`` would be every address's port 8888: the second
  replica, and any other test's gateway on this machine, could not bind it;
- the notebook server's Deployment is scaled to 0. It binds ``0.0.0.0:8888`` too, its
  ``--gateway-url`` names the gateway's Service, which nothing resolves here (no cluster DNS or
  Service proxy), and JupyterLab is the costliest process of the install; ``test_rbac.py`` runs it
  from its template with the changes it needs.

Everything else is the base as shipped: two gateway replicas, ``maxSurge: 1``,
``maxUnavailable: 0``, the restricted namespace (every pod passes Pod Security), the snapshot
claim and key. The cull CronJob is stored and, with no CronJob controller here, never runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import typing as t
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import Kubectl
from .manifests import DEPLOY, JSON, NAMESPACE, REPO, find, kustomize
from .session import kernel_session, wait_serving

pytestmark = [pytest.mark.kubectl, pytest.mark.slow, pytest.mark.timeout(300)]

GATEWAY = "elastic-kernels-gateway"
NOTEBOOK = "elastic-kernels-notebook"
GATEWAY_TOKEN = "elastic-kernels-gateway-token"
GUIDE = REPO / "docs" / "admin-guide.md"
RANDOM = "$(openssl rand -hex 32)"


@pytest_asyncio.fixture
async def install_cluster(tmp_path: Path,
                          install_cluster_shape: tuple[int, int]) -> AsyncIterator[LocalCluster]:
    """conftest's cluster, with the Deployment controller on (it is off by default)."""
    nodes, gpus = install_cluster_shape
    cluster = LocalCluster(nodes=nodes, gpus_per_node=gpus, workdir=tmp_path / "cluster",
                           namespace=NAMESPACE, crash_backoff_seconds=0.2,
                           controllers={"deployment"})
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


def guide_commands() -> list[str]:
    """The shell commands of the guide's "Install with kubectl (kustomize)" block, one a line
    (continuations joined, comments dropped)."""
    section = GUIDE.read_text().split("## Install with kubectl (kustomize)", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "the guide's kustomize install block"
    lines = match.group(1).replace("\\\n", " ").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def overlay(directory: Path, base_docs: list[JSON]) -> Path:
    """The admin's overlay of ``deploy/`` with this host's two changes (module docstring)."""
    (container,) = find(base_docs, "Deployment", GATEWAY)["spec"]["template"]["spec"][
        "containers"]
    ip = f"/spec/template/spec/containers/0/args/{container['args'].index('--ip=0.0.0.0')}"
    patch = [{"op": "test", "path": ip, "value": "--ip=0.0.0.0"},
             {"op": "replace", "path": ip, "value": "--ip=$(POD_IP)"},
             {"op": "add", "path": "/spec/template/spec/containers/0/env/0",
              "value": {"name": "POD_IP",
                        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}}]
    directory.mkdir()
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, directory)],
        "replicas": [{"name": NOTEBOOK, "count": 0}],
        "patches": [{"target": {"kind": "Deployment", "name": GATEWAY},
                     "patch": yaml.safe_dump(patch)}],
    }))
    return directory


def as_run_here(command: str, own_overlay: Path, made: dict[str, str]) -> list[str]:
    """kubectl's arguments for one of the guide's commands: repository paths made absolute, the
    overlay for ``deploy/`` after ``-k``, a fresh random value for each ``openssl rand`` (kept
    in ``made`` by Secret name)."""
    value = secrets.token_hex(32)
    argv = shlex.split(command.replace(RANDOM, value))
    assert argv[0] == "kubectl", command
    args = argv[1:]
    if RANDOM in command:
        made[args[args.index("generic") + 1]] = value
    out = []
    for i, arg in enumerate(args):
        if i and args[i - 1] == "-k" and arg.rstrip("/") == "deploy":
            arg = str(own_overlay)
        elif re.match(r"(deploy|kernelspecs)(/|$)", arg):
            arg = str(REPO / arg)
        out.append(arg)
    return out


async def gateway_pods(kubectl: Kubectl, selector: str) -> list[JSON]:
    """The gateway's pods that are not being deleted, found by the Deployment's labels."""
    items = (await kubectl.json("get", "pods", "-n", NAMESPACE, "-l", selector))["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


async def serving_url(kubectl: Kubectl, name: str) -> str:
    """Once the pod is Ready, ``http://<its IP>:8888`` answering ``GET /api``."""
    await kubectl("wait", "-n", NAMESPACE, "--for=condition=Ready", f"pod/{name}",
                  "--timeout=60s")
    pod = await kubectl.json("get", "pod", "-n", NAMESPACE, name)
    ip = pod["status"]["podIP"]
    assert ip.startswith("127.") and ip != "127.0.0.1", ip
    await wait_serving(f"http://{ip}:8888")
    return f"http://{ip}:8888"


async def show_logs(kubectl: Kubectl, selector: str) -> None:
    """The end of each gateway pod's log: what a failed test's report must carry."""
    for pod in await gateway_pods(kubectl, selector):
        name = pod["metadata"]["name"]
        got = await kubectl.run("logs", "-n", NAMESPACE, name, "--tail=150")
        print(f"--- pod {name}: the end of its log ---\n{got.stdout or got.stderr}")


async def test_the_guides_kustomize_install_rolls_out_a_gateway_that_serves(
        kubectl: Kubectl, base_docs: list[JSON], tmp_path: Path) -> None:
    commands = guide_commands()
    assert "kubectl apply -k deploy/" in commands
    rollout = f"kubectl -n {NAMESPACE} rollout status deployment/{GATEWAY}"
    assert rollout in commands
    own_overlay = overlay(tmp_path / "my-install", base_docs)
    made: dict[str, str] = {}
    outputs = {}
    for command in commands:
        outputs[command] = await kubectl(*as_run_here(command, own_overlay, made))
    assert sorted(made) == [GATEWAY_TOKEN, "elastic-kernels-notebook-token",
                            "elastic-kernels-snapshot-key"]
    assert f'deployment "{GATEWAY}" successfully rolled out' in outputs[rollout]
    assert "python-cpu" in outputs[f"kubectl -n {NAMESPACE} get jupyterkernelspecs"]

    deployment = find(base_docs, "Deployment", GATEWAY)
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"][
        "matchLabels"].items())
    token = made[GATEWAY_TOKEN]
    try:
        got = await kubectl.json("get", "deployment", "-n", NAMESPACE, GATEWAY)
        pods = await gateway_pods(kubectl, selector)
        assert len(pods) == deployment["spec"]["replicas"] == 2
        for pod in pods:
            meta = pod["metadata"]
            assert meta["ownerReferences"] == [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY,
                "uid": got["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
            assert meta["name"].startswith(f"{GATEWAY}-{meta['labels']['pod-template-hash']}-")
        status = got["status"]
        assert (status["replicas"], status["updatedReplicas"], status["availableReplicas"]) == (
            2, 2, 2)
        # The notebook server's Deployment is there, at 0 replicas, and rolled out as such.
        await kubectl("rollout", "status", "-n", NAMESPACE, f"deployment/{NOTEBOOK}",
                      "--timeout=60s")
        assert await gateway_pods(kubectl, "app.kubernetes.io/component=notebook") == []

        first = pods[0]["metadata"]["name"]
        url = await serving_url(kubectl, first)
        facts = await kernel_session(url, token, "python-cpu")
        assert facts["first"][0] == "42" and facts["after_restart"] == "False"

        # A gateway pod deleted (kubectl waits until it is gone) is replaced by a new one.
        await kubectl("delete", "pod", "-n", NAMESPACE, first, "--wait=true", "--timeout=60s")
        before = {p["metadata"]["name"] for p in pods}

        async def replacement() -> str | None:
            names = {p["metadata"]["name"] for p in await gateway_pods(kubectl, selector)}
            new = sorted(names - before)
            return new[0] if new and len(names) == 2 else None

        new = await until_found(replacement)
        await kubectl("rollout", "status", "-n", NAMESPACE, f"deployment/{GATEWAY}",
                      "--timeout=60s")
        new_url = await serving_url(kubectl, new)
        assert new_url != url
        facts = await kernel_session(new_url, token, "python-cpu")
        assert facts["first"][0] == "42"
        events = (await kubectl.json("get", "events", "-n", NAMESPACE, "--field-selector",
                                     f"involvedObject.name={GATEWAY}"))["items"]
        assert f"Created pod: {new}" in {e["message"] for e in events}
    except BaseException:
        await show_logs(kubectl, selector)
        raise


async def until_found(find_one: t.Callable[[], t.Awaitable[str | None]],
                      timeout: float = 60) -> str:
    """Ask again until ``find_one`` finds something (a new pod has no name to wait for)."""
    try:
        async with asyncio.timeout(timeout):
            while (found := await find_one()) is None:
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError("no replacement gateway pod appeared") from None
    return found


def test_the_overlay_changes_only_what_this_host_needs(base_docs: list[JSON],
                                                      tmp_path: Path) -> None:
    built = kustomize(overlay(tmp_path / "my-install", base_docs))
    changed = [d for d in built if d != next(
        (b for b in base_docs if (b["kind"], b["metadata"]["name"]) == (
            d["kind"], d["metadata"]["name"])), None)]
    assert sorted(d["metadata"]["name"] for d in changed) == [GATEWAY, NOTEBOOK]
    gateway = find(built, "Deployment", GATEWAY)
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert "--ip=$(POD_IP)" in container["args"] and "--ip=0.0.0.0" not in container["args"]
    assert container["env"][0] == {"name": "POD_IP",
                                   "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    shipped = json.loads(json.dumps(find(base_docs, "Deployment", GATEWAY)))
    shipped["spec"]["template"]["spec"]["containers"][0]["args"] = container["args"]
    shipped["spec"]["template"]["spec"]["containers"][0]["env"] = container["env"]
    assert gateway == shipped
    assert find(built, "Deployment", NOTEBOOK)["spec"]["replicas"] == 0
