"""The per-request options of a write (dryRun, fieldValidation, admission) and its warnings.

The API server makes one ``WriteOptions`` per client write from the request's query and caller
and passes it to the store, which honours it and appends the warnings the client gets back in
``Warning`` headers. Writes the cluster makes itself (scheduler, kubelet, garbage collector)
pass none and get the defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .resources import ResourceType

#: See ``WriteOptions.admit``.
Admission = Callable[[str, ResourceType, "str | None", "dict | None", dict], None]


@dataclass
class WriteOptions:
    """Per-request knobs of a write (dryRun, fieldValidation) and the warnings it produced.

    ``admit`` is the API server's validating admission for the caller of this request:
    ``admit(operation, rtype, subresource, old, new)`` with operation ``CREATE`` or ``UPDATE``
    and ``old`` None on create, called once the new object is complete and valid, before it is
    stored; it raises an ``ApiError`` to refuse the write. Writes the cluster makes itself
    (scheduler, kubelet, garbage collector) carry none.
    """

    dry_run: bool = False
    field_validation: str = "Warn"  # "Ignore" | "Warn" | "Strict"
    warnings: list[str] = field(default_factory=list)
    admit: Admission | None = None
