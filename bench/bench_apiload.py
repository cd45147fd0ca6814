"""Kubernetes API load: requests by verb at the local API server, per start and per kernel-hour.

Run ``.venv/bin/python -m bench.bench_apiload [--quick]``.

1. Per start: every request the API server received between ``POST /api/kernels`` and the first
   ``kernel_info_reply`` (plus a short settle, so a write made just after the reply counts too),
   for N sequential starts, less the gateway's Lease renewals (every 10 s whatever it does;
   they are in the steady state below).  Goal: ≤ 4 writes and 0 polling reads (get/list) per start.
2. Steady state: K kernels left idle, (i) with one websocket each, as open notebooks keep, for
   S seconds, then (ii) with none, as after closing the tabs; every request in each window,
   extrapolated to one kernel-hour (requests × 3600 / S / K), also without the gateway's Lease
   renewals (one per 10 s per gateway, however many kernels it has).
   Goal: ≤ 60 requests per kernel-hour.

Periodic traffic that a short window can miss is listed with its period so the reader can add
it: watches the gateway re-opens every ``watch_timeout_seconds`` (300 s), gateway Lease
renewals, activity mirroring (at most once a minute per kernel with activity — idle kernels
have none).  The watches open in the window are counted as they are re-opened.

What the cull cron must see of a kernel is written to its JupyterKernel on change only, so it
is a cost per connection, not per hour: ``status.connections`` when a client connects to a kernel
shown unconnected and when the last one leaves (at the gateway's next culling pass, within a
minute; a connection to a kernel that could be culled before then at once).  Each window starts
once the records show those transitions (read from the
cluster's store, not through the API), and their writes are reported per connect and per
disconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import common as C

SETTLE_S = 0.5
#: The gateway's culling pass (CullingDefaults.interval) records (dis)connections: one pass plus
#: margin. Short runs wait at most three of their windows, and say so when that was not enough.
PASS_WAIT_S = 75.0


async def recorded(cluster: Any, kids: list[str], connected: Callable[[int], bool],
                   timeout: float) -> int:
    """Wait (bounded) until every kernel's record shows its connections as ``connected`` says;
    returns how many do. Reads the local cluster's store: no API requests."""
    from elastic_kernels.kube import resources as R
    names = {R.kernel_object_name(k) for k in kids}
    deadline = time.monotonic() + timeout
    while True:
        items, _ = cluster.store.list((R.GROUP, R.KERNEL_PLURAL), "default")
        done = sum(1 for o in items if o["metadata"]["name"] in names
                   and connected(int((o.get("status") or {}).get("connections") or 0)))
        if done == len(names) or time.monotonic() >= deadline:
            return done
        await asyncio.sleep(0.2)


async def measure(args: argparse.Namespace, workdir: Path) -> C.JSON:
    result: C.JSON = {"config": {"starts": args.starts, "idle_kernels": args.kernels,
                                 "idle_seconds": args.seconds, "kernelspec": args.kernelspec}}
    async with C.local_cluster(workdir, nodes=4, cpu_per_node="32", memory_per_node="64Gi"
                               ) as cluster:
        counter = cluster.request_counter
        boot = counter.snapshot()
        async with C.gateway(cluster, workdir) as gw:
            await asyncio.sleep(min(1.0, args.seconds))
            result["gateway_startup"] = C.counts_detail(counter.since(boot))
            per_start = []
            kids = []
            for _ in range(args.starts):
                before = counter.snapshot()
                kid, _, _ = await C.start_via_http(gw.url, gw.token, args.kernelspec)
                await asyncio.sleep(SETTLE_S)
                per_start.append(C.without_periodic(counter.since(before)))
                kids.append(kid)
            total = sum(per_start, start=type(per_start[0])())
            result["per_start"] = {k: v / args.starts
                                   for k, v in C.counts_detail(total).items()}
            result["per_start_by_verb"] = {k: v / args.starts
                                           for k, v in C.counts_by_verb(total).items()}
            result["per_start_writes"] = sum(counter.writes(total).values()) / args.starts
            result["per_start_polling_reads"] = sum(
                n for k, n in total.items() if k[0] in C.POLL_VERBS) / args.starts

            # Steady state: K idle kernels, each with an open websocket.
            sem = asyncio.Semaphore(10)

            async def start() -> str:
                async with sem:
                    kid, _, _ = await C.start_via_http(gw.url, gw.token, args.kernelspec)
                    return kid

            kids += await asyncio.gather(*(start() for _ in range(args.kernels - len(kids))))
            async def window(seconds: float) -> C.JSON:
                before = counter.snapshot()
                t0 = time.monotonic()
                await asyncio.sleep(seconds)
                elapsed = time.monotonic() - t0
                used = counter.since(before)
                n = sum(used.values())
                periodic = n - sum(C.without_periodic(used).values())
                return {"kernels": len(kids), "seconds": elapsed, "requests": n,
                        "by_request": C.counts_detail(used),
                        "per_kernel_hour": n * 3600.0 / elapsed / len(kids),
                        "per_kernel_hour_without_lease":
                            (n - periodic) * 3600.0 / elapsed / len(kids)}

            def transition(before: Any, shown: int, t0: float) -> C.JSON:
                used = C.without_periodic(counter.since(before))
                return {"kernels": len(kids), "recorded": shown,
                        "seconds": time.monotonic() - t0,
                        "per_kernel": {k: v / len(kids)
                                       for k, v in C.counts_detail(used).items()}}

            # (i) every kernel has a client connected, as open notebooks do; the window opens
            # once the gateway recorded them (its next culling pass), bounded.
            before, t0 = counter.snapshot(), time.monotonic()
            sockets = [await C.KernelWS.open(gw.url, kid, gw.token) for kid in kids]
            try:
                for ws in sockets:
                    await ws.kernel_info()
                    ws.keep_reading()
                shown = await recorded(cluster, kids, lambda n: n > 0,
                                       min(PASS_WAIT_S, 3 * args.seconds))
                result["connect"] = transition(before, shown, t0)
                await asyncio.sleep(min(2.0, args.seconds))  # let the starts' writes finish
                result["steady"] = await window(args.seconds)
            finally:
                for ws in sockets:
                    ws.close()
            # (ii) no client connected (closed notebook tabs): once the gateway's next culling
            # pass has recorded it (bounded, so short runs stay short), nothing to say.
            before, t0 = counter.snapshot(), time.monotonic()
            shown = await recorded(cluster, kids, lambda n: n == 0,
                                   min(PASS_WAIT_S, 3 * args.disconnected_seconds))
            result["disconnect"] = transition(before, shown, t0)
            await asyncio.sleep(min(2.0, args.seconds))
            result["steady_disconnected"] = await window(args.disconnected_seconds)
            watches = sum(n for k, n in result["gateway_startup"].items()
                          if k.startswith("watch "))
            result["periodic_not_in_window"] = {
                "watch_reopen_period_s": 300,
                "gateway_watches": watches,
                "watch_reopens_per_hour_per_gateway": watches * 3600 / 300,
                "per_kernel_hour_at_this_size": watches * 12 / len(kids),
            }
            sem2 = asyncio.Semaphore(10)

            async def delete(kid: str) -> None:
                async with sem2:
                    await C.delete_kernel(gw.url, gw.token, kid)

            before = counter.snapshot()
            await asyncio.gather(*(delete(k) for k in kids))
            await asyncio.sleep(SETTLE_S)
            shutdowns = C.without_periodic(counter.since(before))
            result["per_shutdown"] = {k: v / len(kids)
                                      for k, v in C.counts_detail(shutdowns).items()}
    return result


def report(result: C.JSON) -> list[str]:
    s = result["steady"]
    p = result["periodic_not_in_window"]
    per_start = ", ".join(f"{k} {v:g}" for k, v in result["per_start"].items())
    steady = ", ".join(f"{k} {v}" for k, v in s["by_request"].items()) or "none"
    d = result["steady_disconnected"]
    steady_d = ", ".join(f"{k} {v}" for k, v in d["by_request"].items()) or "none"
    shutdown = ", ".join(f"{k} {v:g}" for k, v in result["per_shutdown"].items())

    def moves(key: str, what: str) -> str:
        m = result.get(key)
        if m is None:
            return f"{what}: not measured"
        costs = ", ".join(f"{k} {v:g}" for k, v in m["per_kernel"].items()) or "none"
        shown = "" if m["recorded"] == m["kernels"] else \
            f" (only {m['recorded']} of {m['kernels']} recorded when the window opened)"
        return f"{what} (mean of {m['kernels']}, recorded within {m['seconds']:.0f} s): " \
            f"{costs}{shown}"

    return [
        f"per start (mean of {result['config']['starts']}): {per_start}",
        f"  writes {result['per_start_writes']:g}, polling reads (get/list) "
        f"{result['per_start_polling_reads']:g} (goal ≤ 4 writes, 0 polling reads)",
        f"per shutdown (mean of {s['kernels']}): {shutdown}",
        moves("connect", "per client connecting to an unconnected kernel"),
        moves("disconnect", "per kernel whose last client left"),
        f"steady state, a client connected to each: {s['kernels']} idle kernels for "
        f"{s['seconds']:.0f} s: {s['requests']} requests ({steady}) → "
        f"{s['per_kernel_hour']:.2f} per kernel-hour (goal ≤ 60); without the gateway's Lease "
        f"{s['per_kernel_hour_without_lease']:.2f}",
        f"steady state, no client connected: {d['kernels']} idle kernels for "
        f"{d['seconds']:.0f} s: {d['requests']} requests ({steady_d}) → "
        f"{d['per_kernel_hour']:.2f} per kernel-hour; without the gateway's Lease "
        f"{d['per_kernel_hour_without_lease']:.2f}",
        f"  periodic traffic longer than the window: the gateway's {p['gateway_watches']} "
        f"watches re-open every {p['watch_reopen_period_s']} s = "
        f"{p['watch_reopens_per_hour_per_gateway']:g} requests/hour per gateway "
        f"(= {p['per_kernel_hour_at_this_size']:.2f} per kernel-hour at {s['kernels']} kernels)",
    ]


def main(argv: list[str] | None = None) -> C.JSON:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 starts, 6 kernels idle 8 s + 8 s")
    parser.add_argument("--starts", type=int)
    parser.add_argument("--kernels", type=int)
    parser.add_argument("--seconds", type=float,
                        help="window with clients connected (a multiple of 60 s avoids "
                        "sampling bias against the once-a-minute activity mirroring)")
    parser.add_argument("--disconnected-seconds", type=float)
    parser.add_argument("--kernelspec", default="python-cpu")
    args = parser.parse_args(argv)
    args.starts = args.starts or (5 if args.quick else 20)
    args.kernels = max(args.kernels or (6 if args.quick else 50), args.starts)
    args.seconds = args.seconds or (8.0 if args.quick else 120.0)
    args.disconnected_seconds = args.disconnected_seconds or (8.0 if args.quick else 60.0)
    result = C.run_in_workdir("apiload", lambda workdir: measure(args, workdir))
    result["lines"] = report(result)
    C.save_results("apiload", result)
    print("\n".join(result["lines"]))
    return result


if __name__ == "__main__":
    main()
