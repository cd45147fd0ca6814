"""The notebook-server side: a jupyter_server extension for the server in front of the gateway.

A notebook server (or JupyterLab) started with ``--gateway-url`` relays kernels to the gateway;
with ``jpserver_extensions = {"elastic_kernels.notebook": True}`` it also relays them without
Nagle delays, shows the gateway's error messages instead of their templates, and serves
CR-backed kernelspecs' resources from the gateway's models, relays the gateway's per-user
kernel status (``/elastic-kernels/api/status`` and ``/stream``), closes a browser's kernel
websocket when its gateway leg ends (so the client reconnects and re-syncs), and keeps tokens
out of the server's log.

Modules:
    ``gatewayclient`` (the websocket connection class and the extension's loader);
    ``statusproxy`` (the kernel status routes).

Layer 4 beside ``gateway`` and ``cull``: it talks to the gateway over HTTP only and imports
nothing of it.
"""

from elastic_kernels.notebook.gatewayclient import (
    NoDelayGatewayWebSocketConnection,
    _jupyter_server_extension_points,
    _load_jupyter_server_extension,
)

__all__ = [
    "NoDelayGatewayWebSocketConnection",
    "_jupyter_server_extension_points",
    "_load_jupyter_server_extension",
]
