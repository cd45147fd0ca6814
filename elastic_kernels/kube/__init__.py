"""Talking to Kubernetes: client construction, an async JSON client, and shared watch caches.

Layer 1, the only code that talks to the Kubernetes API. ``config`` (kubeconfig, in-cluster or
explicit), ``client`` (``KubeClient``: async requests on plain JSON, ``KubeError``),
``connection`` (the process-wide client and one informer per watched kind), ``informer``
(list+watch caches with resync, 410 Gone relist and back-off), ``resources`` (our CRs' names and
typed views), ``apply`` (create-or-update of manifests), ``records`` (every JupyterKernel status
write and kernel Event, and the timestamps they carry), ``slugs`` (user names in object names,
as KubeSpawner writes them).
"""

from .client import KubeClient, KubeError, Resource
from .informer import Informer

__all__ = ["Informer", "KubeClient", "KubeError", "Resource"]
