"""Stopping background tasks: the gateway's culler and GPU queue. (The local cluster keeps its
own copy, ``localcluster/tasks.py``: it imports nothing of the product.)"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished, so nothing it does outlives the stop.

    Its cancellation or a failure it ended with is swallowed: the task is being discarded, and
    the loops that run as tasks log their own failures as they happen.
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


async def cancel_all(tasks: list[asyncio.Future[Any]]) -> None:
    """Cancel every task first, then wait for each (so none waits on another being stopped)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        await cancel_and_wait(task)
