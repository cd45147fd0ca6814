"""Clients that never read: the gateway's memory while kernels write past them, and after.

Run ``.venv/bin/python -m bench.bench_slowreader [--quick]``.

N kernels (``python-cpu``, ipykernels in pods of the local cluster), each with one websocket
client (half of them JSON, as a notebook server speaks, half ``v1.kernel.websocket.jupyter.org``,
as JupyterLab 4) that sends one ``execute_request`` for a writer and then reads nothing.
The gateway runs as its own process; its RSS comes from ``/proc/<pid>/status``:

* idle: with the N kernels started and their clients connected, before the writers start;
* peak: sampled every 0.1 s until every kernel wrote B bytes past its client (then its cell
  stays busy, writing nothing more);
* after the clients left (the kernels' cells still running, done writing);
* after the kernels stopped: interrupted, nothing flowing (12 s later: the gateway looks at its
  free heap every 10 s after a flood and gives it back, see ``gateway/transport/writelimit.py``).

Each is reported as a ratio to the idle RSS measured in the same run. The writer flushes every
64 KiB (``print(..., flush=True)`` in a loop), so the messages are 64 KiB and the figure is what
the gateway *queues*. Two comparisons, both guarded (a phase stops once the gateway grew by
``--guard`` MiB, so the machine never runs short):

* unbounded: the same with ``--ElasticChannelsConnection.max_pending_bytes=0``, i.e. the
  gateway before the bound (every message queued for a client that never reads);
* batched: one client and the writer of the security report, without the flush: ipykernel then
  sends 0.2 s of output as one message of hundreds of MB, which passes through the gateway whole
  (once per ZeroMQ subscriber) before it is dropped; the peak measures that message.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from . import common as C

MIB = 1024 * 1024

#: The cell writes ``limit`` bytes, then stays busy without writing: the client never reads
#: either way. (An endless writer would keep the machine busy for nothing once the figures are
#: in, and under load ipykernel's own buffers grow when its I/O thread falls behind.)
FLUSHED = """\
import sys, time
n = 0
while n * 65536 < {limit}:
    sys.stdout.write('y' * 65536)
    sys.stdout.flush()
    n += 1
    if n % 256 == 0:
        with open({progress!r}, 'w') as f:
            f.write(str(n * 65536))
with open({progress!r}, 'w') as f:
    f.write(str(n * 65536))
while True:
    time.sleep(1)
"""
BATCHED = FLUSHED.replace("    sys.stdout.flush()\n", "")


def written(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


async def settle(pid: int, seconds: float) -> float:
    """RSS after ``seconds``: the lowest of five samples (allocator noise)."""
    samples = []
    for _ in range(5):
        await asyncio.sleep(seconds / 5)
        samples.append(C.proc_rss_mib(pid))
    return min(samples)


async def connections(gw: C.Server, kernel_id: str) -> int:
    response = await C.api(gw.url, "GET", f"/api/kernels/{kernel_id}", token=gw.token)
    return int(C.json_of(response).get("connections", 0)) if response.code == 200 else 0


async def kernelspec_listed(gw: C.Server, name: str, timeout: float = 60) -> None:
    """Until the gateway's kernelspec watch has seen ``name`` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        response = await C.api(gw.url, "GET", "/api/kernelspecs", token=gw.token)
        if response.code == 200 and name in C.json_of(response).get("kernelspecs", {}):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"kernelspec {name} not listed after {timeout} s")
        await asyncio.sleep(0.2)


async def phase(cluster: object, workdir: Path, name: str, clients: int, code: str,
                flood_bytes: int, guard_mib: float, extra_args: list[str]) -> C.JSON:
    """One gateway, ``clients`` kernels with a client each that runs ``code`` and never reads."""
    out: C.JSON = {"clients": clients, "flood_bytes_per_kernel": flood_bytes,
                   "gateway_args": extra_args}
    async with C.gateway(cluster, workdir, extra_args=extra_args, name=f"gateway-{name}") as gw:
        await kernelspec_listed(gw, "python-cpu")
        kids = [(await C.start_via_http(gw.url, gw.token, "python-cpu"))[0]
                for _ in range(clients)]
        sockets = [await C.KernelWS.open(gw.url, kid, gw.token,
                                         protocol="v1" if i % 2 else "json")
                   for i, kid in enumerate(kids)]
        try:
            for ws in sockets:
                await ws.execute("import sys")
            out["idle_mib"] = idle = await settle(gw.pid, 2.0)
            progress = [workdir / f"{name}-written-{i}" for i in range(clients)]
            for ws, path in zip(sockets, progress):
                ws.send("execute_request", {"code": code.format(progress=str(path),
                                                                limit=flood_bytes),
                                            "silent": False, "store_history": False})
            # From here on, nobody reads.
            t0 = time.monotonic()
            peak = idle
            guarded = False
            while min(written(p) for p in progress) < flood_bytes:
                await asyncio.sleep(0.1)
                peak = max(peak, C.proc_rss_mib(gw.pid))
                if peak - idle > guard_mib:
                    guarded = True
                    break
                if time.monotonic() - t0 > 300:
                    raise RuntimeError(f"{name}: the kernels wrote too little in 300 s")
            out["flood_seconds"] = time.monotonic() - t0
            out["written_bytes"] = sum(written(p) for p in progress)
            out["peak_mib"] = peak
            out["stopped_by_guard"] = guarded
        finally:
            for ws in sockets:
                ws.close()
                stream = getattr(ws.ws.protocol, "stream", None)
                if stream is not None:
                    stream.close()
        deadline = time.monotonic() + 60
        while any([await connections(gw, kid) for kid in kids]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the gateway still counts connections after 60 s")
            await asyncio.sleep(0.2)
        out["after_close_mib"] = await settle(gw.pid, 3.0)
        for kid in kids:
            await C.api(gw.url, "POST", f"/api/kernels/{kid}/interrupt", token=gw.token)
        # Long enough for the gateway to look at its free heap again (writelimit's releaser).
        out["after_stop_mib"] = await settle(gw.pid, 12.0)
        for kid in kids:
            await C.delete_kernel(gw.url, gw.token, kid)
    for key in ("peak", "after_close", "after_stop"):
        out[f"{key}_ratio"] = C.ratio(out[f"{key}_mib"], out["idle_mib"])
    return out


async def measure(args: argparse.Namespace, workdir: Path) -> C.JSON:
    result: C.JSON = {"config": {"clients": args.clients, "flood_mib": args.flood_mib,
                                 "guard_mib": args.guard_mib}}
    flood = args.flood_mib * MIB
    async with C.local_cluster(workdir, nodes=4, cpu_per_node="32",
                               memory_per_node="64Gi") as cluster:
        result["bounded"] = await phase(cluster, workdir, "bounded", args.clients, FLUSHED,
                                        flood, args.guard_mib, [])
        result["unbounded"] = await phase(
            cluster, workdir, "unbounded", args.clients, FLUSHED, flood, args.guard_mib,
            ["--ElasticChannelsConnection.max_pending_bytes=0"])
        result["batched"] = await phase(cluster, workdir, "batched", 1, BATCHED, 2 * flood,
                                        args.guard_mib, [])
    return result


def _line(label: str, p: C.JSON) -> str:
    total = p["written_bytes"] / MIB
    stop = " (stopped by the guard)" if p["stopped_by_guard"] else ""
    return (f"{label}: {p['clients']} client(s), {total:,.0f} MiB written past them in "
            f"{p['flood_seconds']:.1f} s{stop}: RSS idle {p['idle_mib']:.0f} MiB, peak "
            f"{p['peak_mib']:.0f} MiB ({p['peak_ratio']:.2f}x), after the clients left "
            f"{p['after_close_mib']:.0f} MiB ({p['after_close_ratio']:.2f}x), after the kernels "
            f"stopped {p['after_stop_mib']:.0f} MiB ({p['after_stop_ratio']:.2f}x)")


def report(result: C.JSON) -> list[str]:
    b = result["bounded"]
    per_client = (b["peak_mib"] - b["idle_mib"]) / b["clients"]
    return [
        _line("bounded (max_pending_bytes 16 MiB)", b),
        f"  growth at the peak: {per_client:.0f} MiB per client that never reads (the bound: "
        "2 x 16 MiB queued, plus ZeroMQ's receive queues while the gateway catches up)",
        _line("unbounded (max_pending_bytes=0, as before the bound)", result["unbounded"]),
        _line("batched writer (no flush: one message per 0.2 s)", result["batched"]),
    ]


def main(argv: list[str] | None = None) -> C.JSON:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 clients, 512 MiB each")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--flood-mib", type=int, help="MiB each kernel writes past its client")
    parser.add_argument("--guard-mib", type=float, default=1536,
                        help="stop a phase once the gateway grew by this much")
    args = parser.parse_args(argv)
    args.clients = args.clients or (2 if args.quick else 4)
    args.flood_mib = args.flood_mib or (512 if args.quick else 1024)
    result = C.run_in_workdir("slowreader", lambda workdir: measure(args, workdir))
    result["lines"] = report(result)
    C.save_results("slowreader", result)
    print("\n".join(result["lines"]))
    return result


if __name__ == "__main__":
    main()
