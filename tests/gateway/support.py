"""Test helpers: the gateway tests' token and kernelspec, and the shared clients with them.

The clients are :mod:`elastic_kernels.testing` (also used by the benchmarks); here they default
to the token the test gateways are started with.
"""

from __future__ import annotations

import typing as t
import uuid

from tornado.httpclient import HTTPResponse

from elastic_kernels import testing
from elastic_kernels.testing import json_of

__all__ = ["KERNEL_NAME", "LOGO", "TOKEN", "KernelWS", "api", "json_of", "start_kernel"]

TOKEN = "test-token-" + uuid.uuid4().hex
KERNEL_NAME = "ek-test-python"
LOGO = b"\x89PNG\r\n\x1a\n not really a picture"


async def api(
    base_url: str,
    method: str,
    path: str,
    body: t.Any = None,
    *,
    token: str | None = TOKEN,
    raw_body: bytes | None = None,
) -> HTTPResponse:
    """One HTTP request as the test admin (or ``token``); never raises for HTTP statuses."""
    return await testing.api(base_url, method, path, body, token=token, raw_body=raw_body)


async def start_kernel(base_url: str, name: str = KERNEL_NAME, **body: t.Any) -> dict[str, t.Any]:
    response = await api(base_url, "POST", "/api/kernels", {"name": name, **body})
    assert response.code == 201, response.body
    return t.cast("dict[str, t.Any]", json_of(response))


class KernelWS(testing.KernelWS):
    """The shared websocket client, connecting with the test token unless told otherwise."""

    @classmethod
    async def open(cls, base_url: str, kernel_id: str, token: str | None = TOKEN, *,
                   protocol: str = "json", in_query: bool = False,
                   session_id: str | None = None, timeout: float = 30,
                   max_message_size: int = 64 * 1024 * 1024) -> KernelWS:
        ws = await super().open(base_url, kernel_id, token, protocol=protocol,
                                in_query=in_query, session_id=session_id, timeout=timeout,
                                max_message_size=max_message_size)
        return t.cast(KernelWS, ws)
