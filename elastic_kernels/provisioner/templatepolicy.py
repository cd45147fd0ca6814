"""What an admin's ``JupyterKernelTemplate`` may not ask for, checked before anything is created.

A kernel runs whatever code its user sends, so the pod's ServiceAccount is the user's rights on
the cluster. A template that names the gateway's own ServiceAccount (or the cull cron's) would
hand every user the right to create pods, read every kernel's Secret and delete other users'
kernels. That is refused, with a message naming the template and the account, unless the
operator clears :attr:`forbidden_service_accounts` on purpose.

The gateway's own account is found from its in-cluster token (the ``sub`` claim,
``system:serviceaccount:NS:NAME``), so a renamed install is covered too; the shipped names are
always in the list.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Iterable
from pathlib import Path

from ..kube.resources import TemplateView
from .errors import KernelLaunchError

__all__ = ["SHIPPED_SERVICE_ACCOUNTS", "check_template", "own_service_account"]

#: The ServiceAccounts deploy/ creates for the gateway and the cull cron.
SHIPPED_SERVICE_ACCOUNTS = ("elastic-kernels-gateway", "elastic-kernels-cull")
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_SA_PREFIX = "system:serviceaccount:"


def own_service_account(token_file: Path = IN_CLUSTER_TOKEN) -> str | None:
    """The name of the ServiceAccount this process runs as, from its token, or None.

    The token is only read, never verified or logged: the API server verifies it; this is only
    to know which name kernels must not use.
    """
    try:
        token = token_file.read_text().strip()
    except OSError:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        subject = json.loads(payload).get("sub", "")
    except (binascii.Error, ValueError, AttributeError):
        return None
    if not isinstance(subject, str) or not subject.startswith(_SA_PREFIX):
        return None
    return subject[len(_SA_PREFIX):].split(":")[-1] or None


@functools.lru_cache(maxsize=1)
def _own_account() -> str | None:
    return own_service_account()  # the process's account does not change while it runs


def default_forbidden_service_accounts() -> list[str]:
    names = list(SHIPPED_SERVICE_ACCOUNTS)
    own = _own_account()
    if own and own not in names:
        names.append(own)
    return names


def check_template(template: TemplateView | None, forbidden: Iterable[str]) -> None:
    """Refuse a template whose pods would run as a forbidden ServiceAccount."""
    if template is None or not template.service_account_name:
        return
    account = template.service_account_name
    if account in set(forbidden):
        raise KernelLaunchError(
            "ForbiddenServiceAccount",
            f"JupyterKernelTemplate {template.name} runs kernels as ServiceAccount {account}, "
            "which holds the gateway's or the cull cron's rights; kernel code must not. An admin "
            "must name another ServiceAccount in the template (one with no rights, or only those "
            "the kernels need).",
            403,
        )
