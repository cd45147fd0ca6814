"""An asyncio face for the official ``kubernetes`` client, working on plain JSON dicts.

Why this layer exists:

* The official client is synchronous. Every call here runs on a small dedicated thread pool so
  the gateway's event loop never blocks on the API server.
* Its generated models are slow to build and lossy for custom resources. Everything we touch is
  either a custom resource or a handful of pod fields, so we speak JSON dicts and let the client do
  what it is good at: configuration (kubeconfig, in-cluster, exec plugins), authentication, TLS
  and connection pooling.
* One generic path (``/api/v1/...`` or ``/apis/{group}/{version}/...``) serves core kinds and
  custom resources alike, so the local cluster and a real one take exactly the same code path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlencode

import urllib3
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

JSON = dict[str, Any]

PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the REST API; enough to build every URL for it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{quote(namespace, safe='')}")
        parts.append(self.plural)
        if name is not None:
            parts.append(quote(name, safe=""))
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


PODS = Resource("", "v1", "pods", "Pod")
SECRETS = Resource("", "v1", "secrets", "Secret")
EVENTS = Resource("", "v1", "events", "Event")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
#: The image pre-puller's (provisioner/prepull.py).
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet")
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                "CustomResourceDefinition", namespaced=False)


class KubeError(Exception):
    """An API call failed; carries the server's ``Status`` so callers can branch on its reason.

    ``status == 0`` means the API server could not be reached at all, which the gateway turns
    into a quick 503 rather than a hang.
    """

    def __init__(self, status: int, reason: str, message: str, body: JSON | None = None,
                 *, sent: bool | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}
        #: For ``status == 0``: False when the request never left (the connection could not be
        #: opened), True when it may have reached the server; None when nobody could tell.
        self.sent = sent

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def unreachable(self) -> bool:
        return self.status == 0

    @property
    def outcome_unknown(self) -> bool:
        """Whether the API server may have carried the request out although it failed.

        A hung API server (stopped, or stuck on its storage) answers nothing for a while and
        then commits the requests it had queued: a read timeout, a connection broken after the
        request went out, or a 5xx (a 504 from storage, a 503 from a proxy in front) say
        nothing about whether a create happened. A 4xx (validation, conflict, forbidden,
        throttled) or a connection that never opened is a definite refusal: nothing was done.
        """
        if self.status == 0:
            return self.sent is not False
        return self.status >= 500

    @classmethod
    def from_body(cls, status: int, raw: bytes) -> KubeError:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("kind") == "Status":
            return cls(status, str(body.get("reason") or ""), str(body.get("message") or ""), body)
        text = raw.decode("utf-8", "replace").strip()[:500]
        return cls(status, "", text or f"HTTP {status}")


class KubeClient:
    """Async JSON access to one cluster.

    The pool is bounded on purpose: a burst of kernel starts queues here instead of opening a
    connection per request against the API server.
    """

    #: (connect, read) seconds for ordinary requests. Short, so a start during an API outage
    #: fails fast with a clear error instead of hanging.
    request_timeout: tuple[float, float] = (5.0, 30.0)

    def __init__(self, api_client: ApiClient, namespace: str = "default", max_workers: int = 16,
                 request_timeout: tuple[float, float] | None = None):
        self.api_client = api_client
        self.namespace = namespace
        if request_timeout is not None:
            self.request_timeout = request_timeout
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kube")
        # urllib3 retries connection failures itself; one quick retry is enough, the callers
        # (informers, the provisioner) own the real retry policy.
        api_client.configuration.retries = urllib3.Retry(
            total=1, connect=1, read=0, status=0, backoff_factor=0.1
        )
        self._reachability = threading.Lock()
        self._unreachable = False
        self._recovery_listeners: list[Callable[[], None]] = []

    # -- reachability ----------------------------------------------------------------------

    def add_recovery_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` (from any thread) when the API server answers again after being
        unreachable; returns the unsubscribe function.

        Informers back off while the API server is down, up to several seconds between
        attempts; this lets the first request that gets through wake them all at once instead
        of each waiting out its back-off.
        """
        self._recovery_listeners.append(listener)

        def remove() -> None:
            if listener in self._recovery_listeners:
                self._recovery_listeners.remove(listener)

        return remove

    @property
    def reachable(self) -> bool:
        """Whether the last request reached the API server (True before the first one)."""
        return not self._unreachable

    def _reached(self, reached: bool) -> None:
        with self._reachability:
            recovered = reached and self._unreachable
            self._unreachable = not reached
        if recovered:
            log.info("The Kubernetes API server is reachable again")
            for listener in list(self._recovery_listeners):
                try:
                    listener()
                except Exception:  # noqa: BLE001 - one listener must not starve the others
                    log.exception("recovery listener failed")

    # -- plumbing --------------------------------------------------------------------------

    def _prepare(
        self, method: str, path: str, query: dict[str, Any] | None, body: Any,
        content_type: str | None,
    ) -> tuple[str, dict[str, str], Any]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        _, url, headers, body, _ = self.api_client.param_serialize(
            method=method,
            resource_path=path,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        if query:
            clean = {k: _query_value(v) for k, v in query.items() if v is not None}
            if clean:
                url += "?" + urlencode(clean)
        return url, headers, body

    def request_sync(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: float | tuple[float, float] | None = None,
    ) -> Any:
        """Blocking request; only ever called from the pool or from synchronous tools (the CLI)."""
        if body is not None and content_type is None:
            content_type = "application/json"
        url, headers, body = self._prepare(method, path, query, body, content_type)
        try:
            resp = self.api_client.rest_client.request(
                method, url, headers=headers, body=body,
                _request_timeout=timeout or self.request_timeout,
            )
            raw = resp.read()
        except ApiException as e:  # raised by the client for TLS problems and the like
            if not e.status:
                self._reached(False)
            raise KubeError(e.status or 0, "Unreachable", str(e.reason or e)) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self._reached(False)
            raise KubeError(0, "Unreachable",
                            f"cannot reach the Kubernetes API server: {_short(e)}",
                            sent=not _never_sent(e)) from None
        self._reached(True)
        if not 200 <= resp.status < 300:
            raise KubeError.from_body(resp.status, raw)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: self.request_sync(method, path, **kwargs)
        )

    def _ns(self, resource: Resource, namespace: str | None) -> str | None:
        if not resource.namespaced:
            return None
        return namespace or self.namespace

    # -- verbs -----------------------------------------------------------------------------

    async def get(self, resource: Resource, name: str, namespace: str | None = None,
                  subresource: str | None = None) -> JSON:
        return await self.request("GET", resource.path(self._ns(resource, namespace), name,
                                                       subresource))

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        all_namespaces: bool = False,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        ns = None if all_namespaces else self._ns(resource, namespace)
        return await self.request(
            "GET", resource.path(ns),
            query={"labelSelector": label_selector, "fieldSelector": field_selector},
        )

    async def create(self, resource: Resource, body: JSON, namespace: str | None = None) -> JSON:
        return await self.request("POST", resource.path(self._ns(resource, namespace)), body=body)

    async def replace(self, resource: Resource, name: str, body: JSON,
                      namespace: str | None = None, subresource: str | None = None) -> JSON:
        return await self.request(
            "PUT", resource.path(self._ns(resource, namespace), name, subresource), body=body
        )

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: str = "merge",
        subresource: str | None = None,
    ) -> JSON:
        return await self.request(
            "PATCH",
            resource.path(self._ns(resource, namespace), name, subresource),
            body=patch,
            content_type=PATCH_CONTENT_TYPES[patch_type],
        )

    async def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = "Background",
        preconditions: JSON | None = None,
    ) -> JSON | None:
        options: JSON = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if propagation_policy:
            options["propagationPolicy"] = propagation_policy
        if preconditions:
            options["preconditions"] = preconditions
        return await self.request(
            "DELETE", resource.path(self._ns(resource, namespace), name), body=options
        )

    def open_watch(
        self,
        resource: Resource,
        namespace: str | None,
        resource_version: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> WatchStream:
        """Open a streaming watch (blocking); consumed by an informer's thread."""
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
        }
        url, headers, _ = self._prepare("GET", resource.path(namespace), query, None, None)
        try:
            resp = self.api_client.rest_client.pool_manager.request(
                "GET", url, headers=headers, preload_content=False,
                timeout=urllib3.Timeout(connect=5.0, read=timeout_seconds + 30.0),
                retries=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self._reached(False)
            raise KubeError(0, "Unreachable",
                            f"cannot reach the Kubernetes API server: {_short(e)}") from None
        self._reached(True)
        if resp.status != 200:
            raw = resp.read()
            resp.release_conn()
            raise KubeError.from_body(resp.status, raw)
        return WatchStream(resp)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, self.api_client.close)


class WatchStream:
    """The lines of one watch response, decoded; closable from another thread."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self._closed = False

    def __iter__(self) -> Iterator[JSON]:
        buf = b""
        try:
            for chunk in self._response.stream(amt=65536, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
            if buf.strip() and not self._closed:
                yield json.loads(buf)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            if not self._closed:
                raise KubeError(0, "Unreachable", f"watch stream broke: {_short(e)}") from None

    def close(self) -> None:
        self._closed = True
        try:
            self._response.shutdown()
        except Exception:  # already closed, or an urllib3 without shutdown()
            pass
        try:
            self._response.release_conn()
        except Exception:
            pass


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _never_sent(exc: BaseException) -> bool:
    """Whether a failed request certainly never reached the server: the connection itself
    could not be opened (refused, no route, name not resolved, connect timeout). A read timeout
    or a connection reset may come after the server got, and acted on, the request."""
    inner: BaseException | None = exc
    seen = 0
    while inner is not None and seen < 8:
        if isinstance(inner, (urllib3.exceptions.NewConnectionError,
                              urllib3.exceptions.ConnectTimeoutError, ConnectionRefusedError,
                              socket.gaierror)):
            return True
        nxt = getattr(inner, "reason", None)
        inner = nxt if isinstance(nxt, BaseException) and nxt is not inner else None
        seen += 1
    return False


def _short(exc: BaseException) -> str:
    """urllib3 errors nest their cause several levels deep; show the innermost, briefly."""
    inner: BaseException = exc
    while True:
        nxt = getattr(inner, "reason", None)
        if isinstance(nxt, BaseException) and nxt is not inner:
            inner = nxt
            continue
        break
    text = str(inner) or type(inner).__name__
    return text[:300]
