"""Token authentication for the gateway.

jupyter_server's ``IdentityProvider`` already does what a gateway needs (a shared token in the
``Authorization: token ...`` header or ``?token=`` query, a generated token when none is
configured), so we keep it and change only two things:

* the token may come from ``ELASTIC_KERNELS_TOKEN`` (our deployment's name for it) before the
  generic ``JUPYTER_TOKEN`` / ``JUPYTER_TOKEN_FILE``;
* the token comparison is constant-time, because the gateway is a network service whose token
  guards every kernel.
"""

from __future__ import annotations

import hmac
import os
import typing as t

from jupyter_core.utils import ensure_async
from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web
from traitlets import default

__all__ = ["TOKEN_ENV", "ElasticIdentityProvider"]

TOKEN_ENV = "ELASTIC_KERNELS_TOKEN"


class ElasticIdentityProvider(IdentityProvider):
    """Shared-token identity provider; see the module docstring for how it differs."""

    @default("token")
    def _token_default(self) -> str:
        value = os.environ.get(TOKEN_ENV, "")
        if value:
            self.token_generated = False
            return value
        return t.cast("str", super()._token_default())

    async def get_user_token(self, handler: web.RequestHandler) -> User | None:
        expected = t.cast("str | None", getattr(handler, "token", None))
        if not expected:
            return None
        offered = self.get_token(handler)
        if not offered or not hmac.compare_digest(offered.encode(), expected.encode()):
            return None
        user = await ensure_async(self.get_user_cookie(handler))
        if user is None:
            user = self.generate_anonymous_user(handler)
        return t.cast("User", user)
