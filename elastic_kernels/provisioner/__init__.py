"""The kernel provisioner: one pod per kernel, rendered by a pure function, watched not polled.

Layer 3. ``provisioner`` (``ElasticKernelProvisioner``, the jupyter_client entry point),
``render`` (the pure function: JupyterKernel, Secret, Pod), ``podstate`` (a pod's state read to
fail fast), ``readiness`` (the first kernel_info reply), ``gates`` (the GPU queue's scheduling
gate), ``envpolicy`` (which client variables reach a kernel), ``templatepolicy`` (what a template
may not ask for), ``uservolumes`` (the user's volumes and the kernel's working directory),
``pool`` (warm pools: pods started ahead, claimed by starts), ``leftovers`` (what a failed start
left behind), ``errors`` (``KernelLaunchError``), ``prepull`` (the image pre-pull DaemonSets,
rendered by a pure function and applied), ``pullprogress`` ("Pulling image" in a starting
kernel's status, from the shared watch of Pulling Events).
"""

from .errors import KernelLaunchError
from .provisioner import ElasticKernelProvisioner

__all__ = ["ElasticKernelProvisioner", "KernelLaunchError"]
