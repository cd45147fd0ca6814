"""localcluster/tls.py: the CA and serving certificate that in-cluster clients verify."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import pytest

from elastic_kernels.localcluster.tls import generate_serving_cert

pytestmark = pytest.mark.timeout(30)


async def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> str:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client,
                                                       server_hostname=host)
        data = await reader.read(2)
        writer.close()
        return data.decode()
    finally:
        srv.close()
        await srv.wait_closed()


async def test_clients_that_trust_the_ca_verify_the_server(tmp_path: Path) -> None:
    cert = await asyncio.to_thread(generate_serving_cert, tmp_path / "pki")
    assert cert.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    for host in ("127.0.0.1", "kubernetes.default.svc"):
        assert await _handshake(cert.server_context(), cert.client_context(), host) == "ok"
    # A name the certificate does not carry, or a client without the CA, is refused.
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(cert.server_context(), cert.client_context(), "example.org")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(cert.server_context(), ssl.create_default_context(), "127.0.0.1")


def test_keys_stay_private(tmp_path: Path) -> None:
    cert = generate_serving_cert(tmp_path / "pki", hosts=("127.0.0.1",))
    assert stat.S_IMODE(cert.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.key_file.parent.stat().st_mode) == 0o700
    assert not (cert.key_file.parent / "ca.key").exists()
    with pytest.raises(ValueError):
        generate_serving_cert(tmp_path / "none", hosts=())
