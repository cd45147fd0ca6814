"""What a container gives Enterprise Gateway's processes, for processes that run on this host.

Only the Enterprise Gateway benchmark puts this directory on ``PYTHONPATH`` (of the EG server,
which passes its environment on to its launcher and, through ``launch_kubernetes.py``, to its
kernel pods).  It changes no EG code; it supplies two things a pod has and a host process lacks:

* ``BENCH_EG_SERVICEACCOUNT=DIR``: the service-account mount.  The official client's
  ``load_incluster_config()`` reads ``/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt}``
  (fixed paths, which cannot exist here); they are pointed at ``DIR`` when that module loads,
  like the local kubelet's mount-path rewrite does for pods.
* ``POD_IP=ADDR`` (set by the downward API in the kernel pod): a network namespace.  EG's
  ``launch_ipykernel.py`` binds its kernel and signal sockets to ``0.0.0.0``, which in a pod means
  the pod's own interfaces; on this host it would mean every interface of the machine, so binds
  to ``0.0.0.0`` go to the pod's own loopback address instead (this project listens on loopback
  only).

Modules are patched when they are first imported, so processes that never use them pay nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any
from collections.abc import Callable

ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - the address being replaced


class _After(importlib.abc.Loader):
    """Runs ``hook(module)`` after the real loader executed it."""

    def __init__(self, loader: Any, hook: Callable[[ModuleType], None]) -> None:
        self.loader = loader
        self.hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.hook(module)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, hooks: dict[str, Callable[[ModuleType], None]]) -> None:
        self.hooks = hooks

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        hook = self.hooks.get(name)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _After(spec.loader, hook)
                return spec
        return None


def _service_account(directory: str) -> Callable[[ModuleType], None]:
    def hook(module: ModuleType) -> None:
        module.SERVICE_TOKEN_FILENAME = os.path.join(directory, "token")  # type: ignore[attr-defined]
        module.SERVICE_CERT_FILENAME = os.path.join(directory, "ca.crt")  # type: ignore[attr-defined]
    return hook


def _pin(address: str) -> tuple[Callable[[ModuleType], None], Callable[[ModuleType], None]]:
    def socket_hook(module: ModuleType) -> None:
        original = module.socket.bind

        def bind(self: Any, addr: Any) -> Any:
            if isinstance(addr, tuple) and addr and addr[0] in (ANY_ADDRESS, ""):
                addr = (address, *addr[1:])
            return original(self, addr)

        module.socket.bind = bind

    def zmq_hook(module: ModuleType) -> None:
        original = module.Socket.bind
        prefix = f"tcp://{ANY_ADDRESS}:"

        def bind(self: Any, addr: str) -> Any:
            if isinstance(addr, str) and addr.startswith(prefix):
                addr = f"tcp://{address}:" + addr[len(prefix):]
            return original(self, addr)

        module.Socket.bind = bind

    return socket_hook, zmq_hook


def _install() -> None:
    hooks: dict[str, Callable[[ModuleType], None]] = {}
    sa_dir = os.environ.get("BENCH_EG_SERVICEACCOUNT")
    if sa_dir:
        hooks["kubernetes.config.incluster_config"] = _service_account(sa_dir)
    pod_ip = os.environ.get("POD_IP")
    if pod_ip and pod_ip.startswith("127."):
        socket_hook, zmq_hook = _pin(pod_ip)
        if "socket" in sys.modules:
            socket_hook(sys.modules["socket"])
        else:
            hooks["socket"] = socket_hook
        hooks["zmq.sugar.socket"] = zmq_hook
    if hooks:
        sys.meta_path.insert(0, _PatchOnImport(hooks))


_install()
