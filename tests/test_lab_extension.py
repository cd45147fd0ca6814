"""The JupyterLab extension in a browser (issue 17 items 1 and 5): while bob holds the only GPU,
alice's GPU notebook shows its place in the queue in the status bar, then, once bob's idle kernel
is reclaimed for her, where its kernel runs, and her cell runs; a cull warning's "Keep alive"
moves the kernel's idle deadline (and the note after the cull says why); and a start that fails
(an image that cannot be pulled) shows the pod's events on demand.

One stack for the module, as a user runs it, each piece a process in its own session on free
loopback ports with private Jupyter directories: the local cluster (one node, one simulated GPU),
the gateway (users file: alice and bob; a culler pass every 0.5 s) and JupyterLab (``python -m
jupyterlab``, the extension installed by ``pip install -e .``, its notebook server relaying the
gateway with alice's token). Debian's Chromium (``/usr/bin/chromium``) drives it through
Playwright from PyPI; ``playwright install`` is never run. The tests share one page and run in
order. Screenshots go to the test's directory; with UPDATE_SCREENSHOTS=1 they also replace the
user guide's (docs/images/lab-*.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from elastic_kernels.demo import gateway_client_flags
from elastic_kernels.testing import free_port

from .browser import CHROMIUM, CHROMIUM_ARGS, require_chromium, unavailable
from .conftest import derived_kernelspec
from .gatewayproc import LEAKY_ENV, private_jupyter_dirs
from .test_browser_demo import run_cell
from .processtree import kill_leftovers, stop_group
from .test_packaging import descendants

# signal, not the suite's thread method: a timeout must still run the finally that stops the
# stack's processes (each in its own session, they would outlive a killed pytest).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300, method="signal")]

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
#: Playwright's waits (ms): a kernel's start on the local cluster, JupyterLab's first load.
UI_TIMEOUT = 90_000
ALICE = "alice-" + uuid.uuid4().hex
BOB = "bob-" + uuid.uuid4().hex
QUICK = "python-quick"
QUICK_NAME = "Python, culled quickly"
BROKEN = "broken-image"
BROKEN_NAME = "Python, broken image"
HOLDER = "python-gpu-holder"
AGED = "python-aged"
AGED_NAME = "Python, short-lived"
#: Its maxAge: the warning comes at once (the lead time is longer), the cull soon after.
MAX_AGE = "35s"
#: The kernelspec whose idle kernels are culled soon, and the warning's lead time (minutes).
IDLE_TIMEOUT = "40s"
WARNING_MINUTES = 0.5


@dataclass
class Stack:
    lab: str          # JupyterLab's base URL
    lab_token: str
    gateway: str      # the gateway's base URL
    logs: Path
    kubeconfig: Path
    admin_token: str  # the gateway's admin (the admin page)
    plain_lab: str    # a second JupyterLab on the same gateway, with the extension disabled

    def log_tail(self) -> str:
        parts = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace")[-3000:]
            for secret in (self.lab_token, self.admin_token, ALICE, BOB):
                text = text.replace(secret, "<token>")
            parts.append(f"--- {log.name}\n{text}")
        return "\n".join(parts)


def gateway_api(stack: Stack, method: str, path: str, token: str,
                body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        stack.gateway + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_http(url: str, headers: dict[str, str], proc: subprocess.Popen[bytes], log: Path,
              timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} not ready:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Cluster, gateway and JupyterLab; every process they started is gone afterwards."""
    root = tmp_path_factory.mktemp("lab-extension")
    logs = root / "logs"
    logs.mkdir()
    home = root / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "PYTHONSTARTUP", *LEAKY_ENV)}
    env.update(private_jupyter_dirs(home), HOME=str(home))
    # JupyterLab's news question would cover the page; the warning comes 30 s ahead here. Both
    # are default settings (labconfig/default_setting_overrides.json on the config path, which
    # JUPYTER_NO_CONFIG would hide; JUPYTER_CONFIG_DIR stays private).
    env.pop("JUPYTER_NO_CONFIG")
    env["JUPYTER_CONFIG_PATH"] = str(home / "lab-defaults")
    labconfig = home / "lab-defaults" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "default_setting_overrides.json").write_text(json.dumps({
        "@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                        "checkForUpdates": False},
        "elastic-kernels:plugin": {"cullWarningMinutes": WARNING_MINUTES}}))
    quick = derived_kernelspec("python-cpu", QUICK, displayName=QUICK_NAME)
    quick["spec"]["culling"] = {"idleTimeout": IDLE_TIMEOUT, "cullConnected": True}
    broken = derived_kernelspec("python-cpu", BROKEN, displayName=BROKEN_NAME,
                                image="example.org/does-not-exist:1")
    extra = root / "kernelspecs.yaml"
    # Bob's GPU kernels: not reclaimed until the test lets them be (reclaimAfter, patched).
    holder = derived_kernelspec("python-gpu", HOLDER, displayName="Python on GPU, bob's")
    holder["spec"]["culling"] = {"reclaimAfter": "1h", "onCull": "Delete"}
    aged = derived_kernelspec("python-cpu", AGED, displayName=AGED_NAME)
    aged["spec"]["culling"] = {"maxAge": MAX_AGE}
    extra.write_text(yaml.safe_dump_all([quick, broken, holder, aged]))
    users = root / "users.yaml"
    users.write_text(json.dumps({"tokens": [{"user": "alice", "token": ALICE},
                                            {"user": "bob", "token": BOB}]}))
    notebooks = root / "notebooks"
    notebooks.mkdir()
    kubeconfig = root / "kubeconfig"
    admin_token = "admin-" + uuid.uuid4().hex
    lab_token = "lab-" + uuid.uuid4().hex
    gateway_port, lab_port = free_port(), free_port()
    while lab_port == gateway_port:
        lab_port = free_port()
    python = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    started: set[tuple[int, str]] = set()

    def start(name: str, cmd: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "wb") as sink:
            proc = subprocess.Popen(cmd, cwd=root, env={**env, **extra_env},
                                    stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        cluster = start("cluster", [
            python, "-m", "elastic_kernels", "cluster", "--kubeconfig", str(kubeconfig),
            "--workdir", str(root / "pods"), "--nodes", "1", "--gpus-per-node", "1",
            "--with-examples", "--apply", str(extra)])
        deadline = time.monotonic() + 120
        while "local cluster:" not in (logs / "cluster.log").read_text(errors="replace"):
            assert cluster.poll() is None, (logs / "cluster.log").read_text()
            assert time.monotonic() < deadline, (logs / "cluster.log").read_text()
            time.sleep(0.2)
        gateway = start("gateway", [
            python, "-m", "elastic_kernels", "gateway", "--kubeconfig", str(kubeconfig),
            "--ip", "127.0.0.1", "--port", str(gateway_port), f"--users-file={users}",
            "--CullingDefaults.interval=0.5"], ELASTIC_KERNELS_TOKEN=admin_token)
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_http(f"{gateway_url}/api/kernelspecs", {"Authorization": f"token {admin_token}"},
                  gateway, logs / "gateway.log")
        lab = start("jupyterlab", [
            python, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1",
            "--port", str(lab_port), "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={notebooks}", f"--gateway-url={gateway_url}",
            *gateway_client_flags(), "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *(["--allow-root"] if os.geteuid() == 0 else [])],
            JUPYTER_TOKEN=lab_token, JUPYTER_GATEWAY_AUTH_TOKEN=ALICE)
        lab_url = f"http://127.0.0.1:{lab_port}"
        wait_http(f"{lab_url}/api/status", {"Authorization": f"token {lab_token}"}, lab,
                  logs / "jupyterlab.log")
        # The same JupyterLab and gateway, the extension disabled as an admin would disable it
        # (labconfig/page_config.json): what a user without it sees.
        plain_config = home / "plain-config"
        (plain_config / "labconfig").mkdir(parents=True)
        (plain_config / "labconfig" / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"elastic-kernels": True}}))
        plain_port = free_port()
        plain = start("plain-jupyterlab", [
            python, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1",
            "--port", str(plain_port), "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={notebooks}", f"--gateway-url={gateway_url}",
            *gateway_client_flags(), "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *(["--allow-root"] if os.geteuid() == 0 else [])],
            JUPYTER_TOKEN=lab_token, JUPYTER_GATEWAY_AUTH_TOKEN=ALICE,
            JUPYTER_CONFIG_PATH=os.pathsep.join([str(plain_config), str(home / "lab-defaults")]))
        plain_url = f"http://127.0.0.1:{plain_port}"
        wait_http(f"{plain_url}/api/status", {"Authorization": f"token {lab_token}"}, plain,
                  logs / "plain-jupyterlab.log")
        for proc in procs:
            started |= descendants(proc.pid)
        found = Stack(lab_url, lab_token, gateway_url, logs, kubeconfig, admin_token, plain_url)
        yield found
        if os.environ.get("LAB_EXTENSION_LOGS"):  # for debugging a failure of this module
            print(found.log_tail())
    finally:
        for proc in procs:
            started |= descendants(proc.pid)
        for proc in reversed(procs):  # JupyterLab, the gateway, then the cluster
            stop_group(proc, signal.SIGTERM)
        leftover = kill_leftovers(started)
    assert not leftover, f"processes outlived the test: {leftover}"


@pytest.fixture(scope="module")
def page(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One logged-in JupyterLab page for the module's tests, in order."""
    require_chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    expect.set_options(timeout=UI_TIMEOUT)  # a kernel start, a cull: not seconds
    shots = tmp_path_factory.mktemp("screenshots")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 720})
        context.set_default_timeout(UI_TIMEOUT)
        lab = context.new_page()
        lab.shots = shots  # type: ignore[attr-defined]
        try:
            # Log in through the form, so the token is in no URL.
            lab.goto(f"{stack.lab}/login?next=%2Flab")
            lab.locator("#password_input").fill(stack.lab_token)
            lab.locator("#login_submit").click()
            lab.locator(".jp-LauncherCard").first.wait_for()
            yield lab
        except BaseException:
            print(stack.log_tail())
            raise
        finally:
            context.close()
            browser.close()


def screenshot(page: Any, name: str) -> None:
    """The test's screenshot; the user guide's too with UPDATE_SCREENSHOTS=1."""
    path = page.shots / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    if os.environ.get("UPDATE_SCREENSHOTS"):
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, IMAGES / f"{name}.png")


def new_notebook(page: Any, display_name: str) -> Any:
    """A notebook from the launcher's card for ``display_name``; its panel."""
    page.locator('.jp-FileBrowser-toolbar [data-command="launcher:create"]').click()
    page.locator(f'.jp-LauncherCard[data-category="Notebook"][title="{display_name}"]:visible'
                 ).click()
    return page.locator(".jp-NotebookPanel:visible")


def status_item(page: Any) -> Any:
    return page.locator(".jp-StatusBar-Widget .ek-KernelStatus")


def toast(page: Any, text: str) -> Any:
    return page.locator(".jp-Notification-Toast-Container, .Toastify__toast",
                        has_text=text).first


@pytest.mark.kubectl
def test_status_bar_shows_the_queue_then_the_gpu(stack: Stack, page: Any) -> None:
    from playwright.sync_api import expect

    code, held = gateway_api(stack, "POST", "/api/kernels", BOB, {"name": HOLDER})
    assert code == 201, held  # bob holds the one GPU
    try:
        notebook = new_notebook(page, "Python on GPU")
        item = status_item(page)
        expect(item).to_have_text("Python on GPU: waiting for 1 nvidia.com/gpu: 1st in queue")
        screenshot(page, "lab-queued")
        # The admin page lists both: bob's kernel holding the GPU, alice's waiting for it.
        admin = page.context.new_page()
        admin.shots = page.shots
        try:
            admin.goto(f"{stack.gateway}/elastic/?token={stack.admin_token}")
            admin.wait_for_selector("body[data-ready=true]")
            expect(admin.locator("#kernels tbody tr", has_text="bob")).to_have_count(1)
            expect(admin.locator("#kernels tbody tr", has_text="alice")).to_have_count(1)
            expect(admin.locator("#kernels tbody tr", has_text="bob")).to_contain_text(
                "1 × nvidia.com/gpu on")
            screenshot(admin, "lab-admin-page")
        finally:
            admin.close()
        # Bob's idle kernel may now be reclaimed for a waiting user: alice is one.
        kubectl = Path(sys.executable).parent / "kubectl"
        subprocess.run([str(kubectl), f"--kubeconfig={stack.kubeconfig}", "patch",
                        "jupyterkernelspec", HOLDER, "--type=merge",
                        "-p", '{"spec": {"culling": {"reclaimAfter": "1s"}}}'],
                       check=True, capture_output=True, timeout=60)
        # The GPU is alice's now: the item says which node it is on, and her cell runs.
        expect(item).to_have_text("1 × nvidia.com/gpu on local-node-0")
    finally:
        gateway_api(stack, "DELETE", f"/api/kernels/{held['id']}", BOB)
    expect(page.locator(".jp-StatusBar-TextItem", has_text="Python on GPU | Idle")
           ).to_be_visible()
    run_cell(expect, page, notebook, 0, "print(6 * 7)")
    expect(notebook.locator(".jp-Cell").nth(0).locator(".jp-OutputArea-output")
           ).to_have_text("42")
    code, gone = gateway_api(stack, "GET", f"/api/kernels/{held['id']}", BOB)
    assert code == 404 and gone["reason"] == "ReclaimedForWaitingKernel", gone
    screenshot(page, "lab-running")

    # A click on the item: the kernel's events and its launcher's log, on demand.
    item.click()
    details = page.locator(".jp-Dialog .ek-Diagnostics")
    expect(details.locator("h3")).to_contain_text("Launcher log of kernel-")
    expect(details.locator(".ek-Diagnostics-log")).not_to_be_empty()
    expect(details.locator("tbody tr", has_text="Scheduled").first).to_be_visible()
    page.locator(".jp-Dialog").get_by_role("button", name="Close").click()
    kernels = gateway_api(stack, "GET", "/api/elastic/kernels", ALICE)[1]["kernels"]
    (mine,) = [k for k in kernels if k["kernelspec"] == "python-gpu"]
    assert gateway_api(stack, "DELETE", f"/api/kernels/{mine['id']}", ALICE)[0] == 204


def quick_kernel(stack: Stack) -> dict[str, Any]:
    kernels = gateway_api(stack, "GET", "/api/elastic/kernels", ALICE)[1]["kernels"]
    (found,) = [k for k in kernels if k["kernelspec"] == QUICK]
    return dict(found)


def test_keep_alive_postpones_the_cull(stack: Stack, page: Any) -> None:
    from playwright.sync_api import expect

    new_notebook(page, QUICK_NAME)
    expect(status_item(page)).to_contain_text("250m CPU, 512Mi memory on local-node-0")
    warning = toast(page, f'Kernel "{QUICK_NAME}"')
    expect(warning).to_contain_text("will be shut down for being idle")
    expect(warning).to_contain_text("its variables will be lost")
    screenshot(page, "lab-cull-warning")
    before = quick_kernel(stack)["cull"]["idle_deadline"]
    warning.get_by_role("button", name="Keep alive").click()
    kept = toast(page, f'Kernel "{QUICK_NAME}" kept alive.')
    expect(kept).to_be_visible()
    after = quick_kernel(stack)["cull"]["idle_deadline"]
    assert after > before, (before, after)
    kept.get_by_role("button", name="Hide notification").click()

    # Left alone, it is culled at its (new) deadline, and the note says why.
    note = toast(page, "shut down after")
    expect(note).to_contain_text(re.compile(f'Kernel "{QUICK_NAME}" of Untitled\\d*\\.ipynb: '
                                            r"shut down after \d+s idle\."))
    expect(note).not_to_have_class(re.compile("Toastify--animate"))  # in place, for the picture
    screenshot(page, "lab-culled")
    page.locator(".jp-Notification-Toast-Close, .Toastify__close-button").first.click()


def test_a_max_age_cull_is_announced_without_keep_alive(stack: Stack, page: Any) -> None:
    """maxAge ends a kernel whatever it does: the warning says so, offers no Keep alive (it
    could not postpone anything), and the note afterwards gives the reason."""
    from playwright.sync_api import expect

    new_notebook(page, AGED_NAME)
    warning = toast(page, f'Kernel "{AGED_NAME}"')
    expect(warning).to_contain_text(f"will be shut down at its maximum age ({MAX_AGE})")
    expect(warning).to_contain_text(f"maximum age ({MAX_AGE}); its variables will be lost")
    expect(warning.get_by_role("button", name="Keep alive")).to_have_count(0)
    note = toast(page, ": shut down at its maximum age")
    expect(note).to_contain_text(re.compile(f'Kernel "{AGED_NAME}" of Untitled\\d*\\.ipynb: '
                                            r"shut down at its maximum age \(\d+s\)\."))
    page.locator(".jp-Notification-Toast-Close, .Toastify__close-button").first.click()


def test_failed_start_shows_the_pod_events(stack: Stack, page: Any) -> None:
    from playwright.sync_api import expect

    new_notebook(page, BROKEN_NAME)
    # JupyterLab's own dialog says the start failed, with the gateway's message.
    dialog = page.locator(".jp-Dialog", has_text="Error Starting Kernel")
    expect(dialog).to_contain_text("ErrImagePull")
    dialog.locator(".jp-Dialog-footer button").last.click()
    # Then it offers another kernel: none, for now.
    chooser = page.locator(".jp-Dialog", has_text="Select Kernel")
    chooser.get_by_role("button", name="No Kernel").click()
    # The notification adds the pod's events on demand.
    failure = toast(page, f'Kernel "{BROKEN_NAME}" did not start')
    expect(failure).to_contain_text("ErrImagePull")
    failure.get_by_role("button", name="Show details").click()
    details = page.locator(".jp-Dialog .ek-Diagnostics")
    expect(details.locator("caption")).to_contain_text("Events")
    expect(details).to_contain_text("does-not-exist")
    screenshot(page, "lab-start-failed")
    # The scheduler's Event on the pod is among them.
    assert any(cells[2] == "Scheduled" and cells[3].startswith("Pod/")
               for cells in (row.locator("td").all_text_contents()
                             for row in details.locator("tbody tr").all())), details.inner_text()
    page.locator(".jp-Dialog").get_by_role("button", name="Close").click()


def test_without_the_extension_everything_works_and_errors_stay_readable(
        stack: Stack, page: Any) -> None:
    """A JupyterLab with the extension disabled, on the same gateway: kernels start and run,
    a failed start is JupyterLab's own dialog with the gateway's reason, and none of the
    extension's parts is there. The extension adds; it replaces nothing."""
    from playwright.sync_api import expect

    plain = page.context.new_page()
    plain.shots = page.shots
    try:
        # ?reset: not the workspace the other JupyterLab saved (the same Jupyter paths).
        plain.goto(f"{stack.plain_lab}/login?next=%2Flab%3Freset")
        plain.locator("#password_input").fill(stack.lab_token)
        plain.locator("#login_submit").click()
        plain.locator(".jp-LauncherCard").first.wait_for()
        notebook = new_notebook(plain, QUICK_NAME)
        expect(plain.locator(".jp-StatusBar-TextItem", has_text=f"{QUICK_NAME} | Idle")
               ).to_be_visible()
        run_cell(expect, plain, notebook, 0, "print(6 * 7)")
        expect(notebook.locator(".jp-Cell").nth(0).locator(".jp-OutputArea-output")
               ).to_have_text("42")
        assert plain.locator(".ek-KernelStatus").count() == 0  # the extension is not there
        new_notebook(plain, BROKEN_NAME)
        dialog = plain.locator(".jp-Dialog", has_text="Error Starting Kernel")
        expect(dialog).to_contain_text("ErrImagePull")
        expect(dialog).to_contain_text("example.org/does-not-exist:1")
        screenshot(plain, "lab-plain-start-failed")
        dialog.locator(".jp-Dialog-footer button").last.click()
        plain.locator(".jp-Dialog", has_text="Select Kernel").get_by_role(
            "button", name="No Kernel").click()
    finally:
        plain.close()
    for kernel in gateway_api(stack, "GET", "/api/elastic/kernels", ALICE)[1]["kernels"]:
        if kernel["kernelspec"] == QUICK:
            gateway_api(stack, "DELETE", f"/api/kernels/{kernel['id']}", ALICE)
