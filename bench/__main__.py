"""``python -m bench [--quick] [--only NAME ...]``: run every benchmark, then write the report.

Each benchmark runs in its own process (a fresh cluster, gateway and Python state; one that
fails or hangs does not take the others down), one after another so they never compete for the
two cores.  Then ``bench/REPORT.md`` and ``bench/REPORT.png`` are written from the results.
The full run takes about 20 minutes; ``--quick`` a few.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from . import common as C
from . import report

#: (name, module, extra arguments, timeout in seconds for the full run)
BENCHMARKS: list[tuple[str, str, list[str], int]] = [
    ("start", "bench.bench_start", [], 600),
    ("roundtrip", "bench.bench_roundtrip", [], 600),
    ("apiload", "bench.bench_apiload", [], 600),
    ("scale", "bench.bench_scale", [], 1500),
    ("eg", "bench.bench_eg", [], 1500),
    ("apiserver", "bench.bench_apiserver", [], 300),
    ("slowreader", "bench.bench_slowreader", [], 900),
    ("day", "bench.bench_day", [], 300),
    ("warmpool", "bench.bench_warmpool", [], 600),
    ("resume", "bench.bench_resume", [], 2400),
    ("browser", "bench.bench_browser", [], 900),
]
#: Benchmarks that print their figures instead of writing results JSON (the report quotes them).
TEXT_ONLY = {"apiserver"}


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the benchmark then stops its cluster, servers and pods), SIGKILL if it hangs."""
    proc.terminate()
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small configurations")
    parser.add_argument("--only", nargs="+", choices=[b[0] for b in BENCHMARKS],
                        help="run only these (the report uses the others' last results)")
    args = parser.parse_args(argv)
    C.RESULTS.mkdir(parents=True, exist_ok=True)
    run_file = C.RESULTS / "run.json"
    previous = json.loads(run_file.read_text()) if args.only and run_file.exists() else {}
    failures: dict[str, str] = {k: v for k, v in previous.get("failures", {}).items()
                                if k not in (args.only or [])}
    seconds: dict[str, float] = dict(previous.get("seconds", {}))
    for name, module, extra, timeout in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        if args.quick and name in TEXT_ONLY:
            continue  # no small configuration; run it with --only
        quick = ["--quick"] if args.quick else []
        cmd = [sys.executable, "-m", module, *extra, *quick]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        if not args.only:
            (C.RESULTS / f"{name}.json").unlink(missing_ok=True)
        t0 = time.monotonic()
        log = C.RESULTS / f"{name}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, cwd=C.REPO, stdout=fh, stderr=subprocess.STDOUT)
            try:
                code: int | None = proc.wait(timeout // (3 if args.quick else 1))
            except subprocess.TimeoutExpired:
                code = None
            except KeyboardInterrupt:
                stop(proc)
                raise
            if code is None:
                stop(proc)
        text = log.read_text(errors="replace")
        result_file = C.RESULTS / f"{name}.json"
        if code == 0 and name in TEXT_ONLY:
            print(text.rstrip(), flush=True)
        elif code == 0 and result_file.exists():
            print("\n".join(json.loads(result_file.read_text()).get("lines", [])), flush=True)
        else:
            why = "timed out" if code is None else f"exit {code}"
            tail = text.strip().splitlines()[-1:] or [""]
            failures[name] = f"{why}: {tail[0][:300]} (log: bench/results/{name}.log)"
            print(f"   FAILED ({failures[name]})", flush=True)
        seconds[name] = time.monotonic() - t0
        print(f"   ({seconds[name]:.0f} s)", flush=True)
    run = {"mode": "quick" if args.quick else "full", "failures": failures,
           "seconds": seconds}
    run_file.write_text(json.dumps(run, indent=2))
    # With ELASTIC_BENCH_RESULTS set (a trial run), the report goes there too, not into bench/.
    elsewhere = C.RESULTS != C.BENCH / "results"
    out, chart = ((C.RESULTS / "REPORT.md", C.RESULTS / "REPORT.png") if elsewhere
                  else (report.REPORT, report.CHART))
    path = report.write(C.RESULTS, out, chart, **run)
    print(f"wrote {path} and {chart}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
