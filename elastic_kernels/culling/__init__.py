"""Culling: when a kernel should be shut down and why (``policy``), and doing it (``actions``).

``policy`` is pure (facts in, decisions out, ``now`` an argument) and imports no Kubernetes
client, so the gateway, the cron and the day simulation (``bench/bench_day.py``, on a virtual
clock) share the very same rules. ``actions`` carries a decision out through the API with
conditional writes. Nothing is re-exported here: say which half you use.

Culling by GPU use reads dcgm-exporter's metrics through ``gpusource`` (a scrape or a Prometheus
query, once per pass for every kernel); ``policy`` follows each kernel's GPU idleness across
readings and counts GPU-seconds; ``usage`` is the report of who holds GPUs and how much of them
they use (``elastic-kernels cull --report``).
"""
