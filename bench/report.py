"""``bench/REPORT.md`` and ``bench/REPORT.png`` from the JSON results in ``bench/results/``.

Run on its own (``python -m bench.report``) to rebuild the report from the last results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import common as C

REPORT = C.BENCH / "REPORT.md"
CHART = C.BENCH / "REPORT.png"
NAMES = ("start", "roundtrip", "apiload", "scale", "scale-post", "eg", "slowreader", "day",
         "warmpool", "resume", "browser")
#: The day simulation's own chart (users per GPU, waits, utilization per policy).
DAY_CHART = C.BENCH / "REPORT-day.png"


def load(results: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in NAMES:
        path = results / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    s = r.get("start")
    if s:
        d = s["p50_minus_floor_s"]
        rows.append(("Kernel start p50 − floor p50 (sequential, "
                     f"n={s['sequential']['n']})",
                     f"{d * 1000:.0f} ms (ours {C.ms(s['sequential']['p50'])}, floor "
                     f"{C.ms(s['floor']['p50'])}; p50 ratio "
                     f"{C.ratio(s['sequential']['p50'], s['floor']['p50']):.2f}x)",
                     "≤ 150 ms", _met(d <= 0.150)))
        c = s["concurrent"]
        rows.append((f"{c['requested']} concurrent starts",
                     f"{c['succeeded']}/{c['requested']} succeeded, all done in "
                     f"{c['wall_s']:.1f} s (p50 {C.ms(c.get('p50', float('nan')))})",
                     "all succeed", _met(c["succeeded"] == c["requested"])))
    rt = r.get("roundtrip")
    if rt:
        ra = rt["ratios"]
        rows.append(("Round trip (a) gateway, JSON protocol / (c) direct ZeroMQ, p50",
                     f"{ra['gateway_p50']:.2f}x ({C.ms(rt['gateway']['p50'])} vs "
                     f"{C.ms(rt['direct']['p50'])}; p99 {ra['gateway_p99']:.2f}x)", "≤ 1.3x",
                     _met(ra["gateway_p50"] <= 1.3)))
        if "gateway_v1_p50" in ra:
            rows.append(("Round trip (a') gateway, v1 protocol (JupyterLab 4's) / (c), p50",
                         f"{ra['gateway_v1_p50']:.2f}x ({C.ms(rt['gateway_v1']['p50'])}; p99 "
                         f"{ra['gateway_v1_p99']:.2f}x)", "—", "—"))
        rows.append(("Round trip (b) notebook server → gateway / (c), p50",
                     f"{ra['notebook_p50']:.2f}x ({C.ms(rt['notebook']['p50'])}; p99 "
                     f"{ra['notebook_p99']:.2f}x)", "≤ 2x", _met(ra["notebook_p50"] <= 2.0)))
        if "stream" in rt:
            st = rt["stream"]
            lr = rt.get("stream_line_ratios") or {
                k: C.ratio(st[k]["lines_per_s"], st["direct"]["lines_per_s"])
                for k in ("gateway", "notebook")}
            rows.append((f"Streaming {rt['config']['lines']} printed lines: messages/s "
                         "(lines/s)",
                         f"gateway {st['gateway']['messages_per_s']:.0f} "
                         f"({rt['stream_ratios']['gateway']:.2f}x direct; lines/s "
                         f"{lr.get('gateway', float('nan')):.2f}x), notebook "
                         f"{st['notebook']['messages_per_s']:.0f} "
                         f"({rt['stream_ratios']['notebook']:.2f}x; lines/s "
                         f"{lr.get('notebook', float('nan')):.2f}x), direct "
                         f"{st['direct']['messages_per_s']:.0f} "
                         f"({st['direct']['lines_per_s']:.0f} lines/s)", "—", "—"))
            n = rt["config"]["lines"]
            got = {k: st[k]["lines"] for k in ("direct", "gateway", "notebook")}
            rows.append((f"Streaming {n} printed lines: lines delivered",
                         ", ".join(f"{k} {v}/{n}" for k, v in got.items())
                         + ("; the rest was dropped by jupyter_server's IOPub rate limit "
                            "(1,000 msg/s over 3 s)" if min(got.values()) < n else ""),
                         "all", _met(min(got.values()) >= n)))
    a = r.get("apiload")
    if a:
        rows.append(("API requests per start",
                     f"{a['per_start_writes']:g} writes, {a['per_start_polling_reads']:g} "
                     "polling reads", "≤ 4 writes, 0 polling reads",
                     _met(a["per_start_writes"] <= 4 and a["per_start_polling_reads"] == 0)))
        p = a["periodic_not_in_window"]
        for key, who in (("steady", "a client connected to each"),
                         ("steady_disconnected", "no client connected")):
            st = a.get(key)
            if not st:
                continue
            total = st["per_kernel_hour"] + p["per_kernel_hour_at_this_size"]
            rows.append((f"API requests per kernel-hour, {st['kernels']} idle kernels, {who} "
                         f"({st['seconds']:.0f} s)",
                         f"{total:.1f} = {st['per_kernel_hour']:.1f} measured + "
                         f"{p['per_kernel_hour_at_this_size']:.1f} watch re-opens; without the "
                         "gateway's one Lease: "
                         f"{st.get('per_kernel_hour_without_lease', total):.1f}"
                         f" + {p['per_kernel_hour_at_this_size']:.1f}",
                         "≤ 60", _met(total <= 60)))
    for name in ("scale", "scale-post"):
        sc = r.get(name)
        if not sc:
            continue
        levels = sc.get("levels") or []
        best = max((e["attached"] for e in levels), default=0)
        mode = "POST + websocket" if sc["config"].get("attach") == "websocket" else "POST only"
        limit = (f"; first failure at {sc['first_error_at']} kernels: "
                 f"{_short_error(sc.get('errors'))}" if "first_error_at" in sc else "")
        top = max(levels, key=lambda e: e["attached"]) if levels else None
        facts = (f"; at {top['attached']}: gateway RSS {top['rss_mib']:.0f} MiB, idle CPU "
                 f"{top['idle_cpu_percent']:.0f} %, {top['fds']} fds, round trip p50 "
                 f"{C.ms(top['roundtrip'].get('p50', float('nan')))} (p99 "
                 f"{C.ms(top['roundtrip'].get('p99', float('nan')))})" if top else "")
        slow = top is not None and top["roundtrip"].get("p50", float("inf")) > 0.1
        met = (_met(False) if best < 1000 else
               "**attached, but a round trip takes > 100 ms**" if slow else _met(True))
        rows.append((f"Kernels on one gateway (stand-in kernels, start = {mode})",
                     f"{best} attached{limit}{facts}", "1,000", met))
    sc = r.get("scale") or r.get("scale-post")
    if sc and sc.get("cull"):
        c = sc["cull"]
        rows.append((f"Cull {c['records']} idle kernels (elastic-kernels cull)",
                     f"{c['deleted']} deleted in {c['wall_s']:.1f} s, {c['requests_total']} "
                     f"API requests ({c['requests_total'] / max(1, c['records']):.1f}/kernel)",
                     "—", "—"))
    eg = r.get("eg")
    if eg and "ratios" in eg:
        q = eg["ratios"]
        rows.append(("Enterprise Gateway / elastic-kernels: start p50",
                     f"{q['start_p50_eg_over_ours']:.2f}x ({C.ms(eg['eg']['start']['p50'])} vs "
                     f"{C.ms(eg['ours']['start']['p50'])})", "—", "—"))
        rows.append(("Enterprise Gateway / elastic-kernels: round trip p50",
                     f"{q['roundtrip_p50_eg_over_ours']:.2f}x ({C.ms(eg['eg']['roundtrip']['p50'])}"
                     f" vs {C.ms(eg['ours']['roundtrip']['p50'])})", "—", "—"))
        rows.append(("Enterprise Gateway / elastic-kernels: API requests per start",
                     f"{q['requests_per_start_eg_over_ours']:.2f}x "
                     f"({sum(eg['eg']['per_start'].values()):g} vs "
                     f"{sum(eg['ours']['per_start'].values()):g}; polling reads "
                     f"{eg['eg']['per_start_polling_reads']:g} vs "
                     f"{eg['ours']['per_start_polling_reads']:g})", "—", "—"))
        ours_steady = eg["ours"]["steady"]
        lease = sum(v for k, v in ours_steady["by_request"].items() if "leases" in k)
        ours_per_kernel = ((ours_steady["requests"] - lease) * 3600.0
                           / ours_steady["seconds"] / ours_steady["kernels"])
        rows.append(("Enterprise Gateway / elastic-kernels: requests per kernel-hour",
                     f"{q['kernel_hour_eg_over_ours']:.1f}x "
                     f"({eg['eg']['steady']['per_kernel_hour']:.0f} vs "
                     f"{ours_steady['per_kernel_hour']:.0f} with "
                     f"{ours_steady['kernels']} idle kernels; ours without its one Lease: "
                     f"{ours_per_kernel:.0f})", "—", "—"))
        c = eg["eg"]["concurrent"]
        rows.append((f"Enterprise Gateway: {c['requested']} concurrent starts",
                     f"{c['succeeded']}/{c['requested']} succeeded in {c['wall_s']:.1f} s"
                     + (f"; first error: {_short_error(c['errors'])}" if c.get("errors") else ""),
                     "—", "—"))
    elif eg and eg.get("eg_error"):
        rows.append(("Enterprise Gateway", "not measured: "
                     + eg["eg_error"].splitlines()[0][:200], "—", "—"))
    sr = r.get("slowreader")
    if sr:
        b, u = sr["bounded"], sr["unbounded"]
        rows.append((f"{b['clients']} clients that never read: gateway RSS / idle RSS",
                     f"peak {b['peak_ratio']:.2f}x, {b['after_stop_ratio']:.2f}x once they and "
                     f"their kernels stopped (unbounded, as before: peak "
                     f"{u['peak_ratio']:.2f}x{' or more' if u['stopped_by_guard'] else ''}, "
                     f"{u['after_stop_ratio']:.2f}x after)", "bounded; given back",
                     _met(b["peak_mib"] - b["idle_mib"] <= 256 * b["clients"]
                          and b["after_stop_ratio"] <= 1.5)))
    day = r.get("day")
    if day and day.get("users_per_gpu"):
        u = day["users_per_gpu"]
        x = u["elastic"] / u["static"] if u["static"] else float("inf")
        rows.append((f"Users per GPU at p95 wait ≤ 2 min, simulated day on "
                     f"{day['config']['gpus']} GPUs (bench_day)",
                     f"elastic with Suspend {u['elastic']:.2f} vs static {u['static']:.2f} "
                     f"({x:.2f}x), states lost {day['elastic_suspend']['states_lost']}; "
                     f"reclaimAfter {day['config']['settings']['reclaim_after']}, idleTimeout "
                     f"{day['config']['settings']['idle_timeout']}, cullConnected, onCull "
                     "Suspend",
                     "≥ 3x, 0 lost",
                     _met(x >= 3 and day["elastic_suspend"]["states_lost"] == 0)))
    for name, figures in (day or {}).items():
        if isinstance(figures, dict) and "gpu_seconds_held" in figures:
            held, used = figures["gpu_seconds_held"] / 3600, figures["gpu_seconds_used"] / 3600
            rows.append((f"GPU-hours held vs used (GPU busy), simulated day, {name} (bench_day)",
                         f"held {held:.1f} h, used {used:.1f} h ({figures['gpu_utilization']:.1%}"
                         f"); states lost {figures['states_lost']}", "—", "—"))
    pool = r.get("warmpool")
    if pool and pool.get("ratio_p50") is not None:
        rows.append(("Start from a warm pool / cold start of the same kernelspec, p50 "
                     "(bench_warmpool)",
                     f"{pool['ratio_p50']:.2f}x ({C.ms(pool['warm']['p50'])} vs "
                     f"{C.ms(pool['cold']['p50'])})", "≤ 0.3x",
                     _met(pool["ratio_p50"] <= 0.3)))
    browser = r.get("browser")
    if browser and browser.get("ratio_p50") is not None:
        rows.append(("In Chromium, kernel selection → output: JupyterLab on a warm pool / a "
                     "plain local JupyterLab, p50 (bench_browser)",
                     f"{browser['ratio_p50']:.2f}x ({C.ms(browser['elastic']['p50'])} vs "
                     f"{C.ms(browser['local']['p50'])})", "≤ 0.6x",
                     _met(browser["ratio_p50"] <= 0.6)))
    return rows


def _short_error(errors: Any) -> str:
    return C.short_error(errors[0]) if errors else "?"


def chart(r: dict[str, Any], path: Path) -> Path | None:
    """Start and round-trip medians per system; bars marked "EG bench" come from bench_eg, where
    our gateway and Enterprise Gateway ran one after the other on the same cluster."""
    start: list[tuple[str, float, str]] = []
    trip: list[tuple[str, float, str]] = []
    s, rt, eg = r.get("start"), r.get("roundtrip"), r.get("eg")
    if s:
        start.append(("Floor: local ipykernel", s["floor"]["p50"] * 1000, "floor"))
        start.append(("elastic-kernels", s["sequential"]["p50"] * 1000, "ours"))
    if rt:
        trip.append(("Direct ZeroMQ", rt["direct"]["p50"] * 1000, "direct"))
        trip.append(("elastic-kernels gateway", rt["gateway"]["p50"] * 1000, "ours"))
        trip.append(("Notebook server > gateway", rt["notebook"]["p50"] * 1000, "notebook"))
    if eg and "eg" in eg:
        start.append(("elastic-kernels (EG bench)", eg["ours"]["start"]["p50"] * 1000, "ours"))
        start.append(("Enterprise Gateway 3.3", eg["eg"]["start"]["p50"] * 1000, "eg"))
        trip.append(("elastic-kernels (EG bench)", eg["ours"]["roundtrip"]["p50"] * 1000,
                     "ours"))
        trip.append(("Direct ZeroMQ to EG kernel", eg["eg"]["roundtrip_direct"]["p50"] * 1000,
                     "direct"))
        trip.append(("Enterprise Gateway 3.3", eg["eg"]["roundtrip"]["p50"] * 1000, "eg"))
    panels = [(t, rows) for t, rows in (("Kernel start p50 (ms)", start),
                                        ("Execute round trip p50 (ms)", trip)) if rows]
    if not panels:
        return None
    return bar_chart(path, panels)


#: Bar colours by system: the floors grey, ours blue, Enterprise Gateway red.
PALETTE = {"floor": "#969696", "direct": "#969696", "ours": "#1f77b4", "notebook": "#6caadc",
           "eg": "#d62728"}


def bar_chart(path: Path, panels: Sequence[tuple[str, Sequence[tuple[str, float, str]]]]
              ) -> Path | None:
    """Horizontal bars, one panel each: ``panels`` = [(title, [(label, value, palette key)])].

    Each panel has its own linear scale from 0 and prints each value after its bar ("N/A" for a
    missing one). Drawn with matplotlib's Agg backend (no display). matplotlib is the ``bench``
    extra (``make bench`` installs it); without it the report is written without its chart,
    so ``make test`` need not install a plotting stack.
    """
    try:
        import matplotlib
    except ImportError:
        print("bench: matplotlib is not installed (pip install -e '.[bench]'); "
              "REPORT.png not drawn")
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    heights = [0.6 + 0.35 * len(rows) for _, rows in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights) + 0.5), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    try:
        for ax, (title, rows) in zip(axes[:, 0], panels):
            labels = [label for label, _, _ in rows]
            values = [v if v == v and v > 0 else 0.0 for _, v, _ in rows]
            ys = range(len(rows))
            ax.barh(ys, values, color=[PALETTE.get(key, "#646464") for _, _, key in rows])
            ax.set_yticks(list(ys), labels)
            ax.invert_yaxis()  # first row on top, as listed
            ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
            top = max(values) or 1.0
            ax.set_xlim(0, top * 1.18)  # room for the value labels
            for y, (_, value, _) in zip(ys, rows):
                ok = value == value and value > 0
                ax.text((value if ok else 0) + top * 0.01, y, f"{value:.1f}" if ok else "N/A",
                        va="center", fontsize=9)
            ax.spines[["top", "right"]].set_visible(False)
        fig.text(0.01, 0.005, "Medians in ms, same run, same machine. Lower is better.",
                 fontsize=9, color="#5a5a5a")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def _lines(name: str, result: dict[str, Any]) -> list[str]:
    """The benchmark's own summary lines, re-rendered with its current wording when possible."""
    import importlib
    module = {"start": "bench_start", "roundtrip": "bench_roundtrip", "apiload": "bench_apiload",
              "scale": "bench_scale", "scale-post": "bench_scale", "eg": "bench_eg",
              "slowreader": "bench_slowreader", "day": "bench_day",
              "warmpool": "bench_warmpool", "resume": "bench_resume",
              "browser": "bench_browser"}[name]
    try:
        lines: list[str] = importlib.import_module(f"bench.{module}").report(result)
        return lines
    except (KeyError, TypeError, ValueError):  # results from an older version of the benchmark
        return list(result.get("lines", []))


def _versions_line(v: dict[str, str]) -> str:
    return ", ".join(f"{k} {val}" for k, val in v.items())


def write(results: Path = C.RESULTS, report: Path = REPORT, chart_path: Path = CHART,
          mode: str = "", failures: dict[str, str] | None = None,
          seconds: dict[str, float] | None = None) -> Path:
    r = load(results)
    any_result = next(iter(r.values()), None)
    revisions = sorted({v["revision"] for v in r.values() if v.get("revision")})
    machine = any_result["machine"] if any_result else C.machine_info()
    versions = any_result["versions"] if any_result else C.versions()
    eg_versions = _get(r.get("eg"), "eg_versions")
    out = ["# elastic-kernels benchmarks", ""]
    out.append(f"Generated by `python -m bench{' --quick' if mode == 'quick' else ''}` on "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, revision "
               + (" and ".join(f"`{x}`" for x in revisions) if revisions
                  else f"`{C.git_revision() or '?'}`")
               + (f", in {sum(seconds.values()) / 60:.1f} min ("
                  + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ")"
                  if seconds else "") + ". "
               "Absolute times on a shared 2-core machine are noisy; compare the ratios, "
               "which were measured in the same run.")
    out += ["", f"**Machine**: {machine['nproc']} CPUs ({machine['cpu']}), "
            f"{machine['memory_gib']} GiB RAM, Linux {machine['kernel']}, Python "
            f"{machine['python']}; ulimit -n {machine['ulimit_nofile'][0]}, ulimit -u "
            f"{machine['ulimit_nproc'][0]}, pid_max {machine['pid_max']}.",
            "", f"**Versions (elastic-kernels side)**: {_versions_line(versions)}."]
    if eg_versions:
        out.append(f"**Versions (Enterprise Gateway side, bench/.venv-eg)**: "
                   f"{_versions_line(eg_versions)}.")
    out += ["", "## Summary", "", "| measure | result | goal | met |", "|---|---|---|---|"]
    for row in summary_rows(r):
        out.append("| " + " | ".join(cell.replace("|", "/") for cell in row) + " |")
    if failures:
        out += ["", "Benchmarks that did not finish:", ""]
        for name, why in failures.items():
            out.append(f"- `{name}`: {why}")
    png = chart(r, chart_path)
    if png:
        out += ["", f"![start latency and round trip per system]({png.name})"]
    out += ["", "## Details", ""]
    titles = {"start": "1. Kernel start (`bench.bench_start`)",
              "roundtrip": "2–3. Execute round trip and output streaming "
                           "(`bench.bench_roundtrip`)",
              "apiload": "4. Kubernetes API load (`bench.bench_apiload`)",
              "scale": "5. Scale, a start = POST + websocket kernel_info (`bench.bench_scale`)",
              "scale-post": "5. Scale, a start = POST only "
                            "(`bench.bench_scale --attach post --name scale-post`)",
              "eg": "6. Enterprise Gateway on the same cluster (`bench.bench_eg`)",
              "slowreader": "7. Clients that never read (`bench.bench_slowreader`)",
              "day": "8. A simulated day: static GPUs vs elastic kernels (`bench.bench_day`)",
              "warmpool": "9. Warm pools: a claimed pool pod vs a cold start "
                          "(`bench.bench_warmpool`)",
              "resume": "10. Resuming a suspended kernel, by namespace size "
                        "(`bench.bench_resume`)",
              "browser": "11. In a real browser: kernel selection → output, warm pool vs a "
                         "plain local JupyterLab (`bench.bench_browser`)"}
    for name in NAMES:
        if name not in r:
            continue
        out += [f"### {titles[name]}", "", "```", *_lines(name, r[name]), "```", ""]
        cfg = r[name].get("config")
        if cfg:
            out += [f"Configuration: `{json.dumps(cfg)}`"
                    + (f"; load average when it finished: "
                       f"{', '.join(f'{x:.1f}' for x in r[name]['loadavg_at_end'])}"
                       if r[name].get("loadavg_at_end") else ""), ""]
        if name == "day":
            from . import bench_day
            day_png = bench_day.chart(r[name], chart_path.with_name(DAY_CHART.name))
            if day_png:
                out += [f"![users per GPU, waits and utilization per policy]({day_png.name})", ""]
        if name == "eg" and r[name].get("eg_error"):
            out += ["Error text:", "", "```", r[name]["eg_error"][:3000], "```", ""]
    apiserver_log = results / "apiserver.log"
    if apiserver_log.exists():
        out += ["### The local API server itself (`bench.bench_apiserver`)", "", "```",
                *apiserver_log.read_text(errors="replace").strip().splitlines()[-12:], "```",
                ""]
    out.append(NOTES)
    report.write_text("\n".join(out) + "\n")
    return report


NOTES = """## How to read and rerun this

- `make bench` (= `.venv/bin/python -m bench`) runs everything and rewrites this file and
  `REPORT.png`; `--quick` runs small configurations (a few minutes). Each benchmark runs alone:
  `.venv/bin/python -m bench.bench_start [--quick]`, `bench.bench_roundtrip`,
  `bench.bench_apiload`, `bench.bench_scale`, `bench.bench_eg`, `bench.bench_slowreader`,
  `bench.bench_day` (a simulated day on a virtual clock), `bench.bench_warmpool`,
  `bench.bench_resume`, `bench.bench_browser` (Debian's Chromium); `--help` lists the knobs.
  Raw figures are in `bench/results/*.json` (not committed).
- Everything runs on loopback: the local cluster in the benchmark process, each server under
  test (our gateway, the notebook server, Enterprise Gateway) as its own process.
- **Start** is `POST /api/kernels` until the first `kernel_info_reply` over the websocket. The
  floor is a local ipykernel started with jupyter_client (`AsyncKernelManager`, 10 ms ZeroMQ
  reconnect like the gateway's) and interleaved with the gateway's starts.
- **Round trip** is `execute_request` of `pass` until both the reply and the idle status
  arrived; the client sets TCP_NODELAY as browsers do. Direct ZeroMQ is a blocking pyzmq client
  given the connection info a re-attaching replica builds (pod IP + the key in the Secret).
  (a) speaks the JSON websocket protocol, as a notebook server with `--gateway-url` does to the
  gateway; (a') the `v1.kernel.websocket.jupyter.org` protocol JupyterLab 4 uses with a server
  that holds its kernels.
- **Streaming** counts the stream messages and lines each reader received. The direct reader
  parses every message with jupyter_client's Session (signature, dates), as a jupyter_client
  program does; the websocket readers parse JSON only. A ratio above 1 therefore says that the
  gateway is not what limits output, not that it outruns the kernel.
- **API load** is counted by the local API server (`LocalCluster.request_counter`) for the
  window of each operation; "polling reads" are `get`/`list` (watches are not polling).
- **Scale** uses `bench/tinykernel.py`, a *stand-in* for ipykernel that speaks the real Jupyter
  protocol over ZeroMQ (signed messages, busy/idle status, heartbeat) at ~8 MB each, launched by
  the real launcher in real pods. A limit hit is reported with the gateway's own error.
- **Enterprise Gateway** 3.3 comes from PyPI into `bench/.venv-eg` (server) and its sdist
  (kernelspec, `launch_kubernetes.py`, `kernel-pod.yaml.j2`, `bootstrap-kernel.sh`,
  `launch_ipykernel.py`), unchanged. Adaptations, all in `bench/eg.py` and
  `bench/eg_site/sitecustomize.py`: the server runs as a host process with in-cluster
  configuration over HTTPS (token and CA from a directory substituted for
  `/var/run/secrets/kubernetes.io/serviceaccount`); `EG_INHERITED_ENVS` passes the venv's PATH
  and that hook on; the pod template gains a downward-API `POD_IP` so that EG's `0.0.0.0` binds
  stay on the pod's loopback address; the kubelet maps image `elyra/kernel-py:<version>` to the
  image's CMD (`bootstrap-kernel.sh`) with EG's virtualenv Python. All EG settings are its
  defaults (namespace + RoleBinding per kernel, 0.5 s pod polling, 30 s launch timeout).
- **Clients that never read** each send one `execute_request` for a writer (64 KiB per flushed
  write, 1 GiB in all, then the cell stays busy) and read nothing; the gateway's RSS is read from
  `/proc` while the kernels write past them, after they leave, and after the kernels stop, as
  ratios to its idle RSS in the same run. "Unbounded" is the same gateway with
  `max_pending_bytes=0` (as before the bound), stopped by a guard before the machine runs short;
  "batched" is the security report's writer without the flush, whose single messages of hundreds
  of MB pass through the gateway whole.
"""


def rewrite() -> Path:
    """Rebuild the report from the last results, with the last run's mode and failures."""
    run_file = C.RESULTS / "run.json"
    run = json.loads(run_file.read_text()) if run_file.exists() else {}
    return write(C.RESULTS, REPORT, CHART, **run)


if __name__ == "__main__":
    print(rewrite())
