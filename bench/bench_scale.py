"""Scale: one gateway's memory and CPU with hundreds of attached kernels; culling 500 idle kernels.

Run ``.venv/bin/python -m bench.bench_scale [--quick]``.

The kernels here are **a stand-in**: ``bench/tinykernel.py``, a tiny kernel that speaks the real
Jupyter protocol over ZeroMQ (signed messages; kernel_info/execute/interrupt/shutdown replies with
busy/idle status) at ~8 MB private memory instead of ipykernel's ~60 MB, so 1,000 of them fit on
this machine.  Each runs in its own pod of the local cluster, started by the real launcher from a
``JupyterKernelSpec`` (``bench-tiny``) whose argv is ``python bench/tinykernel.py -f
{connection_file}``; the gateway cannot tell it from ipykernel.

For each level (200, 500, 1,000 kernels) the gateway process's RSS, open files and threads are
read from ``/proc``, its CPU use over an idle window, the CPU seconds it spent per start, and the
round trip of ``pass`` on one kernel through it (to show it still answers promptly).

Culling: ``elastic-kernels cull`` (a subprocess, as the CronJob runs it) against 500
``JupyterKernel`` records whose kernelspec has a 1 s idle timeout, in a namespace of their own:
its wall time and every API request it made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any


from . import common as C

TINY = "bench-tiny"
CULL_NAMESPACE = "cull-bench"


def kernelspec(name: str, **changes: Any) -> C.JSON:
    """The shipped python-cpu JupyterKernelSpec, renamed and changed."""
    return C.shipped_kernelspec(name, "python-cpu", **changes)


def tiny_kernelspec() -> C.JSON:
    return kernelspec(
        TINY, displayName="Tiny protocol stand-in (benchmarks)",
        argv=["python", str(C.BENCH / "tinykernel.py"), "-f", "{connection_file}"],
        env={}, resources={"requests": {"cpu": "10m", "memory": "16Mi"},
                           "limits": {"memory": "256Mi"}},
        culling={"idleTimeout": "24h", "cullConnected": False, "cullBusy": False,
                 "maxAge": "7d"},
        metadata={})


def gateway_sample(pid: int) -> C.JSON:
    return {"rss_mib": C.proc_rss_mib(pid), "cpu_s": C.proc_cpu_seconds(pid),
            "fds": C.proc_fds(pid), "threads": C.proc_threads(pid)}


async def scale(args: argparse.Namespace, workdir: Path) -> C.JSON:
    levels = args.levels
    nodes = max(2, -(-max(levels) // 100) + 1)  # 110 pods per node, like a kubelet's default
    out: C.JSON = {"config": {"levels": levels, "nodes": nodes, "attach": args.attach,
                              "gateway_args": args.gateway_arg,
                              "kernel": "tinykernel (protocol stand-in for ipykernel)"},
                   "levels": []}
    async with C.local_cluster(workdir, nodes=nodes) as cluster:
        await C.create_kernelspec(cluster, tiny_kernelspec())
        settle = min(3.0, args.idle_window)
        async with C.gateway(cluster, workdir, extra_args=args.gateway_arg) as gw:
            await asyncio.sleep(settle)
            base = gateway_sample(gw.pid)
            out["empty"] = base
            kids: list[str] = []
            errors: list[str] = []
            sem = asyncio.Semaphore(args.parallel)

            async def start() -> None:
                async with sem:
                    if errors:  # past the first failure only the limit matters
                        return
                    try:
                        if args.attach == "websocket":
                            kid, _, _ = await C.start_via_http(gw.url, gw.token, TINY)
                        else:
                            response = await C.api(gw.url, "POST", "/api/kernels",
                                                   {"name": TINY}, token=gw.token, timeout=300)
                            if response.code != 201:
                                raise RuntimeError(f"POST /api/kernels -> {response.code}: "
                                                   f"{(response.body or b'')[:300]!r}")
                            kid = C.json_of(response)["id"]
                        kids.append(kid)
                    except Exception as e:  # noqa: BLE001 - limits are what we look for
                        errors.append(f"{type(e).__name__}: {e}"[:400])
                        out.setdefault("first_error_at", len(kids))
                        out.setdefault("first_error_fds", C.proc_fds(gw.pid))

            for level in levels:
                need = level - len(kids)
                before = gateway_sample(gw.pid)
                t0 = time.perf_counter()
                await asyncio.gather(*(start() for _ in range(need)))
                start_wall = time.perf_counter() - t0
                after_start = gateway_sample(gw.pid)
                await asyncio.sleep(settle)
                idle0 = gateway_sample(gw.pid)
                w0 = time.monotonic()
                await asyncio.sleep(args.idle_window)
                idle1 = gateway_sample(gw.pid)
                window = time.monotonic() - w0
                rt: list[float] = []
                rt_error = ""
                if kids:
                    try:
                        rt = await C.ws_round_trips(gw.url, gw.token, random.choice(kids), 50, 5)
                    except Exception as e:  # noqa: BLE001 - reported with the level
                        rt_error = f"{type(e).__name__}: {e}"[:300]
                status = C.json_of(await C.api(gw.url, "GET", "/api/elastic/status",
                                               token=gw.token))
                metrics = (await C.api(gw.url, "GET", "/metrics", token=gw.token)).body or b""
                recovered = sum(float(line.rsplit(" ", 1)[1]) for line in
                                metrics.decode(errors="replace").splitlines()
                                if line.startswith("elastic_kernels_zmq_recheck_deliveries_total"))
                entry = {
                    "target": level, "attached": len(kids), "gateway_reports": status.get(
                        "kernels"), "start_errors": len(errors),
                    "first_errors": errors[:3], "start_wall_s": start_wall,
                    "starts_per_s": need / start_wall if start_wall else 0,
                    "gateway_cpu_s_per_start": (after_start["cpu_s"] - before["cpu_s"]) /
                    max(1, need),
                    "rss_mib": idle1["rss_mib"], "fds": idle1["fds"],
                    "threads": idle1["threads"],
                    "rss_mib_per_kernel": (idle1["rss_mib"] - base["rss_mib"]) / max(1, len(kids)),
                    "idle_cpu_percent": 100.0 * (idle1["cpu_s"] - idle0["cpu_s"]) / window,
                    "roundtrip": C.summary(rt), "roundtrip_error": rt_error,
                    "lost_wakeups_recovered": recovered,
                }
                out["levels"].append(entry)
                print(f"  {len(kids)} kernels attached ({len(errors)} start errors): gateway "
                      f"RSS {entry['rss_mib']:.0f} MiB, idle CPU {entry['idle_cpu_percent']:.1f}"
                      f" %, fds {entry['fds']}, round trip p50 "
                      f"{C.ms(entry['roundtrip'].get('p50', float('nan')))}", flush=True)
                if args.hold:
                    # Time to attach a profiler (e.g. py-spy) to the loaded gateway.
                    print(f"  holding {args.hold:.0f} s: gateway pid {gw.pid}", flush=True)
                    await asyncio.sleep(args.hold)
                if errors:
                    break
            out["errors"] = errors[:10]
            # The gateway leaves its kernels running when it stops; the cluster's stop ends them.
    return out


# --- culling -----------------------------------------------------------------------------------

async def cull(args: argparse.Namespace, workdir: Path) -> C.JSON:
    from elastic_kernels.kube import resources as R
    from elastic_kernels.kube.client import NAMESPACES
    async with C.local_cluster(workdir / "cull") as cluster:
        client = await C.kube_client(cluster)
        try:
            await client.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": CULL_NAMESPACE}})
            spec = kernelspec("cull-me", culling={"idleTimeout": "1s", "cullConnected": True,
                                                  "cullBusy": False, "maxAge": "7d"})
            await client.create(R.KERNELSPECS, spec, CULL_NAMESPACE)
            old = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime(
                "%Y-%m-%dT%H:%M:%SZ")
            sem = asyncio.Semaphore(16)

            async def record() -> None:
                kernel_id = str(uuid.uuid4())
                body = {"apiVersion": R.API_VERSION, "kind": R.KERNEL_KIND,
                        "metadata": {"name": R.kernel_object_name(kernel_id),
                                     "labels": {R.LABEL_MANAGED_BY: R.MANAGED_BY,
                                                R.LABEL_COMPONENT: R.COMPONENT_KERNEL}},
                        "spec": {"kernelId": kernel_id, "user": "bench",
                                 "kernelSpec": "cull-me"}}
                async with sem:
                    created = await client.create(R.JUPYTERKERNELS, body, CULL_NAMESPACE)
                    await client.patch(R.JUPYTERKERNELS, body["metadata"]["name"], {
                        "status": {"phase": "Running", "gpus": 0, "lastActivity": old,
                                   "startedAt": created["metadata"]["creationTimestamp"]}},
                        CULL_NAMESPACE, subresource="status")

            await asyncio.gather(*(record() for _ in range(args.cull)))
        finally:
            await client.close()
        counter = cluster.request_counter
        before = counter.snapshot()
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "elastic_kernels", "cull", "--kubeconfig",
            str(cluster.kubeconfig_path), "-n", CULL_NAMESPACE, "--activity-slack", "0",
            "-o", "json", cwd=str(C.REPO), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 600)
        wall = time.perf_counter() - t0
        used = counter.since(before)
        try:
            results = json.loads(stdout or b"[]")
        except ValueError:
            results = []
        deleted = sum(1 for r in results if r.get("outcome") == "deleted")
        return {"records": args.cull, "exit_code": proc.returncode, "deleted": deleted,
                "wall_s": wall, "requests": C.counts_detail(used),
                "requests_total": sum(used.values()),
                "stderr_tail": stderr.decode(errors="replace")[-400:]}


async def measure(args: argparse.Namespace, workdir: Path) -> C.JSON:
    result = await scale(args, workdir)
    result["cull"] = await cull(args, workdir)
    return result


def report(result: C.JSON) -> list[str]:
    lines = [f"kernels: {result['config']['kernel']}; a start = "
             + ("POST + websocket kernel_info" if result["config"]["attach"] == "websocket"
                else "POST only") + f"; gateway empty: RSS "
             f"{result['empty']['rss_mib']:.0f} MiB, {result['empty']['fds']} fds"]
    if "first_error_at" in result:
        lines.append(f"LIMIT: the first start failed with {result['first_error_at']} kernels "
                     f"attached, gateway fds {result['first_error_fds']}: "
                     f"{(result.get('errors') or ['?'])[0]}")
    for e in result["levels"]:
        rt = e["roundtrip"]
        lines.append(
            f"{e['attached']:>5} kernels: RSS {e['rss_mib']:.0f} MiB "
            f"({e['rss_mib_per_kernel'] * 1024:.0f} KiB/kernel), idle CPU "
            f"{e['idle_cpu_percent']:.1f} %, fds {e['fds']}, threads {e['threads']}, "
            f"{e['gateway_cpu_s_per_start'] * 1000:.0f} ms gateway CPU per start, "
            f"{e['starts_per_s']:.1f} starts/s, round trip p50 {C.ms(rt.get('p50', float('nan')))}"
            f" p99 {C.ms(rt.get('p99', float('nan')))}; start errors {e['start_errors']}"
            + (f"; ZeroMQ messages delivered by the lost-wakeup guard so far: "
               f"{e['lost_wakeups_recovered']:.0f}" if "lost_wakeups_recovered" in e else "")
            + (f"; round trip failed: {e['roundtrip_error']}" if e["roundtrip_error"] else ""))
    c = result["cull"]
    lines.append(f"cull: {c['deleted']}/{c['records']} idle kernels deleted in {c['wall_s']:.1f} s"
                 f" (exit {c['exit_code']}), {c['requests_total']} API requests: "
                 + ", ".join(f"{k} {v}" for k, v in c["requests"].items()))
    return lines


def main(argv: list[str] | None = None) -> C.JSON:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 30 kernels; cull 30")
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--cull", type=int)
    parser.add_argument("--parallel", type=int, default=20, help="starts in flight at once")
    parser.add_argument("--idle-window", type=float)
    parser.add_argument("--attach", choices=("websocket", "post"), default="websocket",
                        help="a start is POST + websocket kernel_info (default, as a notebook "
                        "does), or the POST alone (the gateway's own readiness check)")
    parser.add_argument("--hold", type=float, default=0.0, metavar="SECONDS",
                        help="after measuring each level, keep the gateway loaded this long "
                        "(its pid is printed) to profile it")
    parser.add_argument("--name", default="scale", help="results file name")
    parser.add_argument("--gateway-arg", action="append", default=[], metavar="ARG",
                        help="extra gateway command-line argument (repeatable), e.g. "
                        "--gateway-arg=--ElasticGatewayApp.zmq_recheck_interval=0")
    args = parser.parse_args(argv)
    args.levels = args.levels or ([10, 30] if args.quick else [200, 500, 1000])
    args.cull = args.cull or (30 if args.quick else 500)
    args.idle_window = args.idle_window or (5.0 if args.quick else 15.0)
    result = C.run_in_workdir("scale", lambda workdir: measure(args, workdir))
    result["lines"] = report(result)
    C.save_results(args.name, result)
    print("\n".join(result["lines"]))
    return result


if __name__ == "__main__":
    main()
