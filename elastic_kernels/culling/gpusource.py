"""How busy each kernel pod's GPUs are, from the NVIDIA DCGM exporter's Prometheus metrics.

The GPU-idle rule and the protection of background GPU work (:mod:`.policy`) need one number
per kernel pod: its GPU utilisation. On a cluster that number is already measured: the NVIDIA
GPU Operator runs dcgm-exporter on every GPU node, and with its Kubernetes mapping on it labels
each GPU's samples with the pod that holds the GPU. We read two of its default counters:

* ``DCGM_FI_DEV_GPU_UTIL``: GPU utilisation in percent (gauge, 0-100);
* ``DCGM_FI_DEV_FB_USED``: framebuffer memory used, in MiB (gauge);

each with the labels ``gpu`` (device index), ``UUID``, ``device``, ``modelName``, ``Hostname``
and, when the GPU is allocated to a pod, ``namespace``, ``pod`` and ``container`` (empty strings
otherwise; under MIG also ``GPU_I_PROFILE`` and ``GPU_I_ID``). A Prometheus that scrapes the
exporter without ``honorLabels`` renames the exporter's ``pod``/``namespace``/``container`` to
``exported_pod``/``exported_namespace``/``exported_container`` (its own target labels win); both
spellings are understood, the ``exported_`` ones first.

Two ways to read them, chosen by :attr:`GpuUseSource.source`:

* ``prometheus``: instant queries against a Prometheus-compatible ``/api/v1/query`` (Prometheus,
  Thanos, Mimir, VictoriaMetrics). The queries are configurable, so an admin can ask for
  ``max_over_time(DCGM_FI_DEV_GPU_UTIL[2m])`` and have a short burst between two passes count;
* ``scrape``: GET each exporter's ``/metrics`` directly (a list of URLs), parsed with
  prometheus_client's text parser.

Either way one reading covers every kernel: the culler reads once per pass, never per kernel.
A reading that fails says why in :attr:`GpuReading.errors` and is never an exception: the caller
must be able to tell "the GPU is idle" from "nobody knows", because only the first may cull.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Enum, Float, Int, List, TraitError, Unicode, validate
from traitlets.config import Configurable

log = logging.getLogger(__name__)

#: dcgm-exporter's default counters we read (etc/default-counters.csv).
UTIL_METRIC = "DCGM_FI_DEV_GPU_UTIL"
MEMORY_METRIC = "DCGM_FI_DEV_FB_USED"

SOURCE_NONE = "none"
SOURCE_SCRAPE = "scrape"
SOURCE_PROMETHEUS = "prometheus"


class MetricsFormatError(ValueError):
    """The text or JSON is not what an exporter or a Prometheus query API sends."""


@dataclass(frozen=True)
class GpuSample:
    """One GPU (or MIG instance) as one exporter line describes it."""

    metric: str
    value: float
    gpu: str = ""
    uuid: str = ""
    hostname: str = ""
    model: str = ""
    namespace: str = ""
    pod: str = ""
    container: str = ""
    #: Under MIG, the GPU instance (``GPU_I_ID``): one physical GPU, several pods.
    instance: str = ""

    @classmethod
    def from_labels(cls, metric: str, value: float, labels: Mapping[str, str]) -> GpuSample:
        def pick(name: str) -> str:
            return str(labels.get(f"exported_{name}") or labels.get(name) or "")

        return cls(metric=metric, value=value, gpu=str(labels.get("gpu") or ""),
                   uuid=str(labels.get("UUID") or labels.get("uuid") or ""),
                   hostname=str(labels.get("Hostname") or ""),
                   model=str(labels.get("modelName") or ""), namespace=pick("namespace"),
                   pod=pick("pod"), container=pick("container"),
                   instance=str(labels.get("GPU_I_ID") or ""))

    @property
    def device(self) -> tuple[str, str, str, str]:
        """What tells two devices apart across nodes (the UUID when the exporter sends it)."""
        return (self.hostname, self.uuid or self.gpu, self.instance, self.metric)


@dataclass(frozen=True)
class PodGpuUse:
    """One pod's GPUs in one reading."""

    namespace: str
    pod: str
    devices: int
    #: Mean utilisation of its GPUs, percent.
    utilisation: float
    #: The busiest of its GPUs, percent.
    busiest: float
    #: Framebuffer memory used over its GPUs, MiB (None: not reported).
    memory_mib: float | None = None


@dataclass(frozen=True)
class GpuReading:
    """Every pod's GPU use at one moment, and what could not be read."""

    at: datetime
    pods: Mapping[tuple[str, str], PodGpuUse] = field(default_factory=dict)
    #: One line per endpoint or query that failed; all failed when ``available`` is False.
    errors: tuple[str, ...] = ()
    available: bool = True

    def for_pod(self, namespace: str, pod: str) -> PodGpuUse | None:
        """The pod's use; None when this reading does not know it (never "idle")."""
        if not self.available or not pod:
            return None
        return self.pods.get((namespace, pod))


# --- parsing --------------------------------------------------------------------------------------


def _checked(metric: str, value: float, labels: Mapping[str, str]) -> GpuSample | None:
    if not math.isfinite(value) or value < 0:
        log.warning("Ignoring %s=%r for GPU %s on %s: not a finite non-negative number",
                    metric, value, labels.get("gpu"), labels.get("Hostname"))
        return None
    if metric == UTIL_METRIC and value > 100:
        log.warning("Ignoring %s=%r for GPU %s on %s: a utilisation is 0-100 percent",
                    metric, value, labels.get("gpu"), labels.get("Hostname"))
        return None
    return GpuSample.from_labels(metric, float(value), labels)


def parse_exposition(text: str) -> list[GpuSample]:
    """The GPU samples of an exporter's ``/metrics`` page (Prometheus text format 0.0.4).

    Raises :class:`MetricsFormatError` when the page does not parse; lines of other metrics
    are skipped, and so is a sample whose value cannot be a utilisation or a size.
    """
    samples: list[GpuSample] = []
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in (UTIL_METRIC, MEMORY_METRIC):
                    checked = _checked(s.name, float(s.value), s.labels)
                    if checked is not None:
                        samples.append(checked)
    except (ValueError, IndexError, KeyError) as e:
        raise MetricsFormatError(f"not Prometheus text format: {e}") from None
    return samples


def parse_query_response(body: bytes | str, metric: str) -> list[GpuSample]:
    """The samples of a Prometheus ``/api/v1/query`` answer whose values are ``metric``'s.

    The query may wrap the metric (``max_over_time(...)`` drops ``__name__``), so the caller
    says which metric its query measures. Raises :class:`MetricsFormatError` for anything but a
    successful vector (or scalar-free empty) result.
    """
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise MetricsFormatError(f"the query answer is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise MetricsFormatError("the query answer is not a JSON object")
    if doc.get("status") != "success":
        raise MetricsFormatError(f"the query failed: {doc.get('errorType') or 'error'}: "
                                 f"{str(doc.get('error') or '')[:300]}")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        kind = data.get("resultType") if isinstance(data, dict) else None
        raise MetricsFormatError(f"the query must return an instant vector, not {kind!r}")
    result = data.get("result")
    if not isinstance(result, list):
        raise MetricsFormatError("data.result is not a list")
    samples: list[GpuSample] = []
    for index, item in enumerate(result):
        if not isinstance(item, dict):
            raise MetricsFormatError(f"data.result[{index}] is not an object")
        labels = item.get("metric")
        value = item.get("value")
        if (not isinstance(labels, dict) or not isinstance(value, list) or len(value) != 2
                or not isinstance(value[1], str)):
            raise MetricsFormatError(f"data.result[{index}] is not a vector sample")
        try:
            number = float(value[1])
        except ValueError:
            raise MetricsFormatError(f"data.result[{index}] has the value {value[1]!r}") from None
        checked = _checked(metric, number, {str(k): str(v) for k, v in labels.items()})
        if checked is not None:
            samples.append(checked)
    return samples


def by_pod(samples: Iterable[GpuSample]) -> dict[tuple[str, str], PodGpuUse]:
    """Each pod's GPUs from device samples; devices no pod holds are left out.

    A device reported twice (two exporters scraped by one Prometheus, or a range function
    over a restart) counts once, with its highest value: overstating use can only keep a
    kernel, never cull it.
    """
    devices: dict[tuple[str, str, str, str], GpuSample] = {}
    for s in samples:
        if not s.pod:
            continue
        known = devices.get(s.device)
        if known is None or s.value > known.value:
            devices[s.device] = s
    util: dict[tuple[str, str], list[float]] = {}
    memory: dict[tuple[str, str], float] = {}
    for s in devices.values():
        key = (s.namespace, s.pod)
        if s.metric == UTIL_METRIC:
            util.setdefault(key, []).append(s.value)
        else:
            memory[key] = memory.get(key, 0.0) + s.value
    return {key: PodGpuUse(namespace=key[0], pod=key[1], devices=len(values),
                           utilisation=sum(values) / len(values), busiest=max(values),
                           memory_mib=memory.get(key))
            for key, values in util.items()}


# --- reading ----------------------------------------------------------------------------------


def _check_url(proposal: Any, path_hint: str) -> str:
    value = str(proposal["value"])
    parts = urlsplit(value)
    if parts.username or parts.password or "@" in parts.netloc:
        # Credentials in a URL end up in logs and error messages (this one does not echo it).
        raise TraitError(f"a metrics URL must not carry credentials ({path_hint})")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise TraitError(f"{value!r} is not an http(s) URL ({path_hint})")
    return value


class GpuUseSource(Configurable):
    """Where the gateway reads GPU utilisation: dcgm-exporter directly, or a Prometheus."""

    source = Enum(
        [SOURCE_NONE, SOURCE_SCRAPE, SOURCE_PROMETHEUS], SOURCE_NONE, config=True,
        help="none: no GPU utilisation (gpuIdleTimeout never culls, busy GPUs protect "
        "nothing); scrape: GET every URL of scrape_urls (dcgm-exporter's /metrics); prometheus: "
        "query prometheus_url's /api/v1/query.",
    )
    scrape_urls = List(
        Unicode(), default_value=[], config=True,
        help="dcgm-exporter endpoints, e.g. http://dcgm-exporter.gpu-operator:9400/metrics "
        "(one per GPU node, or a Service in front of them with one endpoint per node).",
    )
    prometheus_url = Unicode(
        "", config=True,
        help="Base URL of a Prometheus-compatible query API, e.g. "
        "http://prometheus-operated.monitoring:9090 (the /api/v1/query path is appended).",
    )
    util_query = Unicode(
        UTIL_METRIC, config=True,
        help="PromQL whose result is each GPU's utilisation in percent, with dcgm-exporter's "
        "labels, e.g. max_over_time(DCGM_FI_DEV_GPU_UTIL[2m]) so bursts between culler passes "
        "count.",
    )
    memory_query = Unicode(
        MEMORY_METRIC, config=True,
        help="PromQL whose result is each GPU's framebuffer memory used in MiB ('' : not read).",
    )
    timeout = Float(
        5.0, config=True, help="Seconds one scrape or query may take before it counts as failed.",
    )
    max_bytes = Int(
        32 << 20, config=True, help="Largest metrics page or query answer accepted, in bytes.",
    )

    @validate("scrape_urls")
    def _check_scrape_urls(self, proposal: Any) -> list[str]:
        return [_check_url({"value": u}, "scrape_urls") for u in proposal["value"]]

    @validate("prometheus_url")
    def _check_prometheus_url(self, proposal: Any) -> str:
        if not proposal["value"]:
            return ""
        return _check_url(proposal, "prometheus_url").rstrip("/")

    @validate("timeout")
    def _check_timeout(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not math.isfinite(value) or value <= 0:
            raise TraitError(f"timeout must be > 0 seconds, not {value!r}")
        return value

    @property
    def enabled(self) -> bool:
        return self.source != SOURCE_NONE

    def describe(self) -> str:
        """Where readings come from, for logs (the URLs carry no credentials: validated)."""
        if self.source == SOURCE_SCRAPE:
            return f"dcgm-exporter at {', '.join(self.scrape_urls) or '(no scrape_urls)'}"
        if self.source == SOURCE_PROMETHEUS:
            return f"Prometheus at {self.prometheus_url or '(no prometheus_url)'}"
        return "no GPU utilisation source"

    async def read(self, now: datetime) -> GpuReading:
        """One reading for every pod; failures are in the reading, never raised."""
        if self.source == SOURCE_SCRAPE:
            if not self.scrape_urls:
                return GpuReading(now, errors=("GpuUseSource.scrape_urls is empty",),
                                  available=False)
            results = await asyncio.gather(*(self._scrape(u) for u in self.scrape_urls))
        elif self.source == SOURCE_PROMETHEUS:
            if not self.prometheus_url:
                return GpuReading(now, errors=("GpuUseSource.prometheus_url is empty",),
                                  available=False)
            queries = [(UTIL_METRIC, self.util_query)]
            if self.memory_query:
                queries.append((MEMORY_METRIC, self.memory_query))
            results = list(await asyncio.gather(*(self._query(m, q) for m, q in queries)))
            if isinstance(results[0], str):
                # Without utilisation the memory alone says nothing about idleness.
                return GpuReading(now, errors=tuple(r for r in results if isinstance(r, str)),
                                  available=False)
        else:
            return GpuReading(now, errors=("no GPU utilisation source configured",),
                              available=False)
        samples = [s for r in results if not isinstance(r, str) for s in r]
        errors = tuple(r for r in results if isinstance(r, str))
        return GpuReading(now, by_pod(samples), errors,
                          available=len(errors) < len(results))

    async def read_average(self, now: datetime, window: float) -> GpuReading:
        """Each pod's utilisation averaged over the last ``window`` seconds: one subquery over
        ``util_query``, so only a Prometheus (which keeps history) can answer it."""
        if self.source != SOURCE_PROMETHEUS or not self.prometheus_url:
            return GpuReading(now, errors=("an average over time needs a Prometheus "
                                           "(GpuUseSource.source=prometheus)",),
                              available=False)
        seconds = max(1, math.ceil(window))
        result = await self._query(UTIL_METRIC, f"avg_over_time(({self.util_query})[{seconds}s:])")
        if isinstance(result, str):
            return GpuReading(now, errors=(result,), available=False)
        return GpuReading(now, by_pod(result))

    async def _fetch(self, url: str, accept: str) -> tuple[int, bytes]:
        """The status code and body; raises only when no HTTP answer came (code 599)."""
        chunks: list[bytes] = []
        size = 0

        def collect(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > self.max_bytes:
                raise MetricsFormatError(f"the answer is larger than {self.max_bytes} bytes")
            chunks.append(chunk)

        request = HTTPRequest(url, headers={"Accept": accept}, connect_timeout=self.timeout,
                              request_timeout=self.timeout, streaming_callback=collect,
                              follow_redirects=False)
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
        if response.code == 599 and response.error is not None:
            raise response.error
        return response.code, b"".join(chunks)

    async def _scrape(self, url: str) -> list[GpuSample] | str:
        try:
            code, body = await self._fetch(url, "text/plain;version=0.0.4")
            if code != 200:
                return f"{url}: HTTP {code}"
            return await asyncio.to_thread(parse_exposition, body.decode("utf-8", "replace"))
        except (HTTPClientError, OSError, MetricsFormatError, asyncio.TimeoutError) as e:
            return f"{url}: {_why(e)}"

    async def _query(self, metric: str, query: str) -> list[GpuSample] | str:
        url = f"{self.prometheus_url}/api/v1/query?{urlencode({'query': query})}"
        where = f"query {query!r} at {self.prometheus_url}"
        try:
            code, body = await self._fetch(url, "application/json")
            if code != 200:
                # Prometheus explains a bad query in the JSON body of its 400/422.
                try:
                    parse_query_response(body, metric)
                except MetricsFormatError as explained:
                    return f"{where}: HTTP {code}: {explained}"
                return f"{where}: HTTP {code}"
            return parse_query_response(body, metric)
        except (HTTPClientError, OSError, MetricsFormatError, asyncio.TimeoutError) as e:
            return f"{where}: {_why(e)}"


def _why(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:300]

