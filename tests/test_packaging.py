"""The wheel runs without a checkout: built, installed in a fresh virtualenv, it runs the demo.

The CRDs, the example kernelspecs and the launcher are package data (``elastic_kernels/data``,
symlinks in the repository to ``deploy/crds``, ``kernelspecs/`` and ``launchers/``). These tests
build the sdist and the wheel from a copy of the working tree (so the shared checkout gets no
``build/``), check that what they carry is byte for byte the repository's files and that the
sdist builds the same wheel, and then run ``elastic-kernels demo --no-lab`` from a virtualenv
that has only that wheel of this project, in a directory outside the checkout, and execute code
in a "Python on CPU" kernel through the gateway.

The fresh virtualenv borrows the dependencies of the test environment through a ``.pth`` file
naming a directory of links to its site-packages, minus this project (its editable finder and
metadata), so the install needs no network and takes seconds; pip still has to find every
requirement of the wheel there (``--no-index``), and the test checks that ``elastic_kernels``
is imported from the new virtualenv, in the demo's processes and in the kernel's pod.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import elastic_kernels.data as data
from elastic_kernels.localcluster.images import ImagePolicy
from elastic_kernels.testing import free_port

from .gateway.support import KernelWS, api, json_of
from .gatewayproc import LEAKY_ENV, private_jupyter_dirs

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = "elastic-kernel-launcher"
#: Package data directory -> the repository directory it links to.
SOURCES = {"crds": REPO / "deploy" / "crds", "kernelspecs": REPO / "kernelspecs",
           "launchers": REPO / "launchers"}
DATA_PREFIX = "elastic_kernels/data/"
#: The built JupyterLab extension (setup.py builds labextension/ into it), and where a wheel
#: installs it.
LABEXTENSION_OUTPUT = "elastic_kernels/labextension"
LABEXTENSION_DATA = "share/jupyter/labextensions/elastic-kernels/"


def repository_data() -> dict[str, bytes]:
    """What a wheel must carry under elastic_kernels/data/, read from the repository's own paths:
    every YAML of deploy/crds and kernelspecs/ (kustomization.yaml too, so ``kubectl apply -k``
    works on the packaged directory), and the launcher, none of launchers/images."""
    files = {f"{DATA_PREFIX}{name}/{f.name}": f.read_bytes()
             for name in ("crds", "kernelspecs") for f in sorted(SOURCES[name].glob("*.yaml"))}
    files[f"{DATA_PREFIX}launchers/{LAUNCHER}"] = (SOURCES["launchers"] / LAUNCHER).read_bytes()
    return files


def run(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run to completion; on failure the assertion shows the command's output."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def copy_working_tree(dest: Path) -> Path:
    """Tracked and untracked-but-not-ignored files, symlinks kept as symlinks: a fresh checkout
    of what is here now, to build in without touching the shared one."""
    names = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], 30,
                cwd=REPO).stdout.split("\0")
    for name in filter(None, names):
        src, dst = REPO / name, dest / name
        if not src.is_symlink() and not src.exists():
            continue  # deleted in the working tree, not yet in the index
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, dst)
    # The JupyterLab extension as `pip install -e .` built it (ignored by git): with its
    # modification times, so setup.py sees it is up to date and needs no npm here.
    if (REPO / LABEXTENSION_OUTPUT).is_dir():
        shutil.copytree(REPO / LABEXTENSION_OUTPUT, dest / LABEXTENSION_OUTPUT)
    return dest


def build(source: Path, outdir: Path, *what: str) -> None:
    """``python -m build`` with this environment's setuptools (a test extra), so no network."""
    run([sys.executable, "-m", "build", "--no-isolation", *what, "--outdir", str(outdir),
         str(source)], 180)


def only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def wheel_contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist, the wheel built from it (as ``make dist``), and a wheel built straight from the
    tree (as ``pip install .`` does)."""
    root = tmp_path_factory.mktemp("dists")
    tree = copy_working_tree(root / "src")
    build(tree, root / "dist")                     # the sdist, then the wheel from the sdist
    build(tree, root / "direct", "--wheel")        # the wheel from the tree
    return {"sdist": only(root / "dist", "elastic_kernels-*.tar.gz"),
            "wheel": only(root / "dist", "elastic_kernels-*.whl"),
            "direct_wheel": only(root / "direct", "elastic_kernels-*.whl")}


# --- the checkout ---------------------------------------------------------------------------


def test_package_data_links_to_the_repository_files() -> None:
    """One copy: the package data directories are symlinks to what kustomize, Helm and the
    Dockerfiles read, so there is nothing to keep in step by hand."""
    for name, source in SOURCES.items():
        link = REPO / "elastic_kernels" / "data" / name
        assert link.is_symlink(), f"{link} must stay a symlink to {source}"
        assert link.resolve() == source.resolve()
    assert data.crds_dir().resolve() == SOURCES["crds"]
    assert data.kernelspecs_dir().resolve() == SOURCES["kernelspecs"]
    # The local cluster's pods find the packaged launcher first on their PATH.
    assert ImagePolicy().launchers_dir == data.launchers_dir().resolve()
    launcher = data.launchers_dir() / LAUNCHER
    assert os.access(launcher, os.X_OK)
    assert launcher.read_text().splitlines()[0] == "#!/usr/bin/env python3"


def test_no_repository_lookups_in_the_package() -> None:
    """Code finds its files through importlib.resources, never relative to a checkout."""
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
                 for path in sorted((REPO / "elastic_kernels").rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"parents\[|__file__", line)]
    assert not offenders, "\n".join(offenders)


def test_cluster_names_the_packaged_manifests_for_a_missing_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from elastic_kernels.cli import main

    os.chdir(tmp_path)  # no crds/ here
    try:
        assert main(["cluster", "--kubeconfig", str(tmp_path / "kc"), "--apply", "crds"]) == 2
    finally:
        os.chdir(REPO)
    err = capsys.readouterr().err
    assert "--apply crds: no such file or directory" in err
    assert "--with-crds" in err and "--with-examples" in err
    assert not (tmp_path / "kc").exists(), "nothing starts on a bad argument"


# --- the sdist and the wheel ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sdist_and_wheel_carry_the_repository_files(dists: dict[str, Path]) -> None:
    run([sys.executable, "-m", "twine", "check", "--strict", str(dists["sdist"]),
         str(dists["wheel"])], 60)

    wheel = wheel_contents(dists["wheel"])
    packaged = {name: content for name, content in wheel.items()
                if name.startswith(DATA_PREFIX) and not name.endswith(".py")}
    expected = repository_data()
    assert sorted(packaged) == sorted(expected)
    for name, content in expected.items():
        assert packaged[name] == content, f"{name} differs from the repository's file"
    with zipfile.ZipFile(dists["wheel"]) as z:
        mode = z.getinfo(f"{DATA_PREFIX}launchers/{LAUNCHER}").external_attr >> 16
    assert mode & 0o111, "the launcher is installed executable"
    entry_points = next(v for k, v in wheel.items() if k.endswith(".dist-info/entry_points.txt"))
    assert b"elastic-kernels = elastic_kernels.cli:main" in entry_points

    # The sdist stores contents, not symlinks, and no half set of tests.
    with tarfile.open(dists["sdist"]) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/" in m.name}
        for name, content in expected.items():
            member = members[name]
            assert member.isfile() or member.islnk(), f"{name} is stored as a symlink"
            extracted = tar.extractfile(member)
            assert extracted is not None and extracted.read() == content
    assert not [n for n in members if n.startswith("tests/")]

    # The JupyterLab extension, prebuilt: installed where JupyterLab looks, with its settings
    # schema and pip's install.json; the sdist carries it built, and its sources.
    built = REPO / LABEXTENSION_OUTPUT
    extension = {name.split(".data/data/", 1)[1]: content for name, content in wheel.items()
                 if ".data/data/" in name}
    expected_extension = {
        LABEXTENSION_DATA + f.relative_to(built).as_posix(): f.read_bytes()
        for f in built.rglob("*") if f.is_file()}
    expected_extension[LABEXTENSION_DATA + "install.json"] = \
        (REPO / "labextension" / "install.json").read_bytes()
    assert extension == expected_extension
    assert LABEXTENSION_DATA + "schemas/elastic-kernels/plugin.json" in extension
    assert any(n.startswith(LABEXTENSION_DATA + "static/remoteEntry.") for n in extension)
    for name in ("setup.py", "labextension/package-lock.json", "labextension/src/index.ts",
                 f"{LABEXTENSION_OUTPUT}/package.json"):
        assert name in members, name
    assert not [n for n in members if "node_modules" in n]

    # The sdist builds the same wheel as the tree does.
    assert wheel_contents(dists["direct_wheel"]) == wheel


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_images_build_context_still_installs(tmp_path: Path) -> None:
    """The gateway and notebook images ``COPY elastic_kernels`` (the symlinks come along,
    dangling: deploy/ and kernelspecs/ are not copied) and ``pip install --no-deps .``; that
    still builds, without the package data, which those images do not use."""
    dockerfile = (REPO / "launchers" / "images" / "gateway" / "Dockerfile").read_text()
    copied = [m.group(1).split() for m in re.finditer(r"^COPY (?!--)(.+) \S+$", dockerfile, re.M)]
    sources = [s for group in copied for s in group if not s.endswith("requirements.txt")]
    assert "elastic_kernels" in sources and "setup.cfg" in sources, sources
    context = tmp_path / "context"
    context.mkdir()
    for source in sources:
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, context / source, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / source, context / source)
    build(context, tmp_path / "out", "--wheel")
    names = wheel_contents(only(tmp_path / "out", "*.whl"))
    assert "elastic_kernels/gateway/app.py" in names
    assert not [n for n in names if n.startswith(DATA_PREFIX) and not n.endswith(".py")]


# --- a fresh virtualenv outside the checkout ------------------------------------------------


def overlay_of_test_environment(dest: Path) -> Path:
    """Links to this environment's site-packages without this project, for a ``.pth``."""
    dest.mkdir()
    site = Path(sysconfig.get_paths()["purelib"])
    for entry in site.iterdir():
        name = entry.name.lower()
        if (name.startswith(("elastic_kernels", "elastic-kernels", "__editable__"))
                or name.endswith(".pth") or name == "__pycache__"):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


def inside(path: str | Path, directory: Path) -> bool:
    return Path(path).resolve().is_relative_to(directory.resolve())


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, start time) from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``: who must be gone when it stops."""
    table = process_table()
    found: set[tuple[int, str]] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _, started) in table.items():
            if ppid == parent and (child, started) not in found:
                found.add((child, started))
                frontier.append(child)
    return found


def alive(process: tuple[int, str]) -> bool:
    pid, started = process
    entry = process_table().get(pid)
    return entry is not None and entry[2] == started and entry[1] != "Z"



@pytest.fixture
def fresh_venv(dists: dict[str, Path], tmp_path: Path) -> Iterator[Path]:
    """A virtualenv with the wheel installed by pip, and nothing of the checkout."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], 60)
    python = venv / "bin" / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               30, cwd=tmp_path).stdout.strip()
    overlay = overlay_of_test_environment(tmp_path / "borrowed-site-packages")
    (Path(site) / "borrowed-test-dependencies.pth").write_text(f"{overlay}\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check",
         "install", "--no-index", str(dists["wheel"])], 180, cwd=tmp_path)
    yield venv


@pytest.mark.slow
@pytest.mark.timeout(360)
async def test_wheel_runs_the_demo_outside_the_checkout(fresh_venv: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "somewhere"
    workdir.mkdir()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "KUBECONFIG",
                        *LEAKY_ENV)}
    host_path = [p for p in env.get("PATH", "").split(os.pathsep)
                 if p and not inside(p, REPO) and not inside(p, Path(sys.prefix))]
    env.update(private_jupyter_dirs(home), HOME=str(home), VIRTUAL_ENV=str(fresh_venv),
               PATH=os.pathsep.join([str(fresh_venv / "bin"), *host_path]))

    imported = run([str(fresh_venv / "bin" / "python"), "-c",
                    "import elastic_kernels; print(elastic_kernels.__file__)"],
                   30, cwd=workdir, env=env).stdout.strip()
    assert inside(imported, fresh_venv), imported

    port = free_port()
    out = tmp_path / "demo.out"
    with open(out, "wb") as sink:
        demo = subprocess.Popen(
            [str(fresh_venv / "bin" / "elastic-kernels"), "demo", "--no-lab",
             "--gateway-port", str(port)],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True)
    started: set[tuple[int, str]] = set()
    ws: KernelWS | None = None
    try:
        deadline = time.monotonic() + 150
        while "Ctrl-C stops everything." not in out.read_text(errors="replace"):
            assert demo.poll() is None, f"demo exited {demo.returncode}:\n{out.read_text()}"
            assert time.monotonic() < deadline, f"demo not ready:\n{out.read_text()}"
            started |= descendants(demo.pid)
            await asyncio.sleep(0.2)
        started |= descendants(demo.pid)
        text = out.read_text()
        assert "serving kernelspecs: python-cpu, python-gpu" in text, text
        gateway = re.search(r"gateway: +(http://127\.0\.0\.1:\d+) \(token in (\S+)\)", text)
        assert gateway, text
        url, token_file = gateway.group(1), Path(gateway.group(2))
        assert url == f"http://127.0.0.1:{port}" and inside(token_file, workdir / ".demo")
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert token not in text, "the token is not printed"
        assert f"kubectl --kubeconfig {workdir / '.demo' / 'kubeconfig'}" in text

        response = await api(url, "POST", "/api/kernels", {"name": "python-cpu"}, token=token)
        assert response.code == 201, response.body
        kernel_id = json_of(response)["id"]
        ws = await KernelWS.open(url, kernel_id, token=token)
        result = await ws.execute("print(1+1)", timeout=60)
        assert result["reply"]["status"] == "ok" and result["stdout"] == "2\n", result
        where = await ws.execute(
            "import os, shutil, elastic_kernels\n"
            f"print(os.getpid(), shutil.which({LAUNCHER!r}), elastic_kernels.__file__)")
        pid, launcher, module = where["stdout"].split()
        assert inside(launcher, fresh_venv), f"the pod ran {launcher}"
        assert inside(module, fresh_venv), module
        started |= descendants(demo.pid)
        assert int(pid) in {p for p, _ in started}, "the kernel runs under the demo's cluster"

        # Stop the demo with the kernel still running: the cluster stops its pods.
        ws.close()
        ws = None
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0, out.read_text()
        assert "demo: stopped; no processes left behind." in out.read_text()
        deadline = time.monotonic() + 10
        while any(alive(p) for p in started) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not [p for p in started if alive(p)], "processes outlived the demo"
    finally:
        if ws is not None:
            ws.close()
        if demo.poll() is None:
            started |= descendants(demo.pid)
            demo.terminate()
            try:
                demo.wait(30)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
        for pid, started_at in started:
            if alive((pid, started_at)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
