"""A few Prometheus samples in the text exposition format.

The gateway exposes a handful of gauges and counters; writing the text format directly keeps
``/metrics`` small (jupyter_server's own ``/metrics`` dumps the whole process registry) and
avoids sharing prometheus_client's global registry between apps in one process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "Metric", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    """One sample with its family's HELP and TYPE (``gauge`` or ``counter``)."""

    name: str
    help: str
    type: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    """Render samples; HELP/TYPE are written once per metric name, in first-seen order."""
    families: dict[str, list[Metric]] = {}
    for metric in metrics:
        families.setdefault(metric.name, []).append(metric)
    lines: list[str] = []
    for name, samples in families.items():
        first = samples[0]
        lines.append(f"# HELP {name} {first.help.replace(chr(10), ' ')}")
        lines.append(f"# TYPE {name} {first.type}")
        for sample in samples:
            labels = ""
            if sample.labels:
                inner = ",".join(
                    f'{key}="{_escape_label(str(val))}"' for key, val in sample.labels.items()
                )
                labels = "{" + inner + "}"
            lines.append(f"{name}{labels} {_format_value(sample.value)}")
    return "\n".join(lines) + "\n"
