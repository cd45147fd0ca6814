"""Running one container instance as a host process group, and keeping its log.

A container is modelled by a process started in its own session (so it and everything it forks
form one process group that can be signalled as a unit, like a container's PID namespace),
with stdout and stderr merged into a bounded, line-oriented log as the container runtime's log
file would be. Everything here is asyncio and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from datetime import datetime, timezone
from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

DEFAULT_LOG_LIMIT = 1024 * 1024  # bytes kept per container instance
_READ_CHUNK = 64 * 1024


def rfc3339_nano(ts: float) -> str:
    """Timestamps as ``kubectl logs --timestamps`` prints them."""
    dt = datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}000Z"


class LogBuffer:
    """The last ``limit`` bytes of one container instance's output, as timestamped lines."""

    def __init__(self, limit: int = DEFAULT_LOG_LIMIT) -> None:
        self.limit = limit
        self._lines: deque[tuple[float, bytes]] = deque()
        self._first = 0  # absolute number of self._lines[0], so followers survive trimming
        self._size = 0
        self._partial = b""
        self._partial_ts = 0.0
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    def append(self, data: bytes, ts: float | None = None) -> None:
        if not data:
            return
        now = ts if ts is not None else time.time()
        if not self._partial:
            self._partial_ts = now
        *complete, self._partial = (self._partial + data).split(b"\n")
        for line in complete:
            self._push(self._partial_ts, line + b"\n")
            self._partial_ts = now
        if len(self._partial) > self.limit:  # a huge line without newline: keep its tail
            self._push(self._partial_ts, self._partial[-self.limit:])
            self._partial = b""
        self._notify()

    def close(self) -> None:
        """The instance ended: an unterminated last line becomes a line of its own."""
        if self._partial:
            self._push(self._partial_ts, self._partial)
            self._partial = b""
        self._closed = True
        self._notify()

    def _push(self, ts: float, line: bytes) -> None:
        self._lines.append((ts, line))
        self._size += len(line)
        while self._size > self.limit and self._lines:
            _, old = self._lines.popleft()
            self._size -= len(old)
            self._first += 1

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def lines(self, *, tail_lines: int | None = None, since: float | None = None
              ) -> list[tuple[float, bytes]]:
        items = list(self._lines)
        if self._partial:
            items.append((self._partial_ts, self._partial))
        if since is not None:
            items = [item for item in items if item[0] >= since]
        if tail_lines is not None:
            items = items[-tail_lines:] if tail_lines > 0 else []
        return items

    def text(self, *, timestamps: bool = False, tail_lines: int | None = None,
             since: float | None = None, limit_bytes: int | None = None) -> str:
        out = b"".join((rfc3339_nano(ts).encode() + b" " + line) if timestamps else line
                       for ts, line in self.lines(tail_lines=tail_lines, since=since))
        if limit_bytes is not None:
            out = out[:limit_bytes]
        return out.decode("utf-8", errors="replace")

    async def follow(self, *, timestamps: bool = False, tail_lines: int | None = None
                     ) -> AsyncIterator[str]:
        """Buffered complete lines, then each new line as it comes, until the instance ends."""
        end = self._first + len(self._lines)
        if tail_lines is None:
            index = self._first
        else:
            index = max(self._first, end - max(tail_lines, 0))
        while True:
            changed = self._changed
            index = max(index, self._first)
            end = self._first + len(self._lines)
            if index < end:
                batch = list(self._lines)[index - self._first:]
                index = end
                for ts, line in batch:
                    yield _render(ts, line, timestamps)
                continue
            if self._closed:
                return
            await changed.wait()


def _render(ts: float, line: bytes, timestamps: bool) -> str:
    text = line.decode("utf-8", errors="replace")
    return f"{rfc3339_nano(ts)} {text}" if timestamps else text


class StartFailure(Exception):
    """The runtime could not exec the command; ``message`` is worded like runc's error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def group_has_live_members(pgid: int) -> bool:
    """Whether any non-zombie process is in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = "/proc"
    if not os.path.isdir(proc):
        return True  # no /proc: a member exists and we cannot tell whether it is a zombie
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def runc_exec_error(argv0: str, why: str) -> str:
    return ("failed to create containerd task: failed to create shim task: OCI runtime create "
            "failed: runc create failed: unable to start container process: "
            f'exec: "{argv0}": {why}: unknown')


class ContainerProcess:
    """One running container instance: a process group plus the task copying its output."""

    def __init__(self, proc: asyncio.subprocess.Process, log_buffer: LogBuffer) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log = log_buffer
        self._pump = asyncio.ensure_future(self._copy_output())
        self._exit: asyncio.Future[int] = asyncio.ensure_future(self._wait())
        self.signalled: int | None = None

    @classmethod
    async def start(cls, argv: list[str], *, env: dict[str, str], cwd: str,
                    log_buffer: LogBuffer) -> ContainerProcess:
        """Exec ``argv`` in a new session; raises StartFailure like the runtime would report."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True, limit=_READ_CHUNK)
        except FileNotFoundError:
            raise StartFailure(runc_exec_error(argv[0], "no such file or directory")) from None
        except PermissionError:
            raise StartFailure(runc_exec_error(argv[0], "permission denied")) from None
        except OSError as e:
            raise StartFailure(runc_exec_error(argv[0], e.strerror or str(e))) from None
        return cls(proc, log_buffer)

    async def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                chunk = await self.proc.stdout.read(_READ_CHUNK)
                if not chunk:
                    break
                self.log.append(chunk)
        except (asyncio.CancelledError, ConnectionError):
            pass
        except Exception:  # pragma: no cover - keep the container alive whatever the pipe does
            log.exception("reading output of pid %s failed", self.pid)

    async def _wait(self) -> int:
        code = await self.proc.wait()
        # The main process is gone: like a container's PID 1 exiting, the rest of the group dies.
        self._signal_group(signal.SIGKILL)
        await self._group_gone()
        try:
            await asyncio.wait_for(asyncio.shield(self._pump), timeout=1.0)
        except asyncio.TimeoutError:
            # Something outside the group still holds the pipe; stop reading it.
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self.log.close()
        return code

    async def _group_gone(self, limit: float = 2.0) -> None:
        """Wait (briefly) until no live member of the killed group is left.

        There is no event for the death of processes that are not our children, so this checks
        a few times. Zombies count as gone: they hold nothing but a pid until init reaps them.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while loop.time() < end:
            if not await asyncio.to_thread(group_has_live_members, self.pid):
                return
            await asyncio.sleep(0.01)
        log.warning("process group %s still has members after SIGKILL", self.pid)

    @property
    def running(self) -> bool:
        return not self._exit.done()

    async def wait(self) -> int:
        """Exit status as the runtime reports it: ``128 + signal`` when killed by a signal."""
        code = await asyncio.shield(self._exit)
        return 128 - code if code < 0 else code

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def signal(self, sig: int) -> None:
        if self.running:
            self.signalled = sig
            self._signal_group(sig)

    async def stop(self, grace: float) -> int:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds, and wait for the exit."""
        if self.running:
            self.signal(signal.SIGTERM)
            if grace > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exit), timeout=grace)
            if self.running:
                self.signal(signal.SIGKILL)
        return await self.wait()
