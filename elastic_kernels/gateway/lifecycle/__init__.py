"""Kernel lifecycle in the gateway: kernels that live in pods, from start to cull.

Modules:
    ``kernelmanager`` (jupyter_server's kernel manager for kernels in pods, GPU quota),
    ``gpuqueue`` (fair GPU queue and reclaim), ``queueboard`` (the queue's state shared across
    replicas), ``culler`` (per-kernelspec idle policy), ``suspension`` (suspend and resume:
    snapshots saved and restored), ``warmpool`` (keeping warm pools filled), ``prepull``
    (keeping the image pre-pull DaemonSets in step with the kernelspecs),
    ``hydration`` (taking on kernels from their records), ``liveness`` (pod death, restarts),
    ``activity`` (busy/idle from iopub).

Uses ``transport``; used by ``web`` and ``app``.
"""
