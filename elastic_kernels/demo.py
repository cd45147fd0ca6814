"""``make demo``: local cluster, gateway and JupyterLab as three supervised processes.

Three processes rather than one so that each runs exactly as it would in production (the gateway
reaches the cluster only through a kubeconfig, JupyterLab reaches the gateway only through
``--gateway-url``). Ctrl-C stops them in reverse order; the cluster stops every pod it started,
so nothing is left behind.

Everything it needs comes with the installed package (the CRDs and example kernelspecs applied
with ``cluster --with-examples``, the launcher the kubelet puts on pods' PATH), so it runs the
same from a checkout and from a wheel in any virtualenv.
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
from typing import IO

STARTUP_TIMEOUT = 60.0


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


def run_demo(args: argparse.Namespace) -> int:
    missing = missing_modules(args.no_lab)
    if missing:
        print(f"demo: {' and '.join(missing)} not installed in {sys.prefix}: pip install "
              "'elastic-kernels[demo]'" + ("" if "jupyterlab" not in missing else
                                           ", or run with --no-lab"),
              file=sys.stderr, flush=True)
        return 2
    workdir = Path(args.workdir).resolve()
    logdir = workdir / "logs"
    notebooks = workdir / "notebooks"
    for d in (logdir, notebooks):
        d.mkdir(parents=True, exist_ok=True)
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
        print("demo: starting the local cluster (2 nodes x 4 simulated GPUs)...", flush=True)
        cluster = sup.start("cluster", [
            python, "-m", "elastic_kernels", "cluster", "--kubeconfig", str(kubeconfig),
            "--workdir", str(workdir / "pods"), "--with-examples",
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
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ], env={"JUPYTER_TOKEN": lab_token, "JUPYTER_GATEWAY_AUTH_TOKEN": gateway_token})
            try:
                _wait_for_http(f"http://127.0.0.1:{args.lab_port}/api/status", lab_token, lab,
                               logdir / "jupyterlab.log", STARTUP_TIMEOUT, lambda: stopping)
            except DemoError as e:
                raise DemoError(f"JupyterLab: {e}") from None
            print(f"\n  JupyterLab: http://127.0.0.1:{args.lab_port}/lab?token={lab_token}\n"
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


def gateway_client_flags() -> list[str]:
    """Flags a notebook server needs for our gateway: no Nagle delays, readable errors.

    See :mod:`elastic_kernels.notebook`.
    """
    return [
        "--ServerApp.jpserver_extensions=elastic_kernels.notebook=True",
        # Wait as long as a GPU kernel may queue (the gateway gives up first, saying why).
        "--GatewayClient.request_timeout=660",
    ]
