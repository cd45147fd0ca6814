"""elastic-kernels: Jupyter kernels as per-kernel pods on Kubernetes.

Packages and modules, by layer (``docs/architecture.md``; ``.importlinter`` enforces them):

1. ``kube`` - the only code that talks to the Kubernetes API (``kube.records``: every status
   patch and Event of a JupyterKernel); ``upstream`` - the only code that
   touches private names of jupyter_server, jupyter_client, tornado and pyzmq; ``redaction`` -
   the log filter that keeps keys and tokens out of the gateway's and the notebook server's logs.
2. ``kernelspecs`` (kernelspecs from ``JupyterKernelSpec`` CRs, for any jupyter_server),
   ``kernelspec_handlers`` (their models and logos, never from disk), ``leases`` (each gateway's
   claim on its kernels), ``queueorder`` (the fair order of GPU waiters, pure), ``culling``
   (``policy``: when to cull, pure; ``actions``: carrying a decision out), ``snapshot``
   (kernel-namespace snapshots for suspend: the kernel side sent as source, the gateway's signed
   container and its store).
3. ``provisioner`` - ``ElasticKernelProvisioner``: one kernel, one pod.
4. ``gateway`` (the headless gateway), ``cull`` (the ``elastic-kernels cull`` cron),
   ``notebook`` (the extension for the notebook server in front of the gateway), ``prepullcmd``
   (``elastic-kernels prepull``: the image pre-pull DaemonSets without a gateway).
5. ``cli``, ``demo`` - the ``elastic-kernels`` command.

Beside them, ``localcluster`` is a Kubernetes for the demo and the tests, reached only over HTTP;
``testing`` holds the HTTP and websocket clients the tests and benchmarks drive a gateway with;
``tasks`` (cancel a task and wait) serves every layer; ``data`` is the files the package ships
(CRDs, example kernelspecs, the launcher).

As a jupyter_server extension (``jpserver_extensions = {"elastic_kernels": True}``) this package
starts the kernelspec watch at startup and serves CR-backed kernelspecs without the disk.
"""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "elastic_kernels"}]


def _load_jupyter_server_extension(serverapp: object) -> None:
    """In a plain jupyter_server: start the kernelspec watch as soon as the server runs, and
    serve CR-backed kernelspecs' models and logos without reading the server's disk.

    Without the watch the first ``/api/kernelspecs`` request starts it, and a kernel started
    before that finds no kernelspecs. Without the handlers jupyter_server would list and serve
    files of its working directory as a CR-backed spec's resources (see kernelspec_handlers).
    """
    import asyncio

    from jupyter_server.utils import url_path_join

    from .kernelspec_handlers import kernelspec_handlers

    web_app = getattr(serverapp, "web_app", None)
    if web_app is not None:
        base_url = web_app.settings.get("base_url", "/")
        web_app.add_handlers(".*$", [(url_path_join(base_url, pattern), handler)
                                     for pattern, handler in kernelspec_handlers()])
    ksm = getattr(serverapp, "kernel_spec_manager", None)
    start = getattr(ksm, "start_watching", None)
    if start is not None:
        task = asyncio.ensure_future(start())
        serverapp._elastic_kernelspec_watch = task  # type: ignore[attr-defined]
