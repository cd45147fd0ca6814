"""The gateway's command line: options, the generated token, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from elastic_kernels.gateway.app import ElasticGatewayApp

from .support import api, json_of


def test_command_line_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "from-env"))
    app = ElasticGatewayApp()
    app.parse_command_line(["--port=0", "--namespace=team-a", "--log-level=WARN"])
    assert app.kubeconfig == str(tmp_path / "from-env")
    assert app.namespace == "team-a"
    assert app.port == 0
    assert app.ip == "127.0.0.1"
    assert app.log_level == 30

    app = ElasticGatewayApp()
    app.parse_command_line(
        [
            f"--kubeconfig={tmp_path / 'explicit'}",
            "--kernel-manager-class=jupyter_server.services.kernels.kernelmanager."
            "MappingKernelManager",
        ]
    )
    assert app.kubeconfig == str(tmp_path / "explicit")
    assert app.namespace is None
    assert app.kernel_manager_class.__name__ == "MappingKernelManager"
    assert ElasticGatewayApp().kernel_manager_class.__name__ == "ElasticMappingKernelManager"
    assert ElasticGatewayApp().kernel_spec_manager_class.__name__ == "ElasticKernelSpecManager"


async def _read_until(stream: asyncio.StreamReader, pattern: re.Pattern[str],
                      seen: list[str]) -> re.Match[str]:
    while True:
        line = (await stream.readline()).decode(errors="replace")
        if not line:
            raise AssertionError("gateway exited before its startup line:\n" + "".join(seen))
        seen.append(line)
        match = pattern.search(line)
        if match:
            return match


@pytest.mark.timeout(60)
async def test_cli_generates_token_serves_and_stops(jupyter_dirs: dict[str, Path]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ELASTIC_KERNELS_TOKEN", "KUBECONFIG")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "elastic_kernels.gateway.app",
        "--port=0",
        f"--ServerApp.root_dir={jupyter_dirs['root']}",
        "--kernel-manager-class=jupyter_server.services.kernels.kernelmanager."
        "AsyncMappingKernelManager",
        "--kernel-spec-manager-class=jupyter_client.kernelspec.KernelSpecManager",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        match = await asyncio.wait_for(
            _read_until(
                proc.stderr,
                re.compile(r"serving (http://127\.0\.0\.1:\d+/) \[generated token: ([0-9a-f]+) "),
                seen,
            ),
            40,
        )
        url, token = match.group(1), match.group(2)

        async def keep_reading() -> None:
            assert proc.stderr is not None
            while line := await proc.stderr.readline():
                seen.append(line.decode(errors="replace"))

        drain = asyncio.ensure_future(keep_reading())
        assert (await api(url, "GET", "/api/kernels", token=None)).code == 403
        specs = await api(url, "GET", "/api/kernelspecs", token=token)
        assert specs.code == 200 and json_of(specs)["kernelspecs"]
        # A failed start used to leave jupyter_client's pending table holding an id that
        # jupyter_server's shutdown then failed on, so the server never stopped.
        failed = await api(url, "POST", "/api/kernels", {"name": "no-such-spec"}, token=token)
        assert failed.code == 404

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await asyncio.wait_for(drain, 10)
        log = "".join(seen)
        assert log.count(token) == 1, log  # shown once, in the startup line
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if drain is not None and not drain.done():
            drain.cancel()
