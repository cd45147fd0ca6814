"""The local cluster's Kubernetes API server: the REST protocol over the in-memory Store.

It speaks the wire protocol of a real kube-apiserver closely enough that the official ``kubernetes``
Python client and ``kubectl`` work against it unchanged: discovery (legacy and aggregated), OpenAPI,
CRUD with the real status codes and ``Status`` bodies, the four patch types, status subresources,
label/field selectors, chunked watches with resume, bookmarks and 410 Gone, server-side tables for
``kubectl get``, pod logs via a pluggable provider, and deletion options.

Every request is authenticated (``authn.py``) and authorized (``rbac.py``) as kube-apiserver does,
and counted by (verb, group, resource, subresource, namespace) so tests can assert how many writes
an operation costs and that nothing polls (``accounting.py``). The protocol itself is served by
``handler.py``, with routing, content negotiation, protobuf bodies, tables and the watch wire form
each in a module of its own.

``LocalCluster`` (``cluster.py``) runs one; tests and benchmarks may run one on a bare ``Store``.
What may be swapped is in ``APIServer``'s docstring.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

import tornado.httpserver
import tornado.netutil
import tornado.web

from . import openapi
from .accounting import READ_VERBS, WRITE_VERBS, RequestCounter, RequestKey, RequestRecord
from .authn import Authenticator
from .authz import Authorizer
from .bootstrappolicy import ensure_bootstrap_policy
from .handler import RequestHandler
from .negotiation import MediaType, parse_accept
from .admission import ValidatingAdmission
from .ownerrefs import OwnerReferencesPermissionEnforcement
from .protobuf import decode_protobuf
from .rbac import RBACAuthorizer, store_readers
from .routing import Route
from .satokens import ServiceAccountTokens
from .store import Store
from .tables import human_duration, jsonpath_values, partial_metadata, table_for
from .watchcache import Watch

# Names other modules, tests and benchmarks import from here.
__all__ = ["APIServer", "LogProvider", "MediaType", "READ_VERBS", "RequestCounter", "RequestKey",
           "RequestRecord", "Route", "WRITE_VERBS", "decode_protobuf", "human_duration",
           "jsonpath_values", "parse_accept", "partial_metadata", "table_for"]

log = logging.getLogger(__name__)

LogProvider = Callable[[str, str, str], "str | Awaitable[str]"]


class APIServer:
    """Serves ``store`` over HTTP on ``host:port`` (port 0 picks a free one) until ``stop()``.

    ``log_provider(namespace, pod, container) -> str`` (or an awaitable of str) answers
    ``pods/log``; the kubelet plugs in its own.  Every request is authenticated by
    ``authenticator`` (``authn.py``) before it is routed; by default only ServiceAccount tokens
    from ``service_account_tokens`` (which also answers the TokenRequest API) are accepted, so a
    caller that wants an admin passes an authenticator with one.  Then ``authorizer`` judges it
    (by default RBAC over the stored roles and bindings, ``rbac.py``, with the default cluster
    roles created at start), and client writes pass OwnerReferencesPermissionEnforcement.
    With ``tls`` (a server SSL context) the same API is also served over HTTPS on a second port
    (``tls_url``; ``tls_port`` 0 picks a free one): in-cluster clients only speak HTTPS. Both
    listeners authenticate and authorize alike.
    """

    def __init__(self, store: Store, host: str = "127.0.0.1", port: int = 0, *,
                 authenticator: Authenticator | None = None,
                 authorizer: Authorizer | None = None,
                 service_account_tokens: ServiceAccountTokens | None = None,
                 log_provider: LogProvider | None = None,
                 bookmark_interval: float = 60.0, watch_timeout: int = 1800,
                 tls: ssl.SSLContext | None = None, tls_port: int = 0) -> None:
        self.store = store
        self.host = host
        self._requested_port = port
        self.port = 0
        self.service_account_tokens = service_account_tokens or ServiceAccountTokens(store)
        self.authenticator = authenticator or Authenticator([self.service_account_tokens])
        self.authorizer: Authorizer = authorizer or RBACAuthorizer(*store_readers(store))
        self.owner_references = OwnerReferencesPermissionEnforcement(self.authorizer,
                                                                     store.registry)
        self.admission = ValidatingAdmission(self.owner_references, *store_readers(store))
        self.log_provider = log_provider
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.request_counter = RequestCounter()
        self.openapi = openapi.OpenAPIDocuments(store.registry)
        self._server: tornado.httpserver.HTTPServer | None = None
        #: Watches being streamed, ended by ``stop()`` (the handler adds and discards them).
        self.open_watches: set[Watch] = set()
        self.tls = tls
        self._requested_tls_port = tls_port
        self.tls_port = 0
        self._tls_server: tornado.httpserver.HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        """The HTTPS endpoint (``https://host:port``), when serving TLS."""
        return f"https://{self.host}:{self.tls_port}" if self._tls_server is not None else None

    def _log_request(self, handler: tornado.web.RequestHandler) -> None:
        status = handler.get_status()
        if status >= 500:
            log.warning("%s %s -> %d", handler.request.method, handler.request.uri, status)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %d", handler.request.method, handler.request.uri, status)

    async def start(self) -> None:
        if self._server is not None:
            return
        ensure_bootstrap_policy(self.store)
        app = tornado.web.Application([(r"/.*", RequestHandler, {"server": self})],
                                      log_function=self._log_request, compress_response=False)
        sockets = tornado.netutil.bind_sockets(self._requested_port, address=self.host,
                                               family=socket.AF_INET)
        server = tornado.httpserver.HTTPServer(app, max_body_size=64 * 1024 * 1024,
                                              idle_connection_timeout=3600)
        server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._server = server
        if self.tls is not None:
            tls_sockets = tornado.netutil.bind_sockets(self._requested_tls_port,
                                                       address=self.host, family=socket.AF_INET)
            tls_server = tornado.httpserver.HTTPServer(
                app, ssl_options=self.tls, max_body_size=64 * 1024 * 1024,
                idle_connection_timeout=3600)
            tls_server.add_sockets(tls_sockets)
            self.tls_port = tls_sockets[0].getsockname()[1]
            self._tls_server = tls_server

    async def stop(self) -> None:
        server, self._server = self._server, None
        tls_server, self._tls_server = self._tls_server, None
        if server is None:
            return
        server.stop()
        if tls_server is not None:
            tls_server.stop()
        for watch in list(self.open_watches):
            watch.close()
        # Let watch handlers see their streams end, then drop idle keep-alive connections.
        await asyncio.sleep(0)
        try:
            await asyncio.wait_for(server.close_all_connections(), 5)
            if tls_server is not None:
                await asyncio.wait_for(tls_server.close_all_connections(), 5)
        except asyncio.TimeoutError:
            log.warning("some API connections did not close within 5 s")
