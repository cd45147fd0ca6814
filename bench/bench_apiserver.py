"""Throughput and watch fan-out of the local cluster's API server.

Run ``.venv/bin/python -m bench.bench_apiserver`` (short, well under a minute) or with ``--long``
for the 100,000-request run.  The server runs in a child process so that it has a core of its own;
the load comes from raw keep-alive HTTP/1.1 connections on one asyncio loop, which costs the client
far less than any client library would.  Every request carries the bearer token of the server's
admin (made per run by this process and handed to the child in its environment), so the figures
include authentication, as every real request pays it.

It prints rates and ratios, not verdicts:
- sustained GET / LIST / CREATE rate per window, and last-window / first-window (≈1.0 means no
  slowdown as objects and events accumulate);
- watch fan-out: every event reaching each of 100 watchers, and the delivery latency with 100
  watchers relative to one watcher.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from typing import Any

HOST = "127.0.0.1"
TOKEN_ENV = "BENCH_APISERVER_TOKEN"
#: The admin token of this run's server (the child reads it from TOKEN_ENV).
_TOKEN = secrets.token_urlsafe(32)


# --- server process -----------------------------------------------------------------------------

def serve(window: int) -> None:
    """Child process: run a Store + APIServer and print the port."""
    from elastic_kernels.localcluster.apiserver import APIServer
    from elastic_kernels.localcluster.authn import Authenticator, StaticTokens, admin_user
    from elastic_kernels.localcluster.store import Store

    token = os.environ.pop(TOKEN_ENV)

    async def main() -> None:
        server = APIServer(Store(watch_window=window), HOST, 0, authenticator=Authenticator(
            [StaticTokens({token: admin_user()})]))
        await server.start()
        print(server.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop()

    asyncio.run(main())


# --- a minimal HTTP/1.1 client ------------------------------------------------------------------

class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        return self

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(data)}\r\n"
                "Content-Type: application/json\r\nAccept: application/json\r\n"
                f"Authorization: Bearer {_TOKEN}\r\n\r\n")
        self.writer.write(head.encode() + data)
        status_line = await self.reader.readline()
        code = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return code, payload

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass


class WatchStream:
    """A chunked watch response, decoded line by line."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path
        self.buffer = b""

    async def open(self) -> WatchStream:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\n"
                          f"Authorization: Bearer {_TOKEN}\r\n\r\n".encode())
        while (await self.reader.readline()) not in (b"\r\n", b""):
            pass
        return self

    async def next_line(self) -> bytes:
        while b"\n" not in self.buffer:
            size = int((await self.reader.readline()).strip() or b"0", 16)
            if size == 0:
                raise EOFError
            self.buffer += await self.reader.readexactly(size)
            await self.reader.readexactly(2)
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


# --- measurements -------------------------------------------------------------------------------

async def sustained(port: int, total: int, concurrency: int, windows: int) -> None:
    conns = [await Connection(port).open() for _ in range(concurrency)]
    setup = conns[0]
    for ns in ("bench", "bench-list"):
        await setup.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    for i in range(10):
        await setup.request("POST", "/api/v1/namespaces/bench-list/configmaps",
                            {"metadata": {"name": f"l{i}",
                                          "labels": {"set": "a" if i % 2 else "b"}},
                             "data": {"k": "v"}})
    await setup.request("POST", "/api/v1/namespaces/bench/configmaps",
                        {"metadata": {"name": "seed"}, "data": {"k": "v"}})
    counter = iter(range(total))
    created: list[str] = ["seed"]
    kinds = ("create", "get", "list")
    per_window = max(1, total // windows)
    window_rates: list[float] = []
    by_kind: dict[str, list[float]] = {k: [] for k in kinds}
    errors = 0
    done = 0
    window_start = time.perf_counter()
    window_done = 0

    async def worker(conn: Connection) -> None:
        nonlocal errors, done, window_start, window_done
        for i in counter:
            kind = kinds[i % 3]
            started = time.perf_counter()
            if kind == "create":
                name = f"c{i}"
                code, _ = await conn.request("POST", "/api/v1/namespaces/bench/configmaps",
                                             {"metadata": {"name": name, "labels": {"i": str(i)}},
                                              "data": {"value": "x" * 64}})
                created.append(name)
                ok = code == 201
            elif kind == "get":
                name = created[(i * 7919) % len(created)]
                code, _ = await conn.request("GET", f"/api/v1/namespaces/bench/configmaps/{name}")
                ok = code == 200
            else:
                code, _ = await conn.request(
                    "GET", "/api/v1/namespaces/bench-list/configmaps?labelSelector=set%3Da")
                ok = code == 200
            by_kind[kind].append(time.perf_counter() - started)
            errors += not ok
            done += 1
            window_done += 1
            if window_done >= per_window:
                now = time.perf_counter()
                window_rates.append(window_done / (now - window_start))
                window_start, window_done = now, 0

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    print(f"sustained mixed GET/LIST/CREATE: {done} requests, {concurrency} connections, "
          f"{elapsed:.1f} s, {done / elapsed:.0f} req/s overall, errors {errors}")
    print("  per-window req/s: " + " ".join(f"{r:.0f}" for r in window_rates))
    if len(window_rates) >= 2:
        print(f"  last/first window rate ratio: {window_rates[-1] / window_rates[0]:.2f}")
    for kind, latencies in by_kind.items():
        if latencies:
            print(f"  {kind:6s} median {statistics.median(latencies) * 1000:.2f} ms  "
                  f"p99 {sorted(latencies)[int(len(latencies) * 0.99)] * 1000:.2f} ms")


async def fanout(port: int, watchers: int, events: int) -> dict[str, float]:
    conn = await Connection(port).open()
    ns = f"fan{watchers}"
    await conn.request("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    code, body = await conn.request("GET", f"/api/v1/namespaces/{ns}/configmaps")
    rv = json.loads(body)["metadata"]["resourceVersion"]
    streams = [await WatchStream(port, f"/api/v1/namespaces/{ns}/configmaps?watch=1"
                                       f"&resourceVersion={rv}&timeoutSeconds=300").open()
               for _ in range(watchers)]
    latencies: list[float] = []
    received = [0] * watchers

    async def read(index: int, stream: WatchStream) -> None:
        for _ in range(events):
            line = await stream.next_line()
            sent = float(json.loads(line)["object"]["metadata"]["annotations"]["sent"])
            latencies.append(time.perf_counter() - sent)
            received[index] += 1

    readers = [asyncio.create_task(read(i, s)) for i, s in enumerate(streams)]
    await asyncio.sleep(0.2)  # let every watch register
    started = time.perf_counter()
    for i in range(events):
        await conn.request("POST", f"/api/v1/namespaces/{ns}/configmaps", {
            "metadata": {"name": f"e{i}", "annotations": {"sent": repr(time.perf_counter())}}})
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    elapsed = time.perf_counter() - started
    for stream in streams:
        await stream.close()
    await conn.close()
    delivered = sum(received)
    result = {"delivered": delivered, "expected": watchers * events,
              "median": statistics.median(latencies),
              "p95": sorted(latencies)[int(len(latencies) * 0.95)], "elapsed": elapsed}
    print(f"watch fan-out: {watchers} watchers x {events} events: delivered {delivered}/"
          f"{watchers * events} in {elapsed:.2f} s; latency median "
          f"{result['median'] * 1000:.2f} ms, p95 {result['p95'] * 1000:.2f} ms")
    return result


async def run(args: argparse.Namespace, port: int) -> None:
    await sustained(port, args.requests, args.concurrency, args.windows)
    single = await fanout(port, 1, args.events)
    many = await fanout(port, args.watchers, args.events)
    print(f"  fan-out latency ratio ({args.watchers} watchers / 1 watcher): median "
          f"{many['median'] / single['median']:.1f}x, p95 {many['p95'] / single['p95']:.1f}x; "
          f"all delivered: {many['delivered'] == many['expected']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="100,000 requests instead of 6,000")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--watch-window", type=int, default=5000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.watch_window)
        return
    if args.requests is None:
        args.requests = 100_000 if args.long else 6000
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_apiserver", "--serve",
                             "--watch-window", str(args.watch_window)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, TOKEN_ENV: _TOKEN},
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        asyncio.run(run(args, port))
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
