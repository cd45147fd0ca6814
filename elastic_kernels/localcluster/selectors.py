"""Label and field selectors with the real API server's grammar and semantics.

Lists and watches of the local cluster filter with these, so a client that relies on
``labelSelector=app in (a,b),!canary`` or ``fieldSelector=spec.nodeName=node-1`` sees exactly the
objects a real cluster would return, and a malformed selector is a 400 instead of a silent
match-all.
Parsed selectors are cached because informers send the same selector string on every reconnect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from collections.abc import Callable, Iterable

from .errors import ApiError, bad_request

_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_NAME_PART_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_error(key: str) -> str | None:
    """Why ``key`` is not a valid qualified label key (prefix/name), or None when it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        return ("prefix part a lowercase RFC 1123 subdomain must consist of lower case "
                "alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character")
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _NAME_PART_RE.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
                "'123-abc', regex used for validation is "
                "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
    return None


def label_value_error(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_VALUE_RE.match(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, '-', "
                "'_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',"
                "  or 'my_value',  or '12345', regex used for validation is "
                "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
    return None


# --- label selectors ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelRequirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        op = self.op
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        if op == "=" or op == "in":
            return self.key in labels and labels[self.key] in self.values
        if op == "!=" or op == "notin":
            return self.key not in labels or labels[self.key] not in self.values
        value = labels.get(self.key)
        if value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if op == "gt" else number < bound


class LabelSelector:
    """A parsed label selector: every requirement must hold (comma means AND)."""

    def __init__(self, requirements: Iterable[LabelRequirement]) -> None:
        self.requirements = tuple(requirements)

    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


_TOKEN_RE = re.compile(r"\s*(!=|==|=|!|\(|\)|,|<|>|[^\s!=(),<>]+)")


def _lex(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if not match:
            raise _parse_error(f"unexpected character at {pos} in {text!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


def _parse_error(why: str) -> ApiError:
    return bad_request(f"unable to parse requirement: {why}")


@lru_cache(maxsize=512)
def parse_label_selector(selector: str | None) -> LabelSelector:
    """Parse the ``labelSelector`` query grammar; raise a 400 ApiError on anything malformed."""
    if not selector or not selector.strip():
        return LabelSelector(())
    tokens = _lex(selector)
    requirements: list[LabelRequirement] = []
    i = 0

    def value_at(j: int) -> str:
        if j >= len(tokens) or tokens[j] in ("!=", "==", "=", "!", "(", ")", ",", "<", ">"):
            raise _parse_error(f"found '{tokens[j] if j < len(tokens) else ''}', "
                               "expected: identifier")
        return tokens[j]

    while i < len(tokens):
        negate = False
        if tokens[i] == "!":
            negate = True
            i += 1
        if i >= len(tokens) or tokens[i] in ("!=", "==", "=", "!", "(", ")", ",", "<", ">"):
            raise _parse_error("found '" + (tokens[i] if i < len(tokens) else "")
                               + "', expected: !, identifier, or 'end of string'")
        key = tokens[i]
        why = label_key_error(key)
        if why:
            raise _parse_error(f'key: Invalid value: "{key}": {why}')
        i += 1
        if negate:
            requirements.append(LabelRequirement(key, "!"))
        elif i >= len(tokens) or tokens[i] == ",":
            requirements.append(LabelRequirement(key, "exists"))
        else:
            op = tokens[i]
            i += 1
            if op in ("=", "==", "!="):
                value = "" if (i >= len(tokens) or tokens[i] == ",") else value_at(i)
                if value:
                    i += 1
                why = label_value_error(value)
                if why:
                    raise _parse_error(f'values[0][{key}]: Invalid value: "{value}": {why}')
                requirements.append(LabelRequirement(key, "!=" if op == "!=" else "=", (value,)))
            elif op in ("in", "notin"):
                if i >= len(tokens) or tokens[i] != "(":
                    raise _parse_error(f"found '{tokens[i] if i < len(tokens) else ''}'"
                                       ", expected: '('")
                i += 1
                values: list[str] = []
                while True:
                    if i >= len(tokens):
                        raise _parse_error("found '', expected: ')'")
                    if tokens[i] == ")":
                        i += 1
                        break
                    if tokens[i] == ",":
                        if not values or tokens[i - 1] == ",":
                            values.append("")
                        i += 1
                        continue
                    value = tokens[i]
                    why = label_value_error(value)
                    if why:
                        raise _parse_error(f'values[{len(values)}][{key}]: Invalid value: '
                                           f'"{value}": {why}')
                    values.append(value)
                    i += 1
                if not values:
                    raise _parse_error("values: Invalid value: for 'in', 'notin' "
                                       "operators, values set can't be empty")
                requirements.append(LabelRequirement(key, op, tuple(values)))
            elif op in ("<", ">"):
                value = value_at(i)
                i += 1
                if not re.fullmatch(r"-?\d+", value):
                    raise _parse_error(f'values[0]: Invalid value: "{value}": for '
                                       "'Gt', 'Lt' operators, the value must be an integer")
                requirements.append(LabelRequirement(key, "gt" if op == ">" else "lt", (value,)))
            else:
                raise _parse_error(f"found '{op}', expected: in, notin, =, ==, !=, gt, "
                                   "lt")
        if i < len(tokens):
            if tokens[i] != ",":
                raise _parse_error(f"found '{tokens[i]}', expected: ',' or 'end of string'")
            i += 1
            if i >= len(tokens):
                raise _parse_error("found '', expected: !, identifier")
    return LabelSelector(requirements)


def label_selector_from_dict(selector: dict | None) -> LabelSelector:
    """A metav1.LabelSelector (matchLabels/matchExpressions) as a LabelSelector."""
    if not selector:
        return LabelSelector(())
    reqs = [LabelRequirement(k, "=", (v,)) for k, v in (selector.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or []:
        reqs.append(LabelRequirement(expr["key"], ops[expr["operator"]],
                                     tuple(expr.get("values") or ())))
    return LabelSelector(reqs)


# --- field selectors ----------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldRequirement:
    field: str
    op: str  # "=" or "!="
    value: str


class FieldSelector:
    """A parsed field selector over dotted paths; values compare as strings like the real server."""

    def __init__(self, requirements: Iterable[FieldRequirement],
                 getters: dict[str, Callable[[dict], str]] | None = None) -> None:
        self.requirements = tuple(requirements)
        self._getters = getters or {}

    def empty(self) -> bool:
        return not self.requirements

    def matches(self, obj: dict) -> bool:
        for req in self.requirements:
            getter = self._getters.get(req.field)
            actual = getter(obj) if getter else field_value(obj, req.field)
            if (actual == req.value) != (req.op == "="):
                return False
        return True


def field_value(obj: dict, path: str) -> str:
    """The string a field selector compares for ``path`` (missing fields read as "")."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, dict):
            return ""
        current = current.get(part)
        if current is None:
            return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    if isinstance(current, (dict, list)):
        return ""
    return str(current)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt not in "\\,=!":
                raise bad_request(f"invalid field selector: invalid escape sequence: \\{nxt}")
            out.append(nxt)
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


@lru_cache(maxsize=512)
def _parse_field_terms(selector: str) -> tuple[FieldRequirement, ...]:
    reqs: list[FieldRequirement] = []
    for term in _split_unescaped(selector, ","):
        if not term.strip():
            continue
        match = re.match(r"^([^=!]*?)\s*(!=|==|=)(.*)$", term)
        if not match:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{term}'")
        field, op, value = match.group(1).strip(), match.group(2), match.group(3)
        if not field:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{term}'")
        reqs.append(FieldRequirement(field, "!=" if op == "!=" else "=", _unescape(value)))
    return tuple(reqs)


def parse_field_selector(selector: str | None, supported: Iterable[str] = (),
                         aliases: dict[str, str] | None = None,
                         getters: dict[str, Callable[[dict], str]] | None = None) -> FieldSelector:
    """Parse ``fieldSelector``; fields outside ``supported`` (plus metadata.name/namespace) are 400.

    ``aliases`` rename fields of one API version to those of the stored object (events.k8s.io's
    ``regarding.name`` is core's ``involvedObject.name``).
    """
    if not selector or not selector.strip():
        return FieldSelector(())
    allowed = {"metadata.name", "metadata.namespace", *supported}
    aliases = aliases or {}
    reqs: list[FieldRequirement] = []
    for req in _parse_field_terms(selector):
        field = aliases.get(req.field, req.field)
        if field not in allowed:
            raise bad_request(f"field label not supported: {req.field}")
        reqs.append(FieldRequirement(field, req.op, req.value))
    return FieldSelector(reqs, getters)


def exact_field(selector: FieldSelector, field: str) -> str | None:
    """The value an ``=`` requirement pins ``field`` to, so lists can use an index (or None)."""
    for req in selector.requirements:
        if req.field == field and req.op == "=":
            return req.value
    return None
