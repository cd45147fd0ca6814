"""Pod volumes as host directories, and the mount-path rewrite that makes them reachable.

A pod's Secret, ConfigMap, projected, downward-API and emptyDir volumes are written as files
under the pod's directory in the kubelet's workdir (``<pod dir>/volumes/<volume name>/``);
hostPath volumes are the host path itself, and persistentVolumeClaim volumes the directory of
the volume the claim is bound to (``claimmounts.py``). The service account token (unless
``automountServiceAccountToken: false``) becomes ``<pod dir>/serviceaccount/{token,ca.crt,
namespace}``, mounted at ``/var/run/secrets/kubernetes.io/serviceaccount``. Tokens, there and in
projected ``serviceAccountToken`` sources, are real ServiceAccount tokens bound to the pod that
the kubelet requests (``TokenSource``) and rewrites in place before they expire.

Mount paths such as ``/etc/kernel`` cannot exist on this host, so the kubelet rewrites paths
instead of mounting (see ``rewrite_value``/``rewrite_arg``):

* every env value, ``command``/``args`` element and ``workingDir`` that starts with a container's
  ``volumeMount.mountPath`` (the path itself or anything below it) gets that prefix replaced by
  the host directory; the longest matching mount path wins;
* an argument of the form ``--flag=<path>`` has its value part rewritten the same way;
* the process also receives ``LOCALCLUSTER_MOUNTS``, a JSON object mountPath -> host path, so a
  program that builds paths itself can translate them.

Files get ``defaultMode``/``mode`` permissions (default 0644) inside a pod directory that only
this user can enter, so secrets are not readable by other host users.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from collections.abc import Iterable, Mapping

from .claimmounts import ClaimNotReady, claim_directory
from .podenv import ConfigError, ObjectLookup, field_value, resource_value

JSON = dict[str, Any]
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
MOUNTS_ENV = "LOCALCLUSTER_MOUNTS"
DEFAULT_MODE = 0o644


class VolumeError(Exception):
    """A volume cannot be set up yet; ``message`` is the kubelet's FailedMount event text."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class TokenSource:
    """A token file the kubelet must request: the default mount's (``volume`` "") or a projected
    volume's ``serviceAccountToken`` source, with the audience and lifetime it asks for."""

    volume: str
    path: str
    audience: str | None = None
    expiration_seconds: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.volume, self.path)


#: The token of the default service-account mount, as a TokenSource key.
DEFAULT_TOKEN = TokenSource("", "token")


def token_sources(pod: JSON) -> list[TokenSource]:
    """Every token the pod needs: the default mount's (if automounted) and each projected one."""
    found = [DEFAULT_TOKEN] if automounts_token(pod) else []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        for source in ((volume.get("projected") or {}).get("sources") or []):
            if "serviceAccountToken" not in source:
                continue
            token = source["serviceAccountToken"] or {}
            seconds = token.get("expirationSeconds")
            found.append(TokenSource(volume.get("name", ""), token.get("path", "token"),
                                     token.get("audience") or None,
                                     int(seconds) if seconds is not None else None))
    return found


@dataclass(frozen=True)
class Mount:
    mount_path: str
    host_path: Path
    read_only: bool = False


def _failed(volume: str, why: str) -> VolumeError:
    return VolumeError(f'MountVolume.SetUp failed for volume "{volume}" : {why}')


def _safe_relative(volume: str, path: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise _failed(volume, f"invalid path {path!r}: must be relative and may not contain '..'")
    return rel


def _write(target: Path, data: bytes, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode & 0o777)
    os.replace(tmp, target)


def _object_data(obj: JSON, kind: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if kind == "secrets":
        for key, value in (obj.get("data") or {}).items():
            out[key] = base64.b64decode(value or "")
        for key, value in (obj.get("stringData") or {}).items():
            out.setdefault(key, str(value).encode())
    else:
        for key, value in (obj.get("data") or {}).items():
            out[key] = str(value).encode()
        for key, value in (obj.get("binaryData") or {}).items():
            out.setdefault(key, base64.b64decode(value or ""))
    return out


def _key_files(volume: str, kind: str, source: JSON, namespace: str, lookup: ObjectLookup,
               default_mode: int) -> list[tuple[PurePosixPath, bytes, int]]:
    """Files of a secret/configMap source (a volume or a projected source)."""
    name = source.get("secretName") if kind == "secrets" else None
    name = name or source.get("name", "")
    optional = bool(source.get("optional"))
    obj = lookup(kind, namespace, name)
    word = "secret" if kind == "secrets" else "configmap"
    if obj is None:
        if optional:
            return []
        raise _failed(volume, f'{word} "{name}" not found')
    data = _object_data(obj, kind)
    items = source.get("items")
    files: list[tuple[PurePosixPath, bytes, int]] = []
    if not items:
        for key, value in data.items():
            files.append((_safe_relative(volume, key), value, default_mode))
        return files
    for item in items:
        key = item.get("key", "")
        if key not in data:
            if optional:
                continue
            what = "secret key" if kind == "secrets" else "config key"
            prefix = "" if kind == "secrets" else "configmap "
            raise _failed(volume, f"{prefix}references non-existent {what}: {key}")
        mode = item.get("mode")
        files.append((_safe_relative(volume, item.get("path") or key), data[key],
                      default_mode if mode is None else int(mode)))
    return files


def _downward_files(volume: str, pod: JSON, source: JSON, default_mode: int,
                    node_allocatable: Mapping[str, Any]) -> list[tuple[PurePosixPath, bytes, int]]:
    files = []
    for item in source.get("items") or []:
        try:
            if item.get("fieldRef"):
                value = field_value(pod, item["fieldRef"].get("fieldPath", ""))
            elif item.get("resourceFieldRef"):
                ref = item["resourceFieldRef"]
                value = resource_value(pod, ref, ref.get("containerName", ""), node_allocatable)
            else:
                continue
        except ConfigError as e:
            raise _failed(volume, e.message) from None
        mode = item.get("mode")
        files.append((_safe_relative(volume, item.get("path", "")), value.encode(),
                      default_mode if mode is None else int(mode)))
    return files


def _volume_files(volume: JSON, pod: JSON, lookup: ObjectLookup,
                  tokens: Mapping[tuple[str, str], bytes], node_allocatable: Mapping[str, Any]
                  ) -> list[tuple[PurePosixPath, bytes, int]] | None:
    """Files a volume holds, or None for a volume that is just a directory (emptyDir)."""
    name = volume.get("name", "")
    namespace = (pod.get("metadata") or {}).get("namespace") or "default"
    if "emptyDir" in volume:
        return None
    if "secret" in volume:
        src = volume["secret"] or {}
        return _key_files(name, "secrets", src, namespace, lookup,
                          int(src.get("defaultMode", DEFAULT_MODE)))
    if "configMap" in volume:
        src = volume["configMap"] or {}
        return _key_files(name, "configmaps", src, namespace, lookup,
                          int(src.get("defaultMode", DEFAULT_MODE)))
    if "downwardAPI" in volume:
        src = volume["downwardAPI"] or {}
        return _downward_files(name, pod, src, int(src.get("defaultMode", DEFAULT_MODE)),
                               node_allocatable)
    if "projected" in volume:
        src = volume["projected"] or {}
        mode = int(src.get("defaultMode", DEFAULT_MODE))
        files: list[tuple[PurePosixPath, bytes, int]] = []
        for source in src.get("sources") or []:
            if "secret" in source:
                files += _key_files(name, "secrets", source["secret"] or {}, namespace, lookup,
                                    mode)
            elif "configMap" in source:
                files += _key_files(name, "configmaps", source["configMap"] or {}, namespace,
                                    lookup, mode)
            elif "downwardAPI" in source:
                files += _downward_files(name, pod, source["downwardAPI"] or {}, mode,
                                         node_allocatable)
            elif "serviceAccountToken" in source:
                path = (source["serviceAccountToken"] or {}).get("path", "token")
                token = tokens.get((name, path))
                if token is None:
                    raise _failed(name, "failed to fetch token: no token was issued for it")
                files.append((_safe_relative(name, path), token, mode))
        return files
    kinds = [k for k in volume if k != "name"]
    raise _failed(name, f"volume type {kinds[0] if kinds else '(none)'!r} is not supported by "
                        f"the local cluster (supported: secret, configMap, emptyDir, projected, "
                        f"downwardAPI, hostPath, persistentVolumeClaim)")


def materialise_volumes(pod: JSON, pod_dir: Path, lookup: ObjectLookup, *,
                        tokens: Mapping[tuple[str, str], bytes] | None = None,
                        node_allocatable: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write every volume of the pod under ``pod_dir/volumes``; returns name -> host path.

    ``tokens`` holds the projected ServiceAccount tokens by ``TokenSource.key``. Raises
    VolumeError (the FailedMount text) when a non-optional source is missing; calling again later
    (once the Secret exists) completes the setup.
    """
    result: dict[str, Path] = {}
    root = pod_dir / "volumes"
    root.mkdir(parents=True, exist_ok=True)
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume.get("name", "")
        if "hostPath" in volume:
            result[name] = Path((volume["hostPath"] or {}).get("path", "/"))
            continue
        if "persistentVolumeClaim" in volume:
            namespace = (pod.get("metadata") or {}).get("namespace") or "default"
            try:
                result[name] = claim_directory(volume, namespace, lookup)
            except ClaimNotReady as e:
                raise VolumeError(e.message) from None
            continue
        files = _volume_files(volume, pod, lookup, tokens or {}, node_allocatable or {})
        target = root / name
        target.mkdir(parents=True, exist_ok=True)
        for rel, data, mode in files or []:
            _write(target / Path(*rel.parts), data, mode)
        result[name] = target
    return result


def write_service_account(pod_dir: Path, namespace: str, token: str, ca_pem: bytes = b"") -> Path:
    """The in-cluster credentials directory (token, ca.crt, namespace)."""
    sa_dir = pod_dir / "serviceaccount"
    sa_dir.mkdir(parents=True, exist_ok=True)
    _write(sa_dir / "token", token.encode(), 0o600)
    _write(sa_dir / "namespace", namespace.encode(), DEFAULT_MODE)
    # The CA of the API server's TLS listener (localcluster/tls.py); in-cluster clients refuse
    # an empty one.
    _write(sa_dir / "ca.crt", ca_pem, DEFAULT_MODE)
    return sa_dir


def replace_token(target: Path, token: bytes) -> None:
    """Swap a rotated token into place atomically, keeping the file's mode (a reader sees the old
    token or the new one, never a partial file)."""
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        return  # the pod's files are already gone
    _write(target, token, mode)


def automounts_token(pod: JSON) -> bool:
    return (pod.get("spec") or {}).get("automountServiceAccountToken") is not False


def container_mounts(container: JSON, volume_dirs: Mapping[str, Path],
                     sa_dir: Path | None = None) -> list[Mount]:
    """The container's mounts as (mountPath -> host path), longest mount path first."""
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        base = volume_dirs.get(vm.get("name", ""))
        mount_path = str(vm.get("mountPath") or "").rstrip("/")
        if base is None or not mount_path:
            continue  # "/" cannot be rewritten, and unknown volumes are rejected by validation
        sub = vm.get("subPath") or ""
        host = base / sub if sub else base
        if sub:
            host = _sub_path(base, sub, str(vm.get("name") or ""), str(container.get("name")))
        mounts.append(Mount(mount_path, host, bool(vm.get("readOnly"))))
    if sa_dir is not None and not any(m.mount_path == SERVICE_ACCOUNT_MOUNT for m in mounts):
        mounts.append(Mount(SERVICE_ACCOUNT_MOUNT, sa_dir, True))
    mounts.sort(key=lambda m: len(m.mount_path), reverse=True)
    return mounts


def _sub_path(base: Path, sub: str, volume: str, container: str) -> Path:
    """``base/sub``, created if missing as the kubelet does, and never outside ``base`` (the API
    refuses ``..`` and absolute subPaths; a symlink inside the volume must not lead out
    either)."""
    failed = ConfigError(f'failed to prepare subPath for volumeMount "{volume}" of container '
                         f'"{container}"')
    rel = PurePosixPath(sub)
    if rel.is_absolute() or ".." in rel.parts:
        raise failed
    host = base / Path(*rel.parts)
    # Checked before anything is created (resolving the symlinks of the part that exists), so
    # a link inside the volume cannot make the kubelet create directories elsewhere.
    if not host.resolve().is_relative_to(base.resolve()):
        raise failed
    if base.is_dir() and not host.exists():
        try:
            host.mkdir(parents=True, exist_ok=True)
        except OSError:
            raise failed from None
    return host


def rewrite_value(value: str, mounts: Iterable[Mount]) -> str:
    """Replace a leading mount path (the path itself or below it) with its host directory."""
    for m in mounts:
        if value == m.mount_path or value.startswith(m.mount_path + "/"):
            return str(m.host_path) + value[len(m.mount_path):]
    return value


def rewrite_arg(value: str, mounts: Iterable[Mount]) -> str:
    """Like ``rewrite_value``, also for the value of ``--flag=/mount/path`` arguments."""
    mounts = list(mounts)
    rewritten = rewrite_value(value, mounts)
    if rewritten != value or "=" not in value:
        return rewritten
    flag, _, rest = value.partition("=")
    new_rest = rewrite_value(rest, mounts)
    return f"{flag}={new_rest}" if new_rest != rest else value


def mounts_env(mounts: Iterable[Mount]) -> str:
    return json.dumps({m.mount_path: str(m.host_path) for m in mounts}, sort_keys=True)
