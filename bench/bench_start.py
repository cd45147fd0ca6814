"""Kernel start latency: ``POST /api/kernels`` to the first ``kernel_info_reply`` on the websocket.

Run ``.venv/bin/python -m bench.bench_start [--quick]``.

* sequential: N starts one after another through the gateway (kernelspec ``python-cpu``: an
  ipykernel in a pod of the local cluster), interleaved with N starts of the *floor*: a local
  ipykernel started directly with jupyter_client (``AsyncKernelManager`` + ``kernel_info``) in
  this process.  Interleaving makes drift on a shared machine hit both alike.
* concurrent: M starts at once through the gateway (all must succeed); the time to the last
  reply, and the per-start distribution.

Prints p50/p90/max and p50 − floor p50 (the goal is ≤ 0.15 s), plus the API requests each start
cost at the local API server (less the gateway's periodic Lease renewals, which are not caused
by a start and are counted in the steady state by ``bench_apiload``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from . import common as C


async def measure(args: argparse.Namespace, workdir: Path) -> C.JSON:
    result: C.JSON = {"config": {"sequential": args.sequential, "concurrent": args.concurrent,
                                 "kernelspec": args.kernelspec}}
    async with C.local_cluster(workdir, nodes=4, cpu_per_node="32", memory_per_node="64Gi"
                               ) as cluster, C.gateway(cluster, workdir) as gw:
        # One start to warm caches (imports in the gateway, page cache for ipykernel).
        kid, _, _ = await C.start_via_http(gw.url, gw.token, args.kernelspec)
        await C.delete_kernel(gw.url, gw.token, kid)
        km0 = (await C.local_kernel_start())[1]
        await C.shutdown_local(km0)

        floor: list[float] = []
        ours: list[float] = []
        posts: list[float] = []
        writes: list[int] = []
        reads: list[int] = []
        counter = cluster.request_counter
        for _ in range(args.sequential):
            t, km = await C.local_kernel_start()
            floor.append(t)
            await C.shutdown_local(km)
            before = counter.snapshot()
            kid, t_post, t = await C.start_via_http(gw.url, gw.token, args.kernelspec)
            used = C.without_periodic(counter.since(before))
            ours.append(t)
            posts.append(t_post)
            writes.append(sum(counter.writes(used).values()))
            reads.append(sum(n for k, n in used.items() if k[0] in C.POLL_VERBS))
            code = await C.delete_kernel(gw.url, gw.token, kid)
            if code != 204:
                raise RuntimeError(f"DELETE kernel -> {code}")
        result["floor"] = C.summary(floor)
        result["sequential"] = C.summary(ours)
        result["sequential_post"] = C.summary(posts)
        result["writes_per_start"] = {"max": max(writes), "min": min(writes)}
        result["get_list_per_start"] = {"max": max(reads), "min": min(reads)}
        result["p50_minus_floor_s"] = result["sequential"]["p50"] - result["floor"]["p50"]
        await asyncio.sleep(0.5)

        # Concurrent starts.
        async def one() -> tuple[str | None, float, str]:
            t0 = time.perf_counter()
            try:
                kid, _, t = await C.start_via_http(gw.url, gw.token, args.kernelspec)
                return kid, t, ""
            except Exception as e:  # noqa: BLE001 - every failure is reported
                return None, time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:300]

        t0 = time.perf_counter()
        outcomes = await asyncio.gather(*(one() for _ in range(args.concurrent)))
        wall = time.perf_counter() - t0
        ok = [t for kid, t, err in outcomes if kid]
        errors = [err for kid, _, err in outcomes if not kid]
        result["concurrent"] = {**C.summary(ok), "requested": args.concurrent,
                                "succeeded": len(ok), "wall_s": wall, "errors": errors[:5]}
        sem = asyncio.Semaphore(10)

        async def delete(kid: str) -> None:
            async with sem:
                await C.delete_kernel(gw.url, gw.token, kid)

        await asyncio.gather(*(delete(kid) for kid, _, _ in outcomes if kid))
    return result


def report(result: C.JSON) -> list[str]:
    f, s, c = result["floor"], result["sequential"], result["concurrent"]
    return [
        f"floor (local ipykernel via jupyter_client, n={f['n']}): p50 {C.ms(f['p50'])}, "
        f"p90 {C.ms(f['p90'])}, max {C.ms(f['max'])}",
        f"gateway sequential (n={s['n']}): p50 {C.ms(s['p50'])}, p90 {C.ms(s['p90'])}, "
        f"max {C.ms(s['max'])}",
        f"  p50 − floor p50 = {result['p50_minus_floor_s'] * 1000:.0f} ms (goal ≤ 150 ms); "
        f"p50 / floor p50 = {C.ratio(s['p50'], f['p50']):.2f}x",
        f"  API per start: writes {result['writes_per_start']['min']}–"
        f"{result['writes_per_start']['max']}, get/list {result['get_list_per_start']['min']}–"
        f"{result['get_list_per_start']['max']} (goal ≤ 4 writes, 0 polling reads)",
        f"gateway {c['requested']} concurrent: {c['succeeded']}/{c['requested']} succeeded in "
        f"{c['wall_s']:.1f} s; per start p50 {C.ms(c.get('p50', float('nan')))}, "
        f"p90 {C.ms(c.get('p90', float('nan')))}, max {C.ms(c.get('max', float('nan')))}"
        + (f"; errors: {c['errors']}" if c["errors"] else ""),
    ]


def main(argv: list[str] | None = None) -> C.JSON:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 sequential, 8 concurrent")
    parser.add_argument("--sequential", type=int)
    parser.add_argument("--concurrent", type=int)
    parser.add_argument("--kernelspec", default="python-cpu")
    args = parser.parse_args(argv)
    args.sequential = args.sequential or (5 if args.quick else 20)
    args.concurrent = args.concurrent or (8 if args.quick else 50)
    result = C.run_in_workdir("start", lambda workdir: measure(args, workdir))
    result["lines"] = report(result)
    C.save_results("start", result)
    print("\n".join(result["lines"]))
    return result


if __name__ == "__main__":
    main()
