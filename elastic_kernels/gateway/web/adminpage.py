"""``/elastic/``: the admin page. Every kernel by user, kernelspec, node and phase; the GPU queue;
GPUs held and busy per node; recent culls with their reasons. Live, from the kernel status
stream (:mod:`.statusstream`), which it reads like any client.

One static page (``static/admin.html``, its script and style sheet, package data read with
``importlib.resources``), no framework and nothing from another origin: the gateway usually has
no internet, and its Content-Security-Policy allows scripts, styles and connections from the
gateway only. The page itself is for admins only (anyone else gets a 403 in JSON, like the rest
of the API); its script and style sheet hold no data and are served to anyone, since the
browser fetches them without the token. Open it as ``https://GATEWAY/elastic/?token=TOKEN``
(the script removes the token from the address bar and passes it to the stream) or through a
proxy that adds the ``Authorization`` header.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from elastic_kernels.gateway.web.errors import GatewayHTTPError
from elastic_kernels.gateway.web.handlers import GatewayAPIHandler
from elastic_kernels.gateway.web.ownership import is_admin

__all__ = ["admin_handlers"]

_ASSETS = {"admin.html": "text/html; charset=utf-8",
           "admin.js": "text/javascript; charset=utf-8",
           "admin.css": "text/css; charset=utf-8"}

#: Everything from the gateway itself, nothing inline, no frames, no forms.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@cache
def asset(name: str) -> bytes:
    """One of the page's files, from the installed package."""
    return (files(__package__) / "static" / name).read_bytes()


class _AssetHandler(GatewayAPIHandler):
    @property
    def content_security_policy(self) -> str:
        return CSP

    def serve(self, name: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(asset(name), set_content_type=_ASSETS[name])


class AdminPageHandler(_AssetHandler):
    """``GET /elastic/``: the page, for admins."""

    @web.authenticated
    async def get(self) -> None:
        if not is_admin(self.current_user):
            raise GatewayHTTPError(403, "The admin page is for admins only", "Forbidden")
        self.serve("admin.html")


class AdminAssetHandler(_AssetHandler):
    """``GET /elastic/admin.js`` and ``/elastic/admin.css``: code and style, no data."""

    @allow_unauthenticated
    async def get(self, name: str) -> None:
        self.serve(name)


class AdminRedirectHandler(GatewayAPIHandler):
    """``/elastic`` -> ``/elastic/`` (the page's links are relative to it), query kept."""

    @allow_unauthenticated
    async def get(self) -> None:
        query = f"?{self.request.query}" if self.request.query else ""
        self.redirect(self.request.path + "/" + query)


def admin_handlers() -> list[tuple[str, type[web.RequestHandler]]]:
    return [
        (r"/elastic", AdminRedirectHandler),
        (r"/elastic/", AdminPageHandler),
        (r"/elastic/(admin\.js|admin\.css)", AdminAssetHandler),
    ]
