"""jupyter_server handlers for kernelspecs from custom resources: models and logos, no disk.

jupyter_server builds a kernelspec's REST model and serves its resources from the spec's
``resource_dir``. A kernelspec from a ``JupyterKernelSpec`` has none, and upstream then falls
back to the server's working directory: ``/api/kernelspecs/{name}`` lists its ``logo-*`` files and
``/kernelspecs/{name}/{path}`` serves any file under it, following symlinks. These handlers take
over both routes. For a CR-backed spec they answer from the CR alone (its ``spec.logos``); any
other path is a JSON 404. Specs that really live on disk (``ElasticKernelSpecManager.include_local``
or another kernel spec manager) keep upstream's behaviour.

Both the gateway and the ``elastic_kernels`` server extension (for a plain jupyter_server) install
them with :func:`kernelspec_handlers`.
"""

from __future__ import annotations

import json
import typing as t
from http.client import responses

from jupyter_server.auth.decorator import authorized
from jupyter_server.kernelspecs.handlers import KernelSpecResourceHandler
from jupyter_server.services.kernelspecs.handlers import KernelSpecHandler, kernel_name_regex
from jupyter_server.utils import url_unescape
from tornado import web

__all__ = [
    "CRKernelSpecHandler",
    "CRKernelSpecResourceHandler",
    "InMemoryResourceHandler",
    "kernelspec_handlers",
]

#: A logo's URL stays the same when an admin changes it in the CR: browsers keep it a day at most.
_LOGO_MAX_AGE = 60 * 60 * 24


async def _upstream(result: t.Awaitable[None] | None) -> None:
    """Await what an upstream handler method returned (its decorators type it as optional)."""
    if result is not None:
        await result


def _cr_model(handler: web.RequestHandler, kernel_name: str) -> dict[str, t.Any] | None:
    ksm = handler.settings.get("kernel_spec_manager")
    model = getattr(ksm, "kernelspec_model", None)
    return None if model is None else model(kernel_name, handler.settings.get("base_url", "/"))


class CRKernelSpecHandler(KernelSpecHandler):
    """``/api/kernelspecs/{name}``: a CR-backed spec's model from the CR, else upstream's."""

    @web.authenticated
    @authorized
    async def get(self, kernel_name: str) -> None:
        model = _cr_model(self, url_unescape(kernel_name))
        if model is None:
            await _upstream(super().get(kernel_name))
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model))


class InMemoryResourceHandler(KernelSpecResourceHandler):
    """Upstream's resource handler, able to answer with bytes that are not a file on disk."""

    def serve_bytes(self, data: bytes, content_type: str, include_body: bool) -> None:
        self.set_header("Content-Type", content_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", "default-src 'none'")
        self.set_header("Cache-Control", f"max-age={_LOGO_MAX_AGE}")
        if include_body:
            self.finish(data)
        else:
            self.set_header("Content-Length", str(len(data)))
            self.finish()

    def compute_etag(self) -> str | None:
        if getattr(self, "absolute_path", None) is None:  # bytes, not a file: hash what we wrote
            return web.RequestHandler.compute_etag(self)
        return super().compute_etag()


class CRKernelSpecResourceHandler(InMemoryResourceHandler):
    """``/kernelspecs/{name}/{path}``: a CR-backed spec's logos, else upstream's static files.

    Errors are JSON (``{"message", "reason"}``) like the rest of the API, and a request without
    credentials gets 403 instead of a redirect to a login page a gateway does not have.
    """

    def get_login_url(self) -> str:
        raise web.HTTPError(403, "Authentication required")

    @web.authenticated
    @authorized
    async def get(  # type: ignore[override] # upstream's signature, not StaticFileHandler's
            self, kernel_name: str, path: str, include_body: bool = True) -> None:
        name = url_unescape(kernel_name)
        if _cr_model(self, name) is None:
            # Not a CR-backed spec: upstream serves it from its real resource directory (the
            # kernel spec manager's get_kernel_spec_resource keeps CR specs off the disk there
            # too), and says 404 for a spec nobody has.
            await _upstream(super().get(kernel_name, path, include_body=include_body))
            return
        ksm: t.Any = self.kernel_spec_manager  # an ElasticKernelSpecManager (see _cr_model)
        data = await ksm.get_kernel_spec_resource(name, path)
        if data is None:  # only a spec that was deleted in between
            raise web.HTTPError(404, f"Kernel spec {name} has no resource {path[:100]!r}")
        self.serve_bytes(data, "image/png", include_body)

    def write_error(self, status_code: int, **kwargs: t.Any) -> None:
        exc_info = kwargs.get("exc_info")
        exc = exc_info[1] if exc_info else None
        message = getattr(exc, "log_message", None) or responses.get(status_code, "Error")
        self.clear_header("Content-Security-Policy")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message, "reason": getattr(exc, "reason", None)}))


def kernelspec_handlers() -> list[tuple[str, type[web.RequestHandler]]]:
    """URL patterns (relative to base_url) that replace jupyter_server's kernelspec routes."""
    return [
        (rf"/api/kernelspecs/{kernel_name_regex}", CRKernelSpecHandler),
        (rf"/kernelspecs/{kernel_name_regex}/(?P<path>.*)", CRKernelSpecResourceHandler),
    ]
