"""What every benchmark here shares: the cluster, the gateway process, clients, statistics, results.

Design choices that matter for the numbers:

* The local cluster (API server, scheduler, kubelet) runs in the benchmark's own process and
  event loop, so that its ``request_counter`` can be read directly; the gateway under test runs
  as a separate process (``elastic-kernels gateway``), exactly as deployed, so that its memory and
  CPU can be read from ``/proc`` and it does not share a loop with the cluster.
* Every client here sets TCP_NODELAY, as browsers do: a client with Nagle on would measure its
  own delayed ACKs, not the system under test.
* Results are plain JSON in ``bench/results/<name>.json``; ``python -m bench`` turns them into
  ``bench/REPORT.md``.  Absolute times on a shared 2-core machine are noise: the reports lead
  with ratios measured in the same run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
import typing as t
from typing import Any

from jupyter_client.session import Session
from tornado.httpclient import HTTPResponse
from tornado.simple_httpclient import HTTPStreamClosedError

from elastic_kernels import testing

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
#: Where results go; the smoke test points this elsewhere so it never overwrites real figures.
RESULTS = Path(os.environ.get("ELASTIC_BENCH_RESULTS") or BENCH / "results")
CRDS = REPO / "deploy" / "crds"
KERNELSPECS = REPO / "kernelspecs"
HOST = "127.0.0.1"

JSON = dict[str, Any]


# --- statistics --------------------------------------------------------------------------------

def percentile(values: Iterable[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); what "p99 of 500" means without interpolation."""
    data = sorted(values)
    if not data:
        return float("nan")
    rank = max(1, min(len(data), int(round(p / 100.0 * len(data) + 0.4999))))
    return data[rank - 1]


def summary(values: Iterable[float]) -> JSON:
    data = sorted(values)
    if not data:
        return {"n": 0}
    return {"n": len(data), "p50": percentile(data, 50), "p90": percentile(data, 90),
            "p99": percentile(data, 99), "max": data[-1], "min": data[0],
            "mean": statistics.fmean(data)}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# --- machine and versions ----------------------------------------------------------------------

def machine_info() -> JSON:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    import resource
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc_limit = resource.getrlimit(resource.RLIMIT_NPROC)
    pid_max = ""
    with contextlib.suppress(OSError):
        pid_max = Path("/proc/sys/kernel/pid_max").read_text().strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "ulimit_nofile": list(nofile), "ulimit_nproc": list(nproc_limit),
            "pid_max": pid_max}


def versions() -> JSON:
    from importlib.metadata import PackageNotFoundError, version
    out: JSON = {}
    for name in ("elastic-kernels", "jupyter_server", "jupyter_client", "ipykernel", "pyzmq",
                 "tornado", "kubernetes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    import zmq
    out["libzmq"] = zmq.zmq_version()
    return out


# --- results -----------------------------------------------------------------------------------

def save_results(name: str, data: JSON) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"benchmark": name, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "loadavg_at_end": os.getloadavg(), "revision": git_revision(),
            "machine": machine_info(),
            "versions": versions(), **data}
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def counts_by_verb(counts: Counter) -> dict[str, int]:
    """{verb: n} from a RequestCounter diff (keys are (verb, group, resource, sub, ns))."""
    out: Counter[str] = Counter()
    for key, n in counts.items():
        out[key[0]] += n
    return dict(sorted(out.items()))


def counts_detail(counts: Counter) -> dict[str, int]:
    """{"verb resource[/sub]": n}, readable in a report."""
    out: Counter[str] = Counter()
    for (verb, group, resource, sub, _ns), n in counts.items():
        name = f"{resource}.{group}" if group else resource
        out[f"{verb} {name}{'/' + sub if sub else ''}"] += n
    return dict(sorted(out.items()))


#: Gateway-wide periodic traffic that lands in an operation's window by chance (the gateway
#: renews its Lease every 10 s whatever it does); reported with the steady state instead.
PERIODIC_RESOURCES = {"leases"}


def without_periodic(counts: Counter) -> Counter:
    """``counts`` less the gateway-wide periodic requests (see PERIODIC_RESOURCES)."""
    return Counter({k: n for k, n in counts.items() if k[2] not in PERIODIC_RESOURCES})


WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
#: Reads that a client makes to look for a change, as opposed to opening a watch.
POLL_VERBS = {"get", "list"}


# --- local cluster -----------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def local_cluster(workdir: Path, *, nodes: int = 2, gpus_per_node: int = 0,
                        image_policy: Any = None, cpu_per_node: str = "8",
                        memory_per_node: str = "32Gi") -> AsyncIterator[Any]:
    """The local cluster with the CRDs and the shipped kernelspecs applied (over HTTP, through
    its kubeconfig, as an admin would: the cluster itself knows nothing of them)."""
    from elastic_kernels.kube.apply import apply_manifests, load_manifests
    from elastic_kernels.localcluster.cluster import LocalCluster
    cluster = LocalCluster(nodes=nodes, gpus_per_node=gpus_per_node, workdir=workdir / "cluster",
                           image_policy=image_policy, cpu_per_node=cpu_per_node,
                           memory_per_node=memory_per_node, crash_backoff_seconds=1.0)
    await cluster.start()
    try:
        client = await kube_client(cluster)
        try:
            await apply_manifests(client, load_manifests([CRDS, KERNELSPECS]))
        finally:
            await client.close()
        yield cluster
    finally:
        await cluster.stop()


async def kube_client(cluster: Any) -> Any:
    from elastic_kernels.kube.client import KubeClient
    from elastic_kernels.kube.config import load_cluster_config
    cfg = load_cluster_config(cluster.kubeconfig_path)
    return KubeClient(cfg.api_client, cfg.namespace, max_workers=16)


def shipped_kernelspec(name: str, base: str = "python-cpu", **changes: Any) -> JSON:
    """A shipped JupyterKernelSpec (``kernelspecs/<base>.yaml``), renamed, ``spec`` changed."""
    import copy

    import yaml

    for doc in yaml.safe_load_all((KERNELSPECS / f"{base}.yaml").read_text()):
        if doc and doc.get("kind") == "JupyterKernelSpec":
            doc = copy.deepcopy(doc)
            doc["metadata"] = {"name": name}
            doc["spec"].update(changes)
            return dict(doc)
    raise LookupError(f"no JupyterKernelSpec in kernelspecs/{base}.yaml")


async def create_kernelspec(cluster: Any, doc: JSON) -> None:
    client = await kube_client(cluster)
    try:
        from elastic_kernels.kube import resources as R
        await client.create(R.KERNELSPECS, doc)
    finally:
        await client.close()


# --- processes ---------------------------------------------------------------------------------

def free_port() -> int:
    return testing.free_port(HOST)


def private_jupyter_env(home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose Jupyter paths are private (nothing installed leaks in)."""
    env = {k: v for k, v in (base or os.environ).items()
           if not k.startswith(("JUPYTER", "ELASTIC_KERNELS", "KERNEL_", "KUBECONFIG"))}
    for name in ("config", "data", "runtime", "root"):
        (home / name).mkdir(parents=True, exist_ok=True)
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTER_NO_CONFIG="1",
               PYTHONUNBUFFERED="1")
    return env


@dataclass
class Server:
    """A server process under test: where it listens, its token, its log."""

    name: str
    url: str
    token: str
    proc: asyncio.subprocess.Process
    log: Path
    extra: JSON = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


async def wait_http(server: Server, path: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if server.proc.returncode is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n"
                               f"{server.log_tail()}")
        # A server still starting may accept and close the connection (tornado raises
        # HTTPStreamClosedError, no OSError): try again, as for a refused connection.
        with contextlib.suppress(OSError, HTTPStreamClosedError):
            response = await api(server.url, "GET", path, token=server.token, timeout=5)
            if response.code == 200:
                return
        if loop.time() > deadline:
            raise RuntimeError(f"{server.name} not ready in {timeout} s:\n{server.log_tail()}")
        await asyncio.sleep(0.1)


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 20.0) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except (asyncio.TimeoutError, TimeoutError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def run_server(name: str, make_argv: Callable[[int], list[str]], env: dict[str, str],
                     token: str, log: Path, ready_path: str = "/api", timeout: float = 60.0,
                     stop_grace: float = 20.0, attempts: int = 3) -> AsyncIterator[Server]:
    """Start a server on a free loopback port; another port if that one was taken meanwhile."""
    log.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        port = free_port()
        with log.open("wb") as fh:
            proc = await asyncio.create_subprocess_exec(
                *make_argv(port), stdin=asyncio.subprocess.DEVNULL, stdout=fh, stderr=fh,
                env=env, cwd=str(REPO))
        server = Server(name, f"http://{HOST}:{port}", token, proc, log)
        try:
            await wait_http(server, ready_path, timeout)
        except RuntimeError:
            await stop_process(proc, stop_grace)
            if "in use" in server.log_tail() and attempt + 1 < attempts:
                continue  # lost the race for the port: another process bound it first
            raise
        except BaseException:
            await stop_process(proc, stop_grace)
            raise
        break
    try:
        yield server
    finally:
        await stop_process(proc, stop_grace)


@contextlib.asynccontextmanager
async def gateway(cluster: Any, workdir: Path, *, extra_args: Iterable[str] = (),
                  name: str = "gateway") -> AsyncIterator[Server]:
    """``elastic-kernels gateway`` as a process, pointed at the local cluster."""
    token = "bench-" + uuid.uuid4().hex
    home = workdir / name
    env = private_jupyter_env(home)
    env["ELASTIC_KERNELS_TOKEN"] = token
    extra = list(extra_args)

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "elastic_kernels", "gateway", f"--ip={HOST}",
                f"--port={port}", f"--kubeconfig={cluster.kubeconfig_path}",
                f"--ServerApp.root_dir={home / 'root'}",
                *([] if any(a.startswith("--log-level") for a in extra) else ["--log-level=WARN"]),
                *extra]

    async with run_server(name, argv, env, token, home / "gateway.log") as server:
        yield server


@contextlib.asynccontextmanager
async def notebook_server(gateway_server: Server, workdir: Path) -> AsyncIterator[Server]:
    """A plain jupyter_server with ``--gateway-url`` and our client extension (TCP_NODELAY)."""
    token = "nb-" + uuid.uuid4().hex
    home = workdir / f"notebook-{uuid.uuid4().hex[:8]}"
    env = private_jupyter_env(home)

    def argv(port: int) -> list[str]:
        args = [sys.executable, "-m", "jupyter_server", f"--ServerApp.ip={HOST}",
                f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                "--ServerApp.open_browser=False", f"--ServerApp.root_dir={home / 'root'}",
                f"--IdentityProvider.token={token}", f"--gateway-url={gateway_server.url}",
                f"--GatewayClient.auth_token={gateway_server.token}",
                "--ServerApp.jpserver_extensions=elastic_kernels.notebook=True",
                "--ServerApp.log_level=WARN"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--ServerApp.allow_root=True")
        return args

    async with run_server("notebook server", argv, env, token, home / "server.log",
                          ready_path="/api/status") as server:
        yield server


# --- /proc sampling ----------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


# --- HTTP and websocket clients ----------------------------------------------------------------
# The same clients as the tests' (elastic_kernels.testing), with the benchmarks' longer timeout.

V1_PROTOCOL = testing.V1_PROTOCOL
json_of = testing.json_of


async def api(base_url: str, method: str, path: str, body: Any = None, *,
              token: str | None = None, timeout: float = 120) -> HTTPResponse:
    return await testing.api(base_url, method, path, body, token=token, timeout=timeout)


class KernelWS(testing.KernelWS):
    """The tests' websocket client, with the benchmarks' timeouts: a JupyterLab-like client
    (``protocol="v1"``) or a notebook server's gateway client (``protocol="json"``)."""

    @classmethod
    async def open(cls, base_url: str, kernel_id: str, token: str | None = None, *,
                   protocol: str = "json", in_query: bool = False,
                   session_id: str | None = None, timeout: float = 120,
                   max_message_size: int = 64 * 1024 * 1024) -> KernelWS:
        ws = await super().open(base_url, kernel_id, token, protocol=protocol,
                                in_query=in_query, session_id=session_id, timeout=timeout,
                                max_message_size=max_message_size)
        return t.cast(KernelWS, ws)

    async def execute(self, code: str, timeout: float = 60, *, store_history: bool = False,
                      on_output: Callable[[JSON], None] | None = None) -> testing.Execution:
        return await super().execute(code, timeout, store_history=store_history,
                                     on_output=on_output)


async def start_via_http(url: str, token: str, kernel_name: str,
                         env: JSON | None = None) -> tuple[str, float, float]:
    """POST /api/kernels, then the first kernel_info_reply over the websocket.

    Returns (kernel id, seconds to the POST's answer, seconds to the first kernel_info_reply).
    """
    t0 = time.perf_counter()
    body: JSON = {"name": kernel_name}
    if env:
        body["env"] = env
    response = await api(url, "POST", "/api/kernels", body, token=token, timeout=300)
    if response.code != 201:
        raise RuntimeError(f"POST /api/kernels -> {response.code}: "
                           f"{(response.body or b'')[:500]!r}")
    kernel_id = json_of(response)["id"]
    t_post = time.perf_counter() - t0
    ws = await KernelWS.open(url, kernel_id, token)
    try:
        await ws.kernel_info()
    finally:
        ws.close()
    return kernel_id, t_post, time.perf_counter() - t0


async def delete_kernel(url: str, token: str, kernel_id: str) -> int:
    response = await api(url, "DELETE", f"/api/kernels/{kernel_id}", token=token, timeout=120)
    return response.code


# --- direct ZeroMQ -----------------------------------------------------------------------------

class DirectClient:
    """A blocking ZeroMQ client with nothing between it and the kernel: the floor of a round trip.

    jupyter_client's Session signs and parses; the sockets are plain blocking pyzmq, used from
    one worker thread, so no event loop sits on the path.
    """

    def __init__(self, info: JSON) -> None:
        import zmq
        self.zmq = zmq
        self.ctx = zmq.Context()
        key = info["key"]
        self.session = Session(key=key.encode() if isinstance(key, str) else key,
                               signature_scheme=info.get("signature_scheme", "hmac-sha256"),
                               username="bench")
        base = f"{info.get('transport', 'tcp')}://{info['ip']}:"
        self.shell = self.ctx.socket(zmq.DEALER)
        self.shell.linger = 0
        self.shell.connect(base + str(info["shell_port"]))
        self.iopub = self.ctx.socket(zmq.SUB)
        self.iopub.linger = 0
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub.connect(base + str(info["iopub_port"]))
        self.poller = zmq.Poller()
        self.poller.register(self.shell, zmq.POLLIN)
        self.poller.register(self.iopub, zmq.POLLIN)

    def _recv(self, sock: Any) -> JSON:
        _idents, frames = self.session.feed_identities(sock.recv_multipart(copy=True))
        return self.session.deserialize(frames, content=True)

    def wait_iopub_ready(self, timeout: float = 30.0) -> None:
        """Until a status message arrives on iopub, so no early output is lost to the SUB join."""
        deadline = time.monotonic() + timeout
        while True:
            msg_id = self.session.send(self.shell, "kernel_info_request", {})["header"]["msg_id"]
            got_reply = got_status = False
            end = min(deadline, time.monotonic() + 1.0)
            while time.monotonic() < end and not (got_reply and got_status):
                events = dict(self.poller.poll(100))
                if self.shell in events:
                    msg = self._recv(self.shell)
                    got_reply |= msg["parent_header"].get("msg_id") == msg_id
                if self.iopub in events:
                    msg = self._recv(self.iopub)
                    got_status |= msg["parent_header"].get("msg_id") == msg_id
            if got_reply and got_status:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("no kernel_info reply and status over direct ZeroMQ")

    def execute(self, code: str, timeout: float = 60.0,
                on_output: Callable[[JSON], None] | None = None) -> None:
        msg_id = self.session.send(self.shell, "execute_request",
                                   {"code": code, "silent": False,
                                    "store_history": False})["header"]["msg_id"]
        replied = idle = False
        deadline = time.monotonic() + timeout
        while not (replied and idle):
            events = dict(self.poller.poll(max(1, int((deadline - time.monotonic()) * 1000))))
            if not events:
                raise TimeoutError("no execute reply over direct ZeroMQ")
            if self.shell in events:
                msg = self._recv(self.shell)
                replied |= msg["parent_header"].get("msg_id") == msg_id
            if self.iopub in events:
                msg = self._recv(self.iopub)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "status":
                    idle |= msg["content"].get("execution_state") == "idle"
                elif on_output is not None:
                    on_output(msg)

    def close(self) -> None:
        self.shell.close(0)
        self.iopub.close(0)
        self.ctx.term()


async def pod_connection_info(cluster: Any, kernel_id: str) -> JSON:
    """A kernel's connection info from its JupyterKernel's pod IP and its Secret (as a replica
    that re-attaches it would build it)."""
    from elastic_kernels.kube import resources as R
    from elastic_kernels.kube.client import SECRETS
    from elastic_kernels.provisioner.render import connection_info
    client = await kube_client(cluster)
    try:
        record = await client.get(R.JUPYTERKERNELS, R.kernel_object_name(kernel_id))
        secret = await client.get(SECRETS, R.key_secret_name(kernel_id))
    finally:
        await client.close()
    ip = (record.get("status") or {}).get("podIP") or ""
    if not ip:
        raise RuntimeError(
            f"kernel {kernel_id} has no pod IP in its record: {record.get('status')}")
    key = base64.b64decode(secret["data"]["key"])
    return connection_info(ip, key)


# --- timing loops shared by several benchmarks -------------------------------------------------

async def ws_round_trips(url: str, token: str, kernel_id: str, n: int, warmup: int = 20,
                         protocol: str = "json") -> list[float]:
    ws = await KernelWS.open(url, kernel_id, token, protocol=protocol)
    try:
        await ws.kernel_info()
        for _ in range(warmup):
            await ws.execute("pass")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await ws.execute("pass")
            times.append(time.perf_counter() - t0)
        return times
    finally:
        ws.close()


def direct_round_trips(info: JSON, n: int, warmup: int = 20) -> list[float]:
    client = DirectClient(info)
    try:
        client.wait_iopub_ready()
        for _ in range(warmup):
            client.execute("pass")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.execute("pass")
            times.append(time.perf_counter() - t0)
        return times
    finally:
        client.close()


def stream_code(lines: int) -> str:
    return f"for i in range({lines}):\n    print(i, flush=True)\n"


class StreamTally:
    """What a reader of a printing cell got: stream messages, lines, and rate-limit notices."""

    def __init__(self) -> None:
        self.messages = 0
        self.lines = 0
        self.notices: list[str] = []

    def __call__(self, msg: JSON) -> None:
        if msg.get("msg_type") != "stream":
            return
        text = msg["content"].get("text", "")
        if "rate exceeded" in text:  # jupyter_server's IOPub rate limit dropped output
            self.notices.append(" ".join(text.split())[:200])
            return
        self.messages += 1
        self.lines += text.count("\n")

    def result(self, elapsed: float, expected: int) -> JSON:
        return {"seconds": elapsed, "stream_messages": self.messages, "lines": self.lines,
                "lines_expected": expected, "lines_lost": expected - self.lines,
                "rate_limit_notices": len(self.notices),
                "first_notice": self.notices[0] if self.notices else "",
                "messages_per_s": self.messages / elapsed, "lines_per_s": self.lines / elapsed}


async def ws_stream(url: str, token: str, kernel_id: str, lines: int,
                    protocol: str = "json") -> JSON:
    """Messages per second for a cell that prints ``lines`` lines (each flushed)."""
    ws = await KernelWS.open(url, kernel_id, token, protocol=protocol)
    tally = StreamTally()
    try:
        await ws.kernel_info()
        t0 = time.perf_counter()
        await ws.execute(stream_code(lines), timeout=300, on_output=tally)
        elapsed = time.perf_counter() - t0
    finally:
        ws.close()
    return tally.result(elapsed, lines)


def direct_stream(info: JSON, lines: int) -> JSON:
    client = DirectClient(info)
    tally = StreamTally()
    try:
        client.wait_iopub_ready()
        t0 = time.perf_counter()
        client.execute(stream_code(lines), timeout=300, on_output=tally)
        elapsed = time.perf_counter() - t0
    finally:
        client.close()
    return tally.result(elapsed, lines)


# --- the floor: a local ipykernel started with jupyter_client ----------------------------------

async def local_kernel_start() -> tuple[float, Any]:
    """Seconds from ``AsyncKernelManager.start_kernel`` to the first kernel_info reply.

    The client's sockets reconnect every 10 ms (as the gateway's do) so the floor is not
    inflated by ZeroMQ's 100 ms default reconnect interval.
    """
    import zmq
    import zmq.asyncio
    from jupyter_client.manager import AsyncKernelManager
    ctx = zmq.asyncio.Context()
    ctx.setsockopt(zmq.RECONNECT_IVL, 10)
    km = AsyncKernelManager(kernel_name="python3", context=ctx)
    t0 = time.perf_counter()
    await km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = km.client(context=ctx)
    client.start_channels()
    try:
        msg_id = client.kernel_info()
        while True:
            msg = await client.get_shell_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        elapsed = time.perf_counter() - t0
    finally:
        client.stop_channels()
    return elapsed, km


async def shutdown_local(km: Any) -> None:
    with contextlib.suppress(Exception):
        await km.shutdown_kernel(now=True)
    with contextlib.suppress(Exception):
        km.context.term()


def temp_workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))


def short_error(text: Any, limit: int = 160) -> str:
    """The server's own reason from an error text (JSON "reason"/"message"), shortened."""
    import re
    text = str(text)
    if "Too many open files" in text:
        return "ZMQError: Too many open files" if "ZMQError" in text else "Too many open files"
    found = re.search(r'"(?:reason|message)": "((?:[^"\\]|\\.){8,})"', text)
    if found:
        text = found.group(1).replace("\\'", "'")
    return text[:limit]


def run_in_workdir(prefix: str, measure: Callable[[Path], Any]) -> Any:
    """:func:`run` ``measure(workdir)`` in a fresh temporary directory, removed after success
    and kept (its path printed: server logs are there) after a failure."""
    import shutil
    workdir = temp_workdir(prefix)
    try:
        result = run(measure(workdir))
    except BaseException:
        print(f"logs kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def run(coro: Any) -> Any:
    """``asyncio.run(coro)``, where SIGTERM cancels it, so that clusters, servers and pod
    processes are stopped by the ``async with`` blocks instead of being orphaned."""
    async def main() -> Any:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await coro

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        print("stopped by SIGTERM; cluster, servers and pods were stopped", file=sys.stderr)
        raise SystemExit(143) from None


def git_revision() -> str:
    """HEAD, with "+uncommitted" when the code under test differs from it (the tree is shared)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "elastic_kernels",
                                "launchers"], cwd=REPO, timeout=10).returncode != 0
        untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard",
                                    "elastic_kernels", "launchers"], cwd=REPO,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+uncommitted" if dirty or untracked else "")
    except (OSError, subprocess.SubprocessError):
        return ""
