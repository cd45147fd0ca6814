"""Private names of jupyter_server, jupyter_client, tornado and pyzmq are used in one module only.

The gateway has to reach into upstream internals in places (a kernel's activity stream, the
manager's table of kernels, ServerApp's start and stop hooks). Each such access is a bet that a
name that was never promised stays; kept in :mod:`elastic_kernels.upstream`, the bets are
counted and an upgrade is checked in one file. This test finds any other access statically:

* ``obj._name`` (or ``getattr(obj, "_name")``) on anything but ``self``/``cls``, where an
  upstream package defines ``_name``;
* ``self._name`` / ``super()._name`` and ``def _name`` in one of our classes whose upstream base
  classes define ``_name`` (using, setting or overriding a private of the class inherited from),
  except traitlets ``@default``/``@observe``/``@validate`` methods;
* ``from <upstream>... import _name`` and imports of private upstream modules
  (``jupyter_server._tz``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import textwrap
import typing as t
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = pathlib.Path(__file__).resolve().parents[1] / "elastic_kernels"
DOOR = ROOT / "upstream.py"
UPSTREAM = ("jupyter_server", "jupyter_client", "tornado", "zmq")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _names_defined(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            found.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)  # class-level traits such as ``_kernel_connections = Dict()``
    return {n for n in found if _private(n)}


def _upstream_privates() -> set[str]:
    names: set[str] = set()
    for package in UPSTREAM:
        root = pathlib.Path(importlib.import_module(package).__file__ or "").parent
        for path in root.rglob("*.py"):
            try:
                names |= _names_defined(ast.parse(path.read_text(encoding="utf-8")))
            except (SyntaxError, UnicodeDecodeError):
                continue
    return names


def _class_privates(cls: type) -> set[str]:
    """Private names an upstream class (itself, not its subclasses) defines or sets on self."""
    names = {n for n in vars(cls) if _private(n)}
    try:
        names |= _names_defined(ast.parse(textwrap.dedent(inspect.getsource(cls))))
    except (OSError, TypeError, SyntaxError):
        pass
    return names


def _inherited_privates(cls: type) -> set[str]:
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] in UPSTREAM:
            names |= _class_privates(base)
    return names


def _traitlets_hook(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """``@default("x")`` (or ``@observe``/``@validate``) is traitlets' public way to give a
    trait a new default: the method's name is free, and upstream happens to use the same."""
    for deco in func.decorator_list:
        if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name)
                and deco.func.id in ("default", "observe", "validate")):
            return True
    return False


def _modules() -> Iterator[tuple[pathlib.Path, str]]:
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        if path == DOOR or "localcluster" in rel.parts or path.name == "__main__.py":
            continue
        yield path, ".".join(rel.with_suffix("").parts).removesuffix(".__init__")


class _Scan(ast.NodeVisitor):
    """One module's accesses to upstream private names (see the module docstring)."""

    def __init__(self, module: t.Any, where: str, upstream: set[str]) -> None:
        self.module, self.where, self.upstream = module, where, upstream
        self.inherited: set[str] = set()
        self.found: list[str] = []

    def hit(self, node: ast.stmt | ast.expr, what: str) -> None:
        self.found.append(f"{self.where}:{node.lineno}: {what}")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        cls = getattr(self.module, node.name, None)
        outer, self.inherited = self.inherited, (
            _inherited_privates(cls) if isinstance(cls, type) else set())
        for item in node.body:
            if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and item.name in self.inherited and not _traitlets_hook(item)):
                self.hit(item, f"overrides {item.name}")
        self.generic_visit(node)
        self.inherited = outer

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _private(node.attr):
            target = node.value
            on_self = isinstance(target, ast.Name) and target.id in ("self", "cls")
            on_super = (isinstance(target, ast.Call) and isinstance(target.func, ast.Name)
                        and target.func.id == "super")
            if (on_self or on_super) and node.attr in self.inherited:
                self.hit(node, f"{node.attr} (inherited)")
            elif not (on_self or on_super) and node.attr in self.upstream:
                self.hit(node, node.attr)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        parts = (node.module or "").split(".")
        if parts[0] in UPSTREAM and (any(_private(p) for p in parts)
                                     or any(_private(a.name) for a in node.names)):
            self.hit(node, f"import from {node.module}")

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str) and _private(node.args[1].value)
                and node.args[1].value in self.upstream):
            self.hit(node, f"{node.func.id} {node.args[1].value}")
        self.generic_visit(node)


def _violations() -> list[str]:
    upstream = _upstream_privates()
    found: list[str] = []
    for path, modname in _modules():
        scan = _Scan(importlib.import_module(modname), str(path.relative_to(ROOT.parent)),
                     upstream)
        scan.visit(ast.parse(path.read_text(encoding="utf-8")))
        found += scan.found
    return found


def test_only_the_upstream_module_touches_upstream_private_names() -> None:
    found = _violations()
    assert not found, ("private upstream names used outside elastic_kernels/upstream.py "
                       "(add an accessor there):\n" + "\n".join(found))


def test_the_check_sees_an_access() -> None:
    """The scan is not vacuous: the door itself is full of what it looks for."""
    upstream = _upstream_privates()
    assert {"_kernels", "_kernel_connections", "_make_url", "_post_start"} <= upstream
    door = DOOR.read_text(encoding="utf-8")
    assert "._kernels" in door and "_post_start" in door
