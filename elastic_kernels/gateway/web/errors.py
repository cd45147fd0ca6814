"""Errors the gateway turns into JSON HTTP responses.

The kernel manager (and the provisioner below it) knows *why* a kernel could not start: the
cluster API is unreachable, the user is over quota, the image cannot be pulled, the pod never
became ready.  The notebook server only sees what our HTTP response says, and jupyter_server's
``gateway_request`` copies the ``message`` and ``reason`` fields of a JSON error body into the
error the user sees.  ``KernelStartError`` carries exactly those two fields plus the status code,
so code deep in the start path can raise it and the user reads a sentence instead of
"Unhandled error".
"""

from __future__ import annotations

import re

from tornado import web

from elastic_kernels.upstream import http_error_text

__all__ = ["GatewayHTTPError", "KernelStartError", "error_body", "http_error_text"]

# tornado puts HTTPError.reason into the status line; anything that is not a plain token there is
# replaced by "Unknown", so keep reasons to machine-readable tokens such as "ErrImagePull".
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_.\-]+")


def _as_reason_token(reason: str | None, fallback: str) -> str:
    token = _NOT_TOKEN.sub("", reason or "")
    return token[:80] or fallback


class GatewayHTTPError(web.HTTPError):
    """An HTTP error whose ``message`` is shown verbatim in the JSON body.

    (``HTTPError.log_message`` is a %-format string in tornado's API; ``message`` is the text.)
    """

    default_reason = "Error"

    def __init__(self, status_code: int, message: str, reason: str | None = None) -> None:
        self.message = str(message)
        self.error_reason = _as_reason_token(reason, self.default_reason)
        super().__init__(status_code, self.message, reason=self.error_reason)

    def __str__(self) -> str:
        return f"HTTP {self.status_code} ({self.error_reason}): {self.message}"


class KernelStartError(GatewayHTTPError):
    """A kernel could not be started, with a status code chosen by whoever knows why.

    Suggested codes: 503 when the cluster API is unreachable, 403 when a quota forbids the start,
    404 for an unknown kernel spec, 504 when the kernel did not become ready in time, 500 for
    other launch failures (image pull errors, crash loops).  ``message`` is for humans and is
    shown verbatim; ``reason`` is a short machine-readable token (for example ``ErrImagePull``).
    Never put secrets in either.
    """

    default_reason = "KernelStartFailed"

    def __init__(self, status_code: int, message: str, reason: str = "KernelStartFailed") -> None:
        super().__init__(status_code, message, reason)


def error_body(
    exc: BaseException | None, status_code: int, default_message: str
) -> dict[str, object]:
    """The JSON body for an error response.

    Our own errors keep their message and reason; other ``HTTPError``\\ s get their formatted log
    message.  Anything else is an internal error whose text we do not expose.
    """
    if isinstance(exc, GatewayHTTPError):
        return {"message": exc.message, "reason": exc.error_reason}
    if isinstance(exc, web.HTTPError):
        return {"message": http_error_text(exc) or default_message, "reason": exc.reason}
    if exc is not None:
        return {"message": "Unhandled error", "reason": None}
    return {"message": default_message, "reason": None}
