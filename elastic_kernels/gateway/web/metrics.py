"""The gateway's Prometheus metrics, on a registry of its own.

Each :class:`GatewayMetrics` has a private ``CollectorRegistry``: the tests run several gateways
in one process, and jupyter_server's own ``/metrics`` (which ours replaces) dumps the whole
process's global registry. Two kinds of metric live here:

* events, recorded when they happen: kernel start and restart latency (the API handlers), the
  time a start waited in the GPU queue
  (:class:`~elastic_kernels.gateway.lifecycle.gpuqueue.GpuQueue`),
  culls by reason (:class:`~elastic_kernels.gateway.lifecycle.culler.GatewayCuller`);
* state, read at scrape time by :class:`_StateCollector` from what the gateway holds anyway
  (kernels, their phases and GPUs, websockets, the GPU queue), so nothing is updated per kernel
  message and nothing can drift from the truth.

Every sample carries ``gateway_id``, as the hand-written exposition this replaces did.
"""

from __future__ import annotations

import typing as t
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from elastic_kernels import __version__

if t.TYPE_CHECKING:
    from elastic_kernels.gateway.app import ElasticGatewayApp

__all__ = ["UNKNOWN_KERNELSPEC", "GatewayMetrics", "start_outcome"]

#: Kernel starts take from under a second (a warm image) to minutes (a GPU node scaling up).
START_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))
#: Waits in the GPU queue run from seconds to however long users hold their GPUs.
QUEUE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))

#: The label of a start whose kernelspec does not exist: the name is the client's to choose, and
#: a label per made-up name would let any user grow the registry without bound.
UNKNOWN_KERNELSPEC = "(unknown)"


def start_outcome(status_code: int, reason: str | None) -> str:
    """The ``outcome`` label of a failed start: its reason when it has one (a bounded,
    code-defined vocabulary: ``GPUQuotaExceeded``, ``ImagePullBackOff``...), else its status
    class (``5xx``)."""
    return reason or f"{status_code // 100}xx"


class GatewayMetrics:
    """One gateway's registry: the event metrics to record into, and the scrape-time state."""

    def __init__(self, app: ElasticGatewayApp) -> None:
        self.app = app
        self.registry = CollectorRegistry(auto_describe=False)
        labels = ("gateway_id",)
        self.kernel_start_seconds = Histogram(
            "elastic_kernels_kernel_start_seconds",
            "Time from a start request to its answer, by kernelspec and outcome (ok, or why "
            "it failed).", (*labels, "kernelspec", "outcome"), buckets=START_BUCKETS,
            registry=self.registry)
        self.kernel_starts = Counter(
            "elastic_kernels_kernel_starts",
            "Kernel start requests by outcome (ok, or why it failed).", (*labels, "outcome"),
            registry=self.registry)
        self.kernel_restart_seconds = Histogram(
            "elastic_kernels_kernel_restart_seconds",
            "Time a restart request took until the kernel answered again (API restarts).",
            (*labels, "outcome"), buckets=START_BUCKETS, registry=self.registry)
        self.gpu_queue_wait_seconds = Histogram(
            "elastic_kernels_gpu_queue_wait_seconds",
            "Time a kernel start waited in the GPU queue, observed when it left the queue.",
            labels, buckets=QUEUE_BUCKETS, registry=self.registry)
        self.culls = Counter(
            "elastic_kernels_culls",
            "Kernels this gateway culled, by reason (IdleTimeout, MaxAge, "
            "ReclaimedForWaitingKernel, KernelDied...).", (*labels, "reason"),
            registry=self.registry)
        self.registry.register(_StateCollector(app))

    @property
    def _gateway_id(self) -> str:
        # Read each time: the gateway id is a trait, settled after the app is constructed.
        return str(self.app.gateway_id)

    # -- events -------------------------------------------------------------------------------

    def kernel_started(self, kernelspec: str, outcome: str, seconds: float) -> None:
        gid = self._gateway_id
        self.kernel_start_seconds.labels(gid, kernelspec, outcome).observe(seconds)
        self.kernel_starts.labels(gid, outcome).inc()

    def kernel_restarted(self, outcome: str, seconds: float) -> None:
        self.kernel_restart_seconds.labels(self._gateway_id, outcome).observe(seconds)

    def gpu_wait_ended(self, seconds: float) -> None:
        self.gpu_queue_wait_seconds.labels(self._gateway_id).observe(max(0.0, seconds))

    def kernel_culled(self, reason: str) -> None:
        self.culls.labels(self._gateway_id, reason).inc()

    # -- exposition ---------------------------------------------------------------------------

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """Everything in this gateway's registry, and its content type, in the format the
        scraper's ``Accept`` header asks for (OpenMetrics for Prometheus, else the classic
        text format 0.0.4), as prometheus_client's own handler negotiates it."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _StateCollector(Collector):
    """Gauges (and the counters the app keeps anyway) read from the gateway at scrape time."""

    def __init__(self, app: ElasticGatewayApp) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        # Nothing to check for clashes at registration, and nothing to read before the app is
        # initialised (collect() would touch the kernel manager).
        return []

    def collect(self) -> Iterator[Metric]:
        app = self.app
        gid = str(app.gateway_id)
        km = app.kernel_manager
        kernel_ids = list(km.list_kernel_ids())

        info = GaugeMetricFamily("elastic_kernels_gateway_info", "Gateway identity and version.",
                                 labels=("gateway_id", "version"))
        info.add_metric((gid, __version__), 1)
        yield info
        yield _gauge("elastic_kernels_kernels", "Kernels held by this gateway.", gid,
                     len(kernel_ids))

        phases: dict[str, int] = {}
        gpus = 0
        by_flavor: dict[str, int] = {}
        model: Callable[[str], t.Any] | None = getattr(km, "elastic_model", None)
        for kernel_id in kernel_ids:
            described = _sync_model(model, kernel_id)
            phase = str(described.get("phase") or "Unknown")
            phases[phase] = phases.get(phase, 0) + 1
            gpus += int(described.get("gpus") or 0)
            if described.get("gpus"):
                flavor = str(described.get("gpu_resource") or "nvidia.com/gpu")
                by_flavor[flavor] = by_flavor.get(flavor, 0) + int(described["gpus"])
        by_phase = GaugeMetricFamily(
            "elastic_kernels_kernels_by_phase",
            "Kernels held by this gateway, by the phase their JupyterKernel record shows.",
            labels=("gateway_id", "phase"))
        for phase, count in sorted(phases.items()):
            by_phase.add_metric((gid, phase), count)
        yield by_phase
        yield _gauge("elastic_kernels_gpus_held",
                     "GPUs held by the kernels this gateway holds (their records' status.gpus).",
                     gid, gpus)

        held = GaugeMetricFamily(
            "elastic_kernels_gpus_held_by_resource",
            "GPU devices held by the kernels this gateway holds, per GPU flavor (resource).",
            labels=("gateway_id", "resource"))
        for flavor, count in sorted(by_flavor.items()):
            held.add_metric((gid, flavor), count)
        yield held

        queue = getattr(km, "gpu_queue", None)
        yield _gauge("elastic_kernels_gpu_queue_length",
                     "Kernel starts waiting in this gateway's GPU queue.", gid,
                     len(queue) if queue is not None else 0)
        waiting = GaugeMetricFamily(
            "elastic_kernels_gpu_queue_waiting",
            "Kernel starts waiting in this gateway's GPU queue, per GPU flavor (resource).",
            labels=("gateway_id", "resource"))
        per_flavor = getattr(queue, "waiting_by_flavor", None)
        for flavor, count in sorted((per_flavor() if per_flavor else {}).items()):
            waiting.add_metric((gid, flavor), count)
        yield waiting
        yield _gauge("elastic_kernels_websocket_connections", "Open kernel websocket connections.",
                     gid, len(app.open_websockets))
        yield _counter("elastic_kernels_kernel_start_failures",
                       "Kernel start requests that failed.", gid, app.kernel_start_failures)
        yield from _warm_pool_metrics(gid, getattr(km, "warm_pools", None))
        yield from _gpu_use_metrics(gid, getattr(km, "culler", None))
        guard = app._zmq_guard
        yield _counter("elastic_kernels_zmq_recheck_deliveries",
                       "Kernel messages delivered by the periodic ZeroMQ re-check instead of a "
                       "wakeup.", gid, guard.recovered)
        yield _counter("elastic_kernels_zmq_recheck_streams",
                       "Kernel ZeroMQ streams the lost-wakeup re-check has looked at (its cost).",
                       gid, guard.checked)


def _warm_pool_metrics(gid: str, pools: t.Any) -> Iterator[Metric]:
    """Warm pools (gateway/lifecycle/warmpool.py): size, ready and starting pods per kernelspec
    (the namespace's, as the watch shows them), and this gateway's claims and reclaims."""
    if pools is None:
        return
    state = pools.snapshot()
    for key, doc in (("size", "Warm-pool pods asked for (0 when the kernelspec cannot pool)."),
                     ("ready", "Warm-pool pods ready to be claimed."),
                     ("starting", "Warm-pool pods starting (scheduled, importing).")):
        family = GaugeMetricFamily(f"elastic_kernels_warm_pool_{key}", doc,
                                   labels=("gateway_id", "kernelspec"))
        for spec, numbers in sorted(state.items()):
            family.add_metric((gid, spec), numbers[key])
        yield family
    claims = CounterMetricFamily(
        "elastic_kernels_warm_pool_claims",
        "Starts that tried to claim a warm-pool pod, by outcome (ok; empty, raced, failed or "
        "error: the start went cold).", labels=("gateway_id", "kernelspec", "outcome"))
    for (spec, outcome), n in sorted(pools.claims.items()):
        claims.add_metric((gid, spec, outcome), n)
    yield claims
    reclaims = CounterMetricFamily(
        "elastic_kernels_warm_pool_reclaims",
        "Warm-pool pods this gateway deleted to free GPUs for a waiting kernel.",
        labels=("gateway_id", "kernelspec"))
    for spec, n in sorted(pools.reclaims.items()):
        reclaims.add_metric((gid, spec), n)
    yield reclaims


def _gpu_use_metrics(gid: str, culler: t.Any) -> Iterator[Metric]:
    """GPU-seconds held and used per user and kernelspec (gateway/lifecycle/culler.py), and
    whether the GPU utilisation source answers: the numbers that show who holds idle GPUs."""
    if culler is None:
        return
    labels = ("gateway_id", "user", "kernelspec")
    docs = {
        "held": "GPU-seconds the kernels held (GPUs times running seconds), by user and "
                "kernelspec.",
        "used": "GPU-seconds the kernels used: held seconds weighed by measured GPU "
                "utilisation (DCGM_FI_DEV_GPU_UTIL).",
        "unmeasured": "GPU-seconds held while no utilisation reading knew the kernel's use "
                      "(no source, or it failed).",
    }
    families = {key: CounterMetricFamily(f"elastic_kernels_gpu_seconds_{key}", doc,
                                         labels=labels) for key, doc in docs.items()}
    for (user, spec), entry in sorted(culler.gpu_seconds.snapshot().items()):
        families["held"].add_metric((gid, user, spec), entry.held)
        families["used"].add_metric((gid, user, spec), entry.used)
        families["unmeasured"].add_metric((gid, user, spec), entry.unmeasured)
    yield from families.values()
    source = culler.gpu_source
    if source is None or not source.enabled:
        return
    reading = culler.gpu_reading
    up = GaugeMetricFamily(
        "elastic_kernels_gpu_metrics_up",
        "1 when the latest GPU utilisation reading succeeded (at least partly), 0 when it "
        "failed: then no kernel is culled for GPU idleness.", labels=("gateway_id",))
    up.add_metric((gid,), 1 if reading is not None and reading.available else 0)
    yield up
    yield _counter("elastic_kernels_gpu_metrics_failures",
                   "GPU utilisation readings that failed entirely.", gid,
                   culler.gpu_reading_failures)


def _sync_model(model: Callable[[str], t.Any] | None, kernel_id: str) -> dict[str, t.Any]:
    """``elastic_model(kernel_id)`` when the kernel manager has a synchronous one (ours does:
    it reads the watch cache); a scrape cannot await, and must not fail for one kernel."""
    if model is None:
        return {}
    try:
        value = model(kernel_id)
    except Exception:  # noqa: BLE001 - it went away meanwhile, or its record is unreadable
        return {}
    if not isinstance(value, dict):
        close = getattr(value, "close", None)  # an un-awaited coroutine: no warning about it
        if close is not None:
            close()
        return {}
    return value


def _gauge(name: str, documentation: str, gateway_id: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=("gateway_id",))
    family.add_metric((gateway_id,), value)
    return family


def _counter(name: str, documentation: str, gateway_id: str, value: float
             ) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=("gateway_id",))
    family.add_metric((gateway_id,), value)
    return family
