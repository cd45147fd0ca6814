"""The gateway's secrets for the log scrubber (:mod:`elastic_kernels.redaction`)."""

from __future__ import annotations

import typing as t
import weakref
from collections.abc import Iterable

from elastic_kernels.redaction import SecretSource, install
from elastic_kernels.upstream import managed_kernels

__all__ = ["gateway_secrets", "install"]


def gateway_secrets(app: t.Any) -> SecretSource:
    """The exact secrets of a running gateway: its tokens and its kernels' keys."""
    ref = weakref.ref(app)

    def source() -> Iterable[str | bytes]:
        gateway = ref()
        if gateway is None:
            return ()
        values: list[str | bytes] = []
        provider = getattr(gateway, "identity_provider", None)
        secret_values = getattr(provider, "secret_values", None)
        if secret_values is not None:
            values.extend(secret_values())
        km = getattr(gateway, "kernel_manager", None)
        for kernel in list(managed_kernels(km).values()):
            session = getattr(kernel, "session", None)
            if session is not None and session.key:
                values.append(session.key)
            prov_secrets = getattr(getattr(kernel, "provisioner", None), "secret_values", None)
            if prov_secrets is not None:
                values.extend(prov_secrets())
        return values

    return source
