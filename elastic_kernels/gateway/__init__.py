"""The headless gateway that notebook servers reach with ``--gateway-url`` (layer 4).

HTTP surface:
    ``app`` (``ElasticGatewayApp``, ``main``: the jupyter_server app and its settings),
    ``handlers`` (the HTTP and websocket API), ``auth`` (tokens to users and admins),
    ``ownership`` (whose kernel it is, per-user limits), ``errors`` (JSON errors),
    ``bodylimit`` and ``httplimits`` (oversized, slow and idle clients), ``metrics``
    (``/metrics``), ``redact`` (no secret in any log record).
Kernel lifecycle:
    ``kernelmanager`` (jupyter_server's kernel manager for kernels in pods, GPU quota),
    ``gpuqueue`` (fair GPU queue and reclaim), ``culler`` (per-kernelspec idle policy),
    ``hydration`` (taking on kernels from their records), ``liveness`` (pod death, restarts).
Message transport:
    ``connection`` (websocket <-> ZeroMQ bridge), ``wsframes`` (client frames checked),
    ``wsjson`` (kernel messages spliced into JSON frames), ``writelimit`` (what a slow client may
    queue), ``offlinebuffer`` (output kept for a client that left), ``activity`` (busy/idle from
    iopub), ``zmqguard`` (lost ZeroMQ wakeups).
The notebook-server side:
    ``client`` (a server extension for the notebook server in front of the gateway).

See ``docs/architecture.md`` for the layers and the message path.
"""
