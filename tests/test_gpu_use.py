"""Culling by GPU use, without a cluster: the DCGM parsers, the source's failures, the policy.

The exposition sample below is dcgm-exporter's own output shape (its default counters, HELP
text and label set, as the GPU Operator's exporter prints it with the Kubernetes pod mapping
on), including a GPU no pod holds and MIG instances; the policy runs on a fixed ``now``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from traitlets import TraitError

from elastic_kernels.culling import gpusource as G
from elastic_kernels.culling import policy as C
from elastic_kernels.kube import resources as R

from .conftest import derived_kernelspec

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)

#: What dcgm-exporter printed, trimmed to a few counters (tests/dcgm_exporter_sample.txt).
DCGM_SAMPLE = (Path(__file__).parent / "dcgm_exporter_sample.txt").read_text()


# --- parsing ------------------------------------------------------------------------------------


def test_exporter_text_gives_each_pods_gpu_use() -> None:
    samples = G.parse_exposition(DCGM_SAMPLE)
    assert {s.metric for s in samples} == {G.UTIL_METRIC, G.MEMORY_METRIC}
    first = next(s for s in samples if s.pod == "kernel-1234-0" and s.metric == G.UTIL_METRIC)
    assert (first.gpu, first.hostname, first.model, first.namespace, first.container) == (
        "0", "gpu-node-1", "Tesla T4", "team-a", "main")
    assert first.uuid == "GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52"
    pods = G.by_pod(samples)
    # The unallocated GPU (empty pod label) belongs to no kernel.
    assert set(pods) == {("team-a", "kernel-1234-0"), ("team-b", "kernel-5678-0"),
                         ("team-b", "kernel-9abc-0")}
    t4 = pods[("team-a", "kernel-1234-0")]
    assert (t4.devices, t4.utilisation, t4.busiest, t4.memory_mib) == (1, 87, 87, 12120)
    # Two MIG instances of one physical GPU are two pods' devices, not one.
    assert pods[("team-b", "kernel-5678-0")].utilisation == 0
    assert pods[("team-b", "kernel-9abc-0")].utilisation == 42
    assert pods[("team-b", "kernel-9abc-0")].memory_mib is None


def test_a_pod_with_several_gpus_and_prometheus_renamed_labels() -> None:
    text = "\n".join([
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",Hostname="n1",pod="dcgm-exporter-x",'
        'namespace="gpu-operator",exported_pod="k-0",exported_namespace="ns"} 90',
        'DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-b",Hostname="n1",pod="dcgm-exporter-x",'
        'namespace="gpu-operator",exported_pod="k-0",exported_namespace="ns"} 10',
        "",
    ])
    use = G.by_pod(G.parse_exposition(text))[("ns", "k-0")]
    assert (use.devices, use.utilisation, use.busiest) == (2, 50, 90)


@pytest.mark.parametrize("text", [
    'DCGM_FI_DEV_GPU_UTIL{gpu="0" 5\n',
    'DCGM_FI_DEV_GPU_UTIL{gpu="0"} five\n',
    "<html><body>502 Bad Gateway</body></html>\n",
])
def test_malformed_exposition_is_an_error_not_an_idle_gpu(text: str) -> None:
    with pytest.raises(G.MetricsFormatError, match="not Prometheus text format"):
        G.parse_exposition(text)


def test_impossible_values_are_skipped() -> None:
    text = ('DCGM_FI_DEV_GPU_UTIL{gpu="0",pod="a",namespace="n"} NaN\n'
            'DCGM_FI_DEV_GPU_UTIL{gpu="1",pod="b",namespace="n"} 250\n'
            'DCGM_FI_DEV_GPU_UTIL{gpu="2",pod="c",namespace="n"} -1\n'
            'DCGM_FI_DEV_GPU_UTIL{gpu="3",pod="d",namespace="n"} 3\n')
    assert set(G.by_pod(G.parse_exposition(text))) == {("n", "d")}


def test_query_answers_parse_and_errors_explain() -> None:
    answer = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"gpu": "0", "UUID": "GPU-a", "Hostname": "n1", "namespace": "ns",
                    "pod": "k-0", "container": "main"}, "value": [1714564800.0, "12.5"]}]}}
    samples = G.parse_query_response(json.dumps(answer), G.UTIL_METRIC)
    assert G.by_pod(samples)[("ns", "k-0")].utilisation == 12.5
    with pytest.raises(G.MetricsFormatError, match="bad_data: parse error"):
        G.parse_query_response(json.dumps({"status": "error", "errorType": "bad_data",
                                           "error": "parse error at char 5"}), G.UTIL_METRIC)
    with pytest.raises(G.MetricsFormatError, match="instant vector, not 'matrix'"):
        G.parse_query_response(json.dumps({"status": "success", "data": {
            "resultType": "matrix", "result": []}}), G.UTIL_METRIC)
    with pytest.raises(G.MetricsFormatError, match="not JSON"):
        G.parse_query_response(b"<html>", G.UTIL_METRIC)


# --- the source's configuration and failures ----------------------------------------------------


def test_source_config_rejects_bad_urls_and_credentials() -> None:
    source = G.GpuUseSource()
    with pytest.raises(TraitError, match="not an http"):
        source.scrape_urls = ["dcgm-exporter:9400/metrics"]
    with pytest.raises(TraitError, match="must not carry credentials"):
        source.prometheus_url = "http://admin:hunter2@prometheus:9090"
    with pytest.raises(TraitError):
        source.timeout = 0
    with pytest.raises(TraitError):
        source.source = "nvml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Page(tornado.web.RequestHandler):
    def initialize(self, pages: dict[str, tuple[int, str]]) -> None:
        self.pages = pages

    def get(self) -> None:
        code, body = self.pages[self.request.path]
        self.set_status(code)
        self.finish(body)


async def test_an_unreachable_or_broken_source_is_unavailable_not_idle() -> None:
    pages = {"/metrics": (200, DCGM_SAMPLE), "/broken": (200, "<html>oops"),
             "/down": (503, "no"),
             "/api/v1/query": (400, json.dumps({"status": "error", "errorType": "bad_data",
                                                "error": "unknown function"}))}
    sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1", family=socket.AF_INET)
    server = tornado.httpserver.HTTPServer(tornado.web.Application([
        (r"/.*", _Page, {"pages": pages})]))
    server.add_sockets(sockets)
    base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    try:
        dead = G.GpuUseSource(source="scrape", scrape_urls=[f"http://127.0.0.1:{_free_port()}/m"],
                              timeout=2)
        reading = await dead.read(NOW)
        assert not reading.available and reading.for_pod("team-a", "kernel-1234-0") is None
        assert "Connection refused" in reading.errors[0] or "refused" in reading.errors[0]

        partial = G.GpuUseSource(source="scrape", scrape_urls=[
            f"{base}/metrics", f"{base}/broken", f"{base}/down"])
        reading = await partial.read(NOW)
        assert reading.available
        assert reading.for_pod("team-a", "kernel-1234-0") is not None
        assert any("/broken: not Prometheus text format" in e for e in reading.errors)
        assert any("/down: HTTP 503" in e for e in reading.errors)

        prom = G.GpuUseSource(source="prometheus", prometheus_url=base,
                              util_query="max_over_time(DCGM_FI_DEV_GPU_UTIL[2m])")
        reading = await prom.read(NOW)
        assert not reading.available
        assert "HTTP 400" in reading.errors[0] and "unknown function" in reading.errors[0]

        unset = await G.GpuUseSource(source="prometheus").read(NOW)
        assert not unset.available and "prometheus_url is empty" in unset.errors[0]
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 10)


# --- the policy -----------------------------------------------------------------------------------


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def gpu_kernel(**changes: Any) -> C.KernelFacts:
    base = C.KernelFacts(
        name="kernel-g", namespace="default", kernel_id=str(uuid.uuid4()), user="alice",
        kernel_spec="python-gpu", phase=R.PHASE_RUNNING, gpus=1, created_at=ago(3600),
        started_at=ago(3590), last_activity=ago(5), execution_state="busy", connections=1)
    return replace(base, **changes)


def test_gpu_idle_culls_a_connected_cpu_busy_kernel_after_the_timeout() -> None:
    policy = C.Policy(gpu_idle_timeout=600, gpu_idle_threshold=5)
    spinning = gpu_kernel(gpu_idle_since=ago(601), gpu_busy=False)
    decision = C.decide(spinning, policy, NOW)
    assert decision is not None and decision.reason is C.CullReason.GPU_IDLE
    assert "under 5% utilisation for 10m1s" in decision.message
    assert "gpuIdleTimeout of 10m" in decision.message
    assert C.decide(replace(spinning, gpu_idle_since=ago(599)), policy, NOW) is None
    # Unknown use (no reading) is never idle; nor is a CPU kernel, or a rule set to 0.
    assert C.decide(replace(spinning, gpu_busy=None), policy, NOW) is None
    assert C.decide(replace(spinning, gpus=0), policy, NOW) is None
    assert C.decide(spinning, replace(policy, gpu_idle_timeout=0), NOW) is None


def test_a_suspend_kernel_busy_on_the_cpu_is_suspended_when_its_cell_ends() -> None:
    policy = C.Policy(gpu_idle_timeout=600, gpu_idle_threshold=5, on_cull=R.ON_CULL_SUSPEND)
    spinning = gpu_kernel(gpu_idle_since=ago(3000), gpu_busy=False)
    # Its namespace cannot be saved while the cell runs: culling it now would lose it.
    assert C.decide(spinning, policy, NOW) is None
    done = C.decide(replace(spinning, execution_state="idle"), policy, NOW)
    assert done is not None and done.reason is C.CullReason.GPU_IDLE
    assert "for 50m" in done.message  # the idle time measured meanwhile counts


def test_a_busy_gpu_protects_a_kernel_jupyter_shows_idle() -> None:
    policy = C.Policy(idle_timeout=60, reclaim_after=60)
    training = gpu_kernel(last_activity=ago(3000), execution_state="idle", connections=0,
                          gpu_busy=True)
    assert C.decide(training, policy, NOW) is None
    assert C.reclaim_candidates([training], lambda _: policy, NOW) == []
    idle = replace(training, gpu_busy=False)
    decision = C.decide(idle, policy, NOW)
    assert decision is not None and decision.reason is C.CullReason.IDLE_TIMEOUT
    assert len(C.reclaim_candidates([idle], lambda _: policy, NOW)) == 1


def test_tracking_measures_idleness_and_restarts_it_after_a_gap() -> None:
    t1 = C.track_gpu(None, 0.0, 5, ago(120))
    t2 = C.track_gpu(t1, 4.9, 5, ago(60))
    assert t2.idle_since == ago(120) and t2.busy is False
    busy = C.track_gpu(t2, 5.0, 5, ago(30))
    assert busy.idle_since is None and busy.last_busy == ago(30) and busy.busy is True
    gap = C.track_gpu(t2, None, 5, NOW)
    assert gap.idle_since is None and gap.busy is None
    again = C.track_gpu(gap, 0.0, 5, NOW)
    assert again.idle_since == NOW
    # A busy GPU counts as activity, so the mirrored lastActivity protects it from the cron.
    facts = C.with_gpu_activity(gpu_kernel(last_activity=ago(3000)), busy)
    assert facts.last_activity == ago(30) and facts.gpu_busy is True


def test_gpu_seconds_split_held_into_used_and_unmeasured() -> None:
    ledger = C.GpuSeconds()
    ledger.add("alice", "python-gpu", 2, 100, 30.0)
    ledger.add("alice", "python-gpu", 2, 50, None)
    ledger.add("bob", "python-gpu", 1, 100, 0.0)
    ledger.add("bob", "python-cpu", 0, 100, None)
    alice = ledger.snapshot()[("alice", "python-gpu")]
    assert (alice.held, alice.used, alice.unmeasured) == (300, 60, 100)
    bob = ledger.snapshot()[("bob", "python-gpu")]
    assert (bob.held, bob.used, bob.unmeasured) == (100, 0, 0)
    assert ("bob", "python-cpu") not in ledger.snapshot()


def test_policy_fields_from_the_kernelspec_and_their_validation() -> None:
    doc = derived_kernelspec("python-gpu", "gpu-watched")
    doc["spec"]["culling"] = {"gpuIdleTimeout": "15m", "gpuIdleThreshold": 2.5,
                              "onCull": "Suspend"}
    view = R.KernelSpecView.from_object(doc)
    policy = C.effective_policy(view, C.Policy())
    assert (policy.gpu_idle_timeout, policy.gpu_idle_threshold, policy.suspends) == (
        900, 2.5, True)
    assert C.effective_policy(None, C.Policy()).gpu_idle_threshold == 5.0
    for bad, problem in ((0, "greater than 0"), (101, "at most 100"), ("5", "must be a number")):
        doc["spec"]["culling"] = {"gpuIdleThreshold": bad}
        with pytest.raises(ValueError, match=problem):
            R.KernelSpecView.from_object(doc)
    doc["spec"]["culling"] = {"gpuIdleTimeout": "soon"}
    with pytest.raises(ValueError, match="gpuIdleTimeout"):
        R.KernelSpecView.from_object(doc)
    with pytest.raises(ValueError, match="gpu_idle_threshold"):
        C.Policy(gpu_idle_threshold=0)
    defaults = C.CullingDefaults()
    with pytest.raises(TraitError):
        defaults.gpu_idle_threshold = 150
    with pytest.raises(TraitError):
        defaults.gpu_idle_timeout = -1


# --- the usage report's figures -------------------------------------------------------------------


class _Prometheus(tornado.web.RequestHandler):
    """Answers every query with one pod's average, and remembers what it was asked."""

    def initialize(self, asked: list[str]) -> None:
        self.asked = asked

    def get(self) -> None:
        self.asked.append(self.get_query_argument("query"))
        self.finish({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"gpu": "0", "UUID": "GPU-a", "Hostname": "n1", "namespace": "ns",
                        "pod": "kernel-a-0"}, "value": [1714564800.0, "25"]}]}})


def record(kernel_id: str, user: str, gpus: int, started: float, pod: str,
           phase: str = R.PHASE_RUNNING) -> dict[str, Any]:
    return {"apiVersion": f"{R.GROUP}/{R.VERSION}", "kind": "JupyterKernel",
            "metadata": {"name": R.kernel_object_name(kernel_id), "namespace": "ns",
                         "creationTimestamp": R.format_timestamp(ago(started + 10))},
            "spec": {"kernelId": kernel_id, "user": user, "kernelSpec": "python-gpu"},
            "status": {"phase": phase, "gpus": gpus, "podName": pod,
                       "startedAt": R.format_timestamp(ago(started))}}


async def test_usage_figures_per_user_and_kernelspec() -> None:
    from elastic_kernels.culling import usage as U

    asked: list[str] = []
    sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1", family=socket.AF_INET)
    server = tornado.httpserver.HTTPServer(tornado.web.Application([
        (r"/api/v1/query", _Prometheus, {"asked": asked})]))
    server.add_sockets(sockets)
    source = G.GpuUseSource(source="prometheus",
                            prometheus_url=f"http://127.0.0.1:{sockets[0].getsockname()[1]}/")
    try:
        a, b, c = (str(uuid.UUID(int=i)) for i in (1, 2, 3))
        records = [record(a, "alice", 2, 3600, "kernel-a-0"),
                   record(b, "bob", 1, 600, "kernel-b-0"),
                   record(c, "carol", 0, 600, "kernel-c-0")]  # a CPU kernel holds no GPU
        current = await source.read(NOW)
        window = U.oldest_window(U.kernel_usage(records, C.PolicyBook(C.Policy()), NOW,
                                                current, None, []))
        assert window == 3600
        average = await source.read_average(NOW, window)
        assert asked[-1] == "avg_over_time((DCGM_FI_DEV_GPU_UTIL)[3600s:])"
        warnings: list[str] = []
        kernels = U.kernel_usage(records, C.PolicyBook(C.Policy()), NOW, current, average,
                                 warnings)
        rows = {r.user: r for r in U.rows_of(kernels)}
        assert set(rows) == {"alice", "bob"} and warnings == []
        alice = rows["alice"]
        assert (alice.gpus, alice.held_seconds, alice.used_seconds) == (2, 7200, 1800)
        assert (alice.idle_gpus, alice.unknown_gpus) == (0, 0)  # 25% now, >= 5%: in use
        # bob's pod is in no series: its use is unknown, never zero.
        assert rows["bob"].used_seconds is None and rows["bob"].unknown_gpus == 1
        scraped = await G.GpuUseSource(source="scrape", scrape_urls=[
            "http://127.0.0.1:9/metrics"]).read_average(NOW, 60)
        assert not scraped.available and "needs a Prometheus" in scraped.errors[0]
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 10)


def test_report_flags_choose_one_source() -> None:
    from elastic_kernels import cull

    parse = cull.build_parser().parse_args
    assert cull.gpu_source(parse(["--report"])).source == G.SOURCE_NONE
    scrape = cull.gpu_source(parse(["--report", "--scrape-url", "http://a:9400/metrics",
                                    "--scrape-url", "http://b:9400/metrics"]))
    assert (scrape.source, len(scrape.scrape_urls)) == (G.SOURCE_SCRAPE, 2)
    prom = cull.gpu_source(parse(["--report", "--prometheus-url", "http://p:9090",
                                  "--util-query", "max_over_time(DCGM_FI_DEV_GPU_UTIL[5m])"]))
    assert (prom.source, prom.util_query) == (G.SOURCE_PROMETHEUS,
                                              "max_over_time(DCGM_FI_DEV_GPU_UTIL[5m])")
    with pytest.raises(ValueError, match="not both"):
        cull.gpu_source(parse(["--scrape-url", "http://a/m", "--prometheus-url", "http://p"]))
    with pytest.raises(TraitError, match="credentials"):
        cull.gpu_source(parse(["--prometheus-url", "http://u:secret@p:9090"]))
