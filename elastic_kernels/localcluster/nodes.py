"""The simulated nodes: what ``kubectl get nodes`` shows and what the scheduler fits pods onto.

A node is a plain ``v1 Node`` object in the store, shaped like one a kubelet registers (capacity,
allocatable, Ready condition, addresses, well-known labels), so that clients, kubectl and the
scheduler read it exactly as they would on a real cluster. GPU nodes advertise ``nvidia.com/gpu``
as the NVIDIA device plugin does and carry the GPU feature-discovery label
``nvidia.com/gpu.present=true`` that kernel templates select on.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .quantities import parse_quantity

if TYPE_CHECKING:
    from .store import Store

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
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

    def __post_init__(self) -> None:
        # Fail at configuration time with a clear message rather than mid-scheduling.
        parse_quantity(self.cpu)
        parse_quantity(self.memory)
        if self.gpus < 0:
            raise ValueError(f"node {self.name}: gpus must be >= 0, got {self.gpus}")
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
    if cfg.gpus:
        labels[GPU_PRESENT_LABEL] = "true"
        labels["nvidia.com/gpu.count"] = str(cfg.gpus)
        labels["nvidia.com/gpu.product"] = "Simulated-GPU"
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
