"""Files this package ships besides its code: the CRDs, the example kernelspecs, the launcher.

They are the repository's own files, not copies: in a checkout ``crds``, ``kernelspecs`` and
``launchers`` here are symlinks to ``deploy/crds/``, ``kernelspecs/`` and ``launchers/`` (which
the kustomize and Helm installs and the Dockerfiles read), and building a wheel or an sdist
stores the files' contents. So an installed wheel runs the demo and the local cluster without
a checkout, and there is one copy to edit. ``tests/test_packaging.py`` checks that what a wheel
carries is byte for byte what the repository has.

Only the launcher is taken from ``launchers/`` (see ``[options.package_data]`` in setup.cfg):
its Dockerfiles stay out of the wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

LAUNCHER = "elastic-kernel-launcher"


def _directory(name: str) -> Path:
    """A real directory: the local cluster puts one on PATH and ``--apply`` reads others.

    ``importlib.resources`` gives a ``Path`` for any installed or editable package; only a
    zipped import would not, and then these files cannot be used in place.
    """
    resource = files(__name__) / name
    if not isinstance(resource, Path):
        raise RuntimeError(f"elastic_kernels is imported from an archive; {name} needs an "
                           "installation on disk (pip install the wheel)")
    return resource


def crds_dir() -> Path:
    """The CustomResourceDefinitions (``deploy/crds/`` in the repository)."""
    return _directory("crds")


def kernelspecs_dir() -> Path:
    """The example JupyterKernelSpecs and templates, Python on CPU and on GPU (``kernelspecs/``)."""
    return _directory("kernelspecs")


def launchers_dir() -> Path:
    """The directory holding ``elastic-kernel-launcher``, which a kernel pod's command runs."""
    return _directory("launchers")
