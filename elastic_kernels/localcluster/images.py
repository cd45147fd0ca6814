"""How a container image "runs" on this host: nothing is pulled, the command runs here.

The local cluster has no container runtime. A pod's container image is only a name; the
container's ``command`` + ``args`` run as a host process with this ``PATH`` (front first):

1. ``ImagePolicy.launchers_dir`` -- by default the launcher shipped as package data
   (``elastic_kernels/data/launchers``: the repository's ``launchers/`` in a checkout, a copy of
   its launcher in an installed wheel), so the launcher that real kernel images carry resolves;
2. ``ImagePolicy.extra_path`` entries, if any;
3. the directory of the running Python interpreter (``sys.executable``'s ``bin/``, unresolved so a
   virtualenv stays a virtualenv), so ``python``, ``python3`` and console scripts installed with
   this environment (``jupyter``, ``ipykernel`` users, ``kubectl``) are the ones a kernel image
   would have;
4. the container's own ``PATH`` env var if it sets one, else the host's ``PATH``.

An image whose name contains any of ``ImagePolicy.unavailable_patterns`` (default
``does-not-exist``) cannot be "pulled": the container waits with ``ErrImagePull`` then
``ImagePullBackOff``, worded as containerd reports a missing image, so failure handling can be
tested without a registry. Every other image name is "present on the machine".

A container without ``command`` uses ``ImagePolicy.entrypoints[image]`` (the image's ENTRYPOINT)
when configured; otherwise its ``args`` are the whole command line, as with a CMD-only image. A
pause image (repository ``.../pause``, as ``registry.k8s.io/pause``) has the ENTRYPOINT
``sleep infinity`` here: like ``/pause`` it waits until it is signalled.

Pull time is simulated only when ``ImagePolicy.pull_seconds`` is set (``imagepulls.py``): nodes
then start holding only ``ImagePolicy.preloaded`` and a first use of an image on a node waits that
long. Unset, every image is "present on the machine" at once.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

# Found as a resource of the package, not by importing the product (which the local cluster
# does not import) nor relative to a checkout (a wheel has none).
DEFAULT_LAUNCHERS_DIR = Path(str(files("elastic_kernels") / "data" / "launchers")).resolve()

#: Host variables a process gets besides the pod's own env (locale and temp dir only: a container
#: does not inherit its host's environment, and the host's credentials must not leak into pods).
DEFAULT_PASSTHROUGH_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


@dataclass
class ImagePolicy:
    """The documented image-to-host mapping (see the module docstring)."""

    unavailable_patterns: tuple[str, ...] = ("does-not-exist",)
    launchers_dir: Path = DEFAULT_LAUNCHERS_DIR
    extra_path: tuple[Path, ...] = ()
    entrypoints: dict[str, list[str]] = field(default_factory=dict)
    passthrough_env: tuple[str, ...] = DEFAULT_PASSTHROUGH_ENV
    #: Seconds a first pull of an image on a node takes; None: no node ever lacks an image.
    pull_seconds: float | None = None
    #: Images every node holds from the start when pulls are simulated.
    preloaded: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.pull_seconds is not None and not self.pull_seconds >= 0:
            raise ValueError(f"pull_seconds must be a number >= 0, got {self.pull_seconds!r}")

    def is_available(self, image: str) -> bool:
        return not any(p and p in image for p in self.unavailable_patterns)

    def pull_error(self, image: str) -> str:
        """containerd's message for an image that does not exist in its registry."""
        ref = normalize_image(image)
        return (f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": '
                f'failed to resolve reference "{ref}": {ref}: not found')

    def image_id(self, image: str) -> str:
        """A stable ``repo@sha256:...`` id, as ``containerStatuses[].imageID`` carries."""
        ref = normalize_image(image)
        repo = ref.split("@", 1)[0]
        if ":" in repo.rsplit("/", 1)[-1]:
            repo = repo.rsplit(":", 1)[0]
        digest = hashlib.sha256(ref.encode()).hexdigest()
        return f"{repo}@sha256:{digest}"

    def search_path(self, container_path: str | None = None) -> str:
        dirs = [str(self.launchers_dir), *(str(p) for p in self.extra_path),
                str(Path(sys.executable).parent)]
        tail = container_path if container_path is not None else os.environ.get("PATH", "")
        seen: list[str] = []
        for d in dirs + [p for p in tail.split(os.pathsep) if p]:
            if d not in seen:
                seen.append(d)
        return os.pathsep.join(seen)

    def base_env(self) -> dict[str, str]:
        return {k: os.environ[k] for k in self.passthrough_env if k in os.environ}

    def entrypoint(self, image: str) -> list[str]:
        found = self.entrypoints.get(image) or self.entrypoints.get(normalize_image(image))
        if found:
            return list(found)
        if is_pause_image(image):
            return list(PAUSE_ENTRYPOINT)
        return []


#: What a pause image's ``/pause`` does, as a host command: wait until signalled.
PAUSE_ENTRYPOINT = ("sleep", "infinity")


def is_pause_image(image: str) -> bool:
    """``registry.k8s.io/pause:3.10`` and the like (any registry, any tag or digest)."""
    repo = normalize_image(image).split("@", 1)[0].rsplit(":", 1)[0]
    return repo.rsplit("/", 1)[-1] == "pause"


def normalize_image(image: str) -> str:
    """Docker's reference normalisation: ``python`` -> ``docker.io/library/python:latest``."""
    name = image.strip()
    digest = ""
    if "@" in name:
        name, digest = name.split("@", 1)
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name}" if rest else f"docker.io/library/{name}"
    if not digest and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return f"{name}@{digest}" if digest else name
