"""Execute round trip and output streaming: gateway and notebook server against direct ZeroMQ.

Run ``.venv/bin/python -m bench.bench_roundtrip [--quick]``.

One kernel (``python-cpu``, an ipykernel in a pod of the local cluster) is reached three ways,
in the same run, alternating in rounds so that drift hits all alike:

(a) the gateway's websocket (``/api/kernels/{id}/channels``) with the JSON protocol, which is
    what a notebook server or JupyterLab with ``--gateway-url`` speaks to the gateway
    (jupyter_server's gateway client enforces it); also, as (a'), with
    ``v1.kernel.websocket.jupyter.org``, which JupyterLab 4 speaks to a server that holds kernels
    itself;
(b) a notebook server (``python -m jupyter_server --gateway-url=...`` with the
    ``elastic_kernels.notebook`` extension) in front of the gateway;
(c) direct ZeroMQ to the same kernel, with the connection info a re-attaching replica builds
    (the JupyterKernel's pod IP and the key from its Secret) and a blocking pyzmq client.

Round trip: ``execute_request`` of ``pass`` until both the reply and the idle status arrived.
Streaming: a cell printing N lines, each flushed; stream messages and lines per second
received, and lines not delivered (jupyter_server's IOPub rate limit drops output above
1,000 messages/s averaged over 3 s, and says so in a stream message).
Goals: (a) ≤ 1.3× (c), (b) ≤ 2× (c).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from . import common as C


async def measure(args: argparse.Namespace, workdir: Path) -> C.JSON:
    result: C.JSON = {"config": {"executes": args.executes, "rounds": args.rounds,
                                 "lines": args.lines, "kernelspec": args.kernelspec}}
    async with C.local_cluster(workdir) as cluster, C.gateway(cluster, workdir) as gw, \
            C.notebook_server(gw, workdir) as nb:
        # Started through the notebook server (it only relays kernels it started); the gateway
        # holds the same kernel, and the direct client reaches its pod.
        kid, _, _ = await C.start_via_http(nb.url, nb.token, args.kernelspec)
        info = await C.pod_connection_info(cluster, kid)
        per_round = max(1, args.executes // args.rounds)
        times: dict[str, list[float]] = {"gateway": [], "gateway_v1": [], "notebook": [],
                                         "direct": []}
        for _ in range(args.rounds):
            times["direct"] += await asyncio.to_thread(C.direct_round_trips, info, per_round)
            times["gateway"] += await C.ws_round_trips(gw.url, gw.token, kid, per_round)
            times["gateway_v1"] += await C.ws_round_trips(gw.url, gw.token, kid, per_round,
                                                          protocol="v1")
            times["notebook"] += await C.ws_round_trips(nb.url, nb.token, kid, per_round)
        for name, values in times.items():
            result[name] = C.summary(values)
        d = result["direct"]
        result["ratios"] = {
            "gateway_p50": C.ratio(result["gateway"]["p50"], d["p50"]),
            "gateway_p99": C.ratio(result["gateway"]["p99"], d["p99"]),
            "gateway_v1_p50": C.ratio(result["gateway_v1"]["p50"], d["p50"]),
            "gateway_v1_p99": C.ratio(result["gateway_v1"]["p99"], d["p99"]),
            "notebook_p50": C.ratio(result["notebook"]["p50"], d["p50"]),
            "notebook_p99": C.ratio(result["notebook"]["p99"], d["p99"]),
        }
        if args.lines:
            streams = {
                "direct": await asyncio.to_thread(C.direct_stream, info, args.lines),
                "gateway": await C.ws_stream(gw.url, gw.token, kid, args.lines),
                "notebook": await C.ws_stream(nb.url, nb.token, kid, args.lines),
            }
            result["stream"] = streams
            result["stream_ratios"] = {
                name: C.ratio(streams[name]["messages_per_s"],
                              streams["direct"]["messages_per_s"])
                for name in ("gateway", "notebook")
            }
            # ipykernel puts more lines in one message when its reader is slower, so lines/s
            # (output delivered) is the fairer comparison; both are reported.
            result["stream_line_ratios"] = {
                name: C.ratio(streams[name]["lines_per_s"], streams["direct"]["lines_per_s"])
                for name in ("gateway", "notebook")
            }
        await C.delete_kernel(nb.url, nb.token, kid)
    return result


def report(result: C.JSON) -> list[str]:
    lines = []
    for name, label in (("direct", "(c) direct ZeroMQ"),
                        ("gateway", "(a) gateway websocket, JSON protocol"),
                        ("gateway_v1", "(a') gateway websocket, v1 protocol"),
                        ("notebook", "(b) notebook server → gateway")):
        if name not in result:
            continue  # results from before (a') was measured
        s = result[name]
        lines.append(f"{label} (n={s['n']}): p50 {C.ms(s['p50'])}, p99 {C.ms(s['p99'])}")
    r = result["ratios"]
    lines.append(f"  ratios: gateway/direct p50 {r['gateway_p50']:.2f}x, p99 "
                 f"{r['gateway_p99']:.2f}x (goal ≤ 1.3x); notebook/direct p50 "
                 f"{r['notebook_p50']:.2f}x, p99 {r['notebook_p99']:.2f}x (goal ≤ 2x)"
                 + (f"; gateway v1/direct p50 {r['gateway_v1_p50']:.2f}x, p99 "
                    f"{r['gateway_v1_p99']:.2f}x" if "gateway_v1_p50" in r else ""))
    if "stream" in result:
        st = result["stream"]
        lines.append(f"streaming a cell that prints {result['config']['lines']} lines (flushed):")
        for name in ("direct", "gateway", "notebook"):
            x = st[name]
            lost = x.get("lines_lost", 0)
            lines.append(
                f"  {name}: {x['messages_per_s']:.0f} msg/s, {x['lines_per_s']:.0f} lines/s "
                f"({x['stream_messages']} messages, {x['lines']} lines in {x['seconds']:.2f} s)"
                + (f"; {lost} lines NOT delivered, {x.get('rate_limit_notices', 0)} rate-limit "
                   f"notice(s): {x.get('first_notice', '')[:120]}" if lost else ""))
        sr = result["stream_ratios"]
        lr = result["stream_line_ratios"]
        lines.append(f"  relative to direct (1.0 = as fast as a direct ZeroMQ reader): messages/s "
                     f"gateway {sr['gateway']:.2f}x, notebook {sr['notebook']:.2f}x; lines/s "
                     f"gateway {lr['gateway']:.2f}x, notebook {lr['notebook']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> C.JSON:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 executes, 1,000 lines")
    parser.add_argument("--executes", type=int)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lines", type=int)
    parser.add_argument("--kernelspec", default="python-cpu")
    args = parser.parse_args(argv)
    args.executes = args.executes or (60 if args.quick else 500)
    if args.lines is None:
        args.lines = 1000 if args.quick else 20000
    result = C.run_in_workdir("roundtrip", lambda workdir: measure(args, workdir))
    result["lines"] = report(result)
    C.save_results("roundtrip", result)
    print("\n".join(result["lines"]))
    return result


if __name__ == "__main__":
    main()
