"""A private CA and a serving certificate, so pods reach the local API server as in a real cluster.

In a real pod, the official client's ``load_incluster_config`` talks to
``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`` and trusts only
``<service account dir>/ca.crt``; it refuses a missing or empty CA file and has no plain-HTTP mode.
The local cluster therefore serves the same API over TLS as well (loopback only) with a
certificate from a CA made for that one cluster, and its kubelet writes that CA's certificate as
each pod's ``ca.crt``. The kubeconfig it writes names this listener too, with the CA embedded:
kubectl (client-go) sends credentials only over TLS. The plain-HTTP listener stays for
wire-level tests and benchmarks, and requires the same credentials.

The keys are made by the ``openssl`` command-line tool (present on every Debian/Ubuntu machine
and in CI), so no Python dependency is added; both keys are ECDSA P-256, valid for 30 days, and
live in a directory only this user can read. Nothing here is used by a real cluster.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence

#: Names a pod may use for the API server: the service's DNS names and the loopback address.
DEFAULT_HOSTS: tuple[str, ...] = (
    "127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
VALID_DAYS = 30


class CertificateError(RuntimeError):
    """The serving certificate could not be made; the message says why (never key material)."""


@dataclass(frozen=True)
class ServingCert:
    """Files of one cluster's CA and API server certificate."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, as a pod's ``ca.crt`` holds it."""
        return self.ca_file.read_bytes()

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for the API server's TLS listener."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts only this CA (what ``ca.crt`` gives an in-cluster client)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _openssl(args: Sequence[str], cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise CertificateError("the openssl command is needed to serve the local API over TLS "
                               "(apt-get install openssl)")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise CertificateError(f"openssl {args[0]} failed: {proc.stderr.strip()[:500]}")


def _subject_alt_names(hosts: Sequence[str]) -> str:
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            names.append(f"DNS:{host}")
        else:
            names.append(f"IP:{host}")
    return ",".join(names)


def generate_serving_cert(directory: str | os.PathLike[str],
                          hosts: Sequence[str] = DEFAULT_HOSTS) -> ServingCert:
    """Make a CA and a server certificate for ``hosts`` in ``directory`` (created, mode 0700)."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name or address")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt",
              "-days", str(VALID_DAYS), "-subj", "/CN=elastic-kernels-local-ca",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
    _openssl(["req", "-new", *ec, "-keyout", "apiserver.key", "-out", "apiserver.csr",
              "-subj", "/CN=kube-apiserver"], d)
    (d / "apiserver.ext").write_text(
        f"subjectAltName={_subject_alt_names(hosts)}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n")
    _openssl(["x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
              "-CAcreateserial", "-out", "apiserver.crt", "-days", str(VALID_DAYS),
              "-extfile", "apiserver.ext"], d)
    for name in ("ca.key", "apiserver.key"):
        os.chmod(d / name, 0o600)
    # The CA key signed one certificate and is not needed again.
    (d / "ca.key").unlink()
    return ServingCert(d / "ca.crt", d / "apiserver.crt", d / "apiserver.key")
