"""The day simulation (``bench/bench_day.py``) on a small model: its JSON, its invariants, and
that a trace of the model replays to the same figures. No timing is checked (it runs on a
virtual clock)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import bench_day as D

pytestmark = pytest.mark.timeout(120)

POLICY_KEYS = {"p50_wait_s", "p95_wait_s", "gpu_utilization", "allocations", "states_lost",
               "resumes"}


def run(*argv: str) -> dict[str, Any]:
    return D.main(["--no-save", *argv])


def test_small_model_shape_and_invariants(tmp_path: Path) -> None:
    out = tmp_path / "day.json"
    result = run("--users", "6", "--gpus", "2", "--max-users", "12", "--json", str(out))
    assert json.loads(out.read_text())["users_per_gpu"] == result["users_per_gpu"]
    assert set(D.POLICIES) <= set(result)
    assert {"static", "elastic"} <= set(result["users_per_gpu"])
    sessions = D.make_sessions(6, 1)
    for name in D.POLICIES:
        figures = result[name]
        assert POLICY_KEYS <= set(figures), name
        # Every session served; never more GPUs bound than exist.
        assert figures["sessions_served"] == len(sessions), name
        assert 0 < figures["max_gpus_in_use"] <= 2, name
        assert 0 < figures["gpu_utilization"] <= 1, name
        assert figures["p50_wait_s"] <= figures["p95_wait_s"] <= figures["max_wait_s"]
        # Busy time is the sessions' own, whatever the policy.
        assert figures["busy_gpu_s"] == pytest.approx(
            sum(b - a for s in sessions for a, b in s.active), abs=1e-3)
    static, elastic, suspend = (result[p] for p in D.POLICIES)
    assert static["allocations"] == len(sessions) and static["states_lost"] == 0
    # Elastic kernels hold GPUs only while used (and resumed), never longer than static holds
    # them; static, holding a GPU per session, never waits less at p95 (a resume's delay aside).
    assert suspend["held_gpu_s"] <= static["held_gpu_s"]
    assert elastic["held_gpu_s"] <= static["held_gpu_s"]
    assert static["p95_wait_s"] >= suspend["p95_wait_s"] - D.Settings().resume_delay
    # Suspend keeps every kernel's state; every resume is a kernel that went away.
    assert suspend["states_lost"] == 0 and elastic["resumes"] == 0
    assert suspend["resumes"] == suspend["allocations"] - len(sessions)
    # Without it, every new kernel of a session follows a loss (some losses need none: the
    # session had no burst left).
    assert elastic["states_lost"] >= elastic["allocations"] - len(sessions) > 0
    upg = result["users_per_gpu"]
    assert upg["elastic"] >= upg["static"] > 0


def test_a_trace_replays_exactly_and_the_run_is_deterministic(tmp_path: Path) -> None:
    trace = tmp_path / "day.jsonl"
    first = run("--users", "5", "--gpus", "2", "--no-search", "--write-trace", str(trace))
    lines = trace.read_text().splitlines()
    assert len(lines) == 15 and json.loads(lines[0])["gpus"] == 1
    replayed = run("--trace", str(trace), "--gpus", "2", "--no-search")
    again = run("--users", "5", "--gpus", "2", "--no-search")
    for name in D.POLICIES:
        assert replayed[name] == first[name] == again[name], name
    assert "users_per_gpu" not in first


def test_a_bad_trace_line_is_refused(tmp_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text(json.dumps({"user": "u1", "start": 10.0, "end": 5.0, "gpus": 1,
                                 "active": []}) + "\n")
    with pytest.raises(SystemExit, match="bad.jsonl:1"):
        run("--trace", str(trace))


def test_a_flavor_mix_keeps_each_flavor_to_its_own_devices(tmp_path: Path) -> None:
    mig = "nvidia.com/mig-1g.10gb"
    trace = tmp_path / "mixed.jsonl"
    result = run("--users", "6", "--flavors", f"nvidia.com/gpu=1,{mig}=2", "--flavor-mix",
                 f"nvidia.com/gpu=1,{mig}=1", "--no-search", "--write-trace", str(trace))
    sessions = [D.Session.from_json(json.loads(line)) for line in trace.read_text().splitlines()]
    flavors = {s.user: s.resource for s in sessions}
    assert set(flavors.values()) == {"nvidia.com/gpu", mig}  # both drawn for six users
    assert all(s.resource == flavors[s.user] for s in sessions)  # a user keeps one flavor
    for name in D.POLICIES:
        figures = result[name]
        assert figures["sessions_served"] == len(sessions), name
        assert 0 < figures["max_gpus_in_use"] <= 3, name
        for flavor, per in figures["by_flavor"].items():
            # Each flavor's busy time is its own sessions', whatever the policy.
            assert per["busy_gpu_s"] == pytest.approx(sum(
                b - a for s in sessions if s.resource == flavor for a, b in s.active),
                abs=1e-3), (name, flavor)
            assert per["p95_wait_s"] <= figures["max_wait_s"]
    replayed = run("--trace", str(trace), "--flavors", f"nvidia.com/gpu=1,{mig}=2",
                   "--no-search")
    for name in D.POLICIES:
        assert replayed[name] == result[name], name


def test_a_bad_flavor_option_is_refused() -> None:
    with pytest.raises(SystemExit):
        run("--flavors", "nvidia.com/gpu=two", "--no-search")
    with pytest.raises(SystemExit):
        run("--flavors", "nvidia.com/gpu=2", "--flavor-mix", "amd.com/gpu=1", "--no-search")
