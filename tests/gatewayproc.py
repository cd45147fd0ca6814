"""Gateways as real processes (``python -m elastic_kernels gateway``) on the local cluster.

Survival and replica tests need what only a process gives: SIGTERM and SIGKILL, and two
gateways that share nothing but the cluster. The helper reads the gateway's log from stderr (kept
for assertions and for failure output) and always stops the process.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import typing as t
from pathlib import Path

from elastic_kernels.localcluster.cluster import LocalCluster

from .gateway.support import TOKEN, KernelWS, api, json_of

#: Variables through which the machine's own Jupyter setup or a token would reach a test gateway.
LEAKY_ENV = ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "ELASTIC_KERNELS_TOKEN", "JUPYTER_PATH")


def private_jupyter_dirs(home: Path) -> dict[str, str]:
    """Create config/data/runtime/root under ``home`` and return the environment that points
    Jupyter at them, so nothing installed on the machine leaks into a test gateway."""
    for sub in ("config", "data", "runtime", "root"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return {
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_NO_CONFIG": "1",
    }


async def wait_until(predicate: t.Callable[[], t.Any], what: t.Any = "condition",
                     timeout: float = 60.0, interval: float = 0.05) -> None:
    """Wait (bounded) for in-process state that changes with no event to wait on.
    ``what`` (a string, or a callable for a message computed at the time) names it on failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what() if callable(what) else what}")
        await asyncio.sleep(interval)


async def eventually(check: t.Callable[[], t.Awaitable[t.Any]], timeout: float = 20.0,
                     interval: float = 0.05) -> t.Any:
    """Retry an async check until it returns something truthy (bounded, for HTTP views)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


_SERVING = re.compile(r"serving (http://127\.0\.0\.1:\d+/)")
#: Logged once the gateway watches the cluster and has re-attached the kernels it found.
READY = re.compile(r"Re-attached (\d+) of (\d+) running kernel")


class GatewayProcess:
    """One gateway subprocess. ``await start(...)``; ``await stop()`` in a finally."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.url = ""
        #: The "Re-attached N of M" line: how many kernels it found and re-attached at startup.
        self.ready: re.Match[str] | None = None
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, cluster: LocalCluster, workdir: Path, name: str,
                    *args: str) -> GatewayProcess:
        home = workdir / f"gateway-{name}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JUPYTER", "KUBECONFIG", "ELASTIC_KERNELS"))}
        env.update(private_jupyter_dirs(home))
        env.update({
            "ELASTIC_KERNELS_TOKEN": TOKEN,
            "ELASTIC_KERNELS_GATEWAY_ID": f"test-gateway-{name}",
        })
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "elastic_kernels", "gateway",
            f"--kubeconfig={cluster.kubeconfig_path}", "--ip=127.0.0.1", "--port=0",
            f"--ServerApp.root_dir={home / 'root'}", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env,
        )
        gateway = cls(proc, name)
        gateway._reader = asyncio.ensure_future(gateway._read())
        try:
            match = await gateway.wait_for_log(_SERVING, timeout=60)
        except BaseException:
            await gateway.stop()
            raise
        gateway.url = match.group(1)
        try:
            gateway.ready = await gateway.wait_for_log(READY, timeout=60)
        except BaseException:
            await gateway.stop()
            raise
        return gateway

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line.decode(errors="replace"))
            self._new_line.set()
        self._new_line.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def wait_for_log(self, pattern: re.Pattern[str] | str, timeout: float = 60,
                           start: int = 0) -> re.Match[str]:
        """The first log line from index ``start`` on that matches (waiting for it)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        index = start
        while True:
            while index < len(self.lines):
                match = regex.search(self.lines[index])
                index += 1
                if match:
                    return match
            if self._reader is not None and self._reader.done():
                raise AssertionError(f"gateway {self.name} exited before logging "
                                     f"{regex.pattern!r}:\n{self.log[-6000:]}")
            self._new_line.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"gateway {self.name} did not log {regex.pattern!r} "
                                     f"within {timeout}s:\n{self.log[-6000:]}")
            try:
                await asyncio.wait_for(self._new_line.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def kill(self, signum: int, timeout: float = 30) -> int:
        """Send ``signum`` and wait for the exit; returns the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signum)
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self) -> None:
        """Stop the process whatever state it is in (SIGTERM, then SIGKILL)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except asyncio.TimeoutError:
                self._reader.cancel()

    # -- the API, for tests -------------------------------------------------------------------

    async def start_kernel(self, name: str = "python-cpu") -> str:
        response = await api(self.url, "POST", "/api/kernels", {"name": name})
        assert response.code == 201, (response.code, response.body)
        return t.cast(str, json_of(response)["id"])

    async def kernel_ids(self) -> set[str]:
        response = await api(self.url, "GET", "/api/kernels")
        assert response.code == 200, response.body
        return {k["id"] for k in json_of(response)}

    async def execute(self, kernel_id: str, code: str) -> dict[str, t.Any]:
        """Run ``code`` over a fresh websocket; returns KernelWS.execute's result."""
        ws = await KernelWS.open(self.url, kernel_id)
        try:
            return await ws.execute(code, timeout=60)
        finally:
            ws.close()


class Gateways:
    """Every gateway process a test starts, stopped at the end whatever happened; their logs
    are kept in the test's directory for reading after a failure."""

    def __init__(self, cluster: LocalCluster, workdir: Path, *args: str) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.args = args
        self.started: list[GatewayProcess] = []

    async def start(self, name: str, *args: str) -> GatewayProcess:
        gateway = await GatewayProcess.start(self.cluster, self.workdir, name,
                                             "--log-level=INFO", *self.args, *args)
        self.started.append(gateway)
        return gateway

    async def stop_all(self) -> None:
        await asyncio.gather(*(g.stop() for g in self.started), return_exceptions=True)
        for gateway in self.started:
            (self.workdir / f"gateway-{gateway.name}.log").write_text(gateway.log)
