"""The simulated nodes: what ``kubectl get nodes`` shows and what the scheduler fits pods onto.

A node is a plain ``v1 Node`` object in the store, shaped like one a kubelet registers (capacity,
allocatable, Ready condition, addresses, well-known labels), so that clients, kubectl and the
scheduler read it exactly as they would on a real cluster. GPU nodes advertise ``nvidia.com/gpu``
as the NVIDIA device plugin does and carry the GPU feature-discovery label
``nvidia.com/gpu.present=true`` that kernel templates select on.

GPU flavors (issue 16): a node may also offer MIG partitions, as the device plugin's ``mixed``
strategy advertises them (``nvidia.com/mig-1g.10gb: 7``, label ``nvidia.com/mig.strategy=mixed``),
time-sliced shares under the renamed resource (``nvidia.com/gpu.shared: 8``, label
``nvidia.com/gpu.replicas=4``: shares per physical GPU) or AMD GPUs (``amd.com/gpu``). Nodes are
described by :func:`parse_gpu_flavors` (the ``--gpu-flavors`` option) or :func:`load_node_layout`
(a layout file); the kubelet hands out the devices (``allocators.py``).
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .quantities import parse_quantity

if TYPE_CHECKING:
    from .store import Store

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
#: GPU feature discovery's labels for MIG and time-slicing.
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
GPU_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
SHARING_STRATEGY_LABEL = "nvidia.com/gpu.sharing-strategy"
#: Vendors whose device plugins the simulated GPUs stand in for.
GPU_VENDORS = ("nvidia.com", "amd.com")
_MIG_RE = re.compile(r"^nvidia\.com/mig-[1-7]g\.[1-9][0-9]*gb(\.me)?$")
_RESOURCE_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def gpu_kind(resource: str) -> str:
    """"mig", "shared", "gpu" (a whole device) or "" (not a GPU) for a resource name."""
    if resource.split("/", 1)[0] not in GPU_VENDORS:
        return ""
    if "/mig-" in resource:
        return "mig"
    if resource.endswith(".shared"):
        return "shared"
    return "gpu"


def check_gpu_resource(resource: str) -> None:
    """Refuse what no GPU device plugin advertises, saying what would be accepted."""
    if not _RESOURCE_RE.match(resource):
        raise ValueError(f"{resource!r} is not an extended resource name like nvidia.com/gpu "
                         "(domain/name)")
    kind = gpu_kind(resource)
    if not kind:
        raise ValueError(f"{resource!r} is not a simulated GPU resource: use nvidia.com/gpu, "
                         "nvidia.com/mig-<N>g.<M>gb, nvidia.com/gpu.shared or amd.com/gpu")
    if kind == "mig" and not _MIG_RE.match(resource):
        raise ValueError(f"{resource!r} is not a MIG profile as the device plugin names them "
                         "(nvidia.com/mig-<slices>g.<memory>gb, e.g. nvidia.com/mig-1g.10gb)")
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
NODE_KEY = ("", "nodes")

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), "amd64")


@dataclass
class NodeConfig:
    """One simulated node; ``extended_resources`` adds e.g. ``{"example.com/fpga": "2"}``."""

    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict] = field(default_factory=list)
    pods: int = 110
    extended_resources: dict[str, str] = field(default_factory=dict)
    #: GPU devices besides whole NVIDIA GPUs: MIG profiles, time-sliced shares, AMD GPUs.
    gpu_flavors: dict[str, int] = field(default_factory=dict)
    #: Time-sliced shares per physical GPU (for ``*.shared`` resources).
    gpu_replicas: int = 4

    def __post_init__(self) -> None:
        # Fail at configuration time with a clear message rather than mid-scheduling.
        parse_quantity(self.cpu)
        parse_quantity(self.memory)
        if self.gpus < 0:
            raise ValueError(f"node {self.name}: gpus must be >= 0, got {self.gpus}")
        if self.gpu_replicas < 1:
            raise ValueError(f"node {self.name}: gpuReplicas must be >= 1, got "
                             f"{self.gpu_replicas}")
        for resource, count in self.gpu_flavors.items():
            try:
                check_gpu_resource(resource)
            except ValueError as e:
                raise ValueError(f"node {self.name}: {e}") from None
            if resource == GPU_RESOURCE:
                raise ValueError(f"node {self.name}: give whole GPUs as gpus, not as a flavor")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"node {self.name}: {resource} must be a whole number >= 0, "
                                 f"got {count!r}")
        for key, value in self.extended_resources.items():
            parse_quantity(value)
            if "/" not in key:
                raise ValueError(f"node {self.name}: extended resource {key!r} needs a domain "
                                 f"prefix, e.g. example.com/{key}")
        for taint in self.taints:
            if not taint.get("key") or taint.get("effect") not in (
                    "NoSchedule", "PreferNoSchedule", "NoExecute"):
                raise ValueError(f"node {self.name}: taint {taint!r} needs a key and an effect "
                                 f"NoSchedule, PreferNoSchedule or NoExecute")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_object(cfg: NodeConfig) -> dict[str, Any]:
    """A ``v1 Node`` as a kubelet would register it (status included)."""
    labels = {
        "kubernetes.io/hostname": cfg.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": _ARCH,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": _ARCH,
        INSTANCE_TYPE_LABEL: f"local-{cfg.gpus}gpu" if cfg.gpus else "local-cpu",
    }
    flavors = {r: n for r, n in cfg.gpu_flavors.items() if n}
    if cfg.gpus or any(r.startswith("nvidia.com/") for r in flavors):
        labels[GPU_PRESENT_LABEL] = "true"
        labels["nvidia.com/gpu.product"] = "Simulated-GPU"
    if cfg.gpus:
        labels["nvidia.com/gpu.count"] = str(cfg.gpus)
    if flavors:
        labels[INSTANCE_TYPE_LABEL] = "local-mixed-gpu"
    if any(gpu_kind(r) == "mig" for r in flavors):
        labels[MIG_STRATEGY_LABEL] = "mixed"
    if any(gpu_kind(r) == "shared" for r in flavors):
        labels[GPU_REPLICAS_LABEL] = str(cfg.gpu_replicas)
        labels[SHARING_STRATEGY_LABEL] = "time-slicing"
    if "amd.com/gpu" in flavors:
        labels["amd.com/gpu.present"] = "true"
    labels.update(cfg.labels)

    capacity: dict[str, str] = {
        "cpu": cfg.cpu,
        "memory": cfg.memory,
        "pods": str(cfg.pods),
        "ephemeral-storage": "100Gi",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    }
    if cfg.gpus:
        capacity[GPU_RESOURCE] = str(cfg.gpus)
    capacity.update({r: str(n) for r, n in flavors.items()})
    capacity.update(cfg.extended_resources)

    now = _now()

    def condition(ctype: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {"type": ctype, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": now}

    spec: dict[str, Any] = {"podCIDR": "127.0.0.0/8", "podCIDRs": ["127.0.0.0/8"]}
    if cfg.taints:
        spec["taints"] = [dict(t) for t in cfg.taints]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.name,
            "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                            "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                          "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure",
                          "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID",
                          "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": cfg.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": _ARCH,
                "operatingSystem": "linux",
                "osImage": "elastic-kernels local cluster",
                "kernelVersion": platform.release(),
                "containerRuntimeVersion": "local://1.0",
                "kubeletVersion": "v1.31.0-local",
                "kubeProxyVersion": "v1.31.0-local",
                "machineID": "", "systemUUID": "", "bootID": "",
            },
        },
    }


def default_nodes(count: int, gpus_per_node: int, cpu: str, memory: str) -> list[NodeConfig]:
    """``count`` identical nodes ``local-node-0..``; GPU nodes get the GPU labels."""
    if count < 0:
        raise ValueError(f"node count must be >= 0, got {count}")
    return [NodeConfig(name=f"local-node-{i}", cpu=cpu, memory=memory, gpus=gpus_per_node)
            for i in range(count)]


def _node_gpus(name: str, counts: Mapping[str, Any], **fields: Any) -> NodeConfig:
    """A NodeConfig whose GPU devices are ``counts`` (whole GPUs under nvidia.com/gpu)."""
    flavors = {str(r): n for r, n in counts.items() if r != GPU_RESOURCE}
    whole = counts.get(GPU_RESOURCE, 0)
    if isinstance(whole, bool) or not isinstance(whole, int):
        raise ValueError(f"node {name}: {GPU_RESOURCE} must be a whole number, got {whole!r}")
    return NodeConfig(name=name, gpus=whole, gpu_flavors=flavors, **fields)


def parse_gpu_flavors(text: str, *, cpu: str = "8", memory: str = "32Gi",
                      gpu_replicas: int = 4) -> list[NodeConfig]:
    """Nodes from ``--gpu-flavors``: one node per comma-separated item, each item one or more
    ``RESOURCE=COUNT`` joined by ``+``.

    ``nvidia.com/gpu=2,nvidia.com/mig-1g.10gb=7+nvidia.com/mig-3g.40gb=2,nvidia.com/gpu.shared=8``
    is three nodes: two whole GPUs; seven 1g.10gb and two 3g.40gb MIG partitions; eight
    time-sliced shares (``gpu_replicas`` per physical GPU). Raises ValueError saying which part
    is wrong.
    """
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise ValueError(f"--gpu-flavors {text!r}: expected RESOURCE=COUNT[+RESOURCE=COUNT...] "
                         "per node, nodes separated by commas (e.g. nvidia.com/gpu=2,"
                         "nvidia.com/mig-1g.10gb=7)")
    nodes = []
    for index, item in enumerate(items):
        counts: dict[str, int] = {}
        for part in item.split("+"):
            resource, sep, count = part.strip().partition("=")
            resource = resource.strip()
            if not sep or not count.strip().isdigit():
                raise ValueError(f"--gpu-flavors: {part.strip()!r} (node {index}) is not "
                                 "RESOURCE=COUNT with a whole COUNT, e.g. nvidia.com/gpu=2")
            if resource in counts:
                raise ValueError(f"--gpu-flavors: {resource} is given twice for node {index}")
            try:
                check_gpu_resource(resource)
            except ValueError as e:
                raise ValueError(f"--gpu-flavors: {e}") from None
            counts[resource] = int(count)
        nodes.append(_node_gpus(f"local-node-{index}", counts, cpu=cpu, memory=memory,
                                gpu_replicas=gpu_replicas))
    return nodes


def nodes_from_options(gpu_flavors: str | None, node_layout: str | None, *,
                       gpu_replicas: int = 4, cpu: str = "8",
                       memory: str = "32Gi") -> list[NodeConfig] | None:
    """The nodes ``--gpu-flavors`` or ``--node-layout`` describe (None: neither was given);
    raises ValueError with a message for the user."""
    if gpu_flavors is not None and node_layout:
        raise ValueError("give --gpu-flavors or --node-layout, not both")
    if node_layout:
        return load_node_layout(node_layout)
    if gpu_flavors is not None:
        if gpu_replicas < 1:
            raise ValueError(f"--gpu-replicas must be >= 1, got {gpu_replicas}")
        return parse_gpu_flavors(gpu_flavors, cpu=cpu, memory=memory, gpu_replicas=gpu_replicas)
    return None


_LAYOUT_KEYS = {"name", "cpu", "memory", "gpus", "gpuReplicas", "labels", "taints", "pods"}


def load_node_layout(path: str | Path) -> list[NodeConfig]:
    """Nodes from a layout file (YAML or JSON)::

        nodes:
          - name: a100-whole
            gpus: {nvidia.com/gpu: 2}
          - name: a100-mig
            gpus: {nvidia.com/mig-1g.10gb: 7}
            labels: {pool: mig}
          - name: t4-shared
            gpus: {nvidia.com/gpu.shared: 8}
            gpuReplicas: 4
          - {name: cpu-only, cpu: "16", memory: 64Gi}

    Raises ValueError naming the file and the node or field that is wrong.
    """
    where = str(path)
    try:
        text = Path(path).read_text()
        doc = json.loads(text) if where.endswith(".json") else yaml.safe_load(text)
    except OSError as e:
        raise ValueError(f"node layout {where}: cannot read it: {e.strerror or e}") from None
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(f"node layout {where}: not valid YAML or JSON: {e}") from None
    entries = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"node layout {where}: expected a mapping with a non-empty list "
                         "'nodes'")
    nodes: list[NodeConfig] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"node layout {where}: nodes[{index}] needs a name")
        name = entry["name"]
        unknown = sorted(set(entry) - _LAYOUT_KEYS)
        if unknown:
            raise ValueError(f"node layout {where}: node {name}: unknown field(s) "
                             f"{', '.join(unknown)} (known: {', '.join(sorted(_LAYOUT_KEYS))})")
        gpus = entry.get("gpus") or {}
        if not isinstance(gpus, dict):
            raise ValueError(f"node layout {where}: node {name}: gpus must map resource names "
                             "to counts, e.g. {nvidia.com/mig-1g.10gb: 7}")
        if name in {n.name for n in nodes}:
            raise ValueError(f"node layout {where}: node {name} is given twice")
        try:
            for resource in gpus:
                check_gpu_resource(str(resource))
            nodes.append(_node_gpus(
                name, gpus, cpu=str(entry.get("cpu", "8")), memory=str(entry.get("memory", "32Gi")),
                gpu_replicas=entry.get("gpuReplicas", 4), labels=dict(entry.get("labels") or {}),
                taints=list(entry.get("taints") or []), pods=int(entry.get("pods", 110))))
        except (ValueError, TypeError) as e:
            problem = str(e).removeprefix(f"node {name}: ")
            raise ValueError(f"node layout {where}: node {name}: {problem}") from None
    return nodes


def register_node(store: Store, cfg: NodeConfig) -> dict[str, Any]:
    """Create (or refresh) the node in the store, the way a kubelet registers itself.

    The status is written through the status subresource as well, because a store that follows
    the real API server may drop status on create for kinds that have the subresource.
    """
    from .errors import ApiError  # local import: errors.py belongs to the API-server side

    obj = node_object(cfg)
    try:
        stored = store.create(NODE_KEY, None, obj)
    except ApiError as e:
        if e.code != 409:
            raise
        current = store.get(NODE_KEY, None, cfg.name)
        current["metadata"]["labels"] = obj["metadata"]["labels"]
        current["spec"] = obj["spec"]
        stored = store.replace(NODE_KEY, None, cfg.name, current)
    if (stored.get("status") or {}).get("allocatable") != obj["status"]["allocatable"]:
        stored["status"] = obj["status"]
        stored = store.replace(NODE_KEY, None, cfg.name, stored, subresource="status")
    return stored
