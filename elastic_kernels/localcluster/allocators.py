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
    """Device indices 0..n-1 per node, like a device plugin's inventory."""

    def __init__(self, resource: str = "nvidia.com/gpu") -> None:
        self.resource = resource
        self._capacity: dict[str, int] = {}
        self._owner: dict[str, dict[int, str]] = {}  # node -> index -> owner key

    def set_capacity(self, node: str, count: int) -> None:
        self._capacity[node] = max(0, count)
        self._owner.setdefault(node, {})

    def free(self, node: str) -> list[int]:
        used = self._owner.get(node, {})
        return [i for i in range(self._capacity.get(node, 0)) if i not in used]

    def allocate(self, node: str, owner: str, count: int) -> list[int]:
        if count <= 0:
            return []
        free = self.free(node)
        if len(free) < count:
            raise DeviceExhausted(self.resource, count, len(free))
        chosen = free[:count]
        owners = self._owner.setdefault(node, {})
        for index in chosen:
            owners[index] = owner
        return chosen

    def release(self, node: str, owner: str) -> None:
        """Free the devices of ``owner`` and of ``owner/<anything>`` (a pod's containers)."""
        owners = self._owner.get(node, {})
        for index in [i for i, o in owners.items() if o == owner or o.startswith(owner + "/")]:
            del owners[index]

    def owned(self, node: str, owner: str) -> list[int]:
        return sorted(i for i, o in self._owner.get(node, {}).items() if o == owner)
