"""Resume time of a suspended kernel, by the size of its namespace, against a cold start.

Run ``.venv/bin/python -m bench.bench_resume [--quick] [--sizes 1MB,100MB,1GB]``.

A kernelspec with ``onCull: Suspend`` and a short idleTimeout runs on the local cluster with
the gateway as a process (snapshot store and key file configured; ``max_kernel_message_bytes``
left at its default: snapshots stream in pieces). For each size a kernel holds ``blob =
os.urandom(size)``, is left idle until the gateway suspends it (namespace saved, pod deleted),
and the time is taken from the websocket connect that resumes it to the reply of the first
execute (``len(blob)``, checked): the user's "open the notebook, run a cell" after a suspension.
The baseline, measured in the same run, is a cold start of the same kernelspec to its first
reply (``POST /api/kernels`` then ``kernel_info``); the report gives each resume as a ratio of
it. A size that fails (too big for the machine, a limit) is reported with its error instead of a
figure. The time to suspend (idle deadline to Suspended) is reported too, and the gateway's
peak resident memory over each size's suspend and resume (Linux: ``VmHWM``, reset before each
size through ``/proc/PID/clear_refs``), against its resident memory before: it shows that the
gateway streams a snapshot rather than holding it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
from pathlib import Path

from . import common as C

SPEC = "resume-bench"
_UNITS = {"KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3}


def parse_size(text: str) -> int:
    text = text.strip().upper()
    for unit, factor in _UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def human(size: int) -> str:
    for unit, factor in reversed(list(_UNITS.items())):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} B"


def kernelspec(max_bytes: int) -> C.JSON:
    """python-cpu with onCull: Suspend after 2 s of idleness, limits sized for the run."""
    return C.shipped_kernelspec(
        SPEC, "python-cpu", displayName="Python (resume bench)", launchTimeout="5m",
        culling={"idleTimeout": "2s", "cullConnected": False, "maxAge": "0",
                 "onCull": "Suspend", "suspend": {"maxBytes": max_bytes, "timeout": "10m"}})


async def wait_state(url: str, token: str, kernel_id: str, state: str, timeout: float) -> float:
    """Seconds until the kernel's model says ``state`` (a bench may poll: it is the client)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        response = await C.api(url, "GET", f"/api/kernels/{kernel_id}", token=token)
        if response.code == 200 and C.json_of(response).get("execution_state") == state:
            return time.perf_counter() - t0
        await asyncio.sleep(0.1)
    raise TimeoutError(f"kernel {kernel_id} not {state} after {timeout:.0f} s")


def memory_kib(pid: int, field: str) -> int | None:
    """A ``/proc/PID/status`` memory field (``VmRSS``, ``VmHWM``) in KiB; None off Linux."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def reset_peak(pid: int) -> bool:
    """Reset the process's peak resident memory (``VmHWM``) to its current one."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def one_size(gw: C.Server, size: int, timeout: float) -> C.JSON:
    peak_reset = reset_peak(gw.pid)
    rss_before = memory_kib(gw.pid, "VmRSS")
    kernel_id, _, _ = await C.start_via_http(gw.url, gw.token, SPEC)
    try:
        ws = await C.KernelWS.open(gw.url, kernel_id, gw.token, timeout=timeout)
        try:
            made = await ws.execute(f"import os\nblob = os.urandom({size})", timeout=timeout)
            if (made["reply"] or {}).get("status") != "ok":
                raise RuntimeError(f"could not make the namespace: {made['reply']}")
        finally:
            ws.close()
        # Idle from here: the culler suspends it after idleTimeout (2 s) plus its interval.
        suspend_s = await wait_state(gw.url, gw.token, kernel_id, "suspended", timeout)
        t0 = time.perf_counter()
        ws = await C.KernelWS.open(gw.url, kernel_id, gw.token, timeout=timeout)
        try:
            got = await ws.execute("print(len(blob))", timeout=timeout)
        finally:
            ws.close()
        resume_s = time.perf_counter() - t0
        if got["stdout"].strip() != str(size):
            raise RuntimeError(f"the restored namespace is wrong: {got['stdout'][:200]!r} "
                               f"{got['errors'][:1]}")
        memory = {"gateway_rss_before_mib": (rss_before or 0) / 1024,
                  "gateway_peak_rss_mib": (memory_kib(gw.pid, "VmHWM") or 0) / 1024,
                  "peak_reset": peak_reset}
        return {"size": size, "resume_s": resume_s, "suspend_s": suspend_s, **memory}
    except Exception as e:  # noqa: BLE001 - reported with the size
        return {"size": size, "error": C.short_error(f"{type(e).__name__}: {e}", 300)}
    finally:
        await C.delete_kernel(gw.url, gw.token, kernel_id)


async def measure(args: argparse.Namespace, workdir: Path) -> C.JSON:
    largest = max(args.sizes)
    key_file = workdir / "snapshot-key"
    key_file.write_text(secrets.token_hex(32))
    key_file.chmod(0o600)
    extra = [f"--ElasticMappingKernelManager.snapshot_store={workdir / 'snapshots'}",
             f"--ElasticMappingKernelManager.snapshot_key_file={key_file}",
             "--CullingDefaults.interval=0.5"]
    result: C.JSON = {"config": {"sizes": args.sizes, "cold_starts": args.cold}}
    async with C.local_cluster(workdir, nodes=1, cpu_per_node="16", memory_per_node="64Gi"
                               ) as cluster:
        await C.create_kernelspec(cluster, kernelspec(largest * 2))
        async with C.gateway(cluster, workdir, extra_args=extra) as gw:
            cold = []
            for _ in range(args.cold + 1):  # the first warms caches and is not counted
                kid, _, t = await C.start_via_http(gw.url, gw.token, SPEC)
                cold.append(t)
                await C.delete_kernel(gw.url, gw.token, kid)
            result["cold_start"] = C.summary(cold[1:])
            result["resumes"] = [await one_size(gw, size, args.timeout) for size in args.sizes]
    return result


def report(result: C.JSON) -> list[str]:
    cold = result["cold_start"]
    lines = [f"cold start of the same kernelspec to its first reply (n={cold['n']}): "
             f"p50 {C.ms(cold['p50'])} (baseline)"]
    for r in result["resumes"]:
        if "error" in r:
            lines.append(f"resume with {human(r['size'])} of variables: failed: {r['error']}")
            continue
        lines.append(f"resume with {human(r['size'])} of variables: {C.ms(r['resume_s'])} "
                     f"= {C.ratio(r['resume_s'], cold['p50']):.2f}x a cold start "
                     f"(suspended {r['suspend_s']:.1f} s after going idle; gateway memory "
                     f"{r.get('gateway_rss_before_mib', 0):.0f} MiB before, peak "
                     f"{r.get('gateway_peak_rss_mib', 0):.0f} MiB)")
    return lines


def main(argv: list[str] | None = None) -> C.JSON:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 MB and 10 MB only")
    parser.add_argument("--sizes", help="comma-separated sizes (default 1MB,100MB,1GB)")
    parser.add_argument("--cold", type=int, default=3, help="cold starts for the baseline")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds each step of one size may take")
    args = parser.parse_args(argv)
    sizes = args.sizes or ("1MB,10MB" if args.quick else "1MB,100MB,1GB")
    args.sizes = [parse_size(s) for s in sizes.split(",") if s.strip()]
    result = C.run_in_workdir("resume", lambda workdir: measure(args, workdir))
    result["lines"] = report(result)
    C.save_results("resume", result)
    print("\n".join(result["lines"]))
    return result


if __name__ == "__main__":
    main()
