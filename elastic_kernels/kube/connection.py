"""The process-wide connection to the cluster: one client and one informer per watched kind.

jupyter_client creates a provisioner per kernel from configuration alone, and the kernelspec
manager is created separately by jupyter_server. Both must share the same client and the same
watches (that is the whole point of watching instead of polling), so they meet here, in a
traitlets ``SingletonConfigurable`` configured like any other Jupyter class::

    c.ClusterConnection.kubeconfig = "/path/to/kubeconfig"   # default: in-cluster, $KUBECONFIG
    c.ClusterConnection.namespace = "notebooks"              # default: the context's namespace
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from traitlets import Float, Integer, Unicode, default
from traitlets.config import SingletonConfigurable

from .client import KubeClient, Resource
from .config import ClusterConfig, load_cluster_config
from .informer import Informer

log = logging.getLogger(__name__)


class ClusterConnection(SingletonConfigurable):
    """Owns the API client and the shared informers for one event loop."""

    kubeconfig = Unicode(
        None, allow_none=True, config=True,
        help="Path of a kubeconfig file. Default: in-cluster configuration inside a pod, "
        "otherwise $KUBECONFIG or ~/.kube/config.",
    )
    context = Unicode(None, allow_none=True, config=True, help="kubeconfig context to use.")
    namespace = Unicode(
        None, allow_none=True, config=True,
        help="Namespace of kernelspecs, templates and kernels. Default: the kubeconfig "
        "context's namespace, or the gateway pod's own namespace.",
    )
    max_workers = Integer(
        16, config=True, help="Threads for blocking API calls (the official client is sync)."
    )
    resync_seconds = Float(
        900.0, config=True, help="Full relist interval of each watch, as a safety net."
    )
    sync_timeout = Float(
        30.0, config=True, help="Seconds to wait for a watch's first list at startup."
    )
    request_timeout = Float(
        30.0, config=True,
        help="Seconds to wait for the API server's answer to an ordinary request (watches "
        "have their own). A hung API server fails a kernel start after this long with a 503; "
        "the provisioner then removes whatever the API server may still create for it.",
    )

    _cluster: ClusterConfig | None = None
    _client: KubeClient | None = None

    @default("log")
    def _log_default(self) -> logging.Logger:
        return log

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._informers: dict[tuple[str, str, str | None, str | None, str | None],
                              Informer] = {}
        self._informer_lock = asyncio.Lock()

    @property
    def cluster(self) -> ClusterConfig:
        if self._cluster is None:
            self._cluster = load_cluster_config(self.kubeconfig, self.context, self.namespace)
            self.log.info(
                "Kubernetes: %s at %s, namespace %s",
                self._cluster.source, self._cluster.host, self._cluster.namespace,
            )
        return self._cluster

    @property
    def client(self) -> KubeClient:
        if self._client is None:
            cluster = self.cluster
            self._client = KubeClient(
                cluster.api_client, cluster.namespace, self.max_workers,
                request_timeout=(min(5.0, self.request_timeout), self.request_timeout),
            )
        return self._client

    @property
    def default_namespace(self) -> str:
        return self.cluster.namespace

    async def informer(
        self,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str | None = None,
        wait: bool = True,
        field_selector: str | None = None,
    ) -> Informer:
        """The shared informer for a kind (and selectors), started on first use."""
        ns = (namespace or self.default_namespace) if resource.namespaced else None
        key = (resource.group, resource.plural, ns, label_selector, field_selector)
        async with self._informer_lock:
            informer = self._informers.get(key)
            if informer is None:
                informer = Informer(
                    self.client, resource, ns, label_selector=label_selector,
                    field_selector=field_selector,
                    resync_seconds=self.resync_seconds,
                )
                self._informers[key] = informer
                await informer.start(wait=False)
        if wait:
            await informer.wait_synced(self.sync_timeout)
        return informer

    def informers(self) -> list[Informer]:
        return list(self._informers.values())

    async def close(self) -> None:
        informers, self._informers = list(self._informers.values()), {}
        await asyncio.gather(*(i.stop() for i in informers), return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None
        self._cluster = None

    @classmethod
    async def reset(cls) -> None:
        """Close and forget the singleton (tests, and a gateway shutting down)."""
        if cls.initialized():
            await cls.instance().close()
            cls.clear_instance()
