"""Scrub kernel keys and tokens from every log record a process of ours makes.

Our own code never logs a key or a token, and ``tests/test_secrets.py`` checks that over a
whole gateway session at DEBUG. This is the net under that: the gateway and the notebook server
run third-party code (jupyter_server, jupyter_client, tornado, the Kubernetes client) whose
output is not ours to change, and one careless ``%r`` of a connection dict, a request or an
environment would put a secret in the logs (jupyter_server's gateway client logs the notebook
server's whole environment, tokens included, at INFO for every kernel it starts).

It is a ``logging.Filter`` on handlers, not on loggers: a record from any logger (tornado's,
the Kubernetes client's) passes through the handlers of the loggers it propagates to, and a
handler's filter sees it there, whereas a logger's filter sees only records logged on that very
logger. A server attaches the filter when it starts serving, to every handler of the root
logger and of its own logger, and detaches it when it stops; nothing process-wide changes at
construction. A handler added while the gateway runs is not covered: add it before starting,
or attach :class:`RedactingFilter` to it too. Each record's message, exception text and stack
are checked for:

* the exact secrets the running server knows (the gateway: its tokens, configured ones and
  those seen in use, and every kernel's key; the notebook server: its token, its gateway
  token and the secret-named variables of its environment), as text and as base64;
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
import typing as t
from collections.abc import Callable, Iterable

__all__ = [
    "REDACTED", "RedactingFilter", "SecretSource", "install", "redact_text", "secret_env_values",
]

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


class RedactingFilter(logging.Filter):
    """Scrubs each record it sees, in place, and lets every record through.

    A record reaches several handlers (each with this filter); it is scrubbed once.
    """

    def __init__(self, source: SecretSource) -> None:
        super().__init__()
        self.source = source
        self.formatter = logging.Formatter()

    def exact(self) -> set[str]:
        found: set[str] = set()
        try:
            values = list(self.source())
        except Exception:  # noqa: BLE001 - a source mid-change; the patterns still apply
            values = []
        for value in values:
            if isinstance(value, (bytes, bytearray)):
                value = bytes(value).decode("utf-8", "replace")
            if isinstance(value, str) and len(value) >= _MIN_SECRET_CHARS:
                found.update(_forms(value))
        return found

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _SCRUBBED, None) is not self:
            try:
                self.scrub(record)
            except Exception:  # noqa: BLE001 - never lose a log record to the scrubber
                pass
            setattr(record, _SCRUBBED, self)
        return True

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


_SCRUBBED = "_elastic_kernels_scrubbed_by"


def install(source: SecretSource, loggers: Iterable[logging.Logger] = ()
            ) -> Callable[[], None]:
    """Attach a :class:`RedactingFilter` for ``source`` to every handler of the root logger
    and of ``loggers``; returns the function that detaches it again."""
    flt = RedactingFilter(source)
    handlers: list[logging.Handler] = []
    for logger in (logging.getLogger(), *loggers):
        for handler in logger.handlers:
            if handler not in handlers:
                handler.addFilter(flt)
                handlers.append(handler)

    def remove() -> None:
        for handler in handlers:
            handler.removeFilter(flt)
        handlers.clear()

    return remove


#: Environment variable names whose values are secrets (JUPYTERHUB_API_TOKEN, JUPYTER_TOKEN,
#: JUPYTER_GATEWAY_AUTH_TOKEN, AWS_SECRET_ACCESS_KEY, ...).
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|(^|_)(API_?)?KEY($|_)",
                          re.IGNORECASE)


def secret_env_values(environ: t.Mapping[str, str]) -> list[str]:
    """The values of ``environ``'s variables whose names say they hold a secret."""
    return [value for name, value in environ.items() if _SECRET_NAME.search(name) and value]
