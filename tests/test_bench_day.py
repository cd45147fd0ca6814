"""The day simulation (``bench/bench_day.py``) on a small model: its JSON, its invariants, and
that a trace of the model replays to the same figures. No timing is checked (it runs on a
virtual clock)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bench import bench_day as D
from elastic_kernels.culling.policy import CullDecision

pytestmark = pytest.mark.timeout(120)

POLICY_KEYS = {"p50_wait_s", "p95_wait_s", "gpu_utilization", "allocations", "states_lost",
               "resumes", "gpu_seconds_held", "gpu_seconds_used", "gpu_idle_culls", "cells_lost"}
GPU_IDLE = "elastic_suspend_gpu_idle"


def run(*argv: str) -> dict[str, Any]:
    return D.main(["--no-save", *argv])


def test_small_model_shape_and_invariants(tmp_path: Path) -> None:
    out = tmp_path / "day.json"
    result = run("--users", "6", "--gpus", "2", "--max-users", "12", "--json", str(out))
    assert json.loads(out.read_text())["users_per_gpu"] == result["users_per_gpu"]
    assert set(D.POLICIES) <= set(result)
    assert {"static", "elastic", GPU_IDLE} <= set(result["users_per_gpu"])
    sessions = D.make_sessions(6, 1)
    busy = sum(b - a for s in sessions for a, b in s.active)
    gpu_busy = sum(b - a for s in sessions for a, b in s.gpu_periods)
    # The model holds GPUs it does not use: fewer GPU-busy seconds than Jupyter-busy ones.
    assert 0 < gpu_busy < busy
    assert result["model"]["gpu_busy_share"] < result["model"]["busy_share"]
    for name in D.POLICIES:
        figures = result[name]
        assert POLICY_KEYS <= set(figures), name
        # Every session served; never more GPUs bound than exist.
        assert figures["sessions_served"] == len(sessions), name
        assert 0 < figures["max_gpus_in_use"] <= 2, name
        assert figures["p50_wait_s"] <= figures["p95_wait_s"] <= figures["max_wait_s"]
        # Used is at most held, and utilization is their ratio.
        held, used = figures["gpu_seconds_held"], figures["gpu_seconds_used"]
        assert 0 < used <= held == figures["held_gpu_s"], name
        assert figures["gpu_utilization"] == pytest.approx(used / held, abs=1e-4), name
        # Busy and GPU-busy time is the sessions' own, whatever the policy, unless cells died
        # with their kernel (then less).
        if figures["cells_lost"] == 0:
            assert figures["busy_gpu_s"] == pytest.approx(busy, abs=1e-3), name
            assert used == pytest.approx(gpu_busy, abs=1e-3), name
        else:
            assert figures["busy_gpu_s"] < busy and used <= gpu_busy + 1e-3, name
        if name != GPU_IDLE:
            assert figures["gpu_idle_culls"] == figures["cells_lost"] == 0, name
    static, elastic, suspend, gpu_idle = (result[p] for p in D.POLICIES)
    # gpuIdleTimeout frees GPUs that Jupyter-idle culling leaves held.
    assert gpu_idle["gpu_idle_culls"] > 0
    assert gpu_idle["gpu_seconds_held"] < suspend["gpu_seconds_held"]
    assert gpu_idle["states_lost"] >= gpu_idle["cells_lost"]
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
            # Each flavor's busy and GPU-busy time is its own sessions', whatever the policy
            # (unless cells died with their kernel: then less).
            busy = sum(b - a for s in sessions if s.resource == flavor for a, b in s.active)
            used = sum(b - a for s in sessions if s.resource == flavor
                       for a, b in s.gpu_periods)
            if figures["cells_lost"] == 0:
                assert per["busy_gpu_s"] == pytest.approx(busy, abs=1e-3), (name, flavor)
                assert per["used_gpu_s"] == pytest.approx(used, abs=1e-3), (name, flavor)
            assert per["used_gpu_s"] <= min(used + 1e-3, per["held_gpu_s"]), (name, flavor)
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


# --- holding a GPU without using it (issue 16) ----------------------------------------------------

#: Figures of the simulation before issue 16 (commit bff4cbf) for the model's first 4 users,
#: written as a trace (no gpu_active: the GPU busy whenever the kernel is) and replayed on 1 GPU.
BEFORE_GPU_USE = {
    "static": {"p50_wait_s": 12724.296, "p95_wait_s": 32781.976, "max_wait_s": 32781.976,
               "gpu_utilization": 0.2427, "allocations": 12, "states_lost": 0, "resumes": 0,
               "busy_gpu_s": 16176.544, "held_gpu_s": 66640.572, "sessions_served": 12,
               "max_gpus_in_use": 1},
    "elastic": {"p50_wait_s": 15.595, "p95_wait_s": 1030.472, "max_wait_s": 1582.011,
                "gpu_utilization": 0.4444, "allocations": 55, "states_lost": 51, "resumes": 0,
                "busy_gpu_s": 16176.544, "held_gpu_s": 36399.756, "sessions_served": 12,
                "max_gpus_in_use": 1},
    "elastic_suspend": {"p50_wait_s": 54.94, "p95_wait_s": 1411.918, "max_wait_s": 1732.011,
                        "gpu_utilization": 0.4363, "allocations": 56, "states_lost": 0,
                        "resumes": 44, "busy_gpu_s": 16176.544, "held_gpu_s": 37074.791,
                        "sessions_served": 12, "max_gpus_in_use": 1},
}


def test_a_trace_without_gpu_active_replays_as_before(tmp_path: Path) -> None:
    trace = tmp_path / "old.jsonl"
    D.write_trace(D.make_sessions(4, 1, D.Workload(0.0, 0.0, 0.0)), trace)
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(lines) == 12 and not any("gpu_active" in line for line in lines)
    result = run("--trace", str(trace), "--gpus", "1", "--no-search")
    for name, before in BEFORE_GPU_USE.items():
        assert {k: result[name][k] for k in before} == before, name
        # Without the field the GPU is busy whenever the kernel is.
        assert result[name]["gpu_seconds_used"] == result[name]["busy_gpu_s"], name
    # Spelling out gpu_active equal to active changes nothing.
    explicit = tmp_path / "explicit.jsonl"
    explicit.write_text("".join(json.dumps({**line, "gpu_active": line["active"]}) + "\n"
                                for line in lines))
    again = run("--trace", str(explicit), "--gpus", "1", "--no-search")
    for name in D.POLICIES:
        assert again[name] == result[name], name


def test_gpu_active_outside_the_busy_periods_is_refused(tmp_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text(json.dumps({"user": "u1", "start": 0.0, "end": 600.0, "gpus": 1,
                                 "active": [[10.0, 20.0]], "gpu_active": [[15.0, 30.0]]}) + "\n")
    with pytest.raises(SystemExit, match="gpu_active"):
        run("--trace", str(trace), "--no-search")


def alone(session: JSON, gpu_idle: bool) -> tuple[dict[str, Any], list[tuple[float, str]]]:
    """One session alone on 2 GPUs (no pressure, so no reclaim) under elastic with Suspend,
    with or without gpuIdleTimeout (10m): its figures, and when and why its kernels went."""
    day = D.ElasticDay([D.Session.from_json(session)], 2, D.Settings(), suspend=True,
                       gpu_idle=gpu_idle)
    went: list[tuple[float, str]] = []
    cull = day._cull

    def recorded(k: D.Kernel, decision: CullDecision) -> None:
        went.append((day.now, decision.reason.value))
        cull(k, decision)

    day._cull = recorded  # type: ignore[method-assign]
    return asyncio.run(day.run()), went


JSON = dict[str, Any]
HOURS_4 = 4 * 3600.0
#: A connected session busy on the CPU for a minute every five: Jupyter never idle long enough.
CPU_EVERY_5_MIN: JSON = {"user": "u1", "start": 0.0, "end": HOURS_4, "gpus": 1,
                         "active": [[t, t + 60.0] for t in range(300, 14100, 300)]}


def test_gpu_idle_timeout_takes_an_unused_gpu_that_jupyter_idle_culling_leaves() -> None:
    unused = {**CPU_EVERY_5_MIN, "gpu_active": []}
    kept, kept_went = alone(unused, gpu_idle=False)
    # Jupyter-idle culling never takes it: the GPU is held the whole session, never used.
    assert kept_went == [] and kept["gpu_seconds_held"] == HOURS_4
    assert kept["gpu_seconds_used"] == 0
    taken, taken_went = alone(unused, gpu_idle=True)
    # gpuIdleTimeout suspends it at the first pass past 10 minutes of readings at 0 % (the
    # first reading is the pass at 15 s) at which no cell runs: the burst running at 630 s
    # ends at 660 s; each resume is taken again 10 minutes on; its state is kept throughout.
    assert taken_went[0] == (660.0, "GpuIdleTimeout")
    assert {why for _, why in taken_went} == {"GpuIdleTimeout"}
    assert taken["gpu_idle_culls"] == len(taken_went) > 1
    assert taken["states_lost"] == taken["cells_lost"] == 0
    assert taken["resumes"] == taken["allocations"] - 1 > 0
    assert taken["gpu_seconds_held"] < HOURS_4 and taken["gpu_seconds_used"] == 0


def test_gpu_idle_timeout_is_sooner_than_the_idle_timeout() -> None:
    # One short CPU burst, then Jupyter idle: idleTimeout (30m) suspends it at last, after the
    # burst's end; gpuIdleTimeout (10m) long before.
    once: JSON = {"user": "u1", "start": 0.0, "end": 3 * 3600.0, "gpus": 1,
                  "active": [[60.0, 120.0]], "gpu_active": []}
    idle, idle_went = alone(once, gpu_idle=False)
    gpu, gpu_went = alone(once, gpu_idle=True)
    # (Passes every 15 s; the GPU is let go 10 s after the suspension starts.)
    assert idle_went == [(1935.0, "IdleTimeout")] and idle["gpu_seconds_held"] == 1945.0
    assert gpu_went == [(630.0, "GpuIdleTimeout")] and gpu["gpu_seconds_held"] == 640.0
    assert gpu["states_lost"] == idle["states_lost"] == 0


def test_a_kernel_using_its_gpu_keeps_it() -> None:
    used = {**CPU_EVERY_5_MIN, "gpu_active": CPU_EVERY_5_MIN["active"]}
    without, _ = alone(used, gpu_idle=False)
    with_, went = alone(used, gpu_idle=True)
    assert went == [] and with_ == without
    assert with_["gpu_seconds_used"] == with_["busy_gpu_s"] == 46 * 60.0


def test_suspending_a_kernel_in_a_cpu_cell_waits_for_the_cell() -> None:
    # The GPU has been idle past gpuIdleTimeout at 630 s, but a cell runs: its namespace
    # cannot be saved then, so the kernel is suspended at the first pass after the cell ends
    # (passes every 15 s), with nothing lost.
    short: JSON = {"user": "u1", "start": 0.0, "end": 3600.0, "gpus": 1,
                   "active": [[600.0, 640.0]], "gpu_active": []}
    figures, went = alone(short, gpu_idle=True)
    assert went == [(645.0, "GpuIdleTimeout")]
    assert figures["states_lost"] == figures["cells_lost"] == 0
    # A 20-minute CPU cell holds the GPU to its end, and keeps its work.
    long: JSON = {**short, "active": [[60.0, 1260.0]]}
    figures, went = alone(long, gpu_idle=True)
    assert went == [(1260.0, "GpuIdleTimeout")]
    assert figures["states_lost"] == figures["cells_lost"] == 0


def test_the_model_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="cpu_lead"):
        D.Workload(cpu_lead=1.0)
    with pytest.raises(SystemExit):
        run("--unused-gpu-sessions", "1.5", "--no-search")
    with pytest.raises(SystemExit):
        run("--gpu-idle-timeout", "soon", "--no-search")
    everyone = D.make_sessions(3, 1, D.Workload(1.0, 0.0, 0.0))
    assert all(s.gpu_periods == () for s in everyone)
    # The timelines do not depend on the GPU use drawn into them.
    assert [(s.start, s.end, s.active) for s in everyone] == [
        (s.start, s.end, s.active) for s in D.make_sessions(3, 1)]
