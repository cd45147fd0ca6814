"""The whole local cluster in one object: API server, scheduler with simulated nodes, kubelet.

It is what ``make demo`` and the test suite run on. Clients reach it only the way they reach a
real cluster, through the kubeconfig it writes; nothing in the gateway or the provisioner knows
that this cluster is not a real one.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

import yaml

from ..kube.apply import apply_manifests, load_manifests
from ..kube.client import KubeClient
from ..kube.config import load_cluster_config

from .apiserver import APIServer
from .images import ImagePolicy
from .kubelet import Kubelet
from .nodes import default_nodes, node_object
from .scheduler import Scheduler
from .tls import generate_serving_cert
from .store import Store

log = logging.getLogger(__name__)

CONTEXT_NAME = "elastic-local"


class LocalCluster:
    """``async with LocalCluster() as cluster:`` gives a running cluster and removes it after.

    Every pod process it started is stopped on exit, even when the body raised.
    """

    def __init__(
        self,
        *,
        nodes: int = 2,
        gpus_per_node: int = 4,
        cpu_per_node: str = "8",
        memory_per_node: str = "32Gi",
        port: int = 0,
        host: str = "127.0.0.1",
        workdir: str | Path | None = None,
        kubeconfig_path: str | Path | None = None,
        namespace: str = "default",
        image_policy: ImagePolicy | None = None,
        crash_backoff_seconds: float | None = None,
        manifests: Sequence[str | Path] = (),
    ) -> None:
        self.node_count = nodes
        self.gpus_per_node = gpus_per_node
        self.cpu_per_node = cpu_per_node
        self.memory_per_node = memory_per_node
        self.port = port
        self.host = host
        self.namespace = namespace
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="elastic-local-"))
        self.kubeconfig_path = Path(kubeconfig_path or self.workdir / "kubeconfig")
        self.image_policy = image_policy
        self.crash_backoff_seconds = crash_backoff_seconds
        self.manifests = list(manifests)
        self.store = Store()
        self.apiserver: APIServer | None = None
        self.scheduler: Scheduler | None = None
        self.kubelet: Kubelet | None = None

    @property
    def url(self) -> str:
        assert self.apiserver is not None, "the cluster is not running"
        return self.apiserver.url

    @property
    def request_counter(self) -> Any:
        assert self.apiserver is not None, "the cluster is not running"
        return self.apiserver.request_counter

    async def start(self) -> "LocalCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for cfg in default_nodes(self.node_count, self.gpus_per_node, self.cpu_per_node,
                                     self.memory_per_node):
                self.store.create(("", "nodes"), None, node_object(cfg))
            cert = await asyncio.to_thread(generate_serving_cert, self.workdir / "pki")
            self.apiserver = APIServer(self.store, host=self.host, port=self.port,
                                       tls=cert.server_context())
            await self.apiserver.start()
            kubelet_kwargs: dict[str, Any] = {"api_url": self.apiserver.url,
                                              "service_url": self.apiserver.tls_url,
                                              "ca_pem": cert.ca_pem,
                                              "image_policy": self.image_policy}
            if self.crash_backoff_seconds is not None:
                kubelet_kwargs["crash_backoff_seconds"] = self.crash_backoff_seconds
            self.kubelet = Kubelet(self.store, self.workdir / "pods", **kubelet_kwargs)
            self.apiserver.log_provider = self.kubelet.log_provider
            self.scheduler = Scheduler(self.store)
            await self.scheduler.start()
            await self.kubelet.start()
            self.write_kubeconfig(self.kubeconfig_path)
            if self.manifests:
                await self.apply(self.manifests)
        except BaseException:
            await self.stop()
            raise
        return self

    async def apply(self, paths: Sequence[str | Path]) -> list[str]:
        """Apply manifest files through the API server, as an admin's kubectl would."""
        cfg = load_cluster_config(self.kubeconfig_path)
        client = KubeClient(cfg.api_client, cfg.namespace)
        try:
            return await apply_manifests(client, load_manifests(paths))
        finally:
            await client.close()

    def kubeconfig(self, namespace: str | None = None, token: str = "local-admin") -> dict:
        """A kubeconfig naming cluster, user and context ``elastic-local``."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT_NAME, "cluster": {"server": self.url}}],
            "users": [{"name": CONTEXT_NAME, "user": {"token": token}}],
            "contexts": [{
                "name": CONTEXT_NAME,
                "context": {"cluster": CONTEXT_NAME, "user": CONTEXT_NAME,
                            "namespace": namespace or self.namespace},
            }],
            "current-context": CONTEXT_NAME,
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path, namespace: str | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace), sort_keys=False))
        path.chmod(0o600)
        return path

    async def stop_apiserver(self) -> None:
        """Take the API server down, as in a control-plane outage: connections to its port are
        refused (open watches end) while the scheduler, the kubelet and every pod keep running
        on the same store. ``start_apiserver`` brings it back."""
        assert self.apiserver is not None, "the cluster is not running"
        await self.apiserver.stop()

    async def start_apiserver(self) -> None:
        """End an outage begun by ``stop_apiserver``: the same port, the same store (so the same
        objects and resourceVersions; watches resume or get 410 Gone like after a real one)."""
        old = self.apiserver
        assert old is not None, "the cluster is not running"
        server = APIServer(self.store, host=self.host, port=old.port)
        server.request_counter = old.request_counter
        server.log_provider = old.log_provider
        await server.start()
        self.apiserver = server

    async def stop(self) -> None:
        """Stop in reverse order; the kubelet last stops every pod process it started."""
        for component in (self.scheduler, self.kubelet, self.apiserver):
            if component is None:
                continue
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)
        self.scheduler = self.kubelet = None
        self.apiserver = None
        if self._own_workdir:
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)

    async def __aenter__(self) -> "LocalCluster":
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
