"""Warm pools (issue 15): a start that claims a warm-pool pod vs a cold start, in the same run.

Run ``.venv/bin/python -m bench.bench_warmpool [--quick]``.

Two kernelspecs identical but for ``warmPool`` (``bench-cold``: none; ``bench-warm``:
``size: 2``), both derived from the shipped ``python-cpu``. Starts alternate between them
(so drift on a shared machine hits both alike), each ``POST /api/kernels`` until the first
``kernel_info_reply`` on the websocket, and the kernel is deleted after each. Before each warm
start the benchmark waits, untimed, until the pool is full again: it measures a claim, not the
refill. Prints p50/p90 of each and warm p50 / cold p50 (the goal is ≤ 0.3x).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from . import common as C


async def _pool_ready(cluster: object, spec: str, size: int, timeout: float = 120.0) -> None:
    from elastic_kernels.kube import resources as R
    from elastic_kernels.kube.client import PODS
    from elastic_kernels.provisioner import pool

    client = await C.kube_client(cluster)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            pods = (await client.list(PODS, label_selector=R.POOL_POD_SELECTOR))["items"]
            ready = [p for p in pods if pool.pool_spec_name(p) == spec and pool.is_ready(p)]
            if len(ready) >= size:
                return
            if loop.time() > deadline:
                raise RuntimeError(f"the warm pool of {spec} did not fill ({len(ready)}/{size})")
            await asyncio.sleep(0.1)  # untimed wait for a background refill
    finally:
        await client.close()


async def measure(args: argparse.Namespace, workdir: Path) -> C.JSON:
    result: C.JSON = {"config": {"starts": args.starts, "pool_size": args.pool_size,
                                 "base": "python-cpu"}}
    async with C.local_cluster(workdir, nodes=2, cpu_per_node="32", memory_per_node="64Gi"
                               ) as cluster, C.gateway(cluster, workdir) as gw:
        await C.create_kernelspec(cluster, C.shipped_kernelspec("bench-cold"))
        await C.create_kernelspec(cluster, C.shipped_kernelspec(
            "bench-warm", warmPool={"size": args.pool_size}))
        # One start of each to warm caches (gateway imports, the page cache for ipykernel).
        await _pool_ready(cluster, "bench-warm", args.pool_size)
        for spec in ("bench-cold", "bench-warm"):
            kid, _, _ = await C.start_via_http(gw.url, gw.token, spec)
            await C.delete_kernel(gw.url, gw.token, kid)

        cold: list[float] = []
        warm: list[float] = []
        counter = cluster.request_counter
        writes: dict[str, list[int]] = {"cold": [], "warm": []}
        for _ in range(args.starts):
            for spec, into, kind in (("bench-cold", cold, "cold"), ("bench-warm", warm, "warm")):
                if kind == "warm":
                    await _pool_ready(cluster, spec, args.pool_size)
                before = counter.snapshot()
                kid, _, t = await C.start_via_http(gw.url, gw.token, spec,
                                                   env={"KERNEL_EXPERIMENT_NAME": "bench"})
                used = C.without_periodic(counter.since(before))
                into.append(t)
                writes[kind].append(sum(counter.writes(used).values()))
                code = await C.delete_kernel(gw.url, gw.token, kid)
                if code != 204:
                    raise RuntimeError(f"DELETE kernel -> {code}")
        result["cold"] = C.summary(cold)
        result["warm"] = C.summary(warm)
        result["ratio_p50"] = C.ratio(result["warm"]["p50"], result["cold"]["p50"])
        result["writes"] = {k: {"min": min(v), "max": max(v)} for k, v in writes.items()}
    return result


def report(result: C.JSON) -> list[str]:
    c, w = result["cold"], result["warm"]
    return [
        f"cold start (n={c['n']}): p50 {C.ms(c['p50'])}, p90 {C.ms(c['p90'])}, "
        f"max {C.ms(c['max'])}",
        f"warm-pool start (n={w['n']}, pool of {result['config']['pool_size']}): "
        f"p50 {C.ms(w['p50'])}, p90 {C.ms(w['p90'])}, max {C.ms(w['max'])}",
        f"  warm p50 / cold p50 = {result['ratio_p50']:.2f}x (goal ≤ 0.3x)",
        f"  API writes in a start's window (warm: with the background refill it sets off): "
        f"cold {result['writes']['cold']['min']}–{result['writes']['cold']['max']}, "
        f"warm {result['writes']['warm']['min']}–{result['writes']['warm']['max']}",
    ]


def main(argv: list[str] | None = None) -> C.JSON:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 starts of each")
    parser.add_argument("--starts", type=int)
    parser.add_argument("--pool-size", type=int, default=2)
    args = parser.parse_args(argv)
    args.starts = args.starts or (5 if args.quick else 15)
    result = C.run_in_workdir("warmpool", lambda workdir: measure(args, workdir))
    result["lines"] = report(result)
    C.save_results("warmpool", result)
    print("\n".join(result["lines"]))
    return result


if __name__ == "__main__":
    main()
