"""A real JupyterHub process for the hub-identity tests, on 127.0.0.1 only.

The hub runs its own ``jupyterhub`` command with a generated config file:

* users alice, bob, ops (a hub admin) and carol (in the group ``kernel-admins``), through the
  dummy authenticator; nobody logs in with a browser: a test-driver service (admin scopes)
  starts servers and issues tokens over the REST API;
* the gateway registered as the API-only service ``elastic-kernels-gateway``, and the users'
  role and their servers' tokens (``Spawner.server_token_scopes``) carrying
  ``access:services!service=elastic-kernels-gateway``, exactly as docs/admin-guide.md tells an
  admin to configure it;
* single-user servers from ``SimpleLocalProcessSpawner`` (home ``<workdir>/home/<user>``), with
  ``--gateway-url``, ``JUPYTER_GATEWAY_AUTH_TOKEN`` = the server's own hub token and the
  ``elastic_kernels.notebook`` extension: the same settings the guide gives for KubeSpawner;
* as proxy, :class:`RouteTableProxy` (in the generated config): JupyterHub's proxy API with the
  routes kept in the hub's memory. The tests reach the hub and each server at their own
  addresses (the route table says where), so no HTTP proxy process is needed; routing is not
  what these tests are about.

``HubProcess.stop()`` stops every server through the hub, then the hub (SIGTERM, then SIGKILL),
and is called in a ``finally`` by the fixture.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import textwrap
import typing as t
import uuid
from pathlib import Path

from elastic_kernels.testing import api, json_of

from .gatewayproc import private_jupyter_dirs

GATEWAY_SERVICE = "elastic-kernels-gateway"
ACCESS_SCOPE = f"access:services!service={GATEWAY_SERVICE}"
ADMIN_GROUP = "kernel-admins"
USERS = ("alice", "bob", "ops", "carol")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONFIG = '''
import sys
from jupyterhub.proxy import Proxy
from traitlets import Bool


class RouteTableProxy(Proxy):
    """JupyterHub's proxy API with the routes in memory (see tests/hubsupport.py)."""

    should_start = Bool(False)
    routes = {{}}

    async def add_route(self, routespec, target, data):
        self.routes[routespec] = {{"routespec": routespec, "target": target, "data": data}}

    async def delete_route(self, routespec):
        self.routes.pop(routespec, None)

    async def get_all_routes(self):
        return dict(self.routes)


c = get_config()  # noqa: F821
c.JupyterHub.proxy_class = RouteTableProxy
c.JupyterHub.bind_url = "http://127.0.0.1:{public_port}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.JupyterHub.db_url = "sqlite:///{workdir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{workdir}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{workdir}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {users!r}
c.Authenticator.admin_users = {{"ops"}}
c.JupyterHub.load_groups = {{{admin_group!r}: {{"users": ["carol"]}}}}
c.JupyterHub.services = [
    {{"name": "test-driver", "api_token": {driver_token!r}}},
    {{"name": {service!r}, "api_token": {service_token!r}}},
]
c.JupyterHub.load_roles = [
    {{"name": "test-driver", "services": ["test-driver"],
      "scopes": ["admin:users", "admin:servers", "tokens", "proxy", "access:servers"]}},
    # Every user may reach the gateway with their tokens (docs/admin-guide.md, JupyterHub).
    {{"name": "user", "scopes": ["self", {access_scope!r}]}},
]
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{workdir}/home/{{username}}"
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", {access_scope!r}]
c.Spawner.args = [
    "--gateway-url={gateway_url}",
    "--GatewayClient.request_timeout=300",
    "--ServerApp.jpserver_extensions=elastic_kernels.notebook=True",
    "--allow-root",  # CI and the developers' machines run tests as root
]
c.Spawner.environment = {{
    # The server's own hub token is its gateway token: it names its user at the gateway.
    "JUPYTER_GATEWAY_AUTH_TOKEN": lambda spawner: spawner.api_token,
    **{jupyter_env!r},
}}
'''


class HubProcess:
    """One JupyterHub process; see the module docstring. ``await start()``, ``await stop()``."""

    def __init__(self, workdir: Path, gateway_url: str) -> None:
        self.workdir = workdir
        self.gateway_url = gateway_url
        self.hub_port = free_port()
        self.public_port = free_port()
        self.driver_token = "driver-" + uuid.uuid4().hex
        self.service_token = "service-" + uuid.uuid4().hex
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = workdir / "jupyterhub.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/hub/api"

    def home(self, user: str) -> Path:
        return self.workdir / "home" / user

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for user in USERS:
            self.home(user).mkdir(parents=True, exist_ok=True)
        jupyter_env = private_jupyter_dirs(self.workdir / "jupyter")
        config = self.workdir / "jupyterhub_config.py"
        config.write_text(textwrap.dedent(CONFIG.format(
            public_port=self.public_port, hub_port=self.hub_port, workdir=self.workdir,
            users=set(USERS), admin_group=ADMIN_GROUP, driver_token=self.driver_token,
            service=GATEWAY_SERVICE, service_token=self.service_token,
            access_scope=ACCESS_SCOPE, gateway_url=self.gateway_url, jupyter_env=jupyter_env,
        )))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JUPYTER", "KUBECONFIG", "ELASTIC_KERNELS"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "jupyterhub", "-f", str(config), cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        await self._until(self._answers, "JupyterHub to answer")

    async def _answers(self) -> bool:
        try:
            response = await api(self.url, "GET", "/hub/api/", timeout=5)
        except OSError:
            return False
        return response.code == 200

    async def _until(self, check: t.Callable[[], t.Awaitable[bool]], what: str,
                     timeout: float = 120) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await check():
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"JupyterHub exited while waiting for {what}:\n"
                                     f"{self.log()[-6000:]}")
            if loop.time() > deadline:
                raise AssertionError(f"gave up waiting for {what}:\n{self.log()[-6000:]}")
            await asyncio.sleep(0.2)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def request(self, method: str, path: str, body: t.Any = None) -> t.Any:
        """A hub API call as the test driver; asserts success, returns the JSON body."""
        response = await api(self.api_url, method, path, body, token=self.driver_token)
        assert response.code < 300, (method, path, response.code, response.body)
        return json_of(response) if response.body else None

    async def token(self, user: str, scopes: list[str] | None = None) -> str:
        """A new API token of ``user`` (with ``scopes``; default: the gateway's access scope)."""
        model = await self.request("POST", f"/users/{user}/tokens", {
            "scopes": [ACCESS_SCOPE] if scopes is None else scopes, "note": "test"})
        return str(model["token"])

    async def start_server(self, user: str) -> str:
        """Start ``user``'s single-user server; returns its base URL (http://.../user/<u>)."""
        await self.request("POST", f"/users/{user}/server")

        async def ready() -> bool:
            model = await self.request("GET", f"/users/{user}")
            return bool((model.get("servers") or {}).get("", {}).get("ready"))

        await self._until(ready, f"{user}'s server")
        routes = await self.request("GET", "/proxy")
        prefix = f"/user/{user}/"
        return str(routes[prefix]["target"]).rstrip("/") + prefix.rstrip("/")

    async def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.returncode is None:
                for user in USERS:
                    response = await api(self.api_url, "DELETE", f"/users/{user}/server",
                                         token=self.driver_token, timeout=60)
                    assert response.code in (202, 204, 400, 404), response.body
        finally:
            if self.proc.returncode is None:
                # The hub stops the servers it still has (cleanup_servers) on SIGTERM.
                self.proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.proc.wait(), 60)
                except asyncio.TimeoutError:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    await self.proc.wait()


def user_of(model: dict[str, t.Any]) -> str:
    """The owner the gateway recorded in a kernel model."""
    return str((model.get("elastic") or {}).get("user"))


def dumps(obj: t.Any) -> str:
    return json.dumps(obj, sort_keys=True)
