"""Why a kernel did not start: its pod's events and its launcher's last log lines, for its owner.

``GET /api/elastic/kernels/{id}/diagnostics`` (token or JupyterHub auth as everywhere) answers
``{"kernel_id", "events": [...], "logs": [{"pod", "lines", "error"}]}``: the Events about the
kernel's JupyterKernel and its pods (the scheduler's, the kubelet's such as ErrImagePull, and
the gateway's own "LaunchFailed"), oldest first, and the tail of each pod's log while the pod
still exists. A failed start deletes the kernel's record and pod at once (the provisioner's
fail-fast), so the owner of a kernel that is gone is taken from the status hub's memory of
deleted records (:meth:`.statusstream.KernelStatusHub.gone`); after a gateway restart such a
kernel is unknown, as any other. Someone else's kernel is 404 exactly like a kernel that does
not exist (:func:`.ownership.no_such_kernel`); admins see every kernel's.

The gateway's Role needs ``list events`` and ``get pods/log`` for this (deploy/gateway/role.yaml).
"""

from __future__ import annotations

import asyncio
import json
import typing as t

from jupyter_server.auth.decorator import authorized
from tornado import web

from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import EVENTS, PODS, KubeError
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.gateway.web.errors import GatewayHTTPError
from elastic_kernels.gateway.web.ownership import is_admin, no_such_kernel
from elastic_kernels.gateway.web.statusstream import _StatusBase

__all__ = ["KernelDiagnosticsHandler", "LOG_LINES", "MAX_EVENTS"]

JSON = dict[str, t.Any]
#: The launcher log's last lines shown (it logs a few lines per start, nothing secret).
LOG_LINES = 100
#: Bytes of log read at most per pod, so a kernel that floods its output costs nothing here.
LOG_BYTES = 64 * 1024
#: Events shown at most (the newest).
MAX_EVENTS = 50


def _event(obj: JSON) -> JSON:
    involved = obj.get("involvedObject") or {}
    return {
        "time": obj.get("lastTimestamp") or obj.get("eventTime") or obj.get("firstTimestamp")
        or (obj.get("metadata") or {}).get("creationTimestamp"),
        "type": str(obj.get("type") or ""),
        "reason": str(obj.get("reason") or ""),
        "message": str(obj.get("message") or ""),
        "object": f"{involved.get('kind', '')}/{involved.get('name', '')}",
        "count": int(obj.get("count") or 1),
    }


class KernelDiagnosticsHandler(_StatusBase):
    """``GET /api/elastic/kernels/{id}/diagnostics``: events and log tail, owner only."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        hub = await self.hub()
        record = hub.km.kernel_record(kernel_id)
        if record is not None:
            spec = record.get("spec") or {}
            status = record.get("status") or {}
            owner = str(spec.get("user") or "")
            namespace = str((record.get("metadata") or {}).get("namespace") or "")
            pods = [str(status.get("podName") or R.kernel_pod_name(
                kernel_id, int(status.get("restartCount") or 0)))]
        else:
            gone = hub.gone(kernel_id)
            if gone is None:
                raise no_such_kernel(kernel_id)
            owner, namespace, pods = gone["user"], gone["namespace"], gone["pods"]
        user = self.current_user
        if not is_admin(user) and owner != getattr(user, "username", None):
            raise no_such_kernel(kernel_id)
        conn = ClusterConnection.instance()
        namespace = namespace or conn.default_namespace
        # A kernel's first pod has its record's name: one list finds the Events of both.
        names = list(dict.fromkeys([R.kernel_object_name(kernel_id), *pods]))
        try:
            found = await asyncio.gather(*(conn.client.list(
                EVENTS, namespace, field_selector=f"involvedObject.name={name}")
                for name in names))
        except KubeError as e:
            raise GatewayHTTPError(503, f"Cannot read the kernel's events: {e.message}",
                                   "ClusterUnavailable") from None
        events = sorted((_event(e) for listing in found for e in listing.get("items") or []),
                        key=lambda e: str(e["time"] or ""))[-MAX_EVENTS:]
        logs = [await _log_tail(conn, namespace, pod) for pod in pods
                if hub.pod(pod) is not None]
        self.finish(json.dumps({"kernel_id": kernel_id, "events": events, "logs": logs}))


async def _log_tail(conn: ClusterConnection, namespace: str, pod: str) -> JSON:
    try:
        text = await conn.client.request(
            "GET", PODS.path(namespace, pod, "log"),
            query={"tailLines": LOG_LINES, "limitBytes": LOG_BYTES})
    except KubeError as e:
        return {"pod": pod, "lines": [], "error": f"no log: {e.message}"}
    if isinstance(text, (dict, list)):  # a log whose whole text happens to be JSON
        text = json.dumps(text)
    return {"pod": pod, "lines": str(text or "").splitlines()[-LOG_LINES:], "error": None}
