"""The gateway's kernel managers: jupyter_server's, taught that kernels live in pods.

``ElasticMappingKernelManager`` keeps jupyter_server's whole mechanism (activity tracking,
culling, websocket bookkeeping) and adds what a multi-user, pod-backed gateway needs: the
authenticated user and the client's environment travel to the provisioner, kernel ids from
clients are validated, and each kernel's model carries its pod's state (``elastic``).

``ElasticKernelManager`` (one per kernel) keeps the HMAC key in memory only: it never writes a
connection file, and its sockets reconnect quickly to a pod whose kernel is still binding.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
import weakref
from typing import Any

import zmq
from jupyter_client.ioloop import AsyncIOLoopKernelManager
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets import Bool, Integer, Unicode, default, observe

from ..kube import resources as R
from ..kube.client import PODS
from ..kube.connection import ClusterConnection
from ..kube.informer import Informer
from ..provisioner.provisioner import ElasticKernelProvisioner
from .hydration import KernelHydrator
from .liveness import kernel_died, renudge_connections


class ElasticKernelManager(AsyncIOLoopKernelManager):
    """A kernel manager whose kernel's connection info never touches the disk."""

    reconnect_interval_ms = Integer(
        10, config=True,
        help="ZeroMQ reconnect interval towards a kernel. The socket connects before the kernel "
        "binds (ZeroMQ queues), so the first reconnect decides how soon a fresh kernel answers; "
        "ZeroMQ's 100 ms default costs up to 100 ms per start.",
    )
    reconnect_interval_max_ms = Integer(
        1000, config=True, help="Upper bound of ZeroMQ's reconnect back-off towards a kernel."
    )

    def __init__(self, **kwargs: Any) -> None:
        #: Every socket connected towards the kernel, with its endpoint (see _kernel_moved).
        self._elastic_endpoints: weakref.WeakKeyDictionary[zmq.Socket, str] = \
            weakref.WeakKeyDictionary()
        super().__init__(**kwargs)

    def write_connection_file(self, **kwargs: Any) -> None:
        """The key lives in the kernel's Secret and in memory; nothing is written to disk."""
        self._connection_file_written = True

    def cleanup_connection_file(self) -> None:
        self._connection_file_written = False

    def _create_connected_socket(self, channel: str, identity: bytes | None = None) -> zmq.Socket:
        sock = self.context.socket(_SOCKET_TYPES[channel])
        sock.linger = 1000
        sock.setsockopt(zmq.RECONNECT_IVL, self.reconnect_interval_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self.reconnect_interval_max_ms)
        if identity:
            sock.identity = identity
        url = self._make_url(channel)
        sock.connect(url)
        self._elastic_endpoints[sock] = url
        return sock

    @property
    def elastic_provisioner(self) -> ElasticKernelProvisioner | None:
        p = self.provisioner
        return p if isinstance(p, ElasticKernelProvisioner) else None

    # -- following the kernel from pod to pod (hydration, replicas, restarts) -------------------

    @default("restarter_class")
    def _restarter_class_default(self) -> type:
        # Decides on watch events and the kernelspec's restartPolicy (gateway/liveness.py).
        from .liveness import ElasticKernelRestarter
        return ElasticKernelRestarter

    @observe("ip")
    def _kernel_moved(self, change: Any) -> None:
        """A restarted kernel is a new pod with a new IP (the ports are fixed). Re-point every
        open socket (websocket channels, the activity watcher, the control socket) so clients
        keep their connections across restarts, including those another replica made."""
        old, new = change["old"], change["new"]
        if not old or not new or old == new:
            return
        for sock, url in list(self._elastic_endpoints.items()):
            transport, _, rest = url.partition("://")
            host, _, port = rest.rpartition(":")
            if sock.closed or host != old:
                continue
            moved = f"{transport}://{new}:{port}"
            try:
                sock.disconnect(url)
            except zmq.ZMQError:
                pass  # already disconnected
            sock.connect(moved)
            self._elastic_endpoints[sock] = moved
        # Once the new connection info is complete, wake the open websockets as on open.
        asyncio.get_running_loop().call_soon(renudge_connections, self.kernel_id)


_SOCKET_TYPES = {
    "shell": zmq.DEALER,
    "iopub": zmq.SUB,
    "stdin": zmq.DEALER,
    "hb": zmq.REQ,
    "control": zmq.DEALER,
}


class ElasticMappingKernelManager(AsyncMappingKernelManager):
    """Kernels in pods, with their owners and their pods' state."""

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> str:
        return f"{ElasticKernelManager.__module__}.{ElasticKernelManager.__qualname__}"

    gateway_id = Unicode(
        config=True,
        help="This gateway's identity, recorded on the kernels it starts. Default: host name.",
    )

    shutdown_kernels_on_exit = Bool(
        False, config=True,
        help="Shut every kernel down when the gateway stops. Off by default: kernels live in "
        "pods and the next gateway, or another replica, re-attaches them.",
    )

    #: The gateway passes the authenticated user to start_kernel.
    tracks_users = True

    @default("gateway_id")
    def _gateway_id_default(self) -> str:
        return socket.gethostname()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._kernel_records: Informer | None = None

    async def start_watching(self) -> None:
        """Start the shared watches this manager answers from (kernel records and pods)."""
        conn = ClusterConnection.instance()
        self._kernel_records = await conn.informer(R.JUPYTERKERNELS)
        await conn.informer(PODS, label_selector=R.KERNEL_POD_SELECTOR)
        await self.adopt_existing()

    async def start_kernel(  # type: ignore[override]
        self,
        *,
        kernel_name: str | None = None,
        path: str | None = None,
        kernel_id: str | None = None,
        env: dict[str, Any] | None = None,
        user: str | None = None,
        **kwargs: Any,
    ) -> str:
        if kernel_id is not None and kernel_id not in self:
            kernel_id = _validated_kernel_id(kernel_id)
        if env is not None and not isinstance(env, dict):
            raise web.HTTPError(400, "env must be an object of string values")
        kwargs["elastic_client_env"] = {str(k): v for k, v in (env or {}).items()}
        if user:
            kwargs["elastic_user"] = user
        return await super().start_kernel(
            kernel_name=kernel_name, kernel_id=kernel_id, **kwargs
        )

    def cwd_for_path(self, path: str, **kwargs: Any) -> str:
        """Notebook paths mean nothing inside a kernel pod; the image decides the cwd."""
        return ""

    def elastic_model(self, kernel_id: str) -> dict[str, Any]:
        """The pod's side of a kernel: what ``kubectl get jupyterkernel`` would say."""
        km = self._kernels.get(kernel_id)
        prov = getattr(km, "elastic_provisioner", None)
        model: dict[str, Any] = {}
        if prov is not None:
            model.update({"user": prov.user, "pod": prov.pod_name})
        record = None
        if self._kernel_records is not None:
            record = self._kernel_records.get(R.kernel_object_name(kernel_id))
        if record is not None:
            status = record.get("status") or {}
            spec = record.get("spec") or {}
            model.update({
                "phase": status.get("phase") or "Pending",
                "reason": status.get("reason", ""),
                "message": status.get("message", ""),
                "pod": status.get("podName") or model.get("pod"),
                "node": status.get("node", ""),
                "gpus": status.get("gpus", 0),
                "restart_count": status.get("restartCount", 0),
                "started_at": status.get("startedAt"),
                "user": spec.get("user") or model.get("user"),
                "kernelspec": spec.get("kernelSpec"),
            })
        return model

    async def detach_all(self) -> None:
        """Let go of every kernel without stopping it: close our sockets, keep the pods.

        The kernels' JupyterKernel records stay, so the next gateway (or another replica)
        re-attaches them; the cull cron reclaims any that nobody adopts.
        """
        for kernel_id in list(self.list_kernel_ids()):
            km = self._kernels.pop(kernel_id, None)
            if km is None:
                continue
            km.stop_restarter()
            km._close_control_socket()
            km.provisioner = None  # so nothing below can delete the pod
            buffer = getattr(self, "_kernel_buffers", {}).pop(kernel_id, None)
            for stream in ((buffer or {}).get("channels") or {}).values():
                stream.close()
            activity = getattr(km, "_activity_stream", None)
            if activity is not None:
                activity.close()

    async def stop_watching(self) -> None:
        """Nothing to stop yet beyond the shared informers, which ClusterConnection owns."""
        self._kernel_records = None

    # -- hydration and kernel death (gateway/hydration.py, gateway/liveness.py) -----------------

    @property
    def hydrator(self) -> KernelHydrator:
        """Re-attaches kernels this gateway did not start (created on first use)."""
        hydrator: KernelHydrator | None = getattr(self, "_elastic_hydrator", None)
        if hydrator is None:
            hydrator = self._elastic_hydrator = KernelHydrator(self)
        return hydrator

    async def hydrate_kernel(self, kernel_id: str) -> bool:
        """Hold ``kernel_id`` if the cluster has it running (another replica started it, or a
        previous gateway did); False when there is no such kernel. The handlers call this before
        answering 404."""
        return await self.hydrator.hydrate(kernel_id)

    async def adopt_existing(self) -> list[str]:
        """Re-attach every running kernel of the namespace (at startup); returns their ids."""
        return await self.hydrator.adopt_existing()

    def _handle_kernel_died(self, kernel_id: str) -> None:
        kernel_died(self, kernel_id)


def _validated_kernel_id(kernel_id: Any) -> str:
    """Clients may choose a kernel id (jupyter_server allows it); it names pods, so check it."""
    try:
        parsed = uuid.UUID(str(kernel_id))
    except ValueError:
        raise web.HTTPError(400, f"kernel_id must be a UUID, got {str(kernel_id)[:80]!r}") \
            from None
    canonical = str(parsed)
    if canonical != str(kernel_id).lower():
        raise web.HTTPError(400, "kernel_id must be a UUID in canonical form")
    return canonical
