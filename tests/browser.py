"""Debian's Chromium for the browser tests, and what happens when it is missing.

Playwright from PyPI drives ``/usr/bin/chromium`` (``.ci/run`` installs Debian's package); a
browser is never downloaded. Without Chromium or Playwright a test skips on a developer's
machine, saying how to install them, and fails under ``CI=true``, where it must run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
INSTALL_HINT = ("Debian's chromium is needed for the browser tests: "
                "apt-get install -y --no-install-recommends chromium (as root; .ci/run does it "
                "in CI), and pip install -e '.[test]' for Playwright. Never `playwright install`.")


def unavailable(why: str) -> None:
    """Skip (a developer's machine) or fail (CI) for a missing browser piece."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: this test must run in CI). {INSTALL_HINT}")
    pytest.skip(f"{why}. {INSTALL_HINT}")


def require_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} is missing")
