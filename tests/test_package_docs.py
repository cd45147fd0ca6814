"""Each package's docstring lists its modules (issue 12: a newcomer finds their way from there).

The layers and the message path are in ``docs/architecture.md``; the ``__init__`` docstring of
every package of ``elastic_kernels`` names each module of that package as ````name````, so a
module added without a word about it fails here.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.timeout(30)

ROOT = pathlib.Path(__file__).resolve().parents[1] / "elastic_kernels"


def _packages() -> list[pathlib.Path]:
    return sorted(p.parent for p in ROOT.rglob("__init__.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", _packages(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_the_package_docstring_names_each_module(package: pathlib.Path) -> None:
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    modules = sorted(p.stem for p in package.glob("*.py")
                     if p.stem not in ("__init__", "__main__"))
    modules += sorted(p.name for p in package.iterdir()
                      if (p / "__init__.py").exists())
    missing = [m for m in modules if f"``{m}``" not in doc]
    assert not missing, (f"{package.relative_to(ROOT.parent)}/__init__.py does not mention: "
                         f"{', '.join(missing)}")
