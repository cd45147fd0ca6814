"""A tiny Jupyter kernel: the real wire protocol over ZeroMQ, almost no work, ~8 MB private memory.

It stands in for ipykernel where a benchmark needs hundreds of live kernels on one small machine
(``bench_scale``): ipykernel costs ~60 MB each.  Everything a gateway sees is real:

* it reads a Jupyter connection file (``-f FILE``), binds shell/control/stdin ROUTER, iopub PUB
  and heartbeat REP sockets on the given address and ports;
* every message is signed and checked with the file's key (HMAC, its ``signature_scheme``);
* ``kernel_info``, ``execute`` (the code is not run: ``pass`` semantics), ``comm_info``,
  ``is_complete``, ``interrupt`` and ``shutdown`` requests get protocol-5.3 replies, bracketed by
  ``busy``/``idle`` status on iopub with the request as parent, as ipykernel does;
* the heartbeat echoes; SIGTERM ends it.

Usage: ``python bench/tinykernel.py -f CONNECTION_FILE``.  Only pyzmq and the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import sys
import uuid
from datetime import datetime, timezone
from typing import Any

import zmq

DELIM = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"


class TinyKernel:
    def __init__(self, info: dict[str, Any]) -> None:
        key = info.get("key", "")
        self.key = key.encode() if isinstance(key, str) else bytes(key)
        scheme = info.get("signature_scheme", "hmac-sha256")
        self.digest = getattr(hashlib, scheme.split("-", 1)[1]) if self.key else None
        self.session = uuid.uuid4().hex
        self.counter = 0
        self.execution_count = 0
        self.ctx = zmq.Context(io_threads=1)
        base = f"{info.get('transport', 'tcp')}://{info['ip']}:"
        self.shell = self._bind(zmq.ROUTER, base + str(info["shell_port"]))
        self.control = self._bind(zmq.ROUTER, base + str(info["control_port"]))
        self.stdin = self._bind(zmq.ROUTER, base + str(info["stdin_port"]))
        self.iopub = self._bind(zmq.PUB, base + str(info["iopub_port"]))
        self.hb = self._bind(zmq.REP, base + str(info["hb_port"]))
        self.running = True

    def _bind(self, kind: int, url: str) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.linger = 0
        sock.bind(url)
        return sock

    # -- wire format --------------------------------------------------------------------------

    def _sign(self, parts: list[bytes]) -> bytes:
        if self.digest is None:
            return b""
        h = hmac.new(self.key, digestmod=self.digest)
        for p in parts:
            h.update(p)
        return h.hexdigest().encode()

    def _header(self, msg_type: str) -> dict[str, Any]:
        self.counter += 1
        return {"msg_id": f"{self.session}_{os.getpid()}_{self.counter}", "msg_type": msg_type,
                "username": "tinykernel", "session": self.session, "version": PROTOCOL_VERSION,
                "date": datetime.now(timezone.utc).isoformat()}

    def send(self, sock: zmq.Socket, msg_type: str, content: dict[str, Any],
             parent: dict[str, Any], idents: list[bytes] | None = None) -> None:
        parts = [json.dumps(self._header(msg_type)).encode(), json.dumps(parent).encode(),
                 b"{}", json.dumps(content).encode()]
        sock.send_multipart([*(idents or []), DELIM, self._sign(parts), *parts])

    def recv(self, sock: zmq.Socket) -> tuple[list[bytes], dict[str, Any]] | None:
        frames = sock.recv_multipart()
        try:
            i = frames.index(DELIM)
        except ValueError:
            return None
        idents, signature, parts = frames[:i], frames[i + 1], frames[i + 2:i + 6]
        if len(parts) < 4 or not hmac.compare_digest(signature, self._sign(parts)):
            return None  # unsigned or forged: ignored, as ipykernel does
        header = json.loads(parts[0])
        return idents, {"header": header, "content": json.loads(parts[3]),
                        "msg_type": header.get("msg_type", "")}

    # -- handlers -----------------------------------------------------------------------------

    def status(self, state: str, parent: dict[str, Any]) -> None:
        self.send(self.iopub, "status", {"execution_state": state}, parent,
                  [b"kernel.%s.status" % self.session.encode()])

    def handle(self, sock: zmq.Socket) -> None:
        got = self.recv(sock)
        if got is None:
            return
        idents, msg = got
        parent = msg["header"]
        kind = msg["msg_type"]
        self.status("busy", parent)
        if kind == "kernel_info_request":
            self.send(sock, "kernel_info_reply", {
                "status": "ok", "protocol_version": PROTOCOL_VERSION,
                "implementation": "tinykernel", "implementation_version": "0.1",
                "language_info": {"name": "python", "version": sys.version.split()[0],
                                  "mimetype": "text/x-python", "file_extension": ".py"},
                "banner": "tinykernel: a protocol stand-in for benchmarks", "help_links": []},
                parent, idents)
        elif kind == "execute_request":
            self.execution_count += 1
            self.send(self.iopub, "execute_input",
                      {"code": msg["content"].get("code", ""),
                       "execution_count": self.execution_count}, parent,
                      [b"kernel.%s.execute_input" % self.session.encode()])
            self.send(sock, "execute_reply", {"status": "ok",
                                              "execution_count": self.execution_count,
                                              "user_expressions": {}, "payload": []},
                      parent, idents)
        elif kind == "comm_info_request":
            self.send(sock, "comm_info_reply", {"status": "ok", "comms": {}}, parent, idents)
        elif kind == "is_complete_request":
            self.send(sock, "is_complete_reply", {"status": "complete"}, parent, idents)
        elif kind == "interrupt_request":
            self.send(sock, "interrupt_reply", {"status": "ok"}, parent, idents)
        elif kind == "shutdown_request":
            restart = bool(msg["content"].get("restart"))
            self.send(sock, "shutdown_reply", {"status": "ok", "restart": restart}, parent,
                      idents)
            self.running = False
        self.status("idle", parent)

    def run(self) -> None:
        poller = zmq.Poller()
        for sock in (self.shell, self.control, self.stdin, self.hb):
            poller.register(sock, zmq.POLLIN)
        while self.running:
            try:
                events = dict(poller.poll(1000))
            except zmq.ZMQError:
                break
            if self.hb in events:
                self.hb.send_multipart(self.hb.recv_multipart())
            if self.control in events:
                self.handle(self.control)
            if self.shell in events:
                self.handle(self.shell)
            if self.stdin in events:
                self.stdin.recv_multipart()  # no input is ever requested
        self.ctx.destroy(linger=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a tiny Jupyter kernel for benchmarks")
    parser.add_argument("-f", "--connection-file", required=True)
    args = parser.parse_args(argv)
    with open(args.connection_file) as fh:
        info = json.load(fh)
    kernel = TinyKernel(info)

    def stop(_signum: int, _frame: Any) -> None:
        kernel.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts come as messages
    kernel.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
