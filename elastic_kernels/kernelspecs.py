"""Kernelspecs served from ``JupyterKernelSpec`` custom resources.

An admin runs ``kubectl apply -f python-gpu.yaml`` and users see "Python on GPU" at once: the
specs come from a shared watch, so there is no restart, no redeploy and no API call per request.

Works in any jupyter_server, not only in our gateway::

    c.ServerApp.kernel_spec_manager_class = "elastic_kernels.kernelspecs.ElasticKernelSpecManager"
    c.ServerApp.jpserver_extensions = {"elastic_kernels": True}   # starts the watches at startup
    c.ClusterConnection.kubeconfig = "/path/to/kubeconfig"         # optional, see ClusterConnection

Kernelspec resources (the logos JupyterLab's launcher shows) come from the CR's ``spec.logos``
and nothing else: a kernelspec from a CR has no resource directory, and jupyter_server's own
handlers, given an empty one, would list and serve files from the server's working directory.
:meth:`ElasticKernelSpecManager.kernelspec_model` and ``get_kernel_spec_resource`` never touch the
disk for a CR-backed spec, and :mod:`elastic_kernels.kernelspec_handlers` serves them.

A CR that does not describe a usable kernel (for instance, one written for a newer version of
this project) is left out of the list with a warning naming the CR and the problem, rather than
breaking the list for everyone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_server.utils import url_path_join
from tornado import web
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
        """Start (once) the shared kernelspec watch and wait for its first list.

        The informer is kept even when its first list does not come in time (a slow or
        unreachable API server): it goes on trying in the background, and the next caller waits
        for it again. Forgetting it instead would leave the specs unknown to every lookup that
        does not itself start the watch, such as a kernel start (a 404 for a spec that exists).
        """
        if self._informer is None:
            if self._start_lock is None:
                self._start_lock = asyncio.Lock()
            async with self._start_lock:
                if self._informer is None:
                    self._informer = await self.connection.informer(KERNELSPECS, wait=False)
        await self._informer.wait_synced(self.connection.sync_timeout)
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
        """Local specs as jupyter_client gives them; CR specs as finished REST models.

        A finished model (``name``, ``spec``, ``resources``) is served as it is by
        jupyter_server's ``/api/kernelspecs``; given ``resource_dir`` instead, it would list the
        ``logo-*`` files of the server's working directory as the spec's resources.
        """
        await self.start_watching()
        specs: dict[str, Any] = {}
        if self.include_local:
            specs.update(await asyncio.to_thread(super().get_all_specs))
        base_url = getattr(self.parent, "base_url", None) or "/"
        for name, view in sorted(self._views().items()):
            specs[name] = _model(view, base_url)
        return specs

    def kernelspec_model(self, kernel_name: str, base_url: str) -> dict[str, Any] | None:
        """The REST model of a CR-backed spec, or None when ``kernel_name`` is not one."""
        try:
            view = self.view(kernel_name)
        except NoSuchKernel:
            return None
        return _model(view, base_url)

    async def get_kernel_spec_resource(self, kernel_name: str, path: str) -> bytes | None:
        """A CR-backed spec's logo; 404 for any other path of such a spec.

        jupyter_server's resource handler calls this first and reads the disk only when it
        returns None, so for a CR-backed spec it never returns None. None is left for local
        specs (``include_local``), which have a real resource directory.
        """
        try:
            view = self.view(kernel_name)
        except NoSuchKernel:
            return None
        data = view.logos.get(path)
        if data is None:
            raise web.HTTPError(404, f"Kernel spec {kernel_name} has no resource {path[:100]!r}")
        return data

    def remove_kernel_spec(self, name: str) -> str:
        raise NoSuchKernel(f"{name}: kernelspecs are JupyterKernelSpec resources; "
                           "remove them with kubectl delete jupyterkernelspec")


def _model(view: KernelSpecView, base_url: str) -> dict[str, Any]:
    resources = {
        name.rsplit(".", 1)[0]: url_path_join(base_url, "kernelspecs", view.name, name)
        for name in sorted(view.logos)
    }
    return {"name": view.name, "spec": view.to_jupyter_kernelspec(), "resources": resources}
