"""Gateways on the local cluster with several users, for the ownership, secrets and input tests.

``users_gateway`` starts an ``ElasticGatewayApp`` in the test's event loop against the ``cluster``
fixture (through conftest's ``make_cluster_gateway``), with an admin token (``--token``) and a
users file holding alice (plaintext token), bob (only the token's SHA-256) and ops (an admin, by
hash). Every gateway it starts is stopped, with its kernels, when the test ends.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from elastic_kernels.gateway.app import ElasticGatewayApp
from elastic_kernels.gateway.web.auth import hash_token

from .conftest import GatewayFactory
from .gatewayproc import eventually

__all__ = ["GatewayFactory", "eventually"]

ADMIN_TOKEN = "admin-token-" + uuid.uuid4().hex
ALICE_TOKEN = "alice-token-" + uuid.uuid4().hex
BOB_TOKEN = "bob-token-" + uuid.uuid4().hex
OPS_TOKEN = "ops-token-" + uuid.uuid4().hex
ALL_TOKENS = (ADMIN_TOKEN, ALICE_TOKEN, BOB_TOKEN, OPS_TOKEN)

USERS_DOC: dict[str, Any] = {
    "tokens": [
        {"user": "alice", "token": ALICE_TOKEN},
        {"user": "bob", "tokenSha256": hash_token(BOB_TOKEN)},
        {"user": "ops", "tokenSha256": hash_token(OPS_TOKEN), "admin": True},
    ]
}

@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(json.dumps(USERS_DOC))
    return path


@pytest.fixture
def make_users_gateway(make_cluster_gateway: GatewayFactory,
                       users_file: Path) -> GatewayFactory:
    """Start gateways on the local cluster with the users file and the admin token (extra argv
    appended); ``make_cluster_gateway`` stops them all at the end."""
    async def make(*argv: str, users: Path | None = users_file,
                   token: str | None = ADMIN_TOKEN) -> ElasticGatewayApp:
        return await make_cluster_gateway(*([f"--users-file={users}"] if users else []), *argv,
                                          token=token)

    return make


@pytest_asyncio.fixture
async def users_gateway(make_users_gateway: GatewayFactory) -> ElasticGatewayApp:
    return await make_users_gateway()
