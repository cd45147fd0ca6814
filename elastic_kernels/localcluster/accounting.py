"""Request accounting: how many API requests of each kind were made, by whom, and refused.

The API server counts every resource request by (verb, group, resource, subresource, namespace)
and user, every other URL (discovery, OpenAPI, /version) by path, and every request that
authorization refused. Tests and benchmarks read ``APIServer.request_counter`` to assert how many
writes an operation costs, that nothing polls, and that a ServiceAccount's Role is neither short
nor wider than what the component uses. Nothing here may be overridden.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .authz import Attributes

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
READ_VERBS = frozenset({"get", "list", "watch"})

RequestKey = tuple[str, str, str, str, str]  # verb, group, resource, subresource, namespace


@dataclass(frozen=True)
class RequestRecord:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    user: str

    @property
    def key(self) -> RequestKey:
        return (self.verb, self.group, self.resource, self.subresource, self.namespace)


class RequestCounter:
    """Counts API requests by (verb, group, resource, subresource, namespace), and by user.

    ``snapshot()`` then ``since(snapshot)`` measures what an operation cost; ``writes()`` and
    ``reads()`` filter by verb class.  Non-resource requests (discovery, OpenAPI, /version) are
    counted separately in ``nonresource`` so they do not blur resource accounting.
    """

    def __init__(self) -> None:
        self._counts: Counter[RequestKey] = Counter()
        self._by_user: Counter[tuple[str, str, str, str, str, str]] = Counter()
        self.nonresource: Counter[str] = Counter()
        #: Requests refused by authorization: (user, verb, group, resource, subresource,
        #: namespace) for resources, (user, verb, path, "", "", "") for other URLs.
        self.denied: Counter[tuple[str, str, str, str, str, str]] = Counter()

    def record(self, verb: str, group: str, resource: str, subresource: str = "",
               namespace: str = "", user: str = "") -> None:
        key = (verb, group, resource, subresource, namespace)
        self._counts[key] += 1
        self._by_user[(user,) + key] += 1

    def record_nonresource(self, path: str) -> None:
        self.nonresource[path] += 1

    def record_denied(self, attrs: Attributes) -> None:
        if attrs.resource_request:
            self.denied[(attrs.user.name, attrs.verb, attrs.api_group, attrs.resource,
                         attrs.subresource, attrs.namespace)] += 1
        else:
            self.denied[(attrs.user.name, attrs.verb, attrs.path, "", "", "")] += 1

    def snapshot(self) -> Counter[RequestKey]:
        return Counter(self._counts)

    def since(self, snapshot: Counter[RequestKey]) -> Counter[RequestKey]:
        """Requests made after ``snapshot`` was taken."""
        diff = Counter(self._counts)
        diff.subtract(snapshot)
        return Counter({k: v for k, v in diff.items() if v > 0})

    diff = since

    def reset(self) -> None:
        self._counts.clear()
        self._by_user.clear()
        self.nonresource.clear()
        self.denied.clear()

    def total(self, counts: Counter[RequestKey] | None = None, *,
              verbs: Iterable[str] | None = None, group: str | None = None,
              resource: str | None = None) -> int:
        counts = self._counts if counts is None else counts
        wanted = set(verbs) if verbs is not None else None
        return sum(n for (verb, g, res, _sub, _ns), n in counts.items()
                   if (wanted is None or verb in wanted) and (group is None or g == group)
                   and (resource is None or res == resource))

    def writes(self, counts: Counter[RequestKey] | None = None) -> Counter[RequestKey]:
        counts = self._counts if counts is None else counts
        return Counter({k: v for k, v in counts.items() if k[0] in WRITE_VERBS})

    def reads(self, counts: Counter[RequestKey] | None = None) -> Counter[RequestKey]:
        counts = self._counts if counts is None else counts
        return Counter({k: v for k, v in counts.items() if k[0] in READ_VERBS})

    def by_user(self) -> Counter[tuple[str, str, str, str, str, str]]:
        """(user, verb, group, resource, subresource, namespace) -> count, for RBAC coverage."""
        return Counter(self._by_user)

    def users(self) -> set[str]:
        return {key[0] for key in self._by_user}
