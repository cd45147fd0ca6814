"""Shared helpers for the scheduler and kubelet tests: a store with nodes, and waiting on pods.

Everything goes through the real Store (create/get/watch/delete) exactly as the API server would;
every process a kubelet starts is stopped in ``running_cluster``'s ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator, Callable

from elastic_kernels.localcluster.kubelet import Kubelet
from elastic_kernels.localcluster.nodes import NodeConfig, node_object
from elastic_kernels.localcluster.processes import group_has_live_members
from elastic_kernels.localcluster.scheduler import Scheduler
from elastic_kernels.localcluster.store import Store

PODS = ("", "pods")
EVENTS = ("", "events")
JSON = dict[str, Any]


@dataclass
class Cluster:
    store: Store
    scheduler: Scheduler | None
    kubelet: Kubelet | None


def make_store(nodes: list[NodeConfig]) -> Store:
    store = Store()
    for cfg in nodes:
        store.create(("", "nodes"), None, node_object(cfg))
    return store


@contextlib.asynccontextmanager
async def running_cluster(nodes: list[NodeConfig], workdir: Path, *, kubelet: bool = True,
                          **kubelet_kwargs: Any) -> AsyncIterator[Cluster]:
    store = make_store(nodes)
    scheduler = Scheduler(store)
    kl = None
    try:
        await scheduler.start()
        if kubelet:
            kubelet_kwargs.setdefault("crash_backoff_seconds", 0.1)
            kubelet_kwargs.setdefault("max_backoff_seconds", 1.0)
            kubelet_kwargs.setdefault("stop_grace_seconds", 1.0)
            kl = Kubelet(store, workdir, api_url="http://127.0.0.1:6443", **kubelet_kwargs)
            await kl.start()
        yield Cluster(store, scheduler, kl)
    finally:
        if kl is not None:
            await kl.stop()
        await scheduler.stop()


def pod(name: str, command: list[str] | None = None, *, gpus: int = 0, cpu: str | None = None,
        restart: str = "Never", image: str = "python:3.11", **spec: Any) -> JSON:
    container: JSON = {"name": "main", "image": image,
                       "command": command or ["python", "-c", "import time; time.sleep(60)"]}
    limits: JSON = {}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    if cpu:
        limits["cpu"] = cpu
    if limits:
        container["resources"] = {"limits": limits}
    container.update(spec.pop("container", {}))
    body: JSON = {"metadata": {"name": name},
                  "spec": {"restartPolicy": restart, "containers": [container],
                           "terminationGracePeriodSeconds": 5}}
    body["spec"].update(spec)
    return body


async def wait_pod(store: Store, name: str, predicate: Callable[[JSON | None], bool],
                   namespace: str = "default", timeout: float = 15) -> JSON | None:
    """Watch one pod until ``predicate(pod)`` holds (``None`` means deleted); returns that pod."""
    watch = store.watch(PODS, namespace, field_selector=f"metadata.name={name}",
                        send_initial=True)
    try:
        try:
            current: JSON | None = store.get(PODS, namespace, name)
        except Exception:
            current = None
        if predicate(current):
            return current
        async with asyncio.timeout(timeout):
            async for etype, obj in watch:
                current = None if etype == "DELETED" else obj
                if predicate(current):
                    return current
    finally:
        watch.close()
    raise AssertionError(f"pod {name} never matched")  # pragma: no cover


def container_state(p: JSON | None) -> JSON:
    statuses = ((p or {}).get("status") or {}).get("containerStatuses") or []
    return statuses[0].get("state") or {} if statuses else {}


def waiting_reason(p: JSON | None) -> str | None:
    return (container_state(p).get("waiting") or {}).get("reason")


def scheduled_condition(p: JSON | None) -> JSON:
    for cond in ((p or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled":
            return cond
    return {}


def events_for(store: Store, name: str, reason: str | None = None) -> list[JSON]:
    items, _ = store.list(EVENTS, "default")
    return [e for e in items if e["involvedObject"].get("name") == name
            and (reason is None or e["reason"] == reason)]


def group_alive(pgid: int) -> bool:
    """A live (non-zombie) process is left in the group."""
    return group_has_live_members(pgid)
