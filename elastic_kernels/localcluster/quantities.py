"""Kubernetes resource quantities ("100m", "1Gi", "2", "1e3") as exact decimals.

The scheduler compares requests against node capacity and the kubelet renders
``resourceFieldRef`` values; both must agree with the real API's arithmetic, which is exact
(no float rounding: ``0.1 + 0.2`` cores must fit into ``300m``).
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

# Suffixes of k8s.io/apimachinery/pkg/api/resource: binary (powers of 1024) and decimal SI.
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

_QUANTITY = re.compile(
    r"^(?P<sign>[+-]?)(?P<number>(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<exp>[eE][+-]?\d+)|(?P<decimal>[numkMGTPE]?))$"
)


_REAL_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"  # as quoted in real errors


class QuantityError(ValueError):
    """A string that the real API server would reject as a quantity."""


def parse_quantity(q: str | int | float | Decimal) -> Decimal:
    """Parse a quantity exactly, e.g. ``"100m" -> Decimal("0.1")``, ``"1Gi" -> 1073741824``."""
    if isinstance(q, bool):
        raise QuantityError(f"quantities must match the regular expression '{_REAL_PATTERN}'")
    if isinstance(q, Decimal):
        return q
    if isinstance(q, int):
        return Decimal(q)
    if isinstance(q, float):
        return Decimal(repr(q))
    if not isinstance(q, str):
        raise QuantityError(f"quantity must be a string or number, not {type(q).__name__}")
    text = q.strip()
    m = _QUANTITY.match(text)
    if not m:
        raise QuantityError(
            f"quantities must match the regular expression '{_REAL_PATTERN}' (got {q!r})")
    try:
        number = Decimal(m.group("number"))
    except InvalidOperation:  # pragma: no cover - the regex only admits decimal numbers
        raise QuantityError(f"invalid quantity {q!r}") from None
    if m.group("sign") == "-":
        number = -number
    if m.group("binary"):
        return number * (Decimal(1024) ** _BINARY[m.group("binary")])
    if m.group("exp"):
        return number.scaleb(int(m.group("exp")[1:]))
    return number.scaleb(_DECIMAL[m.group("decimal") or ""])


def ceil_div(value: Decimal, divisor: Decimal) -> int:
    """``value / divisor`` rounded up, as the kubelet renders ``resourceFieldRef`` (min 1 if >0)."""
    if divisor <= 0:
        raise QuantityError("divisor must be positive")
    return int((value / divisor).to_integral_value(rounding=ROUND_CEILING))


def format_cpu(value: Decimal) -> str:
    """Render cores the way the API prints them: whole cores as ``"2"``, else millicores."""
    if value == value.to_integral_value():
        return str(int(value))
    return f"{int((value * 1000).to_integral_value(rounding=ROUND_CEILING))}m"


def format_quantity(value: Decimal) -> str:
    """Render a plain quantity without exponent (``"1073741824"``, ``"0.5"``)."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")
