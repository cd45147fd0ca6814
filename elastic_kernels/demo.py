"""``make demo``: local cluster, gateway and JupyterLab as three supervised processes.

Three processes rather than one so that each runs exactly as it would in production (the gateway
reaches the cluster only through a kubeconfig, JupyterLab reaches the gateway only through
``--gateway-url``). Ctrl-C stops them in reverse order; the cluster stops every pod it started,
so nothing is left behind.

Everything it needs comes with the installed package (the CRDs and example kernelspecs applied
with ``cluster --with-examples``, the launcher the kubelet puts on pods' PATH), so it runs the
same from a checkout and from a wheel in any virtualenv.

The notebooks folder (JupyterLab's root dir) is the user's volume in every demo kernel, as a
home directory is on a real cluster: the shipped kernelspecs stay generic, and the demo applies
an overlay it writes at start (:func:`demo_manifests`): the shipped templates with
``spec.userVolumes``, and a PersistentVolume on the folder pre-bound to the claim those name.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from collections.abc import Callable
from typing import IO, Any

import yaml

from . import data
from .kube.apply import load_manifests

STARTUP_TIMEOUT = 60.0

#: The local cluster's namespace (``cluster --namespace``'s default), where the gateway runs.
DEMO_NAMESPACE = "default"
#: Whoever presents the gateway token (ElasticIdentityProvider.admin_username): the demo's user.
DEMO_USER = "admin"
#: Where kernels see the notebooks folder: the jupyter/docker-stacks home, as on a real cluster.
KERNEL_HOME = "/home/jovyan"
#: The example folder in the notebooks folder, and the file its notebook reads.
EXAMPLE_DIR = "example"
EXAMPLE_CSV = """\
city,country,temperature_c
Lisbon,Portugal,21.5
Oslo,Norway,9.0
Nairobi,Kenya,24.1
Montreal,Canada,12.3
"""


class DemoError(RuntimeError):
    pass


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while starting: stop what has started instead of finishing the start."""


class Supervisor:
    """Starts children in their own process groups and always stops them, newest first."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> \
            subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "wb")
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
        self.children.append((name, proc, log))
        return proc

    def exited(self) -> tuple[str, int] | None:
        for name, proc, _ in self.children:
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop_all(self, grace: float = 15.0) -> None:
        for name, proc, log in reversed(self.children):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    print(f"demo: {name} did not stop in {grace:.0f}s; killing it", flush=True)
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()
            log.close()
        self.children.clear()


def _wait_for_file_line(path: Path, marker: str, proc: subprocess.Popen[bytes],
                        timeout: float, stopping: Callable[[], bool]) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopping():
            raise Interrupted
        if proc.poll() is not None:
            raise DemoError(f"exited with code {proc.returncode}; see {path}")
        try:
            for line in path.read_text(errors="replace").splitlines():
                if marker in line:
                    return line
        except OSError:
            pass
        time.sleep(0.1)
    raise DemoError(f"not ready after {timeout:.0f}s; see {path}")


def _wait_for_http(url: str, token: str, proc: subprocess.Popen[bytes], logfile: Path,
                   timeout: float, stopping: Callable[[], bool]) -> dict:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    while time.monotonic() < deadline:
        if stopping():
            raise Interrupted
        if proc.poll() is not None:
            raise DemoError(f"exited with code {proc.returncode}; see {logfile}")
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                return json.loads(resp.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.2)
    raise DemoError(f"{url} did not answer within {timeout:.0f}s; see {logfile}")


def missing_modules(no_lab: bool) -> list[str]:
    """What this environment lacks for the demo, said before anything starts.

    Kernels run ``python -m ipykernel_launcher`` with this interpreter's ``bin/`` on the pod's
    PATH, and JupyterLab runs with this interpreter; without them the demo would start and then
    fail at the first kernel or in a log file.
    """
    needed = ["ipykernel"] + ([] if no_lab else ["jupyterlab"])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def _node_arguments(args: argparse.Namespace) -> list[str] | None:
    """The cluster command's node options (--gpu-flavors or --node-layout), checked here so a
    typo is reported at once rather than in the cluster's log; None after reporting one."""
    from .localcluster.nodes import nodes_from_options

    try:
        nodes_from_options(args.gpu_flavors, args.node_layout, gpu_replicas=args.gpu_replicas)
    except ValueError as e:
        print(f"demo: {e}", file=sys.stderr, flush=True)
        return None
    if getattr(args, "node_layout", None):
        return ["--node-layout", str(Path(args.node_layout).resolve())]
    if getattr(args, "gpu_flavors", None) is not None:
        return ["--gpu-flavors", args.gpu_flavors, "--gpu-replicas", str(args.gpu_replicas)]
    return []


def run_demo(args: argparse.Namespace) -> int:
    missing = missing_modules(args.no_lab)
    if missing:
        print(f"demo: {' and '.join(missing)} not installed in {sys.prefix}: pip install "
              "'elastic-kernels[demo]'" + ("" if "jupyterlab" not in missing else
                                           ", or run with --no-lab"),
              file=sys.stderr, flush=True)
        return 2
    node_args = _node_arguments(args)
    if node_args is None:
        return 2
    workdir = Path(args.workdir).resolve()
    logdir = workdir / "logs"
    notebooks = workdir / "notebooks"
    for d in (logdir, notebooks):
        d.mkdir(parents=True, exist_ok=True)
    write_example(notebooks)
    overlay = workdir / "demo-manifests.yaml"
    overlay.write_text("# Written by `elastic-kernels demo` at each start; see demo.py.\n"
                       + yaml.safe_dump_all(demo_manifests(notebooks), sort_keys=False))
    kubeconfig = workdir / "kubeconfig"
    gateway_token = secrets.token_urlsafe(24)
    lab_token = secrets.token_urlsafe(24)
    python = sys.executable
    sup = Supervisor(logdir)

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        print("demo: starting the local cluster ("
              + ("mixed GPU nodes" if node_args else "2 nodes x 4 simulated GPUs") + ")...",
              flush=True)
        cluster = sup.start("cluster", [
            python, "-m", "elastic_kernels", "cluster", "--kubeconfig", str(kubeconfig),
            "--workdir", str(workdir / "pods"), "--namespace", DEMO_NAMESPACE,
            "--with-examples", "--apply", str(overlay), *node_args,
        ])
        try:
            line = _wait_for_file_line(logdir / "cluster.log", "local cluster:", cluster,
                                       STARTUP_TIMEOUT, lambda: stopping)
        except DemoError as e:
            raise DemoError(f"local cluster: {e}") from None
        print(f"demo: {line.strip()}", flush=True)

        print("demo: starting the gateway...", flush=True)
        gateway = sup.start("gateway", [
            python, "-m", "elastic_kernels", "gateway", "--kubeconfig", str(kubeconfig),
            "--ip", "127.0.0.1", "--port", str(args.gateway_port),
        ], env={"ELASTIC_KERNELS_TOKEN": gateway_token})
        gateway_url = f"http://127.0.0.1:{args.gateway_port}"
        try:
            specs = _wait_for_http(f"{gateway_url}/api/kernelspecs", gateway_token, gateway,
                                   logdir / "gateway.log", STARTUP_TIMEOUT, lambda: stopping)
        except DemoError as e:
            raise DemoError(f"gateway: {e}") from None
        names = ", ".join(sorted((specs.get("kernelspecs") or {}).keys())) or "none"
        print(f"demo: gateway at {gateway_url} serving kernelspecs: {names}", flush=True)

        if not args.no_lab:
            print("demo: starting JupyterLab...", flush=True)
            lab = sup.start("jupyterlab", [
                python, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1",
                "--port", str(args.lab_port), f"--ServerApp.root_dir={notebooks}",
                f"--gateway-url={gateway_url}",
                *gateway_client_flags(),
                # Everything stays on this machine: no news feed, no update check (and so no
                # "get notified about Jupyter news?" prompt over the demo).
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ], env={"JUPYTER_TOKEN": lab_token, "JUPYTER_GATEWAY_AUTH_TOKEN": gateway_token,
                    "JUPYTER_CONFIG_PATH": lab_config_path(workdir)})
            try:
                _wait_for_http(f"http://127.0.0.1:{args.lab_port}/api/status", lab_token, lab,
                               logdir / "jupyterlab.log", STARTUP_TIMEOUT, lambda: stopping)
            except DemoError as e:
                raise DemoError(f"JupyterLab: {e}") from None
            print(f"\n  JupyterLab: http://127.0.0.1:{args.lab_port}/lab?token={lab_token}\n"
                  f"  notebooks:  {notebooks} (kernels see it at {KERNEL_HOME}; "
                  f"try {EXAMPLE_DIR}/)\n"
                  f"  kubectl:    kubectl --kubeconfig {kubeconfig} get jupyterkernels,pods\n"
                  f"  logs:       {logdir}\n\nCtrl-C stops everything.", flush=True)
        else:
            # The token goes to a private file, not to the terminal, which scripts often log.
            token_file = workdir / "gateway.token"
            token_file.touch(mode=0o600)
            token_file.chmod(0o600)
            token_file.write_text(gateway_token)
            print(f"\n  gateway:    {gateway_url} (token in {token_file})\n"
                  f"  try:        curl -H \"Authorization: token $(cat {token_file})\" "
                  f"{gateway_url}/api/kernelspecs\n"
                  f"  notebooks:  {notebooks} (kernels see it at {KERNEL_HOME})\n"
                  f"  kubectl:    kubectl --kubeconfig {kubeconfig} get jupyterkernels,pods\n"
                  f"  logs:       {logdir}\n\nCtrl-C stops everything.", flush=True)

        while not stopping:
            gone = sup.exited()
            if gone:
                raise DemoError(f"{gone[0]} exited with code {gone[1]}; "
                                f"see {logdir / (gone[0] + '.log')}")
            time.sleep(0.5)
        print("\ndemo: stopping...", flush=True)
        return 0
    except Interrupted:
        print("\ndemo: interrupted while starting; stopping...", flush=True)
        return 0
    except DemoError as e:
        print(f"demo: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sup.stop_all()
        print("demo: stopped; no processes left behind.", flush=True)


def lab_config_path(workdir: Path) -> str:
    """``JUPYTER_CONFIG_PATH`` for the demo's JupyterLab: a directory of default settings first.

    The demo's JupyterLab fetches nothing from the internet (``news_url=None``), so its news
    question ("Would you like to get notified about official Jupyter news?") would only cover
    the notebook; JupyterLab asks it while the ``fetchNews`` setting is "none". The demo makes
    "false" the *default* (``labconfig/default_setting_overrides.json``, read from every
    config path), so the user's own settings still win and nothing of theirs is written.
    """
    config = workdir / "jupyter-config"
    overrides = config / "labconfig" / "default_setting_overrides.json"
    overrides.parent.mkdir(parents=True, exist_ok=True)
    overrides.write_text(json.dumps({"@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false", "checkForUpdates": False}}, indent=1) + "\n")
    return os.pathsep.join([str(config), *filter(None, [os.environ.get("JUPYTER_CONFIG_PATH")])])


def gateway_client_flags() -> list[str]:
    """Flags a notebook server needs for our gateway: no Nagle delays, readable errors.

    See :mod:`elastic_kernels.notebook`.
    """
    return [
        "--ServerApp.jpserver_extensions=elastic_kernels.notebook=True",
        # Wait as long as a GPU kernel may queue (the gateway gives up first, saying why).
        "--GatewayClient.request_timeout=660",
    ]


def write_example(notebooks: Path) -> Path:
    """The example folder: ``data.csv`` and a notebook that reads it on "Python on GPU".

    Written only where missing, so a user's edits survive the next ``make demo``. The files are
    made here rather than shipped as package data: they are a few lines, and the wheel's data
    stays exactly the repository's manifests and launcher.
    """
    folder = notebooks / EXAMPLE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "data.csv"
    if not csv.exists():
        csv.write_text(EXAMPLE_CSV)
    notebook = folder / "read-data.ipynb"
    if not notebook.exists():
        notebook.write_text(json.dumps(_example_notebook(), indent=1) + "\n")
    return folder


def _example_notebook() -> dict[str, Any]:
    def cell(kind: str, source: str) -> dict[str, Any]:
        extra: dict[str, Any] = ({"execution_count": None, "outputs": []} if kind == "code"
                                 else {})
        return {"cell_type": kind, "metadata": {}, "source": source, **extra}

    return {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python-gpu", "display_name": "Python on GPU",
                           "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            cell("markdown", "# Files beside the notebook\n\n"
                 "This kernel runs in its own pod, yet it starts in this notebook's folder: the "
                 "demo's notebooks folder is the user's volume of its template "
                 "(`spec.userVolumes`), mounted at `/home/jovyan`."),
            cell("code", "import os\nprint(os.getcwd(), os.environ.get('CUDA_VISIBLE_DEVICES'))"),
            cell("code", 'print(open("data.csv").read())'),
            cell("code", "import csv\n\n"
                 "with open(\"data.csv\") as f:\n"
                 "    rows = list(csv.DictReader(f))\n"
                 "warmest = max(rows, key=lambda r: float(r[\"temperature_c\"]))\n"
                 "with open(\"warmest.txt\", \"w\") as f:\n"
                 "    f.write(warmest[\"city\"] + \"\\n\")\n"
                 "print(\"warmest.txt written; it appears in the file browser\")"),
        ],
    }


def demo_manifests(notebooks: Path) -> list[dict[str, Any]]:
    """The demo's overlay on the shipped kernelspecs: the notebooks folder as the user's volume.

    Each shipped template gets ``spec.userVolumes``: the claim ``claim-{username}`` (as z2jh
    names a user's home claim) at ``/home/jovyan``, with ``notebookPath`` the folder itself,
    which is JupyterLab's root dir, so the ``KERNEL_WORKING_DIR`` JupyterLab sends for a
    notebook in ``example/`` starts the kernel in ``/home/jovyan/example``.

    The claim is bound to a PersistentVolume on the existing folder (static provisioning, as an
    admin does for an existing NFS export) rather than mounted as a ``hostPath`` in the pod:
    kernel pods then look exactly as on a real cluster, pass the ``restricted`` Pod Security
    profile (which forbids hostPath volumes), and the local cluster's volume controller and
    kubelet mount it as they would a provisioned claim. ``Retain`` because the files are the
    user's, never deleted with the claim; ``ReadWriteMany`` because JupyterLab and kernels on
    any node use the folder at once (the admin guide's advice for GPU kernels), whereas
    ``ReadWriteOnce`` would tie every kernel to one node. Only the templates are replaced: the
    kernelspecs (with their culling settings) are applied as shipped.
    """
    claim = f"claim-{DEMO_USER}"
    volume_name = f"demo-notebooks-{DEMO_USER}"
    user_volume = {
        "name": "notebooks",
        "volume": {"persistentVolumeClaim": {"claimName": "claim-{username}"}},
        "mountPath": KERNEL_HOME,
        "notebookPath": str(notebooks),
    }
    templates = []
    for _, doc in load_manifests([data.kernelspecs_dir()]):
        if doc.get("kind") == "JupyterKernelTemplate":
            doc["spec"] = {**doc.get("spec", {}), "userVolumes": [user_volume]}
            templates.append(doc)
    storage: list[dict[str, Any]] = [
        {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": volume_name},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": DEMO_NAMESPACE, "name": claim},
                "hostPath": {"path": str(notebooks), "type": "Directory"},
            },
        },
        {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": DEMO_NAMESPACE},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": volume_name,
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    ]
    return storage + templates
