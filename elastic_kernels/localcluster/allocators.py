"""Pod IP addresses and simulated GPU devices, handed out and taken back by the kubelet.

Each pod gets its own loopback address so that every kernel can bind the same well-known ports,
as pods on a real cluster do. Linux routes all of 127.0.0.0/8 to ``lo``, so any address in it can
be bound without configuration. 127.0.0.0/16 is left alone (127.0.0.1, 127.0.0.53 for resolvers,
127.0.1.1 for the hostname on Debian); the first free address is searched from a random start, so
two local clusters on one machine (parallel test runs) rarely hand out the same address.
"""

from __future__ import annotations

import ipaddress
import random
import uuid


class AddressExhausted(Exception):
    pass


class IPAllocator:
    """Addresses 127.B.C.D with B in 1..254, C in 0..255 and D in 1..254."""

    _PER_B = 256 * 254
    SIZE = 254 * _PER_B

    def __init__(self, seed: int | None = None) -> None:
        rng = random.Random(seed)
        self._cursor = rng.randrange(self.SIZE)
        self._used: set[str] = set()

    @classmethod
    def _address(cls, index: int) -> str:
        b = 1 + index // cls._PER_B
        rest = index % cls._PER_B
        return f"127.{b}.{rest // 254}.{1 + rest % 254}"

    def allocate(self) -> str:
        for _ in range(self.SIZE):
            ip = self._address(self._cursor)
            self._cursor = (self._cursor + 1) % self.SIZE
            if ip not in self._used:
                self._used.add(ip)
                return ip
        raise AddressExhausted("no free pod addresses left in 127.1.0.0-127.254.255.255")

    def release(self, ip: str | None) -> None:
        if ip:
            self._used.discard(ip)

    def in_use(self) -> set[str]:
        return set(self._used)

    @staticmethod
    def is_pod_address(ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return addr in ipaddress.ip_network("127.0.0.0/8") and not ip.startswith("127.0.")


class DeviceExhausted(Exception):
    def __init__(self, resource: str, requested: int, available: int) -> None:
        # The real device manager's admission error text.
        super().__init__(f"Allocate failed due to requested number of devices unavailable for "
                         f"{resource}. Requested: {requested}, Available: {available}, which is "
                         f"unexpected")
        self.message = str(self)


class DeviceAllocator:
    """Device indices 0..n-1 per node and resource, like the device plugins' inventories (one per
    resource: whole GPUs, each MIG profile, time-sliced shares, ...)."""

    def __init__(self, resource: str = "nvidia.com/gpu") -> None:
        #: The resource meant when a call names none (whole GPUs).
        self.resource = resource
        self._capacity: dict[tuple[str, str], int] = {}
        self._owner: dict[tuple[str, str], dict[int, str]] = {}  # -> index -> owner key

    def set_capacity(self, node: str, count: int, resource: str | None = None) -> None:
        key = (node, resource or self.resource)
        self._capacity[key] = max(0, count)
        self._owner.setdefault(key, {})

    def resources(self, node: str) -> list[str]:
        """The device resources ``node`` has (or had) capacity of."""
        return sorted(r for n, r in self._capacity if n == node)

    def free(self, node: str, resource: str | None = None) -> list[int]:
        key = (node, resource or self.resource)
        used = self._owner.get(key, {})
        return [i for i in range(self._capacity.get(key, 0)) if i not in used]

    def allocate(self, node: str, owner: str, count: int,
                 resource: str | None = None) -> list[int]:
        if count <= 0:
            return []
        resource = resource or self.resource
        free = self.free(node, resource)
        if len(free) < count:
            raise DeviceExhausted(resource, count, len(free))
        chosen = free[:count]
        owners = self._owner.setdefault((node, resource), {})
        for index in chosen:
            owners[index] = owner
        return chosen

    def release(self, node: str, owner: str) -> None:
        """Free the devices of every resource of ``owner`` and of ``owner/<anything>`` (a pod's
        containers)."""
        for (n, _), owners in self._owner.items():
            if n != node:
                continue
            for index in [i for i, o in owners.items()
                          if o == owner or o.startswith(owner + "/")]:
                del owners[index]

    def owned(self, node: str, owner: str, resource: str | None = None) -> list[int]:
        owners = self._owner.get((node, resource or self.resource), {})
        return sorted(i for i, o in owners.items() if o == owner)


def mig_uuid(node: str, resource: str, index: int) -> str:
    """A stable MIG device UUID (``MIG-<uuid>``, as ``nvidia-smi -L`` prints them) for one
    simulated partition: the same node, profile and slot always get the same one."""
    return "MIG-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"elastic-local://{node}/{resource}/{index}"))


def device_env(node: str, resource: str, indices: list[int], *, kind: str,
               whole_gpus: int = 0, replicas: int = 1) -> dict[str, str]:
    """The environment a GPU device plugin gives a container holding ``indices`` of
    ``resource``, so code in the pod sees what it would on a real node.

    * whole NVIDIA GPUs: their indices in ``CUDA_VISIBLE_DEVICES`` (and ``NVIDIA_VISIBLE_DEVICES``);
    * MIG partitions: their ``MIG-<uuid>`` identifiers, which CUDA accepts in
      ``CUDA_VISIBLE_DEVICES``;
    * time-sliced shares: the physical GPU each share is a slice of (``replicas`` shares per
      GPU, numbered after the node's whole GPUs), so two kernels may see the same device;
    * AMD GPUs: ``ROCR_VISIBLE_DEVICES`` and ``HIP_VISIBLE_DEVICES``.
    """
    if not indices:
        return {}
    if kind == "mig":
        devices = [mig_uuid(node, resource, i) for i in indices]
    elif kind == "shared":
        devices = [str(whole_gpus + i // max(1, replicas))
                   for i in sorted(indices)]
        devices = list(dict.fromkeys(devices))
    else:
        devices = [str(i) for i in indices]
    joined = ",".join(devices)
    if resource.startswith("amd.com/"):
        return {"ROCR_VISIBLE_DEVICES": joined, "HIP_VISIBLE_DEVICES": joined}
    return {"CUDA_VISIBLE_DEVICES": joined, "NVIDIA_VISIBLE_DEVICES": joined}
