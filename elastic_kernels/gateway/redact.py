"""Scrub kernel keys and tokens from every log record the gateway's process makes.

The gateway's own code never logs a key or a token, and ``tests/test_secrets.py`` checks that
over a whole session at DEBUG. This is the net under that: the gateway runs third-party code
(jupyter_server, jupyter_client, tornado, the Kubernetes client) whose debug output is not ours
to change, and one careless ``%r`` of a connection dict or a request would put a key in the logs.

It works at record creation (``logging.setLogRecordFactory``), not in a handler, so it covers
every logger and every handler, including ones added later (a log shipper, pytest's capture).
Each record's message, exception text and stack are checked for:

* the exact secrets the running gateway knows: its tokens (configured ones and those seen in
  use) and every kernel's key, as text and as the base64 of its Secret;
* shapes that are secrets wherever they come from: 64 lowercase hex digits (every key this
  project makes is ``secrets.token_hex(32)``; a ``sha256:`` image digest is left alone), the
  base64 of a 64-byte value (such a key in a Secret's ``data``), a ``token`` query parameter,
  and the credential of an ``Authorization`` header.

Each is replaced by ``[redacted]``. A record without secrets is left exactly as it was.
"""

from __future__ import annotations

import base64
import functools
import logging
import re
import threading
import typing as t
import weakref
from elastic_kernels.upstream import managed_kernels
from collections.abc import Callable, Iterable

__all__ = ["REDACTED", "SecretSource", "install", "redact_text", "uninstall"]

REDACTED = "[redacted]"

SecretSource = Callable[[], Iterable[str | bytes]]

_MIN_SECRET_CHARS = 8
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Keys made by the provisioner: 64 hex digits (not an image digest "sha256:<64 hex>").
    (re.compile(r"(?<![0-9A-Za-z])(?<!sha256:)[0-9a-f]{64}(?![0-9A-Za-z])"), REDACTED),
    # Such a key as a Secret stores it: base64 of 64 bytes.
    (re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{86}=="), REDACTED),
    # ?token=... / &auth_token=... in a URL.
    (re.compile(r"([?&][^=&\s#'\"]*token[^=&\s#'\"]*=)[^&\s#'\"]+", re.IGNORECASE),
     r"\1" + REDACTED),
    # Authorization: token ... / "Authorization": "Bearer ..."
    (re.compile(r"(authorization['\"]?\s*[:=]\s*['\"]?\s*(?:token|bearer|basic)\s+)[^\s'\",}]+",
                re.IGNORECASE), r"\1" + REDACTED),
)


def redact_text(text: str, exact: Iterable[str] = ()) -> str:
    """``text`` with the given secrets, and anything shaped like a secret, replaced."""
    for secret in sorted(exact, key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@functools.lru_cache(maxsize=4096)
def _forms(secret: str) -> tuple[str, ...]:
    """A secret as it may be printed: itself and, for keys, the base64 a Secret holds."""
    return (secret, base64.b64encode(secret.encode("utf-8", "surrogatepass")).decode("ascii"))


class _Redactor:
    """The process-wide record factory; gateways add and remove their secret sources."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sources: dict[int, SecretSource] = {}
        self.previous: Callable[..., logging.LogRecord] | None = None
        self.formatter = logging.Formatter()
        self._next = 0

    def exact(self) -> set[str]:
        found: set[str] = set()
        for source in list(self.sources.values()):
            try:
                values = list(source())
            except Exception:  # noqa: BLE001 - a source mid-change; the patterns still apply
                continue
            for value in values:
                if isinstance(value, (bytes, bytearray)):
                    value = bytes(value).decode("utf-8", "replace")
                if isinstance(value, str) and len(value) >= _MIN_SECRET_CHARS:
                    found.update(_forms(value))
        return found

    def make_record(self, *args: t.Any, **kwargs: t.Any) -> logging.LogRecord:
        previous = self.previous or logging.LogRecord
        record = previous(*args, **kwargs)
        try:
            self.scrub(record)
        except Exception:  # noqa: BLE001 - never lose a log record to the scrubber
            pass
        return record

    def scrub(self, record: logging.LogRecord) -> None:
        exact = self.exact()
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format: logging reports it at emit time
            message = None
        if message is not None:
            clean = redact_text(message, exact)
            if clean != message:
                record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(self.formatter.formatException(record.exc_info), exact)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, exact)


_redactor = _Redactor()
_factory = _redactor.make_record  # one bound method, so that "is" finds it again


def install(source: SecretSource) -> Callable[[], None]:
    """Scrub every log record of this process; ``source()`` lists the exact secrets to remove.

    Returns the function that removes ``source`` again (the factory stays installed: another
    factory may have wrapped it since, and with no sources it only applies the patterns).
    """
    with _redactor.lock:
        if logging.getLogRecordFactory() is not _factory:
            _redactor.previous = logging.getLogRecordFactory()
            logging.setLogRecordFactory(_factory)
        _redactor._next += 1
        handle = _redactor._next
        _redactor.sources[handle] = source

    def remove() -> None:
        with _redactor.lock:
            _redactor.sources.pop(handle, None)

    return remove


def uninstall() -> None:
    """Remove the factory if it is still the current one (tests)."""
    with _redactor.lock:
        _redactor.sources.clear()
        if logging.getLogRecordFactory() is _factory:
            logging.setLogRecordFactory(_redactor.previous or logging.LogRecord)
            _redactor.previous = None


def gateway_secrets(app: t.Any) -> SecretSource:
    """The exact secrets of a running gateway: its tokens and its kernels' keys."""
    ref = weakref.ref(app)

    def source() -> Iterable[str | bytes]:
        gateway = ref()
        if gateway is None:
            return ()
        values: list[str | bytes] = []
        provider = getattr(gateway, "identity_provider", None)
        secret_values = getattr(provider, "secret_values", None)
        if secret_values is not None:
            values.extend(secret_values())
        km = getattr(gateway, "kernel_manager", None)
        for kernel in list(managed_kernels(km).values()):
            session = getattr(kernel, "session", None)
            if session is not None and session.key:
                values.append(session.key)
            prov_secrets = getattr(getattr(kernel, "provisioner", None), "secret_values", None)
            if prov_secrets is not None:
                values.extend(prov_secrets())
        return values

    return source
