"""Building an API client the way every Kubernetes tool does, so admins have nothing new to learn.

Precedence: an explicit kubeconfig path; otherwise in-cluster configuration when running in a
pod; otherwise ``$KUBECONFIG`` or ``~/.kube/config``. The namespace follows the same source: the
kubeconfig context's namespace, or the pod's own namespace, so ``kubectl apply -k kernelspecs/``
and the gateway agree without flags.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import config as kconfig
from kubernetes.client import ApiClient, Configuration
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
IN_CLUSTER_NAMESPACE_FILE = f"{SERVICE_ACCOUNT_DIR}/namespace"
#: Set by the local cluster's kubelet: mount path -> host directory (it rewrites paths instead
#: of mounting), so the service-account directory is found where it really is.
MOUNTS_ENV = "LOCALCLUSTER_MOUNTS"


class KubeConfigError(Exception):
    """No usable cluster configuration; the message says what was tried."""


@dataclass
class ClusterConfig:
    api_client: ApiClient
    namespace: str
    source: str  # a human description for the startup log: never contains credentials

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def load_cluster_config(
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    namespace: str | None = None,
) -> ClusterConfig:
    """Resolve connection settings and the default namespace."""
    configuration = Configuration()
    if kubeconfig or not in_cluster():
        path = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        # KUBECONFIG may hold several files; the client takes the first for its own loading.
        first = str(path).split(os.pathsep)[0]
        resolved = Path(first).expanduser()
        if not resolved.is_file():
            raise KubeConfigError(
                f"no kubeconfig at {resolved}: pass --kubeconfig, set KUBECONFIG, or run in a pod"
            )
        try:
            kconfig.load_kube_config(
                config_file=str(resolved), context=context, client_configuration=configuration
            )
            _, active = kconfig.list_kube_config_contexts(config_file=str(resolved))
            if context:
                contexts, _ = kconfig.list_kube_config_contexts(config_file=str(resolved))
                active = next((c for c in contexts if c["name"] == context), active)
        except (ConfigException, ValueError, OSError) as e:
            raise KubeConfigError(f"cannot use kubeconfig {resolved}: {e}") from None
        ctx_ns = (active or {}).get("context", {}).get("namespace")
        source = f"kubeconfig {resolved} (context {(active or {}).get('name', '?')})"
        ns = namespace or ctx_ns or "default"
    else:
        sa_dir = service_account_dir()
        try:
            InClusterConfigLoader(token_filename=str(sa_dir / "token"),
                                  cert_filename=str(sa_dir / "ca.crt")).load_and_set(configuration)
        except ConfigException as e:
            raise KubeConfigError(f"in-cluster configuration failed: {e}") from None
        source = "in-cluster service account"
        ns = namespace or _in_cluster_namespace(sa_dir) or "default"
    return ClusterConfig(ApiClient(configuration), ns, source)


def service_account_dir() -> Path:
    """Where the pod's service-account token, CA and namespace are.

    The standard path, unless the process runs on the local cluster, whose kubelet maps mount
    paths to host directories and says so in ``$LOCALCLUSTER_MOUNTS``.
    """
    try:
        mounts = json.loads(os.environ.get(MOUNTS_ENV) or "{}")
    except ValueError:
        mounts = {}
    mapped = mounts.get(SERVICE_ACCOUNT_DIR) if isinstance(mounts, dict) else None
    return Path(mapped) if isinstance(mapped, str) and mapped else Path(SERVICE_ACCOUNT_DIR)


def _in_cluster_namespace(sa_dir: Path | None = None) -> str | None:
    try:
        return ((sa_dir or service_account_dir()) / "namespace").read_text().strip() or None
    except OSError:
        return None
