"""CRD openAPIV3Schema handling: pruning, defaulting and validation of custom objects.

The project promises that a malformed custom resource is rejected when it is applied, with the field
path in the error, exactly as a real API server does; and that fields a CRD does not declare are
silently dropped (pruned), because code that reads them back must not depend on them surviving.
This module implements the structural-schema subset of OpenAPI v3 that CRDs may use, and reports
failures with the real server's field paths and wording.  CEL rules (``x-kubernetes-validations``)
are evaluated by ``celrules`` once the object is otherwise valid.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import math
import re
import uuid as uuid_mod
from datetime import datetime
from typing import Any

from .celrules import rule_errors
from .errors import FieldError, forbidden, invalid, not_supported, required

ROOT_FIELDS = ("apiVersion", "kind", "metadata")
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields"})


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_ok(value: Any, expected: str) -> bool:
    if expected == "object":
        return isinstance(value, dict)
    if expected == "array":
        return isinstance(value, list)
    if expected == "string":
        return isinstance(value, str)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


_DATE_TIME_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DURATION_RE = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$|^0$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}"
    r"[A-Za-z0-9])?)*$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MAC_RE = re.compile(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$")


def _format_ok(value: Any, fmt: str) -> bool:
    """Whether ``value`` matches a simple OpenAPI/Kubernetes string format (unknown ones pass)."""
    if not isinstance(value, str):
        if fmt == "int32" and isinstance(value, int):
            return -(2 ** 31) <= value < 2 ** 31
        return True
    try:
        if fmt == "date-time" or fmt == "datetime":
            return bool(_DATE_TIME_RE.match(value))
        if fmt == "date":
            datetime.strptime(value, "%Y-%m-%d")
            return True
        if fmt == "uuid":
            uuid_mod.UUID(value)
            return len(value) == 36
        if fmt == "ipv4":
            ipaddress.IPv4Address(value)
            return True
        if fmt == "ipv6":
            ipaddress.IPv6Address(value)
            return True
        if fmt == "cidr":
            ipaddress.ip_network(value, strict=False)
            return "/" in value
        if fmt == "byte":
            base64.b64decode(value, validate=True)
            return True
        if fmt == "duration":
            return bool(_DURATION_RE.match(value))
        if fmt == "hostname":
            return bool(_HOSTNAME_RE.match(value))
        if fmt == "email":
            return bool(_EMAIL_RE.match(value))
        if fmt == "mac":
            return bool(_MAC_RE.match(value))
    except ValueError:
        return False
    return True


def _number_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class StructuralSchema:
    """One version's openAPIV3Schema of a CRD, applied to whole custom objects."""

    def __init__(self, schema: dict | None, preserve_all: bool = False) -> None:
        self.schema = schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        if preserve_all:
            self.schema = {**self.schema, "x-kubernetes-preserve-unknown-fields": True}

    # -- pruning ---------------------------------------------------------------------------------

    def prune(self, obj: dict) -> list[str]:
        """Drop undeclared fields from ``obj`` in place; return their paths (for warnings)."""
        pruned: list[str] = []
        self._prune(obj, self.schema, "", pruned, root=True)
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            for key in [k for k in meta if k not in OBJECT_META_FIELDS]:
                del meta[key]
                pruned.append(f"metadata.{key}")
        return pruned

    def _prune(self, value: Any, schema: dict, path: str, pruned: list[str], root: bool = False,
               embedded: bool = False) -> None:
        if not isinstance(schema, dict):
            return
        if isinstance(value, dict):
            if schema.get("x-kubernetes-int-or-string"):
                return
            props = schema.get("properties") or {}
            addl = schema.get("additionalProperties")
            preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
            keep_meta = root or embedded or bool(schema.get("x-kubernetes-embedded-resource"))
            for key in list(value):
                if keep_meta and key in ROOT_FIELDS:
                    if key == "metadata" and not root and isinstance(value[key], dict):
                        for mkey in [k for k in value[key] if k not in OBJECT_META_FIELDS]:
                            del value[key][mkey]
                    continue
                if key in props:
                    sub = props[key]
                    self._prune(value[key], sub, _join(path, key), pruned,
                                embedded=bool(isinstance(sub, dict)
                                              and sub.get("x-kubernetes-embedded-resource")))
                elif isinstance(addl, dict):
                    self._prune(value[key], addl, _join(path, key), pruned)
                elif addl is True or preserve:
                    continue
                else:
                    del value[key]
                    pruned.append(_join(path, key))
        elif isinstance(value, list):
            items = schema.get("items")
            if isinstance(items, dict):
                for index, item in enumerate(value):
                    self._prune(item, items, f"{path}[{index}]", pruned,
                                embedded=bool(items.get("x-kubernetes-embedded-resource")))

    # -- defaulting ------------------------------------------------------------------------------

    def default(self, obj: dict) -> None:
        """Apply ``default`` values in place and drop nulls of non-nullable fields (like real)."""
        self._default(obj, self.schema, root=True)

    def _default(self, value: Any, schema: dict, root: bool = False) -> None:
        if not isinstance(schema, dict):
            return
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            for key, sub in props.items():
                if not isinstance(sub, dict) or (root and key in ROOT_FIELDS):
                    continue
                if key in value and value[key] is None and not sub.get("nullable"):
                    del value[key]
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value:
                    self._default(value[key], sub)
            addl = schema.get("additionalProperties")
            if isinstance(addl, dict):
                for key in list(value):
                    if key not in props:
                        self._default(value[key], addl)
        elif isinstance(value, list):
            items = schema.get("items")
            if isinstance(items, dict):
                for item in value:
                    self._default(item, items)

    # -- validation ------------------------------------------------------------------------------

    def validate(self, obj: dict, old: dict | None = None) -> list[FieldError]:
        """What is wrong with ``obj``; ``old`` (the stored object on update) feeds CEL
        transition rules."""
        errors: list[FieldError] = []
        root = {k: v for k, v in obj.items() if k not in ROOT_FIELDS}
        schema = dict(self.schema)
        props = {k: v for k, v in (schema.get("properties") or {}).items() if k not in ROOT_FIELDS}
        schema["properties"] = props
        schema["required"] = [r for r in schema.get("required") or [] if r not in ROOT_FIELDS]
        self._validate(root, schema, "", errors)
        if not errors:
            errors.extend(rule_errors(self.schema, obj, old))
        return errors

    def _validate(self, value: Any, schema: dict, path: str, errors: list[FieldError]) -> None:
        if not isinstance(schema, dict):
            return
        where = path or "<root>"
        if value is None:
            if not schema.get("nullable") and schema.get("type"):
                errors.append(invalid(path, "null",
                                      f"{where} in body must be of type {schema['type']}: "
                                      '"null"'))
            return
        if schema.get("x-kubernetes-int-or-string"):
            if isinstance(value, bool) or not isinstance(value, (int, str)) and not (
                    isinstance(value, float) and value.is_integer()):
                errors.append(invalid(path, _json_type(value),
                                      f"{where} in body must be of type integer,string: "
                                      f"\"{_json_type(value)}\""))
                return
        else:
            expected = schema.get("type")
            if expected and not _type_ok(value, expected):
                errors.append(invalid(path, _json_type(value),
                                      f"{where} in body must be of type {expected}: "
                                      f"\"{_json_type(value)}\""))
                return
        before = len(errors)
        if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
            errors.append(not_supported(path, value, schema["enum"]))
        if isinstance(value, str):
            self._validate_string(value, schema, path, where, errors)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self._validate_number(value, schema, path, where, errors)
        elif isinstance(value, list):
            self._validate_array(value, schema, path, where, errors)
        elif isinstance(value, dict):
            self._validate_object(value, schema, path, where, errors)
        if len(errors) > before:
            return
        for sub in schema.get("allOf") or []:
            self._validate(value, sub, path, errors)
        if schema.get("anyOf"):
            if not any(not self._errors_for(value, sub, path) for sub in schema["anyOf"]):
                errors.append(invalid(path, value if not isinstance(value, (dict, list)) else
                                      _json_type(value), f"{where} in body must validate at least "
                                                         "one schema (anyOf)"))
        if schema.get("oneOf"):
            passing = sum(1 for sub in schema["oneOf"] if not self._errors_for(value, sub, path))
            if passing != 1:
                errors.append(invalid(path, value if not isinstance(value, (dict, list)) else
                                      _json_type(value), f"{where} in body must validate one and "
                                                         "only one schema (oneOf)"))
        if isinstance(schema.get("not"), dict) and not self._errors_for(value, schema["not"], path):
            errors.append(forbidden(path, f"{where} in body should not validate the schema (not)"))

    def _errors_for(self, value: Any, schema: dict, path: str) -> list[FieldError]:
        errors: list[FieldError] = []
        self._validate(value, schema, path, errors)
        return errors

    def _validate_string(self, value: str, schema: dict, path: str, where: str,
                         errors: list[FieldError]) -> None:
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(FieldError("TooLong", path, value,
                                     f"may not be more than {schema['maxLength']} bytes"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(invalid(path, value, f"{where} in body should be at least "
                                               f"{schema['minLength']} chars long"))
        pattern = schema.get("pattern")
        if pattern:
            try:
                matched = re.search(pattern, value) is not None
            except re.error:
                matched = True
            if not matched:
                errors.append(invalid(path, value, f"{where} in body should match '{pattern}'"))
        fmt = schema.get("format")
        if fmt and not _format_ok(value, fmt):
            errors.append(invalid(path, value, f"{where} in body must be of type {fmt}: "
                                               f"\"{value}\""))

    def _validate_number(self, value: float, schema: dict, path: str, where: str,
                         errors: list[FieldError]) -> None:
        shown = int(value) if isinstance(value, float) and value.is_integer() else value
        if "minimum" in schema:
            low = schema["minimum"]
            if schema.get("exclusiveMinimum") is True:
                if not value > low:
                    errors.append(invalid(path, shown, f"{where} in body should be greater than "
                                                       f"{_number_text(low)}"))
            elif value < low:
                errors.append(invalid(path, shown, f"{where} in body should be greater than or "
                                                   f"equal to {_number_text(low)}"))
        if "maximum" in schema:
            high = schema["maximum"]
            if schema.get("exclusiveMaximum") is True:
                if not value < high:
                    errors.append(invalid(path, shown, f"{where} in body should be less than "
                                                       f"{_number_text(high)}"))
            elif value > high:
                errors.append(invalid(path, shown, f"{where} in body should be less than or equal "
                                                   f"to {_number_text(high)}"))
        multiple = schema.get("multipleOf")
        if multiple:
            ratio = value / multiple
            if not math.isclose(ratio, round(ratio), rel_tol=0, abs_tol=1e-9):
                errors.append(invalid(path, shown, f"{where} in body should be a multiple of "
                                                   f"{_number_text(multiple)}"))
        fmt = schema.get("format")
        if fmt == "int32" and not _format_ok(int(value), "int32"):
            errors.append(invalid(path, shown, f"{where} in body must be of type int32"))

    def _validate_array(self, value: list, schema: dict, path: str, where: str,
                        errors: list[FieldError]) -> None:
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(FieldError("TooMany", path, len(value),
                                     f"must have at most {schema['maxItems']} items"))
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(invalid(path, len(value), f"{where} in body should have at least "
                                                    f"{schema['minItems']} items"))
        list_type = schema.get("x-kubernetes-list-type")
        if schema.get("uniqueItems") or list_type == "set":
            seen: list[Any] = []
            for index, item in enumerate(value):
                if item in seen:
                    errors.append(FieldError("Duplicate", f"{path}[{index}]", item))
                else:
                    seen.append(item)
        elif list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen_keys: set[str] = set()
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    continue
                ident = repr([item.get(k) for k in keys])
                if ident in seen_keys:
                    shown = {k: item.get(k) for k in keys}
                    errors.append(FieldError("Duplicate", f"{path}[{index}]", shown))
                seen_keys.add(ident)
        items = schema.get("items")
        if isinstance(items, dict):
            for index, item in enumerate(value):
                self._validate(item, items, f"{path}[{index}]", errors)

    def _validate_object(self, value: dict, schema: dict, path: str, where: str,
                         errors: list[FieldError]) -> None:
        for name in schema.get("required") or []:
            if name not in value:
                errors.append(required(_join(path, name)))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(FieldError("TooMany", path, len(value),
                                     f"must have at most {schema['maxProperties']} items"))
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            errors.append(invalid(path, len(value), f"{where} in body should have at least "
                                                    f"{schema['minProperties']} properties"))
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        for key, item in value.items():
            if key in props:
                self._validate(item, props[key], _join(path, key), errors)
            elif isinstance(addl, dict):
                self._validate(item, addl, _join(path, key), errors)
        if embedded:
            for key in ("apiVersion", "kind"):
                if not value.get(key):
                    errors.append(required(_join(path, key), "must not be empty"))


# --- CustomResourceDefinition checks ------------------------------------------------------------

_DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_KIND_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_GROUP_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$")
_VERSION_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def default_crd(crd: dict) -> None:
    """Fill the defaults a real server adds to a v1 CRD (in place)."""
    spec = crd.setdefault("spec", {})
    names = spec.setdefault("names", {})
    if names.get("kind"):
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
    spec.setdefault("conversion", {"strategy": "None"})
    for version in spec.get("versions") or []:
        if isinstance(version, dict):
            version.setdefault("served", True)
            version.setdefault("storage", False)


def validate_crd(crd: dict) -> list[FieldError]:
    errors: list[FieldError] = []
    spec = crd.get("spec")
    if not isinstance(spec, dict):
        return [required("spec")]
    group = spec.get("group")
    if not group:
        errors.append(required("spec.group"))
    elif not _GROUP_RE.match(group):
        errors.append(invalid("spec.group", group, "should be a domain with at least one dot"))
    names = spec.get("names") or {}
    plural, kind = names.get("plural"), names.get("kind")
    if not plural:
        errors.append(required("spec.names.plural"))
    elif not _DNS_LABEL_RE.match(plural):
        errors.append(invalid("spec.names.plural", plural, "a lowercase RFC 1123 label must "
                                                           "consist of lower case alphanumeric "
                                                           "characters or '-'"))
    if not kind:
        errors.append(required("spec.names.kind"))
    elif not _KIND_RE.match(kind):
        errors.append(invalid("spec.names.kind", kind,
                              "may have mixed case, but should otherwise match: "
                              "[a-z]([-a-z0-9]*[a-z0-9])?"))
    singular = names.get("singular")
    if singular and not _DNS_LABEL_RE.match(singular):
        errors.append(invalid("spec.names.singular", singular, "a lowercase RFC 1123 label"))
    for index, short in enumerate(names.get("shortNames") or []):
        if not isinstance(short, str) or not _DNS_LABEL_RE.match(short):
            errors.append(invalid(f"spec.names.shortNames[{index}]", short, "a lowercase RFC 1123 "
                                                                            "label"))
    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        if scope is None:
            errors.append(required("spec.scope"))
        else:
            errors.append(not_supported("spec.scope", scope, ["Cluster", "Namespaced"]))
    name = (crd.get("metadata") or {}).get("name")
    if plural and group and name != f"{plural}.{group}":
        errors.append(invalid("metadata.name", name, "must be spec.names.plural+\".\"+spec.group"))
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        errors.append(required("spec.versions", "must have exactly one version marked as storage "
                                                "version"))
        return errors
    storage_count = 0
    seen: set[str] = set()
    for index, version in enumerate(versions):
        vpath = f"spec.versions[{index}]"
        if not isinstance(version, dict):
            errors.append(invalid(vpath, version, "must be an object"))
            continue
        vname = version.get("name")
        if not vname:
            errors.append(required(f"{vpath}.name"))
        elif not _VERSION_RE.match(vname):
            errors.append(invalid(f"{vpath}.name", vname, "a DNS-1035 label"))
        elif vname in seen:
            errors.append(FieldError("Duplicate", f"{vpath}.name", vname))
        seen.add(vname or "")
        if version.get("storage"):
            storage_count += 1
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if not isinstance(schema, dict):
            errors.append(required(f"{vpath}.schema.openAPIV3Schema", "schemas are required"))
        else:
            if schema.get("type") != "object":
                errors.append(required(f"{vpath}.schema.openAPIV3Schema.type",
                                       "must not be empty at the root"))
            errors.extend(_check_schema(schema, f"{vpath}.schema.openAPIV3Schema"))
        for cindex, column in enumerate(version.get("additionalPrinterColumns") or []):
            cpath = f"{vpath}.additionalPrinterColumns[{cindex}]"
            if not isinstance(column, dict):
                errors.append(invalid(cpath, column, "must be an object"))
                continue
            if not column.get("name"):
                errors.append(required(f"{cpath}.name"))
            if not column.get("jsonPath"):
                errors.append(required(f"{cpath}.jsonPath"))
            if column.get("type") not in ("integer", "number", "string", "boolean", "date"):
                errors.append(not_supported(f"{cpath}.type", column.get("type"),
                                            ["boolean", "date", "integer", "number", "string"]))
    if storage_count != 1:
        errors.append(invalid("spec.versions", storage_count,
                              "must have exactly one version marked as storage version"))
    return errors


_SCHEMA_TYPES = ("object", "array", "string", "integer", "number", "boolean")


def _check_schema(schema: Any, path: str) -> list[FieldError]:
    """Reject schemas a real server refuses as non-structural, in the simple cases."""
    errors: list[FieldError] = []
    if not isinstance(schema, dict):
        return [invalid(path, schema, "must be an object")]
    stype = schema.get("type")
    if stype is not None and stype not in _SCHEMA_TYPES:
        errors.append(not_supported(f"{path}.type", stype, list(_SCHEMA_TYPES)))
    untyped_ok = schema.get("x-kubernetes-int-or-string") or schema.get(
        "x-kubernetes-preserve-unknown-fields")
    if stype is None and not untyped_ok and ("properties" in schema or "items" in schema):
        errors.append(required(f"{path}.type", "must not be empty for specified object fields"))
    if schema.get("additionalProperties") is False:
        errors.append(forbidden(f"{path}.additionalProperties", "must not be used if the "
                                                                "properties is used"))
    pattern = schema.get("pattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except (re.error, TypeError):
            errors.append(invalid(f"{path}.pattern", pattern, "must be a valid regular expression"))
    shapes = {"properties": dict, "required": list, "enum": list, "allOf": list, "anyOf": list,
              "oneOf": list, "not": dict, "x-kubernetes-list-map-keys": list}
    for key, shape in shapes.items():
        if key in schema and not isinstance(schema[key], shape):
            errors.append(invalid(f"{path}.{key}", schema[key],
                                  f"must be {'an object' if shape is dict else 'a list'}"))
    required_fields = schema.get("required")
    if isinstance(required_fields, list) and not all(isinstance(r, str) for r in required_fields):
        errors.append(invalid(f"{path}.required", required_fields, "must be a list of strings"))
    for key in ("minimum", "maximum", "multipleOf"):
        if key in schema and (isinstance(schema[key], bool)
                              or not isinstance(schema[key], (int, float))):
            errors.append(invalid(f"{path}.{key}", schema[key], "must be a number"))
    for key in ("minLength", "maxLength", "minItems", "maxItems", "minProperties",
                "maxProperties"):
        if key in schema and (isinstance(schema[key], bool) or not isinstance(schema[key], int)):
            errors.append(invalid(f"{path}.{key}", schema[key], "must be an integer"))
    if "items" in schema and not isinstance(schema["items"], dict):
        errors.append(invalid(f"{path}.items", schema["items"], "must be a schema object"))
    if errors:
        return errors
    for key, sub in (schema.get("properties") or {}).items():
        errors.extend(_check_schema(sub, f"{path}.properties[{key}]"))
    for key in ("allOf", "anyOf", "oneOf"):
        for index, sub in enumerate(schema.get(key) or []):
            errors.extend(_check_schema(sub, f"{path}.{key}[{index}]"))
    if isinstance(schema.get("not"), dict):
        errors.extend(_check_schema(schema["not"], f"{path}.not"))
    if isinstance(schema.get("items"), dict):
        errors.extend(_check_schema(schema["items"], f"{path}.items"))
    if isinstance(schema.get("additionalProperties"), dict):
        errors.extend(_check_schema(schema["additionalProperties"], f"{path}.additionalProperties"))
    return errors


# --- built-in kinds -----------------------------------------------------------------------------

_BUILTIN_LIST = re.compile(r"^[Ll]ist\[(.+)\]$")
_BUILTIN_DICT = re.compile(r"^[Dd]ict[\[(]str, (.+)[\])]$")
# Fields holding resource.Quantity values, which accept JSON numbers and store them as strings.
_QUANTITY_FIELDS = frozenset({"limits", "requests", "capacity", "allocatable", "overhead", "hard",
                              "used", "sizeLimit", "storage"})
_GO_TYPES = {"str": "string", "int": "int64", "float": "float64", "bool": "bool",
             "bytes": "[]uint8", "datetime": "v1.Time", "date": "string"}


def _quantity_text(value: int | float) -> str:
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    milli = value * 1000
    return f"{int(milli)}m" if milli.is_integer() else repr(value)


def _go_type(type_name: str) -> str:
    """``List[V1Container]`` -> ``[]v1.Container``, as Go's decoding errors name types."""
    match = _BUILTIN_LIST.match(type_name)
    if match:
        return "[]" + _go_type(match.group(1))
    match = _BUILTIN_DICT.match(type_name)
    if match:
        return "map[string]" + _go_type(match.group(1))
    if type_name in _GO_TYPES:
        return _GO_TYPES[type_name]
    found = re.match(r"^(?:[A-Z][a-z]+)?(V\d+(?:alpha\d+|beta\d+)?)(\w+)$", type_name)
    return f"{found.group(1).lower()}.{found.group(2)}" if found else type_name


class DecodeError(Exception):
    """A JSON value of the wrong type for a built-in field (what Go's json decoding rejects)."""

    def __init__(self, path: str, value: Any, expected: str) -> None:
        json_kind = {"integer": "number", "boolean": "bool"}.get(_json_type(value),
                                                                 _json_type(value))
        super().__init__(f"json: cannot unmarshal {json_kind} into Go struct field "
                         f"{path} of type {_go_type(expected)}")


class BuiltinDecoder:
    """Checks and normalises a built-in object the way decoding into the Go types does.

    A real API server never stores ``spec.containers[0].imagee``: the field does not exist in the
    Go struct, so it is dropped (``fieldValidation=Warn``, the default) or rejected (``Strict``,
    what kubectl asks for).  Values of the wrong JSON type are a 400, ``null`` means "unset", and
    quantities given as numbers become strings.  The field sets and types come from the official
    client's model classes, which are generated from the same API definitions; they are loaded on
    first use because importing them is slow.
    """

    def __init__(self) -> None:
        self._fields: dict[str, dict[str, str]] = {}
        self._models: Any = None

    def _model_fields(self, model: str) -> dict[str, str] | None:
        fields = self._fields.get(model)
        if fields is None:
            if self._models is None:
                from kubernetes.client import models
                self._models = models
            cls = getattr(self._models, model, None)
            if cls is None or not hasattr(cls, "attribute_map"):
                return None
            fields = {json_name: cls.openapi_types[attr]
                      for attr, json_name in cls.attribute_map.items()}
            self._fields[model] = fields
        return fields

    def decode(self, model: str, obj: dict) -> list[str]:
        """Normalise ``obj`` in place; return the paths of unknown fields it dropped.

        Raises DecodeError for a value of the wrong type.
        """
        pruned: list[str] = []
        self._object(obj, model, "", pruned)
        return pruned

    def _object(self, value: dict, model: str, path: str, pruned: list[str]) -> None:
        fields = self._model_fields(model)
        if fields is None:
            return
        for key in list(value):
            sub = fields.get(key)
            if sub is None:
                del value[key]
                pruned.append(_join(path, key))
                continue
            if value[key] is None:
                del value[key]  # null is the zero value: the same as absent
                continue
            value[key] = self._value(value[key], sub, _join(path, key), key, pruned)

    def _value(self, value: Any, type_name: str, path: str, name: str, pruned: list[str]) -> Any:
        if type_name == "object":
            return value
        if type_name in ("str", "bytes", "datetime", "date"):
            if isinstance(value, str):
                return value
            if (name in _QUANTITY_FIELDS and isinstance(value, (int, float))
                    and not isinstance(value, bool)):
                return _quantity_text(value)
            raise DecodeError(path, value, type_name)
        if type_name == "int":
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise DecodeError(path, value, "int")
        if type_name == "float":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
            raise DecodeError(path, value, "float")
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            raise DecodeError(path, value, "bool")
        match = _BUILTIN_LIST.match(type_name)
        if match:
            if not isinstance(value, list):
                raise DecodeError(path, value, type_name)
            item_type = match.group(1)
            return [self._value(self._zero(item, item_type), item_type, f"{path}[{index}]", name,
                                pruned) for index, item in enumerate(value)]
        match = _BUILTIN_DICT.match(type_name)
        if match:
            if not isinstance(value, dict):
                raise DecodeError(path, value, type_name)
            item_type = match.group(1)
            for key in list(value):
                value[key] = self._value(self._zero(value[key], item_type), item_type,
                                         _join(path, key), name, pruned)
            return value
        if not isinstance(value, dict):
            raise DecodeError(path, value, type_name)
        self._object(value, type_name, path, pruned)
        return value

    @staticmethod
    def _zero(value: Any, type_name: str) -> Any:
        if value is not None:
            return value
        if type_name in ("str", "bytes"):
            return ""
        if type_name in ("int", "float"):
            return 0
        if type_name == "bool":
            return False
        return None if type_name == "object" else {}


BUILTIN_DECODER = BuiltinDecoder()
