"""elastic-kernels and Jupyter Enterprise Gateway 3.3, side by side on the same local cluster.

Run ``.venv/bin/python -m bench.bench_eg [--quick]``.  The first run installs EG from PyPI into
``bench/.venv-eg`` (about a minute; see ``bench/eg.py`` for how it runs on the local cluster).

In one run, on one cluster, with the same client code, first our gateway then EG (never both at
once, so every API request counted belongs to the system being measured):

1. start: ``POST /api/kernels`` → first ``kernel_info_reply`` on the websocket, N sequential
   (p50/p90/max) and M concurrent (all must succeed);
2. round trip: executes of ``pass`` (reply + idle) through the system's websocket, and by direct
   ZeroMQ to the same kernel;
4. API load: requests per start by verb (less our gateway's Lease renewals, which happen every
   10 s whatever it does; EG has none), and per kernel-hour with K idle kernels for S seconds,
   each with a client connected (ours: once its records show the clients, a write per kernel
   made at its next culling pass, as ``bench_apiload`` reports separately).

Both systems run a Python kernel (ipykernel) in a pod: ours ``python-cpu`` (ipykernel from this
virtualenv), EG its ``python_kubernetes`` kernelspec (image ``elyra/kernel-py``: ipykernel < 7
from EG's virtualenv, launched by EG's ``launch_ipykernel.py``).  The ratios EG/ours are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import common as C
from . import eg as EG
from .bench_apiload import PASS_WAIT_S, recorded

SETTLE_S = 0.5


@dataclass
class System:
    name: str
    server: C.Server
    kernel_name: str
    env: C.JSON
    connection_info: Callable[[str], Awaitable[C.JSON]]
    #: Until what the system records once about newly connected clients is written, so that
    #: the steady-state window holds steady state only (ours: ``status.connections``, at its
    #: next culling pass; EG records nothing).
    settle_connected: Callable[[list[str]], Awaitable[Any]] | None = None


async def measure_system(system: System, cluster: Any, args: argparse.Namespace) -> C.JSON:
    gw = system.server
    counter = cluster.request_counter
    out: C.JSON = {}

    async def start() -> tuple[str, float]:
        kid, _, t = await C.start_via_http(gw.url, gw.token, system.kernel_name, system.env)
        return kid, t

    # Warm-up (first-time imports, page cache), not counted.
    kid, _ = await start()
    await C.delete_kernel(gw.url, gw.token, kid)

    times: list[float] = []
    per_start: list[Any] = []
    for _ in range(args.sequential):
        before = counter.snapshot()
        kid, t = await start()
        await asyncio.sleep(SETTLE_S)
        per_start.append(C.without_periodic(counter.since(before)))
        times.append(t)
        code = await C.delete_kernel(gw.url, gw.token, kid)
        if code != 204:
            raise RuntimeError(f"{system.name}: DELETE kernel -> {code}")
    total = sum(per_start, start=type(per_start[0])())
    out["start"] = C.summary(times)
    out["per_start"] = {k: v / args.sequential for k, v in C.counts_detail(total).items()}
    out["per_start_writes"] = sum(counter.writes(total).values()) / args.sequential
    out["per_start_polling_reads"] = sum(
        n for k, n in total.items() if k[0] in C.POLL_VERBS) / args.sequential

    # Concurrent starts.
    async def one() -> tuple[str | None, float, str]:
        t0 = time.perf_counter()
        try:
            kid, t = await start()
            return kid, t, ""
        except Exception as e:  # noqa: BLE001 - every failure is reported
            return None, time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:300]

    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(one() for _ in range(args.concurrent)))
    wall = time.perf_counter() - t0
    ok = [t for kid, t, _ in outcomes if kid]
    errors = [err for kid, _, err in outcomes if not kid]
    out["concurrent"] = {**C.summary(ok), "requested": args.concurrent, "succeeded": len(ok),
                         "wall_s": wall, "errors": errors[:3]}
    sem = asyncio.Semaphore(8)

    async def delete(kid: str) -> None:
        async with sem:
            await C.delete_kernel(gw.url, gw.token, kid)

    await asyncio.gather(*(delete(k) for k, _, _ in outcomes if k))
    await asyncio.sleep(2.0)

    # Round trip through the system, and direct to the same kernel.
    kid, _ = await start()
    info = await system.connection_info(kid)
    per_round = max(1, args.executes // 3)
    rt_sys: list[float] = []
    rt_direct: list[float] = []
    for _ in range(3):
        rt_direct += await asyncio.to_thread(C.direct_round_trips, info, per_round)
        rt_sys += await C.ws_round_trips(gw.url, gw.token, kid, per_round)
    out["roundtrip"] = C.summary(rt_sys)
    out["roundtrip_direct"] = C.summary(rt_direct)
    await C.delete_kernel(gw.url, gw.token, kid)

    # Steady state: K idle kernels with an open websocket each.
    kids: list[str] = []
    for _ in range(args.kernels):
        kid, _ = await start()
        kids.append(kid)
    sockets = [await C.KernelWS.open(gw.url, k, gw.token) for k in kids]
    try:
        for ws in sockets:
            await ws.kernel_info()
            ws.keep_reading()
        if system.settle_connected is not None:
            await system.settle_connected(kids)
        await asyncio.sleep(2.0)
        before = counter.snapshot()
        w0 = time.monotonic()
        await asyncio.sleep(args.seconds)
        window = time.monotonic() - w0
        idle = counter.since(before)
    finally:
        for ws in sockets:
            ws.close()
    out["steady"] = {"kernels": len(kids), "seconds": window, "requests": sum(idle.values()),
                     "by_request": C.counts_detail(idle),
                     "per_kernel_hour": sum(idle.values()) * 3600.0 / window / len(kids)}
    await asyncio.gather(*(delete(k) for k in kids))
    await asyncio.sleep(1.0)
    return out


async def measure(args: argparse.Namespace, workdir: Path) -> C.JSON:
    result: C.JSON = {"config": {"sequential": args.sequential, "concurrent": args.concurrent,
                                 "executes": args.executes, "idle_kernels": args.kernels,
                                 "idle_seconds": args.seconds}}
    try:
        eg_versions = await asyncio.to_thread(EG.ensure_installed)
    except EG.SetupError as e:
        result["eg_error"] = f"installing Enterprise Gateway: {e}"
        eg_versions = None
    result["eg_versions"] = eg_versions
    policy = EG.image_policy(eg_versions["jupyter-enterprise-gateway"]) if eg_versions else None
    async with C.local_cluster(workdir, nodes=4, cpu_per_node="32", memory_per_node="64Gi",
                               image_policy=policy) as cluster:
        async with C.gateway(cluster, workdir) as gw:
            ours = System("elastic-kernels", gw, "python-cpu", {},
                          lambda kid: C.pod_connection_info(cluster, kid),
                          lambda kids: recorded(cluster, kids, lambda n: n > 0, PASS_WAIT_S))
            result["ours"] = await measure_system(ours, cluster, args)
        if eg_versions is None:
            return result
        try:
            async with EG.enterprise_gateway(
                    cluster, workdir, eg_versions["jupyter-enterprise-gateway"]) as egs:
                theirs = System("enterprise-gateway", egs, EG.KERNEL_NAME,
                                {"KERNEL_USERNAME": "bench"},
                                lambda kid: EG.eg_connection_info(
                                    cluster, egs.extra["tmpdir"], kid))
                try:
                    result["eg"] = await measure_system(theirs, cluster, args)
                except Exception as e:  # noqa: BLE001 - keep ours, report EG's failure exactly
                    result["eg_error"] = (f"{type(e).__name__}: {e}"[:1500] +
                                          f"\n--- EG log tail ---\n{egs.log_tail(2500)}")
        except Exception as e:  # noqa: BLE001
            result["eg_error"] = f"starting Enterprise Gateway: {type(e).__name__}: {e}"[:3000]
    return result


def _ratios(result: C.JSON) -> C.JSON:
    o, e = result["ours"], result["eg"]
    return {
        "start_p50_eg_over_ours": C.ratio(e["start"]["p50"], o["start"]["p50"]),
        "concurrent_p50_eg_over_ours": C.ratio(e["concurrent"].get("p50", float("nan")),
                                               o["concurrent"].get("p50", float("nan"))),
        "roundtrip_p50_eg_over_ours": C.ratio(e["roundtrip"]["p50"], o["roundtrip"]["p50"]),
        "ours_over_direct_p50": C.ratio(o["roundtrip"]["p50"], o["roundtrip_direct"]["p50"]),
        "eg_over_direct_p50": C.ratio(e["roundtrip"]["p50"], e["roundtrip_direct"]["p50"]),
        "requests_per_start_eg_over_ours": C.ratio(sum(e["per_start"].values()),
                                                   sum(o["per_start"].values())),
        "kernel_hour_eg_over_ours": C.ratio(e["steady"]["per_kernel_hour"],
                                            o["steady"]["per_kernel_hour"]),
    }


def describe(name: str, r: C.JSON) -> list[str]:
    s, c = r["start"], r["concurrent"]
    return [
        f"{name}: start p50 {C.ms(s['p50'])}, p90 {C.ms(s['p90'])}, max {C.ms(s['max'])}; "
        f"{c['succeeded']}/{c['requested']} concurrent in {c['wall_s']:.1f} s (p50 "
        f"{C.ms(c.get('p50', float('nan')))})"
        + (f"; first error: {C.short_error(c['errors'][0])}" if c["errors"] else ""),
        f"  round trip p50 {C.ms(r['roundtrip']['p50'])}, p99 {C.ms(r['roundtrip']['p99'])}; "
        f"direct ZeroMQ to the same kernel p50 {C.ms(r['roundtrip_direct']['p50'])}",
        "  API per start: " + ", ".join(f"{k} {v:g}" for k, v in r["per_start"].items())
        + f" (writes {r['per_start_writes']:g}, polling reads {r['per_start_polling_reads']:g})",
        f"  steady: {r['steady']['requests']} requests in {r['steady']['seconds']:.0f} s with "
        f"{r['steady']['kernels']} idle kernels → {r['steady']['per_kernel_hour']:.1f} per "
        f"kernel-hour (" + (", ".join(f"{k} {v}" for k, v in r["steady"]["by_request"].items())
                             or "none") + ")",
    ]


def report(result: C.JSON) -> list[str]:
    lines = describe("elastic-kernels", result["ours"])
    if "eg" in result:
        version = result["eg_versions"]["jupyter-enterprise-gateway"]
        lines += describe(f"Enterprise Gateway {version}", result["eg"])
        r = result["ratios"] = _ratios(result)
        lines.append(
            f"ratios EG / elastic-kernels: start p50 {r['start_p50_eg_over_ours']:.2f}x, "
            f"concurrent start p50 {r['concurrent_p50_eg_over_ours']:.2f}x, round trip p50 "
            f"{r['roundtrip_p50_eg_over_ours']:.2f}x, API requests per start "
            f"{r['requests_per_start_eg_over_ours']:.2f}x, per kernel-hour "
            f"{r['kernel_hour_eg_over_ours']:.1f}x")
        lines.append(f"  websocket / direct ZeroMQ p50: elastic-kernels "
                     f"{r['ours_over_direct_p50']:.2f}x, EG {r['eg_over_direct_p50']:.2f}x")
    if "eg_error" in result:
        lines.append("Enterprise Gateway: NOT MEASURED (or only partly): "
                     + result["eg_error"].splitlines()[0])
    return lines


def main(argv: list[str] | None = None) -> C.JSON:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 sequential, 3 concurrent, 60 executes, 3 kernels idle 8 s")
    parser.add_argument("--sequential", type=int)
    parser.add_argument("--concurrent", type=int)
    parser.add_argument("--executes", type=int)
    parser.add_argument("--kernels", type=int)
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args(argv)
    args.sequential = args.sequential or (3 if args.quick else 20)
    args.concurrent = args.concurrent or (3 if args.quick else 50)
    args.executes = args.executes or (60 if args.quick else 500)
    args.kernels = args.kernels or (3 if args.quick else 10)
    args.seconds = args.seconds or (8.0 if args.quick else 45.0)
    result = C.run_in_workdir("eg", lambda workdir: measure(args, workdir))
    result["lines"] = report(result)
    C.save_results("eg", result)
    print("\n".join(result["lines"]))
    if "eg_error" in result:
        print(result["eg_error"])
    return result


if __name__ == "__main__":
    main()
