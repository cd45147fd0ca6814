"""A private CA and a serving certificate, so pods reach the local API server as in a real cluster.

In a real pod, the official client's ``load_incluster_config`` talks to
``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`` and trusts only
``<service account dir>/ca.crt``; it refuses a missing or empty CA file and has no plain-HTTP mode.
The local cluster therefore serves the same API over TLS as well (loopback only) with a
certificate from a CA made for that one cluster, and its kubelet writes that CA's certificate as
each pod's ``ca.crt``. The kubeconfig it writes names this listener too, with the CA embedded:
kubectl (client-go) sends credentials only over TLS. The plain-HTTP listener stays for
wire-level tests and benchmarks, and requires the same credentials.

The keys and certificates are made in-process with the ``cryptography`` library: both keys are
ECDSA P-256, both certificates are valid for 30 days (from a minute ago, to allow for clock skew),
and the files live in a directory only this user can read. The CA key signs the one serving
certificate and is then dropped, never written. Nothing here is used by a real cluster.

``LocalCluster`` calls ``generate_serving_cert`` once per start (in a thread: key generation is
CPU work); tests may call it with other ``hosts``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names a pod may use for the API server: the service's DNS names and the loopback address.
DEFAULT_HOSTS: tuple[str, ...] = (
    "127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
VALID_DAYS = 30


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


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            names.append(x509.DNSName(host))
        else:
            names.append(x509.IPAddress(address))
    return x509.SubjectAlternativeName(names)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False,
                         key_encipherment=not cert_sign, data_encipherment=False,
                         key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by this user only from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def generate_serving_cert(directory: str | os.PathLike[str],
                          hosts: Sequence[str] = DEFAULT_HOSTS) -> ServingCert:
    """Make a CA and a server certificate for ``hosts`` in ``directory`` (created, mode 0700)."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name or address")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    not_before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    not_after = not_before + datetime.timedelta(days=VALID_DAYS)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("elastic-kernels-local-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kube-apiserver")).issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(_subject_alt_names(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_private(d / "apiserver.key", key_pem)
    (d / "apiserver.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return ServingCert(d / "ca.crt", d / "apiserver.crt", d / "apiserver.key")
