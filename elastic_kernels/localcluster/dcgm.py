"""A stand-in for NVIDIA's dcgm-exporter: the simulated GPUs' metrics, in the exporter's format.

On a GPU cluster the NVIDIA GPU Operator runs dcgm-exporter on every GPU node (port 9400,
``/metrics``). With its Kubernetes mapping on it labels each GPU's samples with the pod and
container that hold the GPU, which is what the gateway's GPU utilisation source reads. This
serves the same thing for the local cluster's simulated GPUs, on loopback:

* ``GET /metrics``: ``DCGM_FI_DEV_GPU_UTIL`` (percent), ``DCGM_FI_DEV_FB_USED`` and
  ``DCGM_FI_DEV_FB_FREE`` (MiB), with dcgm-exporter's HELP text, types and labels (``gpu``,
  ``UUID``, ``pci_bus_id``, ``device``, ``modelName``, ``Hostname``, ``DCGM_FI_DRIVER_VERSION``,
  under MIG ``GPU_I_PROFILE`` and ``GPU_I_ID``, then ``container``, ``namespace``, ``pod``: empty
  for a GPU no pod holds), for every whole GPU, MIG instance and time-sliced GPU of every node
  (the Node objects' NVIDIA resources), as if every node's exporter sat behind one endpoint;
* ``GET /api/v1/query?query=<metric name>``: the same samples as a Prometheus instant query
  answers them (only a bare metric name is understood; anything else is a ``bad_data`` error as
  Prometheus sends it), so the gateway's ``prometheus`` mode runs against it too.

What a GPU shows is driven by what the pod's processes do: a kernel marks its GPUs busy with
:mod:`.simgpu` (``with simgpu.busy(): ...``), which writes markers into the pod's scratch
directory; each scrape reads them. A GPU no marker claims is at 0%. Which pod holds which
device is the kubelet's (the device indices its allocator handed out), which node has how many
the Node objects' capacity.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .fit import is_terminal
from .nodes import GPU_REPLICAS_LABEL, GPU_RESOURCE, gpu_kind
from .quantities import parse_quantity
from .simgpu import read_markers

log = logging.getLogger(__name__)

UTIL = "DCGM_FI_DEV_GPU_UTIL"
FB_USED = "DCGM_FI_DEV_FB_USED"
FB_FREE = "DCGM_FI_DEV_FB_FREE"
#: dcgm-exporter's HELP text for them (its etc/default-counters.csv).
HELP = {
    UTIL: "GPU utilization (in %).",
    FB_USED: "Framebuffer memory used (in MiB).",
    FB_FREE: "Framebuffer memory free (in MiB).",
}
_UUID_NAMESPACE = uuid.UUID("6f1c8d2e-5b0a-4c1e-9a57-3d2b1f0e9c44")


@dataclass(frozen=True)
class SimulatedGpu:
    """One simulated GPU, MIG instance or time-sliced share's holder, at scrape time."""

    node: str
    #: The physical GPU's index on its node (dcgm-exporter's ``gpu`` label).
    index: int
    namespace: str = ""
    pod: str = ""
    container: str = ""
    utilisation: float = 0.0
    memory_mib: float = 0.0
    #: Under MIG: the profile (``1g.10gb``) and the GPU instance's id.
    profile: str = ""
    instance: str = ""

    @property
    def uuid(self) -> str:
        """Stable per node and index, shaped like NVML's ``GPU-xxxxxxxx-...``."""
        return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{self.node}/{self.index}')}"


#: A device slot: (node, resource, index) as the kubelet's allocator numbers them.
Slot = tuple[str, str, int]
#: Who holds a slot: (namespace, pod, container, pod directory).
Holder = tuple[str, str, str, Path]


class DcgmExporterStandIn:
    """Serves the simulated GPUs' metrics on ``host`` (loopback only)."""

    def __init__(self, store: Any, kubelet: Any, *, host: str = "127.0.0.1", port: int = 0,
                 model: str = "NVIDIA A100-SXM4-80GB", memory_mib: float = 81920.0,
                 driver: str = "550.54.15") -> None:
        if not host.startswith("127."):
            raise ValueError(f"the stand-in binds only to loopback (127.0.0.0/8), not {host!r}")
        self.store = store
        self.kubelet = kubelet
        self.host = host
        self._requested_port = port
        self.port = 0
        self.model = model
        self.memory_mib = memory_mib
        self.driver = driver
        self._server: tornado.httpserver.HTTPServer | None = None

    @property
    def url(self) -> str:
        """The ``/metrics`` URL to give ``GpuUseSource.scrape_urls``."""
        return f"http://{self.host}:{self.port}/metrics"

    @property
    def query_url(self) -> str:
        """The base URL to give ``GpuUseSource.prometheus_url``."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> DcgmExporterStandIn:
        if self._server is not None:
            return self
        app = tornado.web.Application([
            (r"/metrics", _MetricsHandler, {"exporter": self}),
            (r"/api/v1/query", _QueryHandler, {"exporter": self}),
        ], log_function=lambda handler: None)
        # A restart (tests take the exporter down and back) keeps its port, as a Service would.
        sockets = tornado.netutil.bind_sockets(self.port or self._requested_port,
                                               address=self.host,
                                               family=socket.AF_INET)
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._server = server
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        await self._server.close_all_connections()
        self._server = None

    async def __aenter__(self) -> DcgmExporterStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what the GPUs show ----------------------------------------------------------------------

    def _inventory(self) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
        """NVIDIA GPU resources per node (whole GPUs, MIG profiles, time-sliced shares) from the
        Node objects' capacity, and each node's shares per GPU (its replicas label)."""
        nodes: dict[str, dict[str, int]] = {}
        replicas: dict[str, int] = {}
        for node in self.store.list(("", "nodes"))[0]:
            meta = node.get("metadata") or {}
            name = str(meta.get("name") or "")
            found: dict[str, int] = {}
            for resource, quantity in ((node.get("status") or {}).get("capacity") or {}).items():
                if not str(resource).startswith("nvidia.com/") or not gpu_kind(str(resource)):
                    continue
                try:
                    found[str(resource)] = int(parse_quantity(str(quantity)))
                except ValueError:
                    continue
            nodes[name] = found
            try:
                replicas[name] = max(1, int((meta.get("labels") or {}).get(GPU_REPLICAS_LABEL)
                                            or 1))
            except ValueError:
                replicas[name] = 1
        return nodes, replicas

    def _holders(self) -> dict[Slot, Holder]:
        """Each device slot a running pod holds, as the kubelet's allocator handed it out."""
        held: dict[Slot, Holder] = {}
        for pod in self.store.list(("", "pods"))[0]:
            meta = pod.get("metadata") or {}
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            if not node or is_terminal(pod):
                continue
            worker = self.kubelet.worker(meta.get("namespace", ""), meta.get("name", ""))
            if worker is None:
                continue
            for c in worker.containers:
                devices = getattr(c, "devices", None) or {GPU_RESOURCE: list(c.gpus)}
                for resource, indices in devices.items():
                    for index in indices:
                        held[(node, str(resource), int(index))] = (
                            worker.namespace, worker.name, c.name, worker.pod_dir)
        return held

    async def gpus(self) -> list[SimulatedGpu]:
        """Every simulated GPU as a scrape now sees it (markers read off the loop).

        Whole GPUs are one series each. MIG instances are one series each, on a physical GPU
        numbered after the whole ones, with their profile and instance id, as dcgm-exporter
        reports MIG. A time-sliced GPU is one series per pod holding a share of it (none held:
        one series without a pod), as dcgm-exporter's pod mapping reports shared GPUs.
        """
        nodes, replicas = self._inventory()
        held = self._holders()
        pod_dirs = {h[3] for h in held.values()}
        usage = await asyncio.to_thread(lambda: {d: read_markers(d / "tmp") for d in pod_dirs})

        def gpu(node: str, index: int, holder: Holder | None, profile: str = "",
                instance: str = "") -> SimulatedGpu:
            if holder is None:
                return SimulatedGpu(node, index, profile=profile, instance=instance)
            namespace, pod, container, pod_dir = holder
            util, memory = usage.get(pod_dir) or (0.0, 0.0)
            return SimulatedGpu(node, index, namespace, pod, container, util,
                                min(memory, self.memory_mib), profile, instance)

        found: list[SimulatedGpu] = []
        for node, resources in sorted(nodes.items()):
            whole = resources.get(GPU_RESOURCE, 0)
            for index in range(whole):
                found.append(gpu(node, index, held.get((node, GPU_RESOURCE, index))))
            migs = sorted(r for r in resources if gpu_kind(r) == "mig")
            for offset, resource in enumerate(migs):
                profile = resource.split("/mig-", 1)[1]
                for instance in range(resources[resource]):
                    found.append(gpu(node, whole + offset, held.get((node, resource, instance)),
                                     profile=profile, instance=str(instance)))
            for resource in sorted(r for r in resources if gpu_kind(r) == "shared"):
                per_gpu = replicas.get(node, 1)
                physical: dict[int, list[Holder]] = {}
                for share in range(resources[resource]):
                    holders = physical.setdefault(whole + share // per_gpu, [])
                    holder = held.get((node, resource, share))
                    if holder is not None and holder not in holders:
                        holders.append(holder)
                for index, holders in sorted(physical.items()):
                    found.extend([gpu(node, index, h) for h in holders] or [gpu(node, index, None)])
        return found

    def labels(self, gpu: SimulatedGpu) -> dict[str, str]:
        labels = {"gpu": str(gpu.index), "UUID": gpu.uuid,
                  "pci_bus_id": f"00000000:{0x10 + gpu.index:02X}:00.0",
                  "device": f"nvidia{gpu.index}", "modelName": self.model, "Hostname": gpu.node,
                  "DCGM_FI_DRIVER_VERSION": self.driver}
        if gpu.profile:
            labels.update({"GPU_I_PROFILE": gpu.profile, "GPU_I_ID": gpu.instance})
        labels.update({"container": gpu.container, "namespace": gpu.namespace, "pod": gpu.pod})
        return labels

    def values(self, gpu: SimulatedGpu) -> dict[str, float]:
        return {UTIL: gpu.utilisation, FB_USED: gpu.memory_mib,
                FB_FREE: self.memory_mib - gpu.memory_mib}

    def exposition(self, gpus: list[SimulatedGpu]) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Gpus(self, gpus))
        return generate_latest(registry)


class _Gpus(Collector):
    def __init__(self, exporter: DcgmExporterStandIn, gpus: list[SimulatedGpu]) -> None:
        self.exporter = exporter
        self.gpus = gpus

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        # Label sets differ (MIG instances carry two more), so samples are added one by one.
        families = {name: Metric(name, text, "gauge") for name, text in HELP.items()}
        for gpu in self.gpus:
            labels = self.exporter.labels(gpu)
            for name, value in self.exporter.values(gpu).items():
                families[name].add_sample(name, labels, value)
        return list(families.values())


class _MetricsHandler(tornado.web.RequestHandler):
    def initialize(self, exporter: DcgmExporterStandIn) -> None:
        self.exporter = exporter

    async def get(self) -> None:
        body = self.exporter.exposition(await self.exporter.gpus())
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(body)


class _QueryHandler(tornado.web.RequestHandler):
    def initialize(self, exporter: DcgmExporterStandIn) -> None:
        self.exporter = exporter

    async def get(self) -> None:
        query = self.get_query_argument("query", "").strip()
        self.set_header("Content-Type", "application/json")
        if query not in HELP:
            self.set_status(400)
            self.finish(json.dumps({
                "status": "error", "errorType": "bad_data",
                "error": f"the local cluster's stand-in answers only a bare metric name "
                         f"({', '.join(HELP)}), not {query[:200]!r}"}))
            return
        now = time.time()
        result = []
        for gpu in await self.exporter.gpus():
            labels = {"__name__": query, **self.exporter.labels(gpu)}
            value = self.exporter.values(gpu)[query]
            result.append({"metric": labels, "value": [now, f"{value:g}"]})
        self.finish(json.dumps({"status": "success",
                                "data": {"resultType": "vector", "result": result}}))
