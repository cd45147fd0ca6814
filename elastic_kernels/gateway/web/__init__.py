"""The gateway's HTTP surface: what clients reach and what they may do.

Modules:
    ``handlers`` (the HTTP and websocket API), ``auth`` (tokens to users and admins),
    ``hubauth`` (users from JupyterHub API tokens), ``statusstream`` (each user's kernel status,
    live), ``diagnostics`` (a kernel's pod events and launcher log, for its owner),
    ``adminpage`` (``/elastic/``, for admins),
    ``ownership`` (whose kernel it is, per-user limits), ``errors`` (JSON errors),
    ``bodylimit`` and ``httplimits`` (oversized, slow and idle clients), ``metrics``
    (``/metrics``).

Above ``lifecycle`` and ``transport``; only ``gateway.app`` imports it.
"""
