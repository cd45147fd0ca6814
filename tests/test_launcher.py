"""launchers/elastic-kernel-launcher, run as the kubelet runs it: a process with env and a key file.

Kernels are real ipykernels, reached over ZeroMQ with jupyter_client on a 127.x.y.z address of
their own (Linux routes all of 127/8 to loopback), so tests running at the same time do not
collide on ports.
"""

from __future__ import annotations

import ast
import base64
import os
import queue
import random
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
from jupyter_client.blocking.client import BlockingKernelClient

from elastic_kernels.kube.resources import KernelSpecView
from elastic_kernels.provisioner.render import (
    KERNEL_PORTS,
    KEY_FILE,
    RenderRequest,
    connection_info,
    render_kernel,
)

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "launchers" / "elastic-kernel-launcher"
KERNEL_ID = "5b0c5d4e-3f2a-4e1b-9c8d-7a6b5c4d3e2f"
PORT_VARS = ("EK_SHELL_PORT", "EK_IOPUB_PORT", "EK_STDIN_PORT", "EK_CONTROL_PORT", "EK_HB_PORT")
_rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "big"))


def _can_bind(ip: str, ports: list[int]) -> bool:
    sockets = []
    try:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        for s in sockets:
            s.close()


def private_address(ports: list[int] | None = None) -> str:
    """A 127.x.y.z address unlikely to be used by anyone else, with ``ports`` free on it."""
    for _ in range(50):
        ip = f"127.{_rng.randint(200, 250)}.{_rng.randint(0, 255)}.{_rng.randint(1, 254)}"
        if _can_bind(ip, ports or [0]):
            return ip
    raise RuntimeError("no free loopback address found")


def free_ports(ip: str, count: int = 5) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((ip, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Launched:
    """A launcher process and its captured output (files, so a chatty kernel never blocks)."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc = proc
        self.out_path = out
        self.err_path = err

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


Launch = Callable[..., Launched]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start the launcher; every process it started is killed at the end, pass or fail."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], argv: list[str], command: list[str] | None = None) -> Launched:
        base = {k: v for k, v in os.environ.items() if not k.startswith("EK_")}
        base["PATH"] = os.pathsep.join([str(LAUNCHER.parent), str(Path(sys.executable).parent),
                                        base.get("PATH", "")])
        base["IPYTHONDIR"] = str(tmp_path / "ipython")
        base["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "jupyter-runtime")
        base["TMPDIR"] = str(tmp_path)  # connection files (with keys) stay in the test's dir
        n = len(started)
        out, err = tmp_path / f"stdout-{n}", tmp_path / f"stderr-{n}"
        with out.open("wb") as out_file, err.open("wb") as err_file:
            proc = subprocess.Popen(
                command or [sys.executable, str(LAUNCHER), "--", *argv],
                env={**base, **env}, stdin=subprocess.DEVNULL, stdout=out_file, stderr=err_file,
                start_new_session=True,
            )
        started.append(proc)
        return Launched(proc, out, err)

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def kernel_env(ip: str, ports: list[int], key_file: Path, **extra: str) -> dict[str, str]:
    env = {"EK_KERNEL_ID": KERNEL_ID, "EK_KERNEL_NAME": "python-test", "EK_IP": ip,
           "EK_TRANSPORT": "tcp", "EK_SIGNATURE_SCHEME": "hmac-sha256",
           "EK_KEY_FILE": str(key_file)}
    env.update(zip(PORT_VARS, map(str, ports)))
    env.update(extra)
    return env


IPYKERNEL = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def connect(info: dict[str, Any], timeout: float = 60) -> BlockingKernelClient:
    """A client whose shell and iopub both reach the kernel.

    jupyter_client's wait_for_ready judges the kernel dead when its heartbeat has not answered
    within a second, which a kernel still importing on a busy machine may not; and a shell reply
    does not prove that iopub is subscribed. So: kernel_info until its reply *and* its iopub
    status message arrive (ZeroMQ queues and reconnects until the kernel binds).
    """
    client = BlockingKernelClient()
    client.load_connection_info(info)
    client.start_channels(hb=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = client.kernel_info()
        if _await_parent(client.get_shell_msg, msg_id, deadline, 2.0) and _await_parent(
            client.get_iopub_msg, msg_id, deadline, 2.0
        ):
            return client
    client.stop_channels()
    raise TimeoutError(f"no kernel_info reply from {info['ip']} within {timeout}s")


def _await_parent(get: Callable[..., dict[str, Any]], msg_id: str, deadline: float,
                  patience: float) -> bool:
    """Whether a message answering ``msg_id`` arrives within ``patience`` seconds."""
    until = min(deadline, time.monotonic() + patience)
    while (left := until - time.monotonic()) > 0:
        try:
            msg = get(timeout=left)
        except queue.Empty:
            return False
        if msg["parent_header"].get("msg_id") == msg_id:
            return True
    return False


def run(client: BlockingKernelClient, code: str) -> str:
    """Execute ``code`` and return its text/plain result."""
    results: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "execute_result":
            results.append(msg["content"]["data"]["text/plain"])

    reply = client.execute_interactive(code, timeout=30, output_hook=hook)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert len(results) == 1
    return results[0]


def refuses_connections(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex((ip, port)) != 0


# --- a real kernel ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_kernel_starts_answers_and_stops_on_sigterm(launch: Launch, tmp_path: Path) -> None:
    ip = private_address()
    ports = free_ports(ip)
    key = secrets.token_hex(32)
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")  # Secrets often end in a newline; the launcher strips it
    runtime = tmp_path / "run"
    runtime.mkdir()
    launched = launch(kernel_env(ip, ports, key_file, EK_RUNTIME_DIR=str(runtime)), IPYKERNEL)

    info = {"ip": ip, "transport": "tcp", "key": key, "signature_scheme": "hmac-sha256",
            **dict(zip([f"{channel}_port" for channel in KERNEL_PORTS], ports))}
    client = connect(info)
    try:
        msg_id = client.kernel_info()
        reply = client.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["msg_type"] == "kernel_info_reply"
        assert reply["content"]["status"] == "ok"
        assert reply["content"]["language_info"]["name"] == "python"

        assert run(client, "1+1") == "2"
        # exec, not a child: the kernel is the launcher's process, so it gets SIGTERM itself
        assert run(client, "import os; os.getpid()") == str(launched.proc.pid)
        path = run(client, "from ipykernel import get_connection_file; get_connection_file()")
        path = path.strip("'")
        assert Path(path).parent.parent == runtime
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(Path(path).parent).st_mode) == 0o700
        assert run(client, "import json; json.load(open(get_connection_file()))['key'] == "
                           f"'{key}'") == "True"
        assert run(client, "import os; os.environ['EK_KERNEL_ID']") == f"'{KERNEL_ID}'"
        heartbeat = zmq.Context.instance().socket(zmq.REQ)
        try:
            heartbeat.linger = 0
            heartbeat.connect(f"tcp://{ip}:{ports[4]}")
            heartbeat.send(b"ping")
            assert heartbeat.poll(30_000), "no heartbeat echo"
            assert heartbeat.recv() == b"ping"
        finally:
            heartbeat.close()
    finally:
        client.stop_channels()

    launched.proc.send_signal(signal.SIGTERM)
    assert launched.proc.wait(timeout=30) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    assert refuses_connections(ip, ports[0])

    output = launched.stdout + launched.stderr
    assert key not in output
    assert base64.b64encode(key.encode()).decode() not in output
    assert f"kernel {KERNEL_ID}: tcp://{ip}" in launched.stderr
    assert f"shell={ports[0]}" in launched.stderr and f"hb={ports[4]}" in launched.stderr
    assert "ipykernel_launcher -f " + str(runtime) in launched.stderr


@pytest.mark.timeout(120)
def test_rendered_pod_runs_its_kernel(launch: Launch, tmp_path: Path) -> None:
    """The contract end to end: run the rendered container as a kubelet would, connect with
    connection_info(), and the kernel answers on the well-known ports."""
    ip = private_address(list(KERNEL_PORTS.values()))
    docs = list(yaml.safe_load_all((ROOT / "kernelspecs" / "python-cpu.yaml").read_text()))
    spec_doc = next(d for d in docs if d["kind"] == "JupyterKernelSpec")
    spec = KernelSpecView.from_object(spec_doc)
    key = secrets.token_hex(32).encode()
    rendered = render_kernel(RenderRequest(
        kernel_id=KERNEL_ID, namespace="default", user="alice@example.org",
        spec=replace(spec, template_name=None), key=key,
        client_env={"KERNEL_EXPERIMENT_NAME": "contract"},
    ))
    [container] = rendered.pod["spec"]["containers"]

    # What the kubelet does: mount the Secret, resolve the downward API, run the command.
    mount = tmp_path / "secret-volume"
    mount.mkdir()
    key_path = mount / rendered.pod["spec"]["volumes"][-1]["secret"]["items"][0]["path"]
    key_path.write_bytes(base64.b64decode(rendered.secret["data"]["key"]))
    key_path.chmod(0o400)
    env = {}
    for entry in container["env"]:
        if "valueFrom" in entry:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            env[entry["name"]] = ip
        else:
            env[entry["name"]] = entry["value"].replace("$$", "$")
    assert env["EK_KEY_FILE"] == KEY_FILE
    env["EK_KEY_FILE"] = str(key_path)
    argv = container["command"]
    assert argv[0] == "elastic-kernel-launcher"  # found on PATH, as on the local cluster

    launched = launch(env, [], command=argv)
    client = connect(connection_info(ip, key, spec.name))
    try:
        assert run(client, "1+1") == "2"
        assert run(client, "import os; os.environ['KERNEL_USERNAME']") == "'alice@example.org'"
        assert run(client, "os.environ['KERNEL_EXPERIMENT_NAME']") == "'contract'"
    finally:
        client.stop_channels()
    launched.proc.send_signal(signal.SIGTERM)
    assert launched.proc.wait(timeout=30) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    assert key.decode() not in launched.stdout + launched.stderr


# --- bad input ----------------------------------------------------------------------------------


def _finish(launched: Launched) -> int:
    return launched.proc.wait(timeout=30)


@pytest.mark.timeout(30)
def test_missing_key_file_is_a_clear_error(launch: Launch, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    missing = tmp_path / "no-such-key"
    env = kernel_env("127.0.0.1", [1, 2, 3, 4, 5], missing, EK_RUNTIME_DIR=str(runtime))
    launched = launch(env, IPYKERNEL)
    assert _finish(launched) == 2
    assert f"the key file {missing} (EK_KEY_FILE) does not exist" in launched.stderr
    assert "Traceback" not in launched.stderr
    assert launched.stdout == ""
    assert list(runtime.iterdir()) == []


@pytest.mark.timeout(30)
def test_unreadable_key_file_is_a_clear_error(launch: Launch, tmp_path: Path) -> None:
    launched = launch(kernel_env("127.0.0.1", [1, 2, 3, 4, 5], tmp_path), IPYKERNEL)  # a directory
    assert _finish(launched) == 2
    assert f"the key file {tmp_path} (EK_KEY_FILE) cannot be read" in launched.stderr
    assert "Traceback" not in launched.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("content,problem", [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"top secret value", "printable ASCII without spaces"),
    (b"\xffsecretbytes", "printable ASCII without spaces"),
])
def test_bad_key_content_is_refused_without_showing_it(
    launch: Launch, tmp_path: Path, content: bytes, problem: str
) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(content)
    launched = launch(kernel_env("127.0.0.1", [1, 2, 3, 4, 5], key_file), IPYKERNEL)
    assert _finish(launched) == 2
    assert problem in launched.stderr
    assert "secret" not in launched.stderr


@pytest.mark.timeout(30)
def test_missing_environment_is_listed(launch: Launch) -> None:
    launched = launch({}, IPYKERNEL)
    assert _finish(launched) == 2
    assert ("missing environment variable(s): EK_KERNEL_ID, EK_IP, EK_KEY_FILE, "
            + ", ".join(PORT_VARS)) in launched.stderr
    assert "Traceback" not in launched.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("change,message", [
    ({"EK_SHELL_PORT": "99999"}, "EK_SHELL_PORT is '99999'; expected a port number"),
    ({"EK_HB_PORT": "abc"}, "EK_HB_PORT is 'abc'"),
    ({"EK_HB_PORT": "1"}, "EK_SHELL_PORT and EK_HB_PORT are both 1"),
    ({"EK_IP": "not-an-ip"}, "EK_IP is 'not-an-ip', which is not an IP address"),
    ({"EK_TRANSPORT": "udp"}, "EK_TRANSPORT is 'udp'"),
    ({"EK_SIGNATURE_SCHEME": "none"}, "EK_SIGNATURE_SCHEME is 'none'"),
])
def test_bad_environment_is_a_clear_error(
    launch: Launch, tmp_path: Path, change: dict[str, str], message: str
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k" * 32)
    launched = launch({**kernel_env("127.0.0.1", [1, 2, 3, 4, 5], key_file), **change}, IPYKERNEL)
    assert _finish(launched) == 2
    assert message in launched.stderr
    assert "Traceback" not in launched.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [[], ["--"], ["--bogus"]])
def test_no_kernel_command_is_a_clear_error(
    launch: Launch, tmp_path: Path, args: list[str]
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k" * 32)
    env = kernel_env("127.0.0.1", [1, 2, 3, 4, 5], key_file)
    launched = launch(env, [], command=[sys.executable, str(LAUNCHER), *args])
    assert _finish(launched) == 2
    assert "usage: elastic-kernel-launcher -- KERNEL ARGV..." in launched.stderr


@pytest.mark.timeout(30)
def test_unknown_command_exits_127_and_cleans_up(launch: Launch, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k" * 32)
    runtime = tmp_path / "run"
    runtime.mkdir()
    env = kernel_env("127.0.0.1", [1, 2, 3, 4, 5], key_file, EK_RUNTIME_DIR=str(runtime))
    launched = launch(env, ["no-such-kernel-command-here", "{connection_file}"])
    assert _finish(launched) == 127
    assert "kernel command not found: no-such-kernel-command-here" in launched.stderr
    assert list(runtime.iterdir()) == []
    assert "k" * 32 not in launched.stderr


@pytest.mark.timeout(60)
def test_sigterm_before_exec_exits_143_without_traceback(launch: Launch, tmp_path: Path) -> None:
    """A FIFO as the key file holds the launcher in its read, before any exec."""
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    runtime = tmp_path / "run"
    runtime.mkdir()
    launched = launch(kernel_env("127.0.0.1", [1, 2, 3, 4, 5], fifo, EK_RUNTIME_DIR=str(runtime)),
                      IPYKERNEL)
    writer: dict[str, int] = {}
    opened = threading.Event()

    def open_writer() -> None:
        writer["fd"] = os.open(fifo, os.O_WRONLY)  # returns once the launcher opened the key
        opened.set()

    thread = threading.Thread(target=open_writer, daemon=True)
    thread.start()
    try:
        assert opened.wait(30), f"the launcher never opened its key file: {launched.stderr}"
        launched.proc.send_signal(signal.SIGTERM)
        assert launched.proc.wait(timeout=30) == 143
    finally:
        if not opened.is_set():  # unblock the writer thread
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        thread.join(timeout=10)
        if "fd" in writer:
            os.close(writer["fd"])
    assert "terminated before the kernel started" in launched.stderr
    assert "Traceback" not in launched.stderr
    assert list(runtime.iterdir()) == []


# --- what the launcher may be ---------------------------------------------------------------------


def test_launcher_is_an_executable_python3_script() -> None:
    assert LAUNCHER.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(LAUNCHER, os.X_OK)


def test_launcher_is_python38_stdlib_only() -> None:
    tree = ast.parse(LAUNCHER.read_text(), feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module
            imported.add(node.module.split(".")[0])
        # Annotations like list[str] are evaluated on 3.8 and fail there: keep none.
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.returns is None and all(a.annotation is None for a in node.args.args)
        assert not isinstance(node, ast.AnnAssign)
    assert imported and imported <= set(sys.stdlib_module_names)
    assert "__future__" not in imported


def test_launcher_help(launch: Launch) -> None:
    launched = launch({}, [], command=[sys.executable, str(LAUNCHER), "--help"])
    assert _finish(launched) == 0
    assert launched.stdout.startswith("usage: elastic-kernel-launcher -- KERNEL ARGV...")
