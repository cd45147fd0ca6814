"""Stopping what a test started as process groups, and proving nothing outlived it.

The browser tests start servers (the demo, a cluster, a gateway, JupyterLab) each in its own
session, so that one signal reaches everything below it; these are the two steps of their
teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from .test_packaging import alive

Process = tuple[int, str]  # (pid, start time), as test_packaging.descendants gives them


def stop_group(proc: subprocess.Popen[bytes], sig: int, grace: float = 30.0) -> None:
    """Send ``sig`` to the process group ``proc`` leads; SIGKILL the group after ``grace``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_leftovers(started: set[Process], grace: float = 10.0) -> list[Process]:
    """Give the processes ``grace`` seconds to go, kill those still there and return them (the
    test then fails naming them: they would have outlived it)."""
    deadline = time.monotonic() + grace
    while any(alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = [p for p in started if alive(p)]
    for pid, _ in leftover:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return leftover
