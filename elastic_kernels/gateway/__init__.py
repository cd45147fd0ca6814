"""The headless gateway that notebook servers reach with ``--gateway-url`` (layer 4).

``app`` (``ElasticGatewayApp``, ``main``) composes three subpackages, each using only those
below it (``.importlinter`` enforces the order):

``web`` - the HTTP surface:
    ``handlers``, ``auth``, ``ownership``, ``errors``, ``bodylimit``, ``httplimits``, ``metrics``.
``lifecycle`` - kernels in pods, from start to cull:
    ``kernelmanager``, ``gpuqueue``, ``culler``, ``hydration``, ``liveness``, ``activity``.
``transport`` - messages between websockets and ZeroMQ:
    ``connection``, ``wsframes``, ``wsjson``, ``writelimit``, ``msgsize``, ``offlinebuffer``,
    ``zmqguard``.

``redact`` (the gateway's secrets, for ``elastic_kernels.redaction``'s log filter) serves all
of them. Private names of jupyter_server and jupyter_client are reached only through
:mod:`elastic_kernels.upstream`. The notebook-server extension is :mod:`elastic_kernels.notebook`.

See ``docs/architecture.md`` for the layers and the message path.
"""
