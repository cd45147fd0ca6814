"""Which environment variables a client may pass to its kernel (``POST /api/kernels {"env"}``).

The policy, and why:

* A client is a user's notebook server. It may pass only variables the kernelspec's admin listed
  in ``allowedClientEnv`` (names like ``KERNEL_FOO``), plus ``JPY_SESSION_NAME`` (the notebook's
  path, which jupyter_server sends for every session and ipykernel shows as ``__session__``).
* Anything else is **dropped, not refused**. Notebook servers forward every ``KERNEL_*`` variable of
  their own environment and add ``KERNEL_WORKING_DIR`` and ``KERNEL_USERNAME`` by themselves, so
  refusing unknown names would make kernel starts fail for reasons the user cannot see or fix.
  Dropped names are returned (and logged at debug level), never their values.
* A variable the policy accepts but whose **value is malformed** is refused with
  ``ClientEnvError``: too long (more than 4096 characters), not a string, or containing control
  characters (NUL, newlines, tabs, escapes), line/paragraph separators or lone surrogates. Passing
  such a value on silently could let it reach a shell script or a log line in the kernel
  image as something else; refusing it tells the client exactly which variable to fix.
* Some names are never taken from a client, even when listed in ``allowedClientEnv``, because the
  gateway sets them from what it knows (``KERNEL_USERNAME`` is the authenticated user,
  ``KERNEL_ID`` the kernel id) or because in other Jupyter gateways they choose pod fields
  (``KERNEL_NAMESPACE``, ``KERNEL_SERVICE_ACCOUNT_NAME``, ``KERNEL_VOLUMES``, ``KERNEL_UID``...).
  Rendering never reads those from the env in any case: namespace, service account, volumes and
  security context come only from the gateway and the admin's template.
* The only pod fields a client can choose are opt-in per kernelspec (``clientOverrides``):
  ``KERNEL_WORKING_DIR`` (an absolute path) sets the container's working directory when
  ``workingDir`` is true, and ``KERNEL_IMAGE`` replaces the image when ``image`` is true.
  Without the opt-in these two are dropped like any unknown name, except that a template with
  user volumes always reads ``KERNEL_WORKING_DIR`` (``EnvDecision.working_dir``) to start the
  kernel in the notebook's folder, *inside the user's volumes only* (see uservolumes.py).
"""

from __future__ import annotations

import logging
import posixpath
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ..kube.resources import KernelSpecView

log = logging.getLogger(__name__)

#: Names a client may always pass, whatever the kernelspec says.
ALWAYS_ALLOWED = frozenset({"JPY_SESSION_NAME"})

#: Names taken from the client only when the kernelspec's clientOverrides opts in.
WORKING_DIR_VAR = "KERNEL_WORKING_DIR"
IMAGE_VAR = "KERNEL_IMAGE"

#: Names never taken from a client, even if an admin lists them in allowedClientEnv.
NEVER_FROM_CLIENT = frozenset(
    {
        "KERNEL_ID",
        "KERNEL_USERNAME",
        "KERNEL_NAMESPACE",
        "KERNEL_SERVICE_ACCOUNT_NAME",
        "KERNEL_VOLUMES",
        "KERNEL_VOLUME_MOUNTS",
        "KERNEL_UID",
        "KERNEL_GID",
        "KERNEL_FS_GROUP",
        "KERNEL_SECURITY_CONTEXT",
        "KERNEL_EXECUTOR_IMAGE",
        "KERNEL_POD_NAME",
        "KERNEL_RESOURCES",
        "KERNEL_GPUS",
        "KERNEL_CPUS",
        "KERNEL_MEMORY",
        "KERNEL_NODE_SELECTOR",
        "KERNEL_TOLERATIONS",
        "KERNEL_PRIVILEGED",
    }
)

NAME_RE = re.compile(r"^KERNEL_[A-Z0-9_]{1,64}$")
MAX_VALUE_CHARS = 4096
#: An image reference: registry/path:tag@digest, no spaces or shell characters.
IMAGE_RE = re.compile(
    r"^[a-z0-9][a-z0-9._-]*(:[0-9]+)?"  # registry or first path part, optional port
    r"(/[a-z0-9][a-z0-9._-]*)*"  # path
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # tag
    r"(@sha256:[a-f0-9]{64})?$"  # digest
)


class ClientEnvError(ValueError):
    """A client variable the policy accepts but whose value cannot be used. Names the variable."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"environment variable {name!r} from the client is refused: {reason}")


@dataclass(frozen=True)
class EnvDecision:
    """The accepted variables and the names that were dropped (never their values).

    ``working_dir`` is the client's KERNEL_WORKING_DIR as sent (None if absent), whether or not
    it is accepted as a variable: a template with user volumes maps it onto them (see
    uservolumes.decide_working_dir), which never lets it leave the user's volumes.
    """

    accepted: Mapping[str, str]
    dropped: tuple[str, ...]
    working_dir: object = None


def _value_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"the value must be a string, not {type(value).__name__}"
    if len(value) > MAX_VALUE_CHARS:
        return f"the value is longer than {MAX_VALUE_CHARS} characters"
    for char in value:
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Zl", "Zp"):
            return f"the value contains the control character U+{ord(char):04X}"
    return None


def _allowed_names(spec: KernelSpecView) -> frozenset[str]:
    names = set(ALWAYS_ALLOWED)
    names.update(n for n in spec.allowed_client_env if NAME_RE.match(n))
    names.difference_update(NEVER_FROM_CLIENT)
    names.discard(WORKING_DIR_VAR)
    names.discard(IMAGE_VAR)
    if spec.client_overrides.working_dir:
        names.add(WORKING_DIR_VAR)
    if spec.client_overrides.image:
        names.add(IMAGE_VAR)
    return frozenset(names)


def decide_client_env(client_env: Mapping[str, object] | None, spec: KernelSpecView) -> EnvDecision:
    """Apply the policy without side effects; raises ClientEnvError for a malformed value."""
    if client_env is None:
        return EnvDecision(MappingProxyType({}), ())
    if not isinstance(client_env, Mapping):
        raise ClientEnvError(
            "env", f"must be an object of names to strings, not {type(client_env).__name__}"
        )
    working_dir = client_env.get(WORKING_DIR_VAR)
    allowed = _allowed_names(spec)
    accepted: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in client_env.items():
        if not isinstance(name, str) or name not in allowed:
            dropped.append(str(name)[:100])
            continue
        problem = _value_problem(value)
        if problem:
            raise ClientEnvError(name, problem)
        assert isinstance(value, str)
        if name == WORKING_DIR_VAR:
            if not value:
                dropped.append(name)  # notebook servers send "" when they have no directory
                continue
            if not posixpath.isabs(value):
                raise ClientEnvError(
                    name, f"the working directory must be an absolute path, not {value!r}"
                )
        if name == IMAGE_VAR and not IMAGE_RE.match(value):
            raise ClientEnvError(
                name, f"{value!r} is not an image reference such as registry/name:tag"
            )
        accepted[name] = value
    return EnvDecision(MappingProxyType(dict(sorted(accepted.items()))), tuple(sorted(dropped)),
                       working_dir)


def filter_client_env(
    client_env: Mapping[str, object] | None, spec: KernelSpecView
) -> dict[str, str]:
    """The client variables that reach the renderer; dropped names are logged at debug level.

    KERNEL_WORKING_DIR is kept as sent even when the kernelspec does not accept it as a
    variable: the renderer decides (decide_client_env again) whether it is one, and a template
    with user volumes maps it onto them.
    """
    decision = decide_client_env(client_env, spec)
    dropped = [name for name in decision.dropped if name != WORKING_DIR_VAR]
    if dropped:
        log.debug(
            "kernelspec %s: client environment variables not allowed, dropped: %s",
            spec.name,
            ", ".join(dropped),
        )
    result = dict(decision.accepted)
    if isinstance(decision.working_dir, str) and WORKING_DIR_VAR not in result:
        result[WORKING_DIR_VAR] = decision.working_dir
    return result
