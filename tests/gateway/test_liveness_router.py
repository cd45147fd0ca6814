"""Watch events reach only the kernels they concern (gateway/lifecycle/liveness.py's router).

The informer is real but not started: events are fed through its own delivery method, the one
its watch thread hands events to, so no cluster is needed to check the routing itself.
"""

from __future__ import annotations

import typing as t

import pytest

from elastic_kernels.gateway.lifecycle import liveness
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import PODS
from elastic_kernels.kube.informer import Informer


def pod(name: str, kernel_id: str | None) -> dict[str, t.Any]:
    labels = {R.LABEL_KERNEL_ID: kernel_id} if kernel_id else {}
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels,
                         "resourceVersion": "1"}}


def test_events_are_routed_by_kernel(caplog: pytest.LogCaptureFixture) -> None:
    informer = Informer(t.cast(t.Any, None), PODS, "ns")
    router = liveness._router(informer, liveness._pod_kernel_id)
    assert liveness._router(informer, liveness._pod_kernel_id) is router  # one per informer
    seen: dict[str, list[str]] = {"a": [], "b": [], "b2": []}

    def listener(name: str) -> liveness.Listener:
        def on_event(event: str, obj: dict[str, t.Any], _old: t.Any) -> None:
            seen[name].append(f"{event} {obj['metadata']['name']}")
        return on_event

    def failing(*_args: t.Any) -> None:
        raise RuntimeError("boom")

    remove_a = router.add("kernel-a", listener("a"))
    remove_failing = router.add("kernel-b", failing)
    remove_b = router.add("kernel-b", listener("b"))
    remove_b2 = router.add("kernel-b", listener("b2"))
    assert len(informer._listeners) == 1  # one listener on the watch, however many kernels

    informer._deliver("ADDED", pod("pod-a-0", "kernel-a"))
    informer._deliver("ADDED", pod("pod-b-0", "kernel-b"))
    informer._deliver("ADDED", pod("unrelated", None))
    informer._deliver("DELETED", pod("pod-a-0", "kernel-a"))
    assert seen == {"a": ["ADDED pod-a-0", "DELETED pod-a-0"], "b": ["ADDED pod-b-0"],
                    "b2": ["ADDED pod-b-0"]}
    assert "Kernel listener failed" in caplog.text  # logged, and the others still heard it

    remove_a()
    remove_failing()
    remove_b()
    informer._deliver("MODIFIED", pod("pod-b-0", "kernel-b"))
    assert seen["b"] == ["ADDED pod-b-0"] and seen["b2"][-1] == "MODIFIED pod-b-0"
    remove_b2()
    remove_b2()  # twice is harmless
    assert informer._listeners == []  # the last kernel gone, the watch has no listener left
    informer._deliver("ADDED", pod("pod-a-1", "kernel-a"))
    assert seen["a"] == ["ADDED pod-a-0", "DELETED pod-a-0"]
    # A kernel arriving later subscribes the router again.
    late = router.add("kernel-a", listener("a"))
    informer._deliver("ADDED", pod("pod-a-2", "kernel-a"))
    assert seen["a"][-1] == "ADDED pod-a-2"
    late()


def test_the_periodic_decision_is_only_a_safety_net() -> None:
    assert liveness.ElasticKernelRestarter().time_to_dead == 30.0
    assert liveness.ElasticKernelRestarter(time_to_dead=2.0).time_to_dead == 2.0
