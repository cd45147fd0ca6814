"""The JupyterLab extension's part of the build; everything else is in setup.cfg.

``labextension/`` holds the extension's TypeScript. Building the package (a wheel, the sdist,
``pip install .`` or ``pip install -e .``) first builds the extension with JupyterLab's
extension builder (``@jupyter/builder`` from the npm registry, ``npm ci`` then ``npm run
build``) into ``elastic_kernels/labextension/``, and installs that as
``share/jupyter/labextensions/elastic-kernels`` so JupyterLab loads it at its next start, with
no ``jupyter lab build``. The build is skipped when its output is newer than every source file:
the sdist carries the built extension, so a wheel built from it needs no Node.js. A tree without
``labextension/`` (an image's build context) installs without the extension.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "labextension"
OUTPUT = ROOT / "elastic_kernels" / "labextension"
TARGET = "share/jupyter/labextensions/elastic-kernels"
#: What the built extension is made from (node_modules comes from the lock file).
INPUTS = ("package.json", "package-lock.json", "tsconfig.json", "src", "schema", "style")


def _newest_input() -> float:
    times = []
    for name in INPUTS:
        path = SOURCE / name
        files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
        times += [f.stat().st_mtime for f in files if f.exists()]
    return max(times)


def _built() -> bool:
    stamp = OUTPUT / "package.json"
    return stamp.is_file() and stamp.stat().st_mtime >= _newest_input()


class build_labextension(Command):  # noqa: N801 - setuptools' command naming
    description = "build the JupyterLab extension (labextension/) with npm"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        if (SOURCE / "package.json").is_file() and not _built():
            npm = shutil.which("npm")
            if npm is None:
                raise SystemExit(
                    "Building elastic-kernels needs npm (Node.js 18 or later) for its JupyterLab "
                    "extension in labextension/: apt-get install nodejs npm")
            installed = SOURCE / "node_modules" / ".package-lock.json"
            lock = SOURCE / "package-lock.json"
            if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
                subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SOURCE, check=True)
            if OUTPUT.exists():
                shutil.rmtree(OUTPUT)  # no stale bundles from an earlier build
            subprocess.run([npm, "run", "build"], cwd=SOURCE, check=True)
        if not (OUTPUT / "package.json").is_file():
            print("elastic-kernels: no labextension/ here; installing without the JupyterLab "
                  "extension")
            return
        files: dict[str, list[str]] = {}
        for path in sorted(OUTPUT.rglob("*")):
            if path.is_file():
                folder = path.parent.relative_to(OUTPUT).as_posix()
                dest = TARGET if folder == "." else f"{TARGET}/{folder}"
                files.setdefault(dest, []).append(path.relative_to(ROOT).as_posix())
        install = SOURCE / "install.json"
        if install.is_file():
            files[TARGET].append(install.relative_to(ROOT).as_posix())
        self.distribution.data_files = [*(self.distribution.data_files or []),
                                        *files.items()]
        # An editable install asks the distribution for has_data(), which it does not have
        # (only has_data_files()), so it would install no data files: it gets them here.
        if self.distribution.get_command_obj("editable_wheel", create=False) is not None:
            self.run_command("install_data")


class build_with_labextension(build):  # noqa: N801
    sub_commands = [("build_labextension", None), *build.sub_commands]


class sdist_with_labextension(sdist):  # noqa: N801
    """The sdist carries the built extension (MANIFEST.in), so it is built first."""

    def run(self) -> None:
        self.run_command("build_labextension")
        super().run()


setup(cmdclass={"build_labextension": build_labextension, "build": build_with_labextension,
                "sdist": sdist_with_labextension})
