"""Resource quantities parse exactly as the real API does."""

from __future__ import annotations

from decimal import Decimal

import pytest

from elastic_kernels.localcluster.quantities import (QuantityError, ceil_div, format_cpu,
                                                     format_quantity, parse_quantity)

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("text, value", [
    ("100m", Decimal("0.1")),
    ("1", Decimal(1)),
    ("1.5", Decimal("1.5")),
    ("1Ki", Decimal(1024)),
    ("1Gi", Decimal(1024 ** 3)),
    ("32Gi", Decimal(32 * 1024 ** 3)),
    ("1k", Decimal(1000)),
    ("1M", Decimal(10 ** 6)),
    ("2G", Decimal(2 * 10 ** 9)),
    ("1e3", Decimal(1000)),
    ("1E-3", Decimal("0.001")),
    ("500u", Decimal("0.0005")),
    ("7n", Decimal("0.000000007")),
    (".5", Decimal("0.5")),
    ("+2", Decimal(2)),
    ("-1", Decimal(-1)),
    (3, Decimal(3)),
    (0.25, Decimal("0.25")),
])
def test_parse(text: str | int | float, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_sums_are_exact() -> None:
    assert parse_quantity("100m") + parse_quantity("200m") == parse_quantity("300m")
    assert parse_quantity("0.1") + parse_quantity("0.2") == parse_quantity("0.3")


@pytest.mark.parametrize("bad", ["", "abc", "1Gb", "1.2.3", "m", "1 Gi", "--1", True, None, []])
def test_rejects_garbage_with_the_real_message(bad: object) -> None:
    with pytest.raises(QuantityError) as info:
        parse_quantity(bad)  # type: ignore[arg-type]
    assert "quantit" in str(info.value)


def test_ceil_div_and_formatting() -> None:
    assert ceil_div(parse_quantity("500m"), Decimal(1)) == 1
    assert ceil_div(parse_quantity("1500m"), parse_quantity("1m")) == 1500
    assert ceil_div(parse_quantity("1Gi"), parse_quantity("1Mi")) == 1024
    with pytest.raises(QuantityError):
        ceil_div(Decimal(1), Decimal(0))
    assert format_cpu(parse_quantity("2")) == "2"
    assert format_cpu(parse_quantity("250m")) == "250m"
    assert format_quantity(parse_quantity("1Gi")) == "1073741824"
    assert format_quantity(parse_quantity("0.5")) == "0.5"
