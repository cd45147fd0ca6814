"""The dcgm-exporter stand-in (localcluster/dcgm.py) and the simulated GPU library (simgpu.py).

The stand-in reads which pod holds which device from the kubelet and the Node objects from the
store; here both are small fakes holding real Node objects, so every flavor of GPU (whole, MIG,
time-sliced) is covered without starting processes. Its pages are parsed with the gateway's own
parser. The end-to-end path (a kernel marking its GPU busy, the gateway scraping) is in
tests/test_gpu_culling.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from elastic_kernels.culling.gpusource import by_pod, parse_exposition, parse_query_response
from elastic_kernels.localcluster import simgpu
from elastic_kernels.localcluster.dcgm import DcgmExporterStandIn
from elastic_kernels.localcluster.nodes import NodeConfig, node_object

pytestmark = pytest.mark.timeout(30)


@dataclass
class FakeContainer:
    name: str
    devices: dict[str, list[int]]

    @property
    def gpus(self) -> list[int]:
        return self.devices.get("nvidia.com/gpu", [])


@dataclass
class FakeWorker:
    namespace: str
    name: str
    pod_dir: Path
    containers: list[FakeContainer] = field(default_factory=list)


class FakeCluster:
    """What the stand-in reads: ``store.list`` of nodes and pods, ``kubelet.worker``."""

    def __init__(self, nodes: list[NodeConfig]) -> None:
        self.nodes = [node_object(cfg) for cfg in nodes]
        self.pods: list[dict[str, Any]] = []
        self.workers: dict[tuple[str, str], FakeWorker] = {}

    def list(self, key: tuple[str, str]) -> tuple[list[dict[str, Any]], str]:
        return (self.nodes if key == ("", "nodes") else self.pods), "1"

    def worker(self, namespace: str, name: str) -> FakeWorker | None:
        return self.workers.get((namespace, name))

    def run(self, tmp: Path, name: str, node: str, devices: dict[str, list[int]],
            phase: str = "Running") -> Path:
        pod_dir = tmp / name
        (pod_dir / "tmp").mkdir(parents=True)
        self.pods.append({"metadata": {"name": name, "namespace": "ns"},
                          "spec": {"nodeName": node}, "status": {"phase": phase}})
        self.workers[("ns", name)] = FakeWorker("ns", name, pod_dir,
                                                [FakeContainer("kernel", devices)])
        return pod_dir / "tmp"


async def test_every_gpu_flavor_is_exported_with_its_pod(tmp_path: Path) -> None:
    fake = FakeCluster([NodeConfig("node-a", gpus=2, gpu_flavors={
        "nvidia.com/mig-1g.10gb": 2, "nvidia.com/gpu.shared": 4}, gpu_replicas=2)])
    whole = fake.run(tmp_path, "whole", "node-a", {"nvidia.com/gpu": [1]})
    mig = fake.run(tmp_path, "mig", "node-a", {"nvidia.com/mig-1g.10gb": [0]})
    fake.run(tmp_path, "shared", "node-a", {"nvidia.com/gpu.shared": [2]})
    fake.run(tmp_path, "gone", "node-a", {"nvidia.com/gpu": [0]}, phase="Succeeded")
    busy = simgpu.Marker(utilisation=70, memory_mib=1024, scratch=whole)
    simgpu.Marker(utilisation=20, scratch=whole)  # a second marker: the highest wins
    simgpu.Marker(utilisation=55, scratch=mig)
    (mig / simgpu.MARKER_DIR / "busy-1-9.json").write_text("{not json")  # skipped

    async with DcgmExporterStandIn(fake, fake) as exporter:
        page = (await AsyncHTTPClient().fetch(exporter.url)).body.decode()
        samples = parse_exposition(page)
        util = [s for s in samples if s.metric == "DCGM_FI_DEV_GPU_UTIL"]
        # 2 whole GPUs, 2 MIG instances, 2 physical GPUs behind 4 shares (one held).
        assert len(util) == 6
        assert {s.hostname for s in util} == {"node-a"}
        assert "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %)." in page
        pods = by_pod(samples)
        assert set(pods) == {("ns", "whole"), ("ns", "mig"), ("ns", "shared")}
        assert (pods[("ns", "whole")].utilisation, pods[("ns", "whole")].memory_mib) == (70, 1024)
        assert pods[("ns", "mig")].utilisation == 55
        assert pods[("ns", "shared")].utilisation == 0
        mig_sample = next(s for s in util if s.pod == "mig")
        assert (mig_sample.instance, mig_sample.gpu) == ("0", "2")
        assert 'GPU_I_PROFILE="1g.10gb"' in page
        shared_sample = next(s for s in util if s.pod == "shared")
        assert shared_sample.gpu == "3"  # share 2 with 2 per GPU: the second shared GPU
        assert next(s for s in util if s.gpu == "0").pod == ""  # the Succeeded pod let it go

        busy.clear()
        again = by_pod(parse_exposition(
            (await AsyncHTTPClient().fetch(exporter.url)).body.decode()))
        assert again[("ns", "whole")].utilisation == 20

        answer = await AsyncHTTPClient().fetch(
            f"{exporter.query_url}/api/v1/query?query=DCGM_FI_DEV_GPU_UTIL")
        queried = by_pod(parse_query_response(answer.body, "DCGM_FI_DEV_GPU_UTIL"))
        assert queried[("ns", "mig")].utilisation == 55
        with pytest.raises(HTTPClientError) as refused:
            await AsyncHTTPClient().fetch(
                f"{exporter.query_url}/api/v1/query?query=rate(x%5B1m%5D)")
        assert refused.value.code == 400


def test_simgpu_markers_need_a_pod_and_valid_figures(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TMPDIR", raising=False)
    with pytest.raises(RuntimeError, match="TMPDIR is not set"):
        simgpu.marker_dir()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with pytest.raises(ValueError, match="0-100"):
        simgpu.Marker(utilisation=120)
    assert simgpu.read_markers(tmp_path) is None
    with simgpu.busy(utilisation=40, memory_mib=512) as marker:
        assert marker.path.parent == tmp_path / ".simgpu"
        assert simgpu.read_markers(tmp_path) == (40, 512)
    assert simgpu.read_markers(tmp_path) is None
    assert not [p for p in os.listdir(tmp_path / ".simgpu") if p.endswith(".tmp")]


def test_the_stand_in_binds_only_to_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        DcgmExporterStandIn(None, None, host="0.0.0.0")
