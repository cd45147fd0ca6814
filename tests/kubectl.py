"""The real kubectl, as an admin runs it, for tests against the local cluster.

Installed by the test extra beside this interpreter. Async, because the local cluster's API
server runs on the test's own event loop: a blocking subprocess call would wait on a server
that cannot answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import typing as t
from pathlib import Path
from typing import Any, NamedTuple

import yaml

KUBECTL = Path(sys.executable).parent / "kubectl"
#: Seconds any one kubectl command may take before the test fails instead of hanging.
COMMAND_TIMEOUT = 60


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class Kubectl:
    """kubectl with one kubeconfig, in its own HOME (its cache stays out of the user's)."""

    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(workdir)}
        self.workdir = workdir

    async def run(self, *args: str, stdin: str | None = None) -> Result:
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL), *args, env=self.env, cwd=self.workdir,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(stdin.encode() if stdin is not None else None),
                COMMAND_TIMEOUT)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        return Result(t.cast(int, proc.returncode), out.decode(), err.decode())

    async def __call__(self, *args: str, stdin: str | None = None) -> str:
        result = await self.run(*args, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    async def json(self, *args: str) -> Any:
        return json.loads(await self(*args, "-o", "json"))

    async def apply_docs(self, docs: list[dict[str, Any]], *args: str) -> str:
        return await self("apply", "-f", "-", *args, stdin=yaml.safe_dump_all(docs))
