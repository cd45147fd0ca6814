"""The whole local cluster in one object: API server, scheduler with simulated nodes, kubelet.

It is what ``make demo`` and the test suite run on. Clients reach it only the way they reach a
real cluster, through the kubeconfig it writes; nothing in the gateway or the provisioner knows
that this cluster is not a real one.

Like a real cluster it lets nobody in without credentials: each run makes a random admin token
(user ``kubernetes-admin``, group ``system:masters``) that only the kubeconfig it writes (mode
0600) holds, and a ServiceAccount token key from which the kubelet gets each pod's token. The
kubeconfig names the HTTPS listener and embeds the run's CA, as a real admin kubeconfig does.
Every other identity (a ServiceAccount token, a pod's mounted token) may do only what RBAC
bindings grant it, with the default cluster roles a real cluster starts with (``rbac.py``).

It starts empty but for what a fresh cluster holds (namespaces, nodes, default RBAC, and a
default StorageClass ``local-path`` whose claims get directories under ``<workdir>/volumes``:
``localpath.py``, ``pvcontroller.py``). Putting
CRDs and other manifests in is a client's job, done over HTTP with the kubeconfig as an admin's
kubectl would (``elastic-kernels cluster --apply``, the tests' ``running_cluster``, the
benchmarks' ``local_cluster``): the local cluster imports nothing of the product.

Its controllers: the scheduler, the kubelet, the PersistentVolume controller and the DaemonSet
controller always run. The Deployment controller (``deployments.py``) runs only when asked for,
``controllers={"deployment"}``: many tests apply the install's Deployments and make the pods they
need themselves, which a controller on by default would double.

Callers: ``elastic-kernels cluster`` (``cli.py``), the test suite and the benchmarks. They may
choose the nodes, the ports, the work directory, the image policy, the crash backoff and the
optional controllers; tests may swap ``store`` before ``start()`` (a smaller watch window, say).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from collections.abc import Collection, Sequence
from typing import Any

import yaml

from .apiserver import APIServer
from .authn import Authenticator, StaticTokens, admin_user
from .images import ImagePolicy
from .claims import STORAGE_CLASSES
from .daemonsets import DaemonSetController
from .deployments import DeploymentController
from .dcgm import DcgmExporterStandIn
from .kubelet import Kubelet
from .localpath import default_storage_class
from .nodes import NodeConfig, default_nodes, node_object
from .pvcontroller import PersistentVolumeController
from .satokens import ServiceAccountTokens
from .scheduler import Scheduler
from .store import Store
from .tls import ServingCert, generate_serving_cert

log = logging.getLogger(__name__)

CONTEXT_NAME = "elastic-local"
#: Controllers that run only when named in ``LocalCluster(controllers=...)``, by the names
#: kube-controller-manager's ``--controllers`` flag takes.
OPTIONAL_CONTROLLERS = frozenset({"deployment"})


def optional_controllers(names: Collection[str]) -> frozenset[str]:
    """The optional controllers ``names`` asks for; a name this cluster does not have is a
    ValueError that lists the ones it has."""
    unknown = sorted(set(names) - OPTIONAL_CONTROLLERS)
    if unknown:
        raise ValueError(f"unknown controller(s) {', '.join(unknown)}; the optional ones: "
                         f"{', '.join(sorted(OPTIONAL_CONTROLLERS))}")
    return frozenset(names)


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
        node_configs: Sequence[NodeConfig] | None = None,
        controllers: Collection[str] = (),
    ) -> None:
        #: The optional controllers to run (``OPTIONAL_CONTROLLERS``); off unless named.
        self.controllers = optional_controllers(controllers)
        #: The nodes, when given (mixed GPU flavors: ``nodes.parse_gpu_flavors`` or
        #: ``nodes.load_node_layout``); else ``nodes`` alike nodes of ``gpus_per_node``.
        self.node_configs = list(node_configs) if node_configs is not None else None
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
        self.store = Store()
        self._admin_token = ""
        self._cert: ServingCert | None = None
        self.service_account_tokens: ServiceAccountTokens | None = None
        self._authenticator: Authenticator | None = None
        self.apiserver: APIServer | None = None
        self.scheduler: Scheduler | None = None
        self.kubelet: Kubelet | None = None
        self.volume_controller: PersistentVolumeController | None = None
        self.daemonset_controller: DaemonSetController | None = None
        self.deployment_controller: DeploymentController | None = None
        #: dcgm-exporter's metrics for the simulated GPUs (dcgm.py); its ``url`` is what
        #: ``GpuUseSource.scrape_urls`` names, as dcgm-exporter's Service would on a cluster.
        self.dcgm_exporter: DcgmExporterStandIn | None = None

    @property
    def url(self) -> str:
        """The plain-HTTP listener (it requires credentials like the HTTPS one)."""
        assert self.apiserver is not None, "the cluster is not running"
        return self.apiserver.url

    @property
    def server_url(self) -> str:
        """The HTTPS listener, which the kubeconfig names (kubectl, like every client-go
        program, sends credentials only over TLS)."""
        assert self.apiserver is not None and self.apiserver.tls_url is not None, \
            "the cluster is not running"
        return self.apiserver.tls_url

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate of the HTTPS listener (what a pod's ``ca.crt`` holds)."""
        assert self._cert is not None, "the cluster is not running"
        return self._cert.ca_pem

    @property
    def request_counter(self) -> Any:
        assert self.apiserver is not None, "the cluster is not running"
        return self.apiserver.request_counter

    async def start(self) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            configs = self.node_configs if self.node_configs is not None else default_nodes(
                self.node_count, self.gpus_per_node, self.cpu_per_node, self.memory_per_node)
            for cfg in configs:
                self.store.create(("", "nodes"), None, node_object(cfg))
            self.store.create(STORAGE_CLASSES, None, default_storage_class())
            cert = self._cert = await asyncio.to_thread(generate_serving_cert,
                                                        self.workdir / "pki")
            self._admin_token = secrets.token_urlsafe(32)
            tokens = self.service_account_tokens = ServiceAccountTokens(self.store)
            self._authenticator = Authenticator(
                [StaticTokens({self._admin_token: admin_user()}), tokens])
            self.apiserver = self._new_apiserver(self.port, 0)
            await self.apiserver.start()
            kubelet_kwargs: dict[str, Any] = {"api_url": self.apiserver.url,
                                              "service_url": self.apiserver.tls_url,
                                              "ca_pem": cert.ca_pem,
                                              "token_issuer": tokens,
                                              "image_policy": self.image_policy}
            if self.crash_backoff_seconds is not None:
                kubelet_kwargs["crash_backoff_seconds"] = self.crash_backoff_seconds
            self.kubelet = Kubelet(self.store, self.workdir / "pods", **kubelet_kwargs)
            self.apiserver.log_provider = self.kubelet.log_provider
            self.scheduler = Scheduler(self.store)
            await self.scheduler.start()
            self.volume_controller = PersistentVolumeController(self.store,
                                                                self.workdir / "volumes")
            await self.volume_controller.start()
            self.daemonset_controller = DaemonSetController(self.store)
            await self.daemonset_controller.start()
            if "deployment" in self.controllers:
                self.deployment_controller = DeploymentController(self.store)
                await self.deployment_controller.start()
            await self.kubelet.start()
            self.dcgm_exporter = await DcgmExporterStandIn(
                self.store, self.kubelet,
                host=self.host if self.host.startswith("127.") else "127.0.0.1").start()
            log.info("dcgm-exporter stand-in: %s (Prometheus-style queries: %s/api/v1/query)",
                     self.dcgm_exporter.url, self.dcgm_exporter.query_url)
            self.write_kubeconfig(self.kubeconfig_path)
        except BaseException:
            await self.stop()
            raise
        return self

    def _new_apiserver(self, port: int, tls_port: int) -> APIServer:
        assert self._cert is not None and self._authenticator is not None
        return APIServer(self.store, host=self.host, port=port, tls=self._cert.server_context(),
                         tls_port=tls_port, authenticator=self._authenticator,
                         service_account_tokens=self.service_account_tokens)

    def kubeconfig(self, namespace: str | None = None, token: str | None = None) -> dict:
        """A kubeconfig naming cluster, user and context ``elastic-local``: the admin's, or
        one that authenticates with ``token`` (a ServiceAccount's, say) instead.

        It holds a credential: write it only to files no one else can read.
        """
        cluster = {"server": self.server_url,
                   "certificate-authority-data": base64.b64encode(self.ca_pem).decode()}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": CONTEXT_NAME, "cluster": cluster}],
            "users": [{"name": CONTEXT_NAME, "user": {"token": token or self._admin_token}}],
            "contexts": [{
                "name": CONTEXT_NAME,
                "context": {"cluster": CONTEXT_NAME, "user": CONTEXT_NAME,
                            "namespace": namespace or self.namespace},
            }],
            "current-context": CONTEXT_NAME,
            "preferences": {},
        }

    def write_kubeconfig(self, path: str | Path, namespace: str | None = None,
                         token: str | None = None) -> Path:
        """Write ``kubeconfig(namespace, token)`` to ``path``, readable by this user only from
        the moment the file exists (it is created 0600, never widened then narrowed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(self.kubeconfig(namespace, token), sort_keys=False).encode()
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(text)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
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
        server = self._new_apiserver(old.port, old.tls_port)
        server.request_counter = old.request_counter
        server.log_provider = old.log_provider
        await server.start()
        self.apiserver = server

    async def stop(self) -> None:
        """Stop in reverse order; the kubelet last stops every pod process it started."""
        for component in (self.dcgm_exporter, self.deployment_controller,
                          self.daemonset_controller, self.volume_controller, self.scheduler,
                          self.kubelet, self.apiserver):
            if component is None:
                continue
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)
        self.scheduler = self.kubelet = None
        self.volume_controller = None
        self.daemonset_controller = None
        self.deployment_controller = None
        self.dcgm_exporter = None
        self.apiserver = None
        if self._own_workdir:
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)

    async def __aenter__(self) -> LocalCluster:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
