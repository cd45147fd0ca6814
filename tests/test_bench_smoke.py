"""The benchmarks still run: each in a tiny configuration, with results kept out of bench/results.

No timing is checked here (benchmarks are not tests); only that each benchmark completes and
produces the figures its report needs.  Enterprise Gateway's benchmark needs PyPI and a minute
of installing, so only its local pieces are exercised: the site hook that stands in for the pod's
service-account mount and network namespace.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import (
    bench_apiload,
    bench_roundtrip,
    bench_scale,
    bench_slowreader,
    bench_start,
    report,
)
from bench import common as C

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    out = tmp_path / "results"
    out.mkdir()
    monkeypatch.setattr(C, "RESULTS", out)
    return out


@pytest.mark.timeout(120)
def test_start_and_api_load(results_dir: Path) -> None:
    start = bench_start.main(["--sequential", "1", "--concurrent", "2"])
    assert start["concurrent"]["succeeded"] == 2, start["concurrent"]
    assert start["floor"]["n"] == start["sequential"]["n"] == 1
    load = bench_apiload.main(["--starts", "1", "--kernels", "2", "--seconds", "1",
                               "--disconnected-seconds", "1"])
    assert load["per_start_writes"] > 0
    assert load["steady"]["kernels"] == 2
    assert (results_dir / "start.json").exists() and (results_dir / "apiload.json").exists()


@pytest.mark.timeout(120)
def test_round_trip_and_streaming(results_dir: Path) -> None:
    result = bench_roundtrip.main(["--executes", "6", "--rounds", "2", "--lines", "50"])
    for name in ("direct", "gateway", "notebook"):
        assert result[name]["n"] == 6
        assert result["stream"][name]["lines"] == 50


@pytest.mark.timeout(120)
def test_scale_with_tiny_kernels_and_cull(results_dir: Path) -> None:
    result = bench_scale.main(["--levels", "3", "--cull", "4", "--idle-window", "0.5"])
    (level,) = result["levels"]
    assert level["attached"] == 3 and level["start_errors"] == 0
    assert level["roundtrip"]["n"] == 50  # the tiny kernel answered through the gateway
    assert result["cull"]["deleted"] == 4
    path = report.write(results_dir, results_dir / "REPORT.md", results_dir / "REPORT.png")
    text = path.read_text()
    assert "Kernels on one gateway" in text and "Cull 4 idle kernels" in text


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_clients_that_never_read(results_dir: Path) -> None:
    result = bench_slowreader.main(["--clients", "1", "--flood-mib", "64", "--guard-mib", "512"])
    for name in ("bounded", "unbounded", "batched"):
        assert result[name]["written_bytes"] > 0 and result[name]["idle_mib"] > 0
    path = report.write(results_dir, results_dir / "REPORT.md", results_dir / "REPORT.png")
    assert "Clients that never read" in path.read_text()


def test_chart_is_a_valid_image(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra (make bench) draws the chart")
    path = report.bar_chart(tmp_path / "c.png", [("Start p50 (ms)", [("a", 1.0, "ours"),
                                                                    ("b", float("nan"), "eg")]),
                                                 ("Round trip p50 (ms)", [("c", 2.5, "direct")])])
    assert path is not None
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


def _run_with_site(code: str, **env: str) -> str:
    full = {**os.environ, "PYTHONPATH": str(REPO / "bench" / "eg_site"), **env}
    proc = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.timeout(60)
def test_eg_site_hook_pins_any_address_to_the_pod_ip() -> None:
    out = _run_with_site(
        "import socket, zmq\n"
        "s = socket.socket(); s.bind(('0.0.0.0', 0)); print(s.getsockname()[0])\n"
        "z = zmq.Context().socket(zmq.PUB); z.bind('tcp://0.0.0.0:*')\n"
        "print(z.getsockopt_string(zmq.LAST_ENDPOINT))\n",
        POD_IP="127.0.0.77")
    plain, zmq_endpoint = out.splitlines()
    assert plain == "127.0.0.77"
    assert zmq_endpoint.startswith("tcp://127.0.0.77:")


@pytest.mark.timeout(60)
def test_eg_site_hook_supplies_the_service_account_dir(tmp_path: Path) -> None:
    out = _run_with_site(
        "from kubernetes.config import incluster_config as ic\n"
        "print(ic.SERVICE_TOKEN_FILENAME); print(ic.SERVICE_CERT_FILENAME)\n",
        BENCH_EG_SERVICEACCOUNT=str(tmp_path))
    assert out.splitlines() == [str(tmp_path / "token"), str(tmp_path / "ca.crt")]
