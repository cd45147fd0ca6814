"""Content negotiation: which representation of an object the client's ``Accept`` asks for.

kubectl asks for server-side tables (``as=Table``), informers for metadata only
(``as=PartialObjectMetadata``/``PartialObjectMetadataList``), and discovery clients for the
aggregated form; everyone else gets plain JSON. Used by the API server's request handler
(``handler.py``). Nothing here may be overridden.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

JSON_TYPE = "application/json"


def dumps(obj: Any) -> bytes:
    """Compact JSON, as the API server writes every body."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class MediaType:
    type: str
    params: dict[str, str]

    @property
    def as_(self) -> str:
        return self.params.get("as", "")


def parse_accept(header: str | None) -> list[MediaType]:
    result = []
    for part in (header or "").split(","):
        part = part.strip()
        if not part:
            continue
        pieces = [p.strip() for p in part.split(";")]
        params = {}
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            params[key.strip()] = value.strip()
        result.append(MediaType(pieces[0].lower(), params))
    return result


def choose(accepts: list[MediaType], options: Iterable[str]) -> tuple[str, MediaType | None]:
    """First acceptable representation: "" (plain JSON) or one of ``options`` (``as=`` names)."""
    allowed = set(options)
    for media in accepts:
        if media.type not in (JSON_TYPE, "application/*", "*/*", "application/yaml"):
            continue
        if media.as_:
            if media.as_ in allowed:
                return media.as_, media
            continue
        return "", media
    return "", None
