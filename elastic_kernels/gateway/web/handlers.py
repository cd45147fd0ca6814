"""HTTP and websocket handlers of the gateway.

They are jupyter_server's kernel handlers with the behaviour a gateway needs on top:

* ``POST /api/kernels`` accepts ``{"name", "env"}`` as jupyter_server's ``GatewayKernelManager``
  sends it; ``env`` is filtered (``KERNEL_*`` plus an allowlist) and laid over an allowlisted part
  of the gateway's environment before it reaches the kernel manager
  (``ElasticGatewayApp.kernel_env``).  Start failures become JSON errors with a useful
  ``message`` and status code
  (:class:`~elastic_kernels.gateway.web.errors.KernelStartError`, unknown kernel spec -> 404).
* Kernel models carry an ``elastic`` object when the kernel manager has
  ``elastic_model(kernel_id)`` (phase, reason, node, GPUs, queue position...).
* A kernel id the kernel manager does not hold is offered to its optional
  ``hydrate_kernel(kernel_id) -> bool`` (another replica may have started it) before we say 404.
* The websocket sets TCP_NODELAY once upgraded (tornado turns Nagle back on after each HTTP
  response, so the upgraded socket otherwise delays small kernel messages by up to ~40 ms),
  counts itself for ``/metrics`` and survives malformed frames.
* Errors are JSON everywhere, including before a websocket upgrade.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import typing as t
import uuid
from collections.abc import Mapping
from http.client import responses

from jupyter_client.kernelspec import NoSuchKernel
from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import allow_unauthenticated, authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from elastic_kernels.upstream import kernel_action_regex, kernel_id_regex
from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
from tornado import web

try:
    from jupyter_client.jsonutil import json_default
except ImportError:  # pragma: no cover - older jupyter_client
    from jupyter_client.jsonutil import date_default as json_default

from elastic_kernels.kernelspec_handlers import kernelspec_handlers
from elastic_kernels.provisioner.envpolicy import ALWAYS_ALLOWED
from elastic_kernels.provisioner.errors import KernelLaunchError
from elastic_kernels.gateway.web.errors import GatewayHTTPError, KernelStartError, error_body
from elastic_kernels.gateway.web.metrics import UNKNOWN_KERNELSPEC, start_outcome
from elastic_kernels.gateway.web.ownership import no_such_kernel, ownership
from elastic_kernels.gateway.transport.writelimit import retrieve_exception
from elastic_kernels.gateway.transport.wsframes import FrameError, deliver

if t.TYPE_CHECKING:
    from elastic_kernels.gateway.app import ElasticGatewayApp

__all__ = ["default_handlers"]

AUTH_RESOURCE = "kernels"
_MAX_ERROR_TEXT = 500


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."


class JSONErrorsMixin:
    """Render every error as ``{"message", "reason"}`` JSON."""

    def write_error(self, status_code: int, **kwargs: t.Any) -> None:
        handler = t.cast(web.RequestHandler, self)
        exc_info = kwargs.get("exc_info")
        exc = exc_info[1] if exc_info else None
        body = error_body(exc, status_code, responses.get(status_code, "Unknown HTTP Error"))
        if isinstance(body["message"], str):  # never echo a huge request back, nor log it
            body["message"] = _short(body["message"])
        handler.log.warning("wrote error: %r", body["message"])  # type: ignore[attr-defined]
        handler.set_header("Content-Type", "application/json")
        handler.finish(json.dumps(body))


class GatewayAPIHandler(JSONErrorsMixin, APIHandler):
    """Base for the gateway's JSON API handlers."""

    auth_resource = AUTH_RESOURCE

    @property
    def gateway_app(self) -> ElasticGatewayApp:
        return t.cast("ElasticGatewayApp", self.settings["serverapp"])

    def json_body(self) -> dict[str, t.Any]:
        """The request body as a JSON object ({} when empty); 400 with the parse error if not.

        Unlike ``APIHandler.get_json_body`` this never logs the body: it may carry environment
        values.
        """
        raw = self.request.body
        if not raw or not raw.strip():
            return {}
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise GatewayHTTPError(400, f"Request body is not UTF-8: {e}", "BadRequest") from e
        except json.JSONDecodeError as e:
            raise GatewayHTTPError(
                400, f"Request body is not valid JSON: {e}", "BadRequest"
            ) from e
        except RecursionError:
            raise GatewayHTTPError(
                400, "Request body is not valid JSON: nested too deeply", "BadRequest"
            ) from None
        if not isinstance(value, dict):
            raise GatewayHTTPError(
                400,
                f"Request body must be a JSON object, not {type(value).__name__}",
                "BadRequest",
            )
        return value


async def require_kernel(handler: JupyterHandler, kernel_id: str) -> None:
    """404 unless the kernel manager holds (or can hydrate) ``kernel_id`` *and* it is the
    caller's (or the caller is an admin): someone else's kernel looks exactly like no kernel."""
    km = handler.kernel_manager
    # Before hydrating: another user's id must cost nothing and reveal nothing.
    ownership(handler).check(handler.current_user, km, kernel_id)
    if kernel_id in km:
        return
    hydrate = getattr(km, "hydrate_kernel", None)
    if hydrate is not None and await ensure_async(hydrate(kernel_id)) and kernel_id in km:
        return
    culled = getattr(km, "cull_reason", lambda _: None)(kernel_id)
    if culled is not None:  # the user is told why their kernel went away
        reason, message = culled
        raise GatewayHTTPError(404, _short(f"Kernel {kernel_id} was shut down: {message}"),
                               reason)
    raise no_such_kernel(kernel_id)


async def kernel_model(handler: JupyterHandler, kernel_id: str) -> dict[str, t.Any]:
    """jupyter_server's kernel model plus ``elastic`` when the kernel manager provides it."""
    km = handler.kernel_manager
    model = dict(await ensure_async(km.kernel_model(kernel_id)))
    elastic_model = getattr(km, "elastic_model", None)
    if elastic_model is not None:
        try:
            extra = await ensure_async(elastic_model(kernel_id))
        except (KeyError, web.HTTPError):
            raise
        except Exception:
            # The kernel is real; a broken status lookup must not hide it.
            handler.log.warning("elastic_model(%s) failed", kernel_id, exc_info=True)
        else:
            if extra is not None:
                model["elastic"] = extra
    return model


class MainKernelHandler(GatewayAPIHandler):
    """``/api/kernels``: list and start kernels."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        km = self.kernel_manager
        models = []
        held = ownership(self).visible_ids(self.current_user, km)
        for kernel_id in held:
            try:
                models.append(await kernel_model(self, kernel_id))
            except (KeyError, web.HTTPError):
                continue  # it went away while we were listing
        # The kernels other replicas hold (or that wait for a GPU, or are suspended): every
        # replica lists the same kernels, from the shared records.
        others: list[str] = getattr(km, "cluster_kernel_ids", lambda: [])()
        record_model = getattr(km, "record_model", lambda _k: None)
        for kernel_id in sorted(set(others) - set(held)):
            if ownership(self).may_use(self.current_user, km, kernel_id):
                model = record_model(kernel_id)
                if model is not None:
                    models.append(model)
        self.finish(json.dumps(models, default=json_default))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        km = self.kernel_manager
        body = self.json_body()
        name = body.get("name") or km.default_kernel_name
        if not isinstance(name, str):
            raise GatewayHTTPError(400, "'name' must be a string", "BadRequest")
        env = body.get("env")
        if env is not None and not (
            isinstance(env, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise GatewayHTTPError(
                400, "'env' must be an object mapping names to string values", "BadRequest"
            )
        kwargs: dict[str, t.Any] = {
            "kernel_name": name,
            "env": self.gateway_app.kernel_env(env or {}),
        }
        user = self.current_user
        if getattr(km, "tracks_users", False):
            kwargs["user"] = user.username
        # The id is chosen here so that the kernel counts against the user's limit while it
        # starts (see KernelOwnership.starting).
        kwargs["kernel_id"] = str(uuid.uuid4())
        owners = ownership(self)
        metrics = self.gateway_app.gateway_metrics
        began = time.monotonic()
        with owners.starting(user, km, kwargs["kernel_id"]):
            try:
                kernel_id: str = await km.start_kernel(**kwargs)
            except Exception as e:
                self.gateway_app.kernel_start_failures += 1
                self.gateway_app.forget_failed_starts()
                error = self._start_error(name, e)
                reason = getattr(error, "reason", None)
                metrics.kernel_started(
                    UNKNOWN_KERNELSPEC if error.status_code == 404 else name,
                    start_outcome(error.status_code, reason), time.monotonic() - began)
                raise error from e
            metrics.kernel_started(name, "ok", time.monotonic() - began)
            owners.remember(kernel_id, user.username)
        model = await kernel_model(self, kernel_id)
        self.set_header("Location", self.base_url.rstrip("/") + f"/api/kernels/{kernel_id}")
        self.set_status(201)
        self.finish(json.dumps(model, default=json_default))

    def _start_error(self, name: str, e: Exception) -> web.HTTPError:
        if isinstance(e, web.HTTPError):
            return e
        if isinstance(e, KernelLaunchError):  # the cause, in the cluster's own words
            self.log.warning("Kernel %r failed to start: %s: %s", name, e.reason, e.message)
            return KernelStartError(e.status_code, _short(e.message), e.reason)
        if isinstance(e, NoSuchKernel):
            return KernelStartError(404, f"No such kernel spec: {name}", "NoSuchKernelSpec")
        if isinstance(e, (TimeoutError, asyncio.TimeoutError)):
            self.log.warning("Kernel %r did not start in time: %s", name, e)
            return KernelStartError(
                504, _short(f"Kernel {name!r} did not start in time: {e}"), "KernelStartTimeout"
            )
        self.log.error("Kernel %r failed to start", name, exc_info=e)
        return KernelStartError(
            500, _short(f"Kernel {name!r} failed to start: {type(e).__name__}: {e}")
        )


class KernelHandler(GatewayAPIHandler):
    """``/api/kernels/{id}``: model and shutdown."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        try:
            await require_kernel(self, kernel_id)
        except GatewayHTTPError as e:
            # Not holdable here (it waits for a GPU at another replica): its record answers.
            model = getattr(self.kernel_manager, "record_model", lambda _k: None)(kernel_id)
            if e.status_code != 404 or model is None or not ownership(self).may_use(
                    self.current_user, self.kernel_manager, kernel_id):
                raise
            self.finish(json.dumps(model, default=json_default))
            return
        self.finish(json.dumps(await kernel_model(self, kernel_id), default=json_default))

    @web.authenticated
    @authorized
    async def delete(self, kernel_id: str) -> None:
        await require_kernel(self, kernel_id)
        await ensure_async(self.kernel_manager.shutdown_kernel(kernel_id))
        ownership(self).forget(kernel_id)
        self.set_status(204)
        self.finish()


class KernelActionHandler(GatewayAPIHandler):
    """``/api/kernels/{id}/interrupt`` and ``/restart``."""

    @web.authenticated
    @authorized
    async def post(self, kernel_id: str, action: str) -> None:
        await require_kernel(self, kernel_id)
        km = self.kernel_manager
        if action == "interrupt":
            # Awaitable with jupyter_server's async kernel managers, None with sync ones.
            await ensure_async(t.cast(t.Any, km).interrupt_kernel(kernel_id))
            self.set_status(204)
            self.finish()
            return
        began = time.monotonic()
        outcome = "ok"
        try:
            result = await ensure_async(km.restart_kernel(kernel_id))
            # jupyter_server returns a future that resolves when the restarted kernel answers
            # kernel_info; answer the client only then, so its next request finds a live kernel.
            if inspect.isawaitable(result):
                await result
        except web.HTTPError as e:
            outcome = start_outcome(e.status_code, getattr(e, "reason", None))
            raise
        except (TimeoutError, asyncio.TimeoutError) as e:
            outcome = "RestartTimeout"
            raise GatewayHTTPError(
                504, f"Kernel {kernel_id} did not answer after restart", "RestartTimeout"
            ) from e
        except Exception as e:
            outcome = "RestartFailed"
            self.log.error("Restarting kernel %s failed", kernel_id, exc_info=e)
            raise GatewayHTTPError(
                500,
                _short(f"Restarting kernel {kernel_id} failed: {type(e).__name__}: {e}"),
                "RestartFailed",
            ) from e
        finally:
            self.gateway_app.gateway_metrics.kernel_restarted(outcome, time.monotonic() - began)
        self.finish(json.dumps(await kernel_model(self, kernel_id), default=json_default))


class InvalidKernelIdHandler(GatewayAPIHandler):
    """Paths under ``/api/kernels/`` whose id is not a kernel id at all."""

    @web.authenticated
    async def get(self, kernel_id: str, rest: str | None = None) -> None:
        if rest:
            raise GatewayHTTPError(
                404, f"No such kernel endpoint: /api/kernels/{kernel_id}{rest}", "NotFound"
            )
        raise GatewayHTTPError(404, f"Kernel does not exist: {kernel_id}", "NoSuchKernel")

    post = delete = get


class ElasticKernelWebsocketHandler(JSONErrorsMixin, KernelWebsocketHandler):
    """``/api/kernels/{id}/channels``."""

    @property
    def gateway_app(self) -> ElasticGatewayApp:
        return t.cast("ElasticGatewayApp", self.settings["serverapp"])

    _slot_user: str | None = None

    async def get(self, *args: t.Any, **kwargs: t.Any) -> None:
        # tornado returns from get() only once the websocket is over (or was never upgraded):
        # the one place to give back the user's slot, whatever happened (httplimits.UserSlots).
        try:
            await super().get(*args, **kwargs)
        finally:
            if self._slot_user is not None:
                self.gateway_app.websocket_slots.release(self._slot_user)
                self._slot_user = None

    async def pre_get(self) -> None:
        # Before any work for the kernel, and before the upgrade, so the refusal is JSON.
        user = self.current_user.username
        slots = self.gateway_app.websocket_slots
        if not slots.acquire(user):
            raise GatewayHTTPError(
                429, f"Too many kernel websockets open for {user} "
                f"(max_websockets_per_user: {slots.limit})", "TooManyWebsockets")
        self._slot_user = user
        await require_kernel(self, self.kernel_id)
        await self._resume_if_suspended()
        await super().pre_get()

    #: The resumed kernel's line for the user, shown in the first cell run (transport/connection).
    resume_report = ""

    async def _resume_if_suspended(self) -> None:
        """A connect to a suspended kernel resumes it before the upgrade: the client's first
        messages can only follow, so none is lost while the new pod starts (or queues)."""
        km: t.Any = self.kernel_manager
        if not getattr(km, "is_suspended", lambda _k: False)(self.kernel_id):
            return
        try:
            self.resume_report = await km.resume_kernel(self.kernel_id)
        except Exception as e:  # noqa: BLE001 - the kernel stays suspended; say why
            raise GatewayHTTPError(503, _short(f"Kernel {self.kernel_id} could not be resumed: "
                                               f"{e}"), "ResumeFailed") from None

    async def open(self, kernel_id: str) -> None:
        # Must be set after the upgrade: tornado re-enables Nagle when the 101 response is done.
        self.set_nodelay(True)
        self.gateway_app.open_websockets.add(self)
        await super().open(kernel_id)

    def write_message(self, message: t.Any, binary: bool = False) -> asyncio.Future[None]:
        written = super().write_message(message, binary=binary)
        written.add_done_callback(retrieve_exception)  # not a log line per frame lost on close
        return written

    def on_message(self, ws_message: t.Any) -> None:
        connection = getattr(self, "connection", None)
        if connection is None:
            return  # already closed
        try:
            if connection.hold_if_suspended(ws_message):
                return  # delivered once the kernel has resumed (transport/connection.py)
            deliver(connection, ws_message)  # checks the frame first (see wsframes)
        except FrameError as e:
            self._dropped(str(e))
        except Exception as e:  # noqa: BLE001 - a bad frame must not kill the connection
            self._dropped(type(e).__name__)

    _drops = 0

    def _dropped(self, why: str) -> None:
        """Log a dropped client frame: the reason only, and not every one of a flood."""
        self._drops += 1
        if self._drops <= 50 or self._drops % 1000 == 0:
            self.log.warning("Dropped websocket message %d for kernel %s: %s", self._drops,
                             self.kernel_id, why)

    def on_close(self) -> None:
        self.gateway_app.open_websockets.discard(self)
        if getattr(self, "connection", None) is not None:
            super().on_close()


class NotFoundHandler(JSONErrorsMixin, JupyterHandler):
    """Every path nothing else matched: a JSON 404 instead of jupyter_server's HTML page."""

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        raise GatewayHTTPError(404, _short(f"No such endpoint: {self.request.path}"), "NotFound")


class StatusHandler(GatewayAPIHandler):
    """``/api/elastic/status``: what this gateway is and holds."""

    @web.authenticated
    async def get(self) -> None:
        status = ownership(self).status_for(self.current_user,
                                            await self.gateway_app.elastic_status())
        self.finish(json.dumps(status, default=json_default))


class MetricsHandler(JSONErrorsMixin, JupyterHandler):
    """``/metrics``: this gateway's own registry (metrics.py) in Prometheus' text format,
    authenticated as ``ServerApp.authenticate_prometheus`` says."""

    @allow_unauthenticated
    async def get(self) -> None:
        if self.settings.get("authenticate_prometheus", True) and not self.logged_in:
            raise web.HTTPError(403)
        app = t.cast("ElasticGatewayApp", self.settings["serverapp"])
        body, content_type = app.gateway_metrics.render(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)


def default_handlers() -> list[tuple[str, type[web.RequestHandler]]]:
    """URL patterns (relative to base_url) that take precedence over jupyter_server's."""
    # They build on this module's handlers, so they are imported here, not at the top.
    from elastic_kernels.gateway.web.adminpage import admin_handlers
    from elastic_kernels.gateway.web.statusstream import status_handlers

    return [
        (r"/api/kernels", MainKernelHandler),
        (rf"/api/kernels/{kernel_id_regex}", KernelHandler),
        (rf"/api/kernels/{kernel_id_regex}/{kernel_action_regex}", KernelActionHandler),
        (rf"/api/kernels/{kernel_id_regex}/channels", ElasticKernelWebsocketHandler),
        (r"/api/kernels/(?P<kernel_id>[^/]+)(?P<rest>/.*)?", InvalidKernelIdHandler),
        (r"/api/elastic/status", StatusHandler),
        *status_handlers(),
        *admin_handlers(),
        (r"/metrics", MetricsHandler),
        *kernelspec_handlers(),
    ]


def filter_env(
    client_env: Mapping[str, str], allowed: t.Iterable[str], prefix: str = "KERNEL_"
) -> dict[str, str]:
    """The part of a client's env a kernel may see: ``KERNEL_*``, explicitly allowed names, and
    the names every kernel gets (``JPY_SESSION_NAME``, the notebook's path); the kernelspec's
    policy (:mod:`elastic_kernels.provisioner.envpolicy`) then decides what reaches the pod."""
    allowed_set = set(allowed) | ALWAYS_ALLOWED
    return {k: v for k, v in client_env.items() if k.startswith(prefix) or k in allowed_set}
