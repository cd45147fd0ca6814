"""Kernel selection to first output in a real browser (issue 15): JupyterLab on elastic kernels,
a start that claims a warm-pool pod, vs a plain local JupyterLab with a local ipykernel, in the
same run.

Run ``.venv/bin/python -m bench.bench_browser [--quick]``.

Two JupyterLab processes on loopback, each with private Jupyter paths: one with ``--gateway-url``
pointed at a gateway on the local cluster, which offers ``bench-warm`` (the shipped ``python-cpu``
with ``warmPool.size`` 2) among the shipped kernelspecs; one plain, with ipykernel's own
``python3``. One headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright; no
browser is ever downloaded) drives both, alternately, so that drift on a shared machine hits both
alike.

What one measurement is, as a user does it: a fresh notebook that names no kernel is opened, and
JupyterLab asks which kernel to start. The clock starts at the click on "Select" and stops when the
cell's output is on screen. In between the kernel starts (locally; or through the notebook server,
the gateway and a warm pod claimed in the cluster), JupyterLab connects to it and shows it Idle,
the cell is run the moment it does (JupyterLab does not run a cell before its session has a kernel:
that wait is part of what a user waits for) and its output arrives. The page times itself
(``_MEASURE_JS``), so neither Playwright's round trips nor its polling are in the figures. Before
each elastic measurement the benchmark waits, untimed, until the pool is full again: it measures a
claim, not the refill. Each kernel is shut down after its measurement.

Prints p50/p90 of each and elastic p50 / local p50 (goal: ≤ 0.6x).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from . import common as C
from .bench_warmpool import _pool_ready

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SPEC = "bench-warm"
SPEC_DISPLAY = "Bench warm pool"
LOCAL_DISPLAY = "Python 3 (ipykernel)"
#: Playwright's waits (ms): JupyterLab's first load on a loaded machine, a kernel start.
UI_TIMEOUT = 120_000
MARKER = "output-after-selection"


def _notebook() -> dict[str, Any]:
    """One code cell and no kernelspec in its metadata: opening it asks for a kernel."""
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8],
                       "metadata": {}, "outputs": [], "source": f"print({MARKER!r})"}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


@contextlib.asynccontextmanager
async def jupyterlab(name: str, workdir: Path, extra: list[str],
                     env_extra: dict[str, str]) -> AsyncIterator[C.Server]:
    token = f"{name}-" + uuid.uuid4().hex
    home = workdir / name
    env = C.private_jupyter_env(home)
    env.update(env_extra)
    # JupyterLab asks nothing of its own over the measured page: no news, no update check.
    overrides = home / "config" / "labconfig" / "default_setting_overrides.json"
    overrides.parent.mkdir(parents=True, exist_ok=True)
    overrides.write_text(json.dumps({"@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false", "checkForUpdates": False}}))
    env["JUPYTER_CONFIG_PATH"] = str(home / "config")

    def argv(port: int) -> list[str]:
        args = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={C.HOST}",
                f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                f"--ServerApp.root_dir={home / 'root'}", f"--IdentityProvider.token={token}",
                "--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                *extra]
        if not any(a.startswith("--ServerApp.log_level=") for a in extra):
            args.append("--ServerApp.log_level=WARN")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--ServerApp.allow_root=True")
        return args

    async with C.run_server(name, argv, env, token, home / "lab.log",
                            ready_path="/api/status", timeout=120) as server:
        server.extra["root"] = home / "root"
        yield server


async def open_lab(browser: Any, lab: C.Server) -> Any:
    """A page logged in to ``lab`` (through the form: the token is in no URL)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 760})
    context.set_default_timeout(UI_TIMEOUT)
    page = await context.new_page()
    await page.goto(f"{lab.url}/login?next=%2Flab")
    await page.locator("#password_input").fill(lab.token)
    await page.locator("#login_submit").click()
    await page.locator(".jp-FileBrowser").wait_for()
    return page


#: Runs in the page: clicks "Select", watches the page (a MutationObserver, not a poll) for the
#: status bar's "<kernel> | Idle", runs the cell at that moment, and resolves when its output
#: shows. Times are the page's own clock (ms after the click), so no driver round trip or poll
#: interval is in them (Playwright's expect() polls at up to 1 s).
_MEASURE_JS = """
async ({display, marker, timeout}) => {
  const app = window.jupyterapp;
  return await new Promise((resolve, reject) => {
    let idleAt = null;
    let observer = null;
    const timer = setTimeout(() => {
      observer.disconnect();
      reject(new Error(`no output within ${timeout} ms (idle: ${idleAt})`));
    }, timeout);
    const check = () => {
      if (idleAt === null) {
        const items = document.querySelectorAll('.jp-StatusBar-TextItem');
        if ([...items].some(e => e.textContent.includes(`${display} | Idle`))) {
          idleAt = performance.now() - t0;
          app.commands.execute('notebook:run-cell');
        }
        return;
      }
      const outputs = document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output');
      if ([...outputs].some(e => e.textContent.includes(marker))) {
        observer.disconnect();
        clearTimeout(timer);
        resolve({idle: idleAt, output: performance.now() - t0});
      }
    };
    observer = new MutationObserver(check);
    observer.observe(document.body, {subtree: true, childList: true, characterData: true});
    const t0 = performance.now();
    document.querySelector('.jp-Dialog .jp-mod-accept').click();
    check();
  });
}
"""


async def selection_to_output(page: Any, lab: C.Server,
                              kernel_display: str) -> tuple[float, float]:
    """Seconds from the click on "Select" in JupyterLab's kernel dialog to the cell's output,
    and to the status bar's "Idle" on the way."""
    name = f"measure-{uuid.uuid4().hex[:8]}.ipynb"
    (Path(lab.extra["root"]) / name).write_text(json.dumps(_notebook()))
    # ?reset: a fresh workspace, without the previous measurement's notebook in it.
    await page.goto(f"{lab.url}/lab/tree/{name}?reset")
    dialog = page.locator(".jp-Dialog")
    await dialog.wait_for()
    await dialog.locator("select").select_option(label=kernel_display)
    times = await page.evaluate(_MEASURE_JS, {"display": kernel_display, "marker": MARKER,
                                              "timeout": UI_TIMEOUT})
    # Leave the notebook before its kernel goes, or JupyterLab offers to start another one.
    await page.goto("about:blank")
    await shutdown_kernels(lab)
    return times["output"] / 1000, times["idle"] / 1000


async def shutdown_kernels(lab: C.Server) -> None:
    """Every kernel of ``lab`` shut down (through its REST API), so each measurement starts one."""
    listed = await C.api(lab.url, "GET", "/api/sessions", token=lab.token)
    for session in json.loads(listed.body or b"[]"):
        await C.api(lab.url, "DELETE", f"/api/sessions/{session['id']}", token=lab.token)


async def measure(args: argparse.Namespace, workdir: Path) -> C.JSON:
    try:
        from playwright.async_api import async_playwright
    except ImportError as e:
        raise SystemExit("playwright is needed (pip install -e '.[test]'); never "
                         "`playwright install`: Debian's chromium is used") from e
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    result: C.JSON = {"config": {"runs": args.runs, "pool_size": args.pool_size,
                                 "base": "python-cpu", "local_kernel": "python3 (ipykernel)"}}
    async with C.local_cluster(workdir, nodes=2, cpu_per_node="32", memory_per_node="64Gi"
                               ) as cluster:
        await C.create_kernelspec(cluster, C.shipped_kernelspec(
            SPEC, displayName=SPEC_DISPLAY, warmPool={"size": args.pool_size}))
        async with C.gateway(cluster, workdir) as gw, \
                jupyterlab("elastic", workdir, [
                    f"--gateway-url={gw.url}", "--GatewayClient.request_timeout=660",
                    "--ServerApp.jpserver_extensions=elastic_kernels.notebook=True",
                    f"--MappingKernelManager.default_kernel_name={SPEC}"],
                    {"JUPYTER_GATEWAY_AUTH_TOKEN": gw.token}) as elastic, \
                jupyterlab("local", workdir, [], {}) as local, \
                async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                       args=CHROMIUM_ARGS)
            try:
                pages = {"elastic": await open_lab(browser, elastic),
                         "local": await open_lab(browser, local)}
                labs = {"elastic": (elastic, SPEC_DISPLAY), "local": (local, LOCAL_DISPLAY)}
                times: dict[str, list[float]] = {"elastic": [], "local": []}
                to_idle: dict[str, list[float]] = {"elastic": [], "local": []}
                # One untimed run of each: JupyterLab's bundles and the page cache for ipykernel.
                for round_ in range(args.runs + 1):
                    for kind in ("local", "elastic"):
                        if kind == "elastic":
                            await _pool_ready(cluster, SPEC, args.pool_size)
                        lab, display = labs[kind]
                        seconds, idle = await selection_to_output(pages[kind], lab, display)
                        if round_:
                            times[kind].append(seconds)
                            to_idle[kind].append(idle)
            finally:
                await browser.close()
    result["local"] = C.summary(times["local"])
    result["elastic"] = C.summary(times["elastic"])
    result["ratio_p50"] = C.ratio(result["elastic"]["p50"], result["local"]["p50"])
    result["to_idle"] = {kind: C.summary(v) for kind, v in to_idle.items()}
    return result


def report(result: C.JSON) -> list[str]:
    lo, el = result["local"], result["elastic"]
    return [
        f"plain local JupyterLab, kernel selection → output (n={lo['n']}): p50 "
        f"{C.ms(lo['p50'])}, p90 {C.ms(lo['p90'])}, max {C.ms(lo['max'])}",
        f"JupyterLab → gateway → warm-pool pod (n={el['n']}, pool of "
        f"{result['config']['pool_size']}): p50 {C.ms(el['p50'])}, p90 {C.ms(el['p90'])}, "
        f"max {C.ms(el['max'])}",
        f"  elastic p50 / local p50 = {result['ratio_p50']:.2f}x (goal ≤ 0.6x)",
        f"  of which selection → \"Idle\" in the status bar: local p50 "
        f"{C.ms(result['to_idle']['local']['p50'])}, elastic p50 "
        f"{C.ms(result['to_idle']['elastic']['p50'])}",
    ]


def main(argv: list[str] | None = None) -> C.JSON:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of each")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--pool-size", type=int, default=2)
    args = parser.parse_args(argv)
    args.runs = args.runs or (3 if args.quick else 10)
    result = C.run_in_workdir("browser", lambda workdir: measure(args, workdir))
    result["lines"] = report(result)
    C.save_results("browser", result)
    print("\n".join(result["lines"]))
    return result


if __name__ == "__main__":
    main()
