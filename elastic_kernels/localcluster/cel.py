"""Compiling and running CEL expressions for the API server, with the CEL project's own runtime.

CRD ``x-kubernetes-validations`` and ValidatingAdmissionPolicies are CEL, and a rule that passes
here must pass on a real cluster: so expressions are run by ``cel-expr-python`` (the CEL
project's Python binding of cel-cpp, the reference implementation) rather than anything written
here, with the strings extension Kubernetes enables (``lowerAscii``, ``split``, ``join``, ...).
Values are the JSON the API stores, declared ``dyn`` as Kubernetes does for schemaless data.

Programs are cached by (expression, variable names): a CRD's rules are evaluated on every write
and compiling is the expensive part.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_strings


class CelError(Exception):
    """An expression that does not compile, or an evaluation that ends in a CEL error value."""


@functools.lru_cache(maxsize=16)
def _env(variables: tuple[str, ...]) -> Any:
    return cel.NewEnv(variables={name: cel.Type.DYN for name in variables},
                      extensions=[ext_strings.ExtStrings()])


class Program:
    """One compiled expression; ``evaluate`` binds its variables to JSON values."""

    def __init__(self, expression: str, variables: tuple[str, ...]) -> None:
        self.expression = expression
        self.variables = variables
        try:
            self._compiled = _env(variables).compile(expression)
        except RuntimeError as exc:
            raise CelError(str(exc)) from None

    def evaluate(self, bindings: dict[str, Any]) -> Any:
        """The plain Python value of the result; a CEL error value (a missing key, no matching
        overload) raises ``CelError`` with the runtime's text, as Kubernetes reports it."""
        data = {name: bindings.get(name) for name in self.variables}
        try:
            value = self._compiled.eval(data=data)
        except RuntimeError as exc:
            raise CelError(str(exc)) from None
        if value.type().name() == "ERROR":
            raise CelError(str(value.value()))
        return value.plain_value()


@functools.lru_cache(maxsize=1024)
def compile_expression(expression: str, variables: tuple[str, ...]) -> Program:
    """A cached ``Program``; raises ``CelError`` when the expression does not compile."""
    return Program(expression, variables)


def references(expression: str, name: str) -> bool:
    """Whether ``expression`` mentions the variable ``name`` (a transition rule uses
    ``oldSelf``): a word match, which is what matters for the rules CRDs carry."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", expression) is not None
