"""Users from JupyterHub: a notebook server's hub API token names its user at the gateway.

With JupyterHub, every single-user server already holds a token that names its user:
``$JUPYTERHUB_API_TOKEN``, which the hub gives it at spawn. Configured with that token as its
``GatewayClient.auth_token``, a user's server reaches the gateway *as that user*, with no token
file to keep in step with the hub. The gateway is registered with the hub as a service (an
API-only one: no URL, the hub does not proxy it), and users' server tokens carry the scope
``access:services!service=<hub_service_name>`` (``Spawner.server_token_scopes``).

Validation is JupyterHub's own, :class:`jupyterhub.services.auth.HubAuth`:

* ``user_for_token(token, sync=False)`` asks the hub's ``GET /hub/api/user`` *with the offered
  token* and returns its owner's model (name, admin, groups, and the token's scopes), or None
  when the hub does not know the token. The answer, a refusal included, is cached for
  ``hub_cache_seconds`` under the token's SHA-256 (HubAuth's cache), so a busy notebook server
  costs the hub one request per token per interval, and a revoked token stops working within it.
* The token must hold one of ``hub_access_scopes`` (by default the access scope of the gateway's
  service), checked with HubAuth's ``check_scopes``: a token a user made for something else
  (e.g. only ``read:users``) is not a key to their kernels.
* Only users, never services, are kernel owners. The user is an admin of the gateway when the hub
  says ``admin: true`` (``hub_admins``, on by default) or when they are in one of
  ``hub_admin_groups``.

The hub is asked through tornado's asynchronous client (``sync=False``), never from a thread
that blocks the event loop. When the hub cannot be reached, a token already in the cache still
works; any other request gets 503 naming the hub, not the token.

jupyterhub is imported only when hub users are configured: hub-less installs (the users file or
Secret) do not need it (``pip install elastic-kernels[hub]`` for the gateway that does).
"""

from __future__ import annotations

import logging
import typing as t
from dataclasses import dataclass

from tornado import web

if t.TYPE_CHECKING:
    from jupyterhub.services.auth import HubAuth

__all__ = ["HubUser", "HubUsers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubUser:
    """Who the hub says a token belongs to."""

    name: str
    admin: bool


class HubUsers:
    """Tokens → users through the hub's API (see the module docstring)."""

    def __init__(
        self,
        *,
        api_url: str,
        api_token: str,
        access_scopes: t.Iterable[str],
        admin_groups: t.Iterable[str],
        hub_admins: bool,
        cache_seconds: int,
    ) -> None:
        try:
            from jupyterhub.services.auth import HubAuth
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "hub users are configured (hub_api_url) but jupyterhub is not installed: "
                "pip install 'elastic-kernels[hub]'"
            ) from e
        self.api_url = api_url.rstrip("/")
        self.access_scopes = frozenset(access_scopes)
        self.admin_groups = frozenset(admin_groups)
        self.hub_admins = hub_admins
        self._auth: HubAuth = HubAuth(
            api_url=self.api_url, api_token=api_token, cache_max_age=cache_seconds,
            access_scopes=set(self.access_scopes),
        )

    async def user_for_token(self, token: str) -> HubUser | None:
        """The hub user holding ``token`` with an access scope, or None."""
        try:
            model = await self._auth.user_for_token(token, use_cache=True, sync=False)
        except web.HTTPError as e:
            # HubAuth logged what went wrong (never the token); the caller learns only that the
            # hub could not answer.
            raise web.HTTPError(
                503, reason="JupyterHub unavailable",
                log_message=f"could not ask JupyterHub at {self.api_url} about a token "
                f"(HTTP {e.status_code})",
            ) from None
        if not isinstance(model, dict) or model.get("kind", "user") != "user":
            return None
        name = model.get("name")
        if not isinstance(name, str) or not name:
            return None
        if self.access_scopes and not self._auth.check_scopes(self.access_scopes, model):
            log.warning(
                "JupyterHub user %r presented a token without any of the scopes %s; refused "
                "(add them to Spawner.server_token_scopes and the users' role)",
                name, ", ".join(sorted(self.access_scopes)),
            )
            return None
        groups = model.get("groups") or []
        admin = (self.hub_admins and model.get("admin") is True) or any(
            isinstance(g, str) and g in self.admin_groups for g in groups)
        return HubUser(name, admin)

    def describe(self) -> str:
        admins = []
        if self.hub_admins:
            admins.append("hub admins")
        if self.admin_groups:
            admins.append("groups " + ", ".join(sorted(self.admin_groups)))
        return (f"JupyterHub tokens checked at {self.api_url} (admins: "
                f"{' and '.join(admins) or 'none'})")
