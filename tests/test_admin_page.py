"""The admin page at ``/elastic/`` (issue 17 item 4): admins only, and in Chromium it shows the
kernels, live from the status stream.

The browser is Debian's Chromium (``/usr/bin/chromium``) driven by Playwright from PyPI, as in
tests/test_browser_demo.py; ``playwright install`` is never run. The screenshot in
docs/images/admin-page.png (docs/admin-page.md) is the one this test takes with
UPDATE_SCREENSHOTS=1 (a normal run leaves the checkout alone).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from elastic_kernels.gateway.app import ElasticGatewayApp

from .browser import CHROMIUM, CHROMIUM_ARGS, require_chromium, unavailable
from .gateway.support import api, json_of
from .gatewayfixtures import (  # noqa: F401 - fixtures
    ALICE_TOKEN,
    BOB_TOKEN,
    OPS_TOKEN,
    GatewayFactory,
    make_users_gateway,
    users_file,
    users_gateway,
)

pytestmark = pytest.mark.timeout(150)

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "images" / "admin-page.png"
#: Playwright's waits (ms).
UI_TIMEOUT = 60_000


async def start(url: str, token: str, name: str = "python-cpu") -> str:
    response = await api(url, "POST", "/api/kernels", {"name": name}, token=token)
    assert response.code == 201, response.body
    return str(json_of(response)["id"])


async def test_admin_page_is_for_admins_only(users_gateway: ElasticGatewayApp) -> None:
    url = users_gateway.url
    for token in (ALICE_TOKEN, BOB_TOKEN):
        refused = await api(url, "GET", "/elastic/", token=token)
        assert refused.code == 403
        assert refused.headers["Content-Type"].startswith("application/json")
        assert json_of(refused) == {"message": "The admin page is for admins only",
                                    "reason": "Forbidden"}
    assert (await api(url, "GET", "/elastic/", token=None)).code == 403
    page = await api(url, "GET", "/elastic/", token=OPS_TOKEN)
    assert page.code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    html = page.body.decode()
    assert "<caption>" in html and 'src="admin.js"' in html and "http" not in html.replace(
        "http-equiv", "")  # nothing from another origin
    # The script and style sheet carry no data; the browser fetches them without a token.
    for name, kind in (("admin.js", "text/javascript"), ("admin.css", "text/css")):
        asset = await api(url, "GET", f"/elastic/{name}", token=None)
        assert asset.code == 200 and asset.headers["Content-Type"].startswith(kind)
    assert (await api(url, "GET", "/elastic/other.js", token=OPS_TOKEN)).code == 404


def _browser() -> Any:
    require_chromium()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("playwright is not installed")
    return async_playwright


async def test_admin_page_shows_the_kernels_live(users_gateway: ElasticGatewayApp,
                                                 tmp_path: Path) -> None:
    async_playwright = _browser()
    url = users_gateway.url
    alice = await start(url, ALICE_TOKEN)
    bob_gpu = await start(url, BOB_TOKEN, "python-gpu")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                   args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(UI_TIMEOUT)
            await page.goto(f"{url}elastic/?token={OPS_TOKEN}")
            await page.wait_for_selector("body[data-ready=true]")
            assert "token" not in page.url  # the script took it out of the address bar
            kernels = page.locator("#kernels tbody tr")
            await page.locator("#kernels", has_text=alice).wait_for()
            await page.locator("#kernels", has_text=bob_gpu).wait_for()
            assert await kernels.count() == 2
            assert await page.locator("#kernels caption").text_content() == \
                "Every kernel, by user (2)"
            headers = await page.locator("#kernels thead th").all_text_contents()
            assert headers[:4] == ["User", "Kernelspec", "Node", "Phase"]
            assert await page.locator("#nodes tbody tr").count() == 1
            assert "1 × nvidia.com/gpu on" in await page.locator(
                "#kernels tbody tr", has_text=bob_gpu).inner_text()

            # Live: a new kernel appears without a reload.
            again = await start(url, ALICE_TOKEN)
            await page.locator("#kernels", has_text=again).wait_for()
            await page.locator("#kernels caption", has_text="(3)").wait_for()
            shot = tmp_path / "admin-page.png"
            await page.screenshot(path=str(shot), full_page=True)
        finally:
            await browser.close()
    assert shot.stat().st_size > 0
    if os.environ.get("UPDATE_SCREENSHOTS"):  # the guide's picture, refreshed on request only
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
