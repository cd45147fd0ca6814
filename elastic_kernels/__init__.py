"""elastic-kernels: Jupyter kernels as per-kernel pods on Kubernetes."""

__version__ = "0.1.0"
