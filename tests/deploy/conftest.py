"""Fixtures: a local cluster that serves the install's kinds, with the kustomize base applied."""

from __future__ import annotations

import asyncio
import json
import os
import typing as t
from pathlib import Path
from typing import Any, NamedTuple
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import yaml

from elastic_kernels.localcluster.cluster import LocalCluster

from .manifests import DEPLOY, KUBECTL, NAMESPACE, JSON, kustomize


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class Kubectl:
    """The real kubectl against a cluster, as an admin runs it.

    Async, because the local cluster's API server runs on the test's own event loop.
    """

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
                proc.communicate(stdin.encode() if stdin is not None else None), 60)
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

    async def apply_docs(self, docs: list[JSON], *args: str) -> str:
        return await self("apply", "-f", "-", *args, stdin=yaml.safe_dump_all(docs))


@pytest.fixture(scope="session")
def base_docs() -> list[JSON]:
    return kustomize(DEPLOY)


@pytest.fixture
def install_cluster_shape() -> tuple[int, int]:
    """Nodes and GPUs per node of ``install_cluster``; a module overrides it."""
    return 2, 2


@pytest_asyncio.fixture
async def install_cluster(tmp_path: Path,
                          install_cluster_shape: tuple[int, int]) -> AsyncIterator[LocalCluster]:
    """A local cluster (2 nodes x 2 GPUs unless the module says otherwise); it serves every
    kind the install creates."""
    nodes, gpus = install_cluster_shape
    cluster = LocalCluster(nodes=nodes, gpus_per_node=gpus, workdir=tmp_path / "cluster",
                           namespace=NAMESPACE, crash_backoff_seconds=0.2)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest.fixture
def kubectl(install_cluster: LocalCluster, tmp_path: Path) -> Kubectl:
    home = tmp_path / "kubectl-home"
    home.mkdir()
    return Kubectl(install_cluster.kubeconfig_path, home)
