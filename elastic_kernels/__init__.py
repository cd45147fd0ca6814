"""elastic-kernels: Jupyter kernels as per-kernel pods on Kubernetes."""

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "elastic_kernels"}]


def _load_jupyter_server_extension(serverapp: object) -> None:
    """In a plain jupyter_server: start the kernelspec watch as soon as the server runs.

    Without it the first ``/api/kernelspecs`` request starts the watch, and a kernel started
    before that finds no kernelspecs.
    """
    import asyncio

    ksm = getattr(serverapp, "kernel_spec_manager", None)
    start = getattr(ksm, "start_watching", None)
    if start is not None:
        task = asyncio.ensure_future(start())
        serverapp._elastic_kernelspec_watch = task  # type: ignore[attr-defined]
