"""Kernelspecs served from ``JupyterKernelSpec`` custom resources.

An admin runs ``kubectl apply -f python-gpu.yaml`` and users see "Python on GPU" at once: the
specs come from a shared watch, so there is no restart, no redeploy and no API call per request.

Works in any jupyter_server, not only in our gateway::

    c.ServerApp.kernel_spec_manager_class = "elastic_kernels.kernelspecs.ElasticKernelSpecManager"
    c.ServerApp.jpserver_extensions = {"elastic_kernels": True}   # starts the watches at startup
    c.ClusterConnection.kubeconfig = "/path/to/kubeconfig"         # optional, see ClusterConnection

A CR that does not describe a usable kernel (for instance, one written for a newer version of
this project) is left out of the list with a warning naming the CR and the problem, rather than
breaking the list for everyone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from traitlets import Bool

from .kube.client import JSON
from .kube.connection import ClusterConnection
from .kube.informer import Informer
from .kube.resources import KERNELSPECS, KernelSpecView

log = logging.getLogger(__name__)


class ElasticKernelSpecManager(KernelSpecManager):
    """A KernelSpecManager whose only source is the kernelspec watch cache."""

    include_local = Bool(
        False, config=True,
        help="Also offer the kernelspecs installed on the server's own disk (local kernels). "
        "Off by default: in a gateway every kernel should run in a pod.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._informer: Informer | None = None
        self._start_lock: asyncio.Lock | None = None
        self._warned: dict[str, str] = {}

    @property
    def connection(self) -> ClusterConnection:
        return ClusterConnection.instance(parent=self.parent)

    async def start_watching(self) -> Informer:
        """Start (once) the shared kernelspec watch and wait for its first list."""
        if self._informer is None:
            if self._start_lock is None:
                self._start_lock = asyncio.Lock()
            async with self._start_lock:
                if self._informer is None:
                    self._informer = await self.connection.informer(KERNELSPECS)
        return self._informer

    # -- the views of the cache ------------------------------------------------------------

    def _views(self) -> dict[str, KernelSpecView]:
        if self._informer is None:
            return {}
        views: dict[str, KernelSpecView] = {}
        for obj in self._informer.items():
            view = self._view(obj)
            if view is not None:
                views[view.name] = view
        return views

    def _view(self, obj: JSON) -> KernelSpecView | None:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name") or "")
        try:
            return KernelSpecView.from_object(obj)
        except ValueError as e:
            stamp = f"{meta.get('resourceVersion')}:{e}"
            if self._warned.get(name) != stamp:  # once per version of the CR, not per request
                self._warned[name] = stamp
                self.log.warning("JupyterKernelSpec %s is not usable and is not offered: %s",
                                 name, e)
            return None

    def view(self, kernel_name: str) -> KernelSpecView:
        """The typed kernelspec for a kernel about to start; NoSuchKernel names what was asked."""
        if self._informer is None:
            raise NoSuchKernel(kernel_name)
        obj = self._informer.get(kernel_name)
        view = self._view(obj) if obj is not None else None
        if view is None:
            raise NoSuchKernel(kernel_name)
        return view

    # -- KernelSpecManager API -------------------------------------------------------------

    def find_kernel_specs(self) -> dict[str, str]:
        found = {name: "" for name in self._views()}
        if self.include_local:
            for name, path in super().find_kernel_specs().items():
                found.setdefault(name, path)
        return found

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        try:
            view = self.view(kernel_name)
        except NoSuchKernel:
            if self.include_local:
                return super().get_kernel_spec(kernel_name)
            raise
        spec = view.to_jupyter_kernelspec()
        return KernelSpec(resource_dir="", name=view.name, **spec)

    async def get_all_specs(self) -> dict[str, Any]:  # type: ignore[override]
        await self.start_watching()
        specs: dict[str, Any] = {}
        if self.include_local:
            specs.update(await asyncio.to_thread(super().get_all_specs))
        for name, view in sorted(self._views().items()):
            specs[name] = {"resource_dir": "", "spec": view.to_jupyter_kernelspec()}
        return specs

    def remove_kernel_spec(self, name: str) -> str:
        raise NoSuchKernel(f"{name}: kernelspecs are JupyterKernelSpec resources; "
                           "remove them with kubectl delete jupyterkernelspec")
