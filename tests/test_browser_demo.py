"""``make demo`` in a browser (issue 14, item 5): a new "Python on GPU" notebook reads the file
beside it, and a file the kernel writes appears in JupyterLab's file browser.

The demo runs as a user runs it (``elastic-kernels demo``, a subprocess in its own session, on
free loopback ports, with a private HOME and Jupyter directories), and a real browser drives its
JupyterLab: Debian's Chromium (``/usr/bin/chromium``, headless) through Playwright from PyPI.
Playwright never downloads a browser here (``playwright install`` is never run): it is pointed at
Debian's binary with ``executable_path``.

Outside CI a machine without Chromium skips this test, saying how to install it; under
``CI=true`` (where ``.ci/run`` installs it) a missing browser or Playwright is a failure, so the
test cannot silently stop running there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from elastic_kernels.demo import EXAMPLE_CSV, EXAMPLE_DIR, KERNEL_HOME
from elastic_kernels.testing import free_port

from .browser import CHROMIUM, CHROMIUM_ARGS, require_chromium, unavailable
from .gatewayproc import LEAKY_ENV, private_jupyter_dirs
from .processtree import kill_leftovers, stop_group
from .test_packaging import descendants

# signal, not the suite's thread method: a timeout must still run the finally that stops the
# demo (its processes are in their own sessions and would outlive a killed pytest).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420, method="signal")]

#: Playwright's waits (ms): a GPU kernel's start on the local cluster, JupyterLab's first load.
UI_TIMEOUT = 120_000
#: The file browser polls its folder (every 10 s by default in JupyterLab 4); a few polls.
LISTING_TIMEOUT = 60_000
WRITTEN = "written.txt"


@pytest.fixture
def browser_tools() -> Any:
    """Playwright's sync API, once Chromium and Playwright are both there."""
    require_chromium()
    try:
        from playwright import sync_api
    except ImportError:
        unavailable("playwright is not installed")
    return sync_api


@dataclass
class Demo:
    url: str          # JupyterLab's base URL
    token: str        # JupyterLab's token (never put in an assertion message)
    notebooks: Path   # JupyterLab's root dir, the kernels' user volume
    output: Path      # the demo's terminal output
    logs: Path        # its processes' logs (cluster, gateway, jupyterlab)

    def shown(self, text: str) -> str:
        return text.replace(self.token, "<token>")

    def text(self) -> str:
        return self.shown(self.output.read_text(errors="replace"))

    def log_digest(self, limit: int = 60) -> str:
        """The first line of every warning and error in the demo's process logs: what a
        failure report must show first (a CI report keeps only the ends of a long output)."""
        lines = []
        for log in sorted(self.logs.glob("*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith(("[W ", "[E ", "[C ")):
                    lines.append(f"{log.stem}: {self.shown(line)[:300]}")
        return "\n".join(lines[-limit:]) or "(no warnings or errors logged)"


def demo_command() -> list[str]:
    """The console script a user runs (``make demo`` runs it too), from this environment."""
    script = Path(sys.executable).parent / "elastic-kernels"
    return [str(script)] if script.exists() else [sys.executable, "-m", "elastic_kernels"]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """``elastic-kernels demo`` on free loopback ports; stopped (and its tree with it) after."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "PYTHONSTARTUP", *LEAKY_ENV)}
    env.update(private_jupyter_dirs(home), HOME=str(home))
    # As a user runs it: the demo layers its JupyterLab defaults on the config path, which
    # JUPYTER_NO_CONFIG would hide (JUPYTER_CONFIG_DIR stays private).
    env.pop("JUPYTER_NO_CONFIG")
    lab_port = free_port()
    gateway_port = free_port()
    while gateway_port == lab_port:
        gateway_port = free_port()
    workdir = tmp_path / "demo"
    output = tmp_path / "demo.out"
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            [*demo_command(), "demo", "--workdir", str(workdir), "--lab-port", str(lab_port),
             "--gateway-port", str(gateway_port)],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True)
    started: set[tuple[int, str]] = set()
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C stops everything." not in output.read_text(errors="replace"):
            text = output.read_text(errors="replace")
            assert proc.poll() is None, f"demo exited {proc.returncode}:\n{text}"
            assert time.monotonic() < deadline, f"demo not ready:\n{text}"
            started |= descendants(proc.pid)
            time.sleep(0.2)
        started |= descendants(proc.pid)
        text = output.read_text(errors="replace")
        found = re.search(r"JupyterLab: (http://127\.0\.0\.1:\d+)/lab\?token=(\S+)", text)
        assert found, text
        token = found.group(2)
        yield Demo(found.group(1), token, workdir / "notebooks", output, workdir / "logs")
        started |= descendants(proc.pid)
        # Stopped as a user stops it: Ctrl-C, and nothing is left behind.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, output.read_text(errors="replace").replace(token, "<token>")
        assert "demo: stopped; no processes left behind." in output.read_text()
        # jupyter_server logs a kernel start's environment, JUPYTER_TOKEN included; the
        # notebook-server extension scrubs it.
        for log in (workdir / "logs").glob("*.log"):
            assert token not in log.read_text(errors="replace"), f"the token is in {log.name}"
    finally:
        if proc.poll() is None:
            started |= descendants(proc.pid)
            stop_group(proc, signal.SIGINT)
        leftover = kill_leftovers(started)
    assert not leftover, f"processes outlived the demo: {leftover}"


def test_new_gpu_notebook_reads_the_file_beside_it(browser_tools: Any, demo: Demo,
                                                   tmp_path: Path) -> None:
    expect = browser_tools.expect
    # expect() has its own default wait (5 s), apart from the context's: on a loaded 2-core
    # machine JupyterLab's first layout restore takes longer than that.
    expect.set_options(timeout=UI_TIMEOUT)
    example = demo.notebooks / EXAMPLE_DIR
    assert (example / "data.csv").read_text() == EXAMPLE_CSV, "the demo wrote its example"
    with browser_tools.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        # A fresh profile (user-data dir) per context, nothing shared with other runs.
        context = browser.new_context(viewport={"width": 1280, "height": 760})
        context.set_default_timeout(UI_TIMEOUT)
        page = context.new_page()
        try:
            # Log in through the form, so the token is in no URL (and no error message).
            page.goto(f"{demo.url}/login?next=%2Flab%2Ftree%2F{EXAMPLE_DIR}")
            page.locator("#password_input").fill(demo.token)
            page.locator("#login_submit").click()
            breadcrumbs = page.locator(".jp-FileBrowser .jp-BreadCrumbs")
            expect(breadcrumbs).to_contain_text(EXAMPLE_DIR)

            # A launcher for the file browser's folder; its "Python on GPU" notebook card.
            page.locator('.jp-FileBrowser-toolbar [data-command="launcher:create"]').click()
            expect(page.locator(".jp-Launcher-cwd:visible")).to_have_text(EXAMPLE_DIR)
            page.locator('.jp-LauncherCard[data-category="Notebook"]'
                         '[title="Python on GPU"]:visible').click()

            notebook = page.locator(".jp-NotebookPanel:visible")
            expect(notebook.locator(".jp-Toolbar-kernelName")).to_have_text("Python on GPU")
            expect(page.locator(".jp-DirListing-item[title*='Untitled']")).to_have_count(1)
            # JupyterLab skips a cell run while the session has no kernel yet: wait until the
            # kernel (its pod, through the gateway) is connected and idle.
            expect(page.locator(".jp-StatusBar-TextItem", has_text="Python on GPU | Idle")
                   ).to_be_visible()

            run_cell(expect, page, notebook, 0, 'print(open("data.csv").read())')
            output = notebook.locator(".jp-Cell").nth(0).locator(".jp-OutputArea-output")
            for line in EXAMPLE_CSV.splitlines():
                expect(output).to_contain_text(line)

            content = f"from {KERNEL_HOME}"
            run_cell(expect, page, notebook, 1, f'open("{WRITTEN}", "w").write("{content}")')
            expect(notebook.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output")
                   ).to_have_text(str(len(content)))
            # Not refreshed by hand: the listing shows it as it would to a user.
            listed = page.locator(".jp-DirListing-itemText", has_text=WRITTEN)
            expect(listed).to_be_visible(timeout=LISTING_TIMEOUT)
            assert (example / WRITTEN).read_text() == content
            page.screenshot(path=str(tmp_path / "jupyterlab.png"))
        except BaseException as e:
            try:
                page.screenshot(path=str(tmp_path / "failure.png"))
            finally:
                print(f"screenshot: {tmp_path / 'failure.png'}; demo output:\n{demo.text()}")
            if not isinstance(e, AssertionError):
                raise
            # Playwright's message ends in the page's whole accessibility tree: keep it in the
            # captured output, and raise its first line with the logs' warnings instead.
            print(f"failure in full:\n{e}")
            raise AssertionError(f"{str(e).splitlines()[0] if str(e) else e!r}\n"
                                 f"warnings and errors in the demo's logs:\n"
                                 f"{demo.log_digest()}") from None
        finally:
            context.close()
            browser.close()


def run_cell(expect: Any, page: Any, notebook: Any, index: int, code: str) -> None:
    """Type ``code`` into cell ``index`` as a user does and run it (Shift+Enter), then wait for
    its execution count: a run JupyterLab skipped would otherwise look like a slow one."""
    cell = notebook.locator(".jp-Cell").nth(index)
    cell.locator(".cm-content").click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-InputPrompt")).to_have_text(f"[{index + 1}]:")
