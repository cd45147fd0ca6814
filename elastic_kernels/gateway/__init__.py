"""The headless gateway that notebook servers reach with ``--gateway-url``.

Modules: ``app`` (``ElasticGatewayApp``, ``main``), ``handlers`` (the HTTP/websocket API),
``connection`` (websocket <-> ZeroMQ bridge without the 0.5 s open delay), ``zmqguard``
(protection against lost ZeroMQ wakeups), ``errors`` (``KernelStartError``), ``auth`` (token),
``metrics`` (Prometheus text), ``client`` (the notebook-server side, TCP_NODELAY).
"""
