"""Fixtures that run just the local API server (no scheduler, no kubelet) for protocol tests.

The server runs on its own event loop in a background thread, so the official synchronous
``kubernetes`` client and ``kubectl`` can drive it from the test thread over real HTTP without
blocking the loop the server serves on. Like the local cluster's, it authenticates every request:
the fixtures use its admin token (``ServerThread.admin_token``, made per server). It also serves
HTTPS, which the ``kubeconfig`` fixture names: kubectl sends credentials only over TLS.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
from pathlib import Path
from typing import Any, TypeVar
from collections.abc import Callable, Iterator

import pytest
import yaml
from kubernetes import client

from elastic_kernels.localcluster.apiserver import APIServer
from elastic_kernels.localcluster.authn import Authenticator, StaticTokens, admin_user
from elastic_kernels.localcluster.satokens import ServiceAccountTokens
from elastic_kernels.localcluster.store import Store
from elastic_kernels.localcluster.tls import ServingCert, generate_serving_cert

T = TypeVar("T")


class ServerThread:
    """An APIServer on a private loop thread; ``call`` runs code on that loop (store access)."""

    def __init__(self, store_kwargs: dict[str, Any] | None = None,
                 server_kwargs: dict[str, Any] | None = None,
                 cert: ServingCert | None = None) -> None:
        self._store_kwargs = store_kwargs or {}
        self._server_kwargs = server_kwargs or {}
        self.cert = cert
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="apiserver-loop",
                                        daemon=True)
        self.store: Store | None = None
        self.server: APIServer | None = None
        self.admin_token = secrets.token_urlsafe(32)

    @property
    def auth_headers(self) -> dict[str, str]:
        """The admin's credentials, for requests made without a client library."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    def start(self) -> ServerThread:
        self._thread.start()

        async def boot() -> None:
            self.store = Store(**self._store_kwargs)
            kwargs = dict(self._server_kwargs)
            if self.cert is not None:
                kwargs.setdefault("tls", self.cert.server_context())
            if "authenticator" not in kwargs:
                tokens = ServiceAccountTokens(self.store)
                kwargs["service_account_tokens"] = tokens
                kwargs["authenticator"] = Authenticator(
                    [StaticTokens({self.admin_token: admin_user()}), tokens])
            self.server = APIServer(self.store, "127.0.0.1", 0, **kwargs)
            await self.server.start()

        asyncio.run_coroutine_threadsafe(boot(), self.loop).result(10)
        return self

    def call(self, fn: Callable[[], T], timeout: float = 10) -> T:
        async def run() -> T:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def tls_url(self) -> str:
        assert self.server is not None and self.server.tls_url is not None
        return self.server.tls_url

    @property
    def counter(self) -> Any:
        assert self.server is not None
        return self.server.request_counter

    def stop(self) -> None:
        try:
            if self.server is not None and self._thread.is_alive():
                asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def api_client(url: str, token: str | None = None) -> client.ApiClient:
    config = client.Configuration()
    config.host = url
    if token:
        config.api_key = {"authorization": token}
        config.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(config)


@pytest.fixture(scope="session")
def serving_cert(tmp_path_factory: pytest.TempPathFactory) -> ServingCert:
    """One CA and server certificate for every test server of the session."""
    return generate_serving_cert(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def apiserver(request: pytest.FixtureRequest, serving_cert: ServingCert) -> Iterator[ServerThread]:
    """A fresh API server; ``@pytest.mark.apiserver_options(store=..., server=...)`` tunes it."""
    marker = request.node.get_closest_marker("apiserver_options")
    kwargs = marker.kwargs if marker else {}
    thread = ServerThread(kwargs.get("store"), kwargs.get("server"), serving_cert)
    try:
        thread.start()
        yield thread
    finally:
        thread.stop()


@pytest.fixture
def kube(apiserver: ServerThread) -> Iterator[client.ApiClient]:
    """The official synchronous client, configured for the test server."""
    api = api_client(apiserver.url, apiserver.admin_token)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def core(kube: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture
def custom(kube: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube)


@pytest.fixture
def kubeconfig(apiserver: ServerThread, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.touch(0o600)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "t", "cluster": {
            "server": apiserver.tls_url,
            "certificate-authority-data": base64.b64encode(apiserver.cert.ca_pem).decode()
            if apiserver.cert else ""}}],
        "users": [{"name": "t", "user": {"token": apiserver.admin_token}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t",
                                               "namespace": "default"}}],
        "current-context": "t",
    }))
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "apiserver_options(store=None, server=None): keyword "
                                       "arguments for the test API server's Store and APIServer")


GROUP = "example.com"
WIDGETS = "widgets"

WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["user"],
            "properties": {
                "user": {"type": "string", "minLength": 1, "maxLength": 20,
                         "pattern": "^[a-z][a-z0-9-]*$"},
                "color": {"type": "string", "enum": ["red", "green", "blue"], "default": "red"},
                "replicas": {"type": "integer", "minimum": 0, "maximum": 8},
                "ratio": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                "enabled": {"type": "boolean"},
                "created": {"type": "string", "format": "date-time"},
                "port": {"x-kubernetes-int-or-string": True},
                "tags": {"type": "array", "minItems": 1, "maxItems": 3,
                         "items": {"type": "string"}},
                "resources": {"type": "object", "properties": {
                    "gpu": {"type": "integer", "minimum": 0},
                    "memory": {"type": "string"}}},
                "containers": {"type": "array", "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}, "image": {"type": "string"}}}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "status": {
            "type": "object",
            "properties": {
                "phase": {"type": "string", "enum": ["Pending", "Running", "Failed"]},
                "message": {"type": "string"},
            },
        },
    },
}

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{WIDGETS}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": WIDGETS, "singular": "widget", "kind": "Widget",
                  "shortNames": ["wd"], "categories": ["all"]},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "User", "type": "string", "jsonPath": ".spec.user"},
                {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            ],
            "schema": {"openAPIV3Schema": WIDGET_SCHEMA},
        }],
    },
}


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name},
            "spec": {"user": "alice", **spec}}


@pytest.fixture
def widgets(kube: client.ApiClient) -> dict[str, Any]:
    """Registers the Widget CRD through the API and returns the stored CRD."""
    api = client.ApiextensionsV1Api(kube)
    created = api.create_custom_resource_definition(WIDGET_CRD)
    return kube.sanitize_for_serialization(created)
