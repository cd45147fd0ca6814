"""CRD ``x-kubernetes-validations``: CEL rules at every level of a custom resource's schema.

kube-apiserver evaluates each rule with ``self`` bound to the value at the rule's level, and a
failed rule is a field error there, so a CR that breaks a rule is refused with a 422 that names
the field and the rule's message, e.g. ``spec.argv: Invalid value: "array": argv must contain the
placeholder {connection_file}`` (the "value" is the schema type, not the data, as in Kubernetes).
Transition rules (those using ``oldSelf``) compare a write with what it replaces: they run only on
update and only where the old value can be correlated (same property, same map key, same
``x-kubernetes-list-type: map`` keys), so a create never fails one.
"""

from __future__ import annotations

from typing import Any

from .cel import CelError, compile_expression, references
from .errors import FieldError, forbidden, invalid, required

_VARIABLES = ("self", "oldSelf")
_ROOT_META = ("name", "generateName")
_ABSENT = object()
#: How kube-apiserver prints the path of a rule at the schema's root (a nil field.Path).
_ROOT = "<nil>"


def _path_join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _with_field_path(path: str, field_path: str) -> str:
    """A rule's ``fieldPath`` (``.spec.x`` or ``['k']``) is relative to the rule's level."""
    if not field_path:
        return path
    if field_path.startswith("."):
        return path + field_path if path else field_path[1:]
    return path + field_path


def _message(rule: dict, bindings: dict[str, Any]) -> str:
    expression = rule.get("messageExpression")
    if isinstance(expression, str) and expression:
        try:
            text = compile_expression(expression, _VARIABLES).evaluate(bindings)
        except CelError:
            text = None
        if isinstance(text, str) and text.strip():
            return text
    message = rule.get("message")
    if isinstance(message, str) and message:
        return message
    return f"failed rule: {str(rule.get('rule') or '').strip()}"


def _failure(rule: dict, path: str, type_name: str, message: str) -> FieldError:
    where = _with_field_path(path, str(rule.get("fieldPath") or "")) or _ROOT
    reason = rule.get("reason") or "FieldValueInvalid"
    if reason == "FieldValueForbidden":
        return forbidden(where, message)
    if reason == "FieldValueRequired":
        return required(where, message)
    if reason == "FieldValueDuplicate":
        return FieldError("Duplicate", where, type_name)
    return invalid(where, type_name, message)


def _type_name(schema: dict, value: Any) -> str:
    declared = schema.get("type")
    if isinstance(declared, str) and declared:
        return declared
    return "object" if isinstance(value, dict) else "array" if isinstance(value, list) else "string"


def _run_rules(schema: dict, value: Any, old: Any, path: str, errors: list[FieldError]) -> None:
    for rule in schema.get("x-kubernetes-validations") or []:
        if not isinstance(rule, dict) or not isinstance(rule.get("rule"), str):
            continue
        expression = rule["rule"]
        transition = references(expression, "oldSelf")
        if transition and (old is _ABSENT or rule.get("optionalOldSelf")):
            continue
        bindings = {"self": value, "oldSelf": None if old is _ABSENT else old}
        type_name = _type_name(schema, value)
        try:
            result = compile_expression(expression, _VARIABLES).evaluate(bindings)
        except CelError as exc:
            errors.append(invalid(path or _ROOT, type_name,
                                  f"{exc} evaluating rule: {expression.strip()}"))
            continue
        if result is not True:
            errors.append(_failure(rule, path, type_name, _message(rule, bindings)))


def _map_key(item: Any, keys: list[str]) -> tuple | None:
    if not isinstance(item, dict):
        return None
    return tuple(item.get(k) for k in keys)


def _walk(schema: Any, value: Any, old: Any, path: str, errors: list[FieldError]) -> None:
    if not isinstance(schema, dict) or value is None:
        return
    _run_rules(schema, value, old, path, errors)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, child in value.items():
            sub = props.get(key) if key in props else extra if isinstance(extra, dict) else None
            if sub is None:
                continue
            before = old.get(key, _ABSENT) if isinstance(old, dict) else _ABSENT
            _walk(sub, child, before, _path_join(path, key), errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        keys = schema.get("x-kubernetes-list-map-keys") or []
        olds: dict[tuple, Any] = {}
        if schema.get("x-kubernetes-list-type") == "map" and keys and isinstance(old, list):
            olds = {k: o for o in old if (k := _map_key(o, keys)) is not None}
        for index, child in enumerate(value):
            key = _map_key(child, keys) if olds else None
            before = olds.get(key, _ABSENT) if key is not None else _ABSENT
            _walk(items, child, before, f"{path}[{index}]", errors)
    for sub in schema.get("allOf") or []:
        _walk(sub, value, old, path, errors)


def _root_view(obj: dict) -> dict:
    """At the root ``self.metadata`` holds only name and generateName, as in Kubernetes."""
    view = dict(obj)
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        view["metadata"] = {k: meta[k] for k in _ROOT_META if k in meta}
    return view


def rule_errors(schema: dict, obj: dict, old: dict | None = None) -> list[FieldError]:
    """The failures of every ``x-kubernetes-validations`` rule in ``schema`` for ``obj``
    (``old`` is the stored object on update, None on create)."""
    errors: list[FieldError] = []
    _walk(schema, _root_view(obj), _ABSENT if old is None else _root_view(old), "", errors)
    return errors
