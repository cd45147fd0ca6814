"""Talking to Kubernetes: client construction, an async JSON client, and shared watch caches."""

from .client import KubeClient, KubeError, Resource
from .informer import Informer

__all__ = ["Informer", "KubeClient", "KubeError", "Resource"]
