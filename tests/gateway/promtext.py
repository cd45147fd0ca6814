"""Scrape a gateway's ``/metrics`` and read samples with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from .support import TOKEN, api


class Scrape:
    """One ``/metrics`` page, parsed: samples looked up by name and (a subset of) labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample called ``name`` whose labels include ``labels`` (None if none)."""
        found = [s.value for s in self.samples
                 if s.name == name and labels.items() <= s.labels.items()]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else None

    def type_of(self, family: str) -> str:
        return self.families[family].type


async def scrape(base_url: str, token: str | None = TOKEN) -> Scrape:
    response = await api(base_url, "GET", "/metrics", token=token)
    assert response.code == 200, response.body
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape((response.body or b"").decode())
