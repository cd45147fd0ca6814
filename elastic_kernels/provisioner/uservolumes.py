"""The kernel's user's own volumes, and the directory the kernel starts in.

A template's ``spec.userVolumes`` says which volumes a kernel of user U gets: the same ones U's
notebook server mounts (KubeSpawner's ``claim-{username}``, a ``subPath: {username}`` on a
shared claim, or any volume source with the user in it), at the same paths. The user is the one
the gateway authenticated (``RenderRequest.user``); nothing the client sends chooses a volume, a
claim, a sub path or a mount path.

The working directory: jupyter_server's gateway client sends ``KERNEL_WORKING_DIR``, the
notebook's directory as the *notebook server* sees it (its root dir joined with the notebook's
folder). :func:`decide_working_dir` maps it onto the kernel's mounts: a path at or below a user
volume's ``notebookPath`` (default: its mount path) becomes the same relative path below its
``mountPath``. Anything else (outside every user volume, relative, with ``..``, malformed) gives
the first user volume's mount path and a warning that lands in the kernel's status and log.
The decision is made on paths only; the launcher (in the pod) then changes into the directory,
checks that it really is inside a user mount (symlinks resolved), and falls back to the volume
root otherwise (``launchers/elastic-kernel-launcher``, ``EK_WORKING_DIR``).
"""

from __future__ import annotations

import json
import posixpath
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..kube.resources import DNS_SUBDOMAIN_RE, TemplateView, UserVolume, thaw
from ..kube.slugs import expand, user_slugs

__all__ = [
    "ENV_USER_MOUNTS",
    "ENV_WORKING_DIR",
    "ENV_WORKING_DIR_WARNING",
    "UserMounts",
    "WorkingDir",
    "decide_working_dir",
    "render_user_volumes",
]

#: Launcher variables (keep in step with launchers/elastic-kernel-launcher).
ENV_WORKING_DIR = "EK_WORKING_DIR"
ENV_USER_MOUNTS = "EK_USER_MOUNTS"
ENV_WORKING_DIR_WARNING = "EK_WORKING_DIR_WARNING"

_MAX_SHOWN = 200


class UserVolumeError(ValueError):
    """A user volume that cannot be rendered for this user; the message names the field."""


@dataclass(frozen=True)
class UserMounts:
    """A template's user volumes, expanded for one user: pod volumes, container mounts, and
    (notebook path, mount path) pairs for the working directory."""

    volumes: tuple[dict[str, Any], ...]
    mounts: tuple[dict[str, Any], ...]
    roots: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class WorkingDir:
    """Where the kernel starts: ``path`` (below a user mount), ``root`` (the fallback, the first
    user volume's mount path) and ``warning`` ("" when the requested directory was used or none
    was requested)."""

    path: str
    root: str
    warning: str = ""


def _expand_all(node: Any, slugs: dict[str, str]) -> Any:
    if isinstance(node, str):
        return expand(node, slugs)
    if isinstance(node, Mapping):
        return {k: _expand_all(v, slugs) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_expand_all(v, slugs) for v in node]
    return node


def render_user_volumes(template: TemplateView | None, user: str) -> UserMounts:
    """The template's user volumes for ``user`` (patterns expanded with the user's slugs)."""
    if template is None or not template.user_volumes:
        return UserMounts((), (), ())
    slugs = user_slugs(user, template.username_scheme)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    roots: list[tuple[str, str]] = []
    for index, uv in enumerate(template.user_volumes):
        where = f"template {template.name}: spec.userVolumes[{index}]"
        source = _expand_all(thaw(uv.volume), slugs)
        _check_source(source, where)
        volumes.append({"name": uv.name, **source})
        mount: dict[str, Any] = {"name": uv.name, "mountPath": uv.mount_path}
        if uv.sub_path:
            sub_path = expand(uv.sub_path, slugs)
            if sub_path.startswith("/") or ".." in sub_path.split("/"):
                raise UserVolumeError(f"{where}.subPath expands to {sub_path!r}, which is not a "
                                      "relative path without '..'")
            mount["subPath"] = sub_path
        if uv.read_only:
            mount["readOnly"] = True
        mounts.append(mount)
        roots.append((_notebook_root(uv, slugs), uv.mount_path))
    return UserMounts(tuple(volumes), tuple(mounts), tuple(roots))


def _notebook_root(uv: UserVolume, slugs: dict[str, str]) -> str:
    return posixpath.normpath(expand(uv.notebook_root, slugs))


def _check_source(source: dict[str, Any], where: str) -> None:
    claim = (source.get("persistentVolumeClaim") or {}).get("claimName")
    if claim is not None and (not isinstance(claim, str) or len(claim) > 253
                              or not DNS_SUBDOMAIN_RE.match(claim)):
        raise UserVolumeError(f"{where}.volume: claimName {claim!r} is not a valid name")


def _problem(value: object) -> str | None:
    if not isinstance(value, str):
        return f"is not a string but {type(value).__name__}"
    if len(value) > 4096:
        return "is longer than 4096 characters"
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in value):
        return "contains control characters"
    if not value.startswith("/"):
        return "is not an absolute path"
    if ".." in value.split("/"):
        return "contains '..'"
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "...'"


def decide_working_dir(requested: object, roots: Sequence[tuple[str, str]]) -> WorkingDir | None:
    """Map the notebook server's ``requested`` directory onto the user mounts (see the module
    docstring); None when the template has no user volumes."""
    if not roots:
        return None
    root = roots[0][1]
    if requested is None or requested == "":
        return WorkingDir(root, root)
    problem = _problem(requested)
    if problem is None:
        assert isinstance(requested, str)
        path = posixpath.normpath(requested)
        # The longest notebook path that holds the directory wins (nested mounts).
        for notebook_root, mount_path in sorted(roots, key=lambda r: len(r[0]), reverse=True):
            if path == notebook_root or path.startswith(notebook_root.rstrip("/") + "/"):
                rest = path[len(notebook_root):].lstrip("/")
                return WorkingDir(posixpath.join(mount_path, rest) if rest else mount_path,
                                  root)
        problem = "is outside the user's volumes (" + ", ".join(r[0] for r in roots) + ")"
    return WorkingDir(root, root, f"KERNEL_WORKING_DIR {_shown(requested)} {problem}; the "
                                  f"kernel starts in {root}")


def launcher_env(decision: WorkingDir | None, roots: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The launcher's variables for a working-dir decision (empty without user volumes)."""
    if decision is None:
        return {}
    env = {
        ENV_WORKING_DIR: decision.path,
        ENV_USER_MOUNTS: json.dumps([mount for _, mount in roots]),
    }
    if decision.warning:
        env[ENV_WORKING_DIR_WARNING] = decision.warning
    return env
