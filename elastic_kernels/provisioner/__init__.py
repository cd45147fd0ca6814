"""The kernel provisioner: one pod per kernel, rendered by a pure function, watched not polled."""

from .errors import KernelLaunchError
from .provisioner import ElasticKernelProvisioner

__all__ = ["ElasticKernelProvisioner", "KernelLaunchError"]
