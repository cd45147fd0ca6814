"""One kernel message larger than ``max_kernel_message_bytes``: dropped, the sockets survive.

Through an in-process gateway on the local cluster (kernels are local processes, so this
process's RSS is the gateway's plus the test client's): a cell writes 80 MiB to stdout in one
message against a 16 MiB bound.  Without the bound every subscribed gateway socket (the
activity watcher, the websocket's iopub) receives it whole; with the bound alone, libzmq drops
those connections for ever.  The client must get a notice instead, then normal output and
replies, and the gateway must still track the kernel's busy/idle state.
"""

from __future__ import annotations

import os
import threading
import typing as t

import pytest

from bench.common import proc_rss_mib

from .conftest import GatewayFactory
from .gateway.support import KernelWS, api, json_of
from .gatewayproc import eventually

pytestmark = pytest.mark.timeout(120)

BOUND_MIB = 16
BIG_MIB = 80


class PeakRss:
    """This process's peak RSS over a block, sampled every 5 ms by a thread."""

    def __init__(self) -> None:
        self.start = self.peak = proc_rss_mib(os.getpid())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, proc_rss_mib(os.getpid()))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self._stop.set()
        self._thread.join(5)


async def test_oversized_message_is_dropped_and_output_continues(
        make_cluster_gateway: GatewayFactory) -> None:
    gateway = await make_cluster_gateway(
        f"--ElasticMappingKernelManager.max_kernel_message_bytes={BOUND_MIB * 2**20}")
    response = await api(gateway.url, "POST", "/api/kernels", {"name": "python-cpu"})
    assert response.code == 201, response.body
    kernel_id = str(json_of(response)["id"])
    km = gateway.kernel_manager.get_kernel(kernel_id)
    ws = await KernelWS.open(gateway.url, kernel_id)
    try:
        assert (await ws.execute("import sys"))["reply"]["status"] == "ok"
        with PeakRss() as rss:
            big_id = ws.send("execute_request", {"code": (
                f"sys.stdout.write('y' * ({BIG_MIB} * 2**20)); sys.stdout.flush()\n"
                "print('after big', flush=True)\n"), "silent": False})
            notices = ""
            largest = 0
            replied = False
            # The notice, and the rest of the big cell (its reply at least), in either order.
            while f"larger than {BOUND_MIB} MiB" not in notices or not replied:
                msg = await ws.recv(60)
                assert msg is not None, "websocket closed"
                if msg["msg_type"] == "stream":
                    largest = max(largest, len(msg["content"]["text"]))
                    if msg["content"]["name"] == "stderr":
                        notices += msg["content"]["text"]
                replied = replied or (msg["msg_type"] == "execute_reply"
                                      and msg["parent_header"].get("msg_id") == big_id)
        assert largest < BOUND_MIB * 2**20
        growth = rss.peak - rss.start
        assert growth < BIG_MIB / 2, f"RSS grew by {growth:.0f} MiB"

        # The activity watcher's socket was re-connected too: it saw (or re-learnt) that the
        # big cell ended, before anything else ran, and sees busy and idle again.
        async def idle() -> bool:
            return km.execution_state == "idle"

        await eventually(idle, timeout=30)
        after = await ws.execute("print('after')", timeout=30)
        assert after["reply"]["status"] == "ok" and after["stdout"] == "after\n"
        await eventually(idle, timeout=30)
        ws.send("execute_request", {"code": "import time; time.sleep(3)", "silent": False})

        async def busy() -> bool:
            return km.execution_state == "busy"

        await eventually(busy, timeout=30)
        await eventually(idle, timeout=30)
    finally:
        ws.close()
