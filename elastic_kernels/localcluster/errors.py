"""Kubernetes-shaped errors for the local cluster.

Every failure the local API server reports must reach clients as a ``kind: Status`` body that the
official client and kubectl interpret exactly as they would a real cluster's
(``ApiException.status``, ``kubectl``'s ``Error from server (NotFound): ...``).  Keeping the
shapes in one place means the store, the schema validator and the HTTP layer cannot drift apart
in how they word or code errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Status reasons used by the real API server (k8s.io/apimachinery/pkg/apis/meta/v1/types.go).
REASON_BY_CODE: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class ApiError(Exception):
    """An error that the API server reports as a ``kind: Status`` body with an HTTP code."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        # Present even when empty ({}), as kube-apiserver writes a non-nil StatusDetails.
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body

    def __repr__(self) -> str:
        return f"ApiError({self.code}, {self.reason!r}, {self.message!r})"


# --- field errors (k8s.io/apimachinery/pkg/util/validation/field) -----------------------------

_OMIT = object()

# Go field.ErrorType -> (cause reason, human label)
FIELD_ERROR_TYPES: dict[str, tuple[str, str]] = {
    "Required": ("FieldValueRequired", "Required value"),
    "Invalid": ("FieldValueInvalid", "Invalid value"),
    "NotSupported": ("FieldValueNotSupported", "Unsupported value"),
    "Duplicate": ("FieldValueDuplicate", "Duplicate value"),
    "Forbidden": ("FieldValueForbidden", "Forbidden"),
    "TooLong": ("FieldValueTooLong", "Too long"),
    "TooMany": ("FieldValueTooMany", "Too many"),
    "NotFound": ("FieldValueNotFound", "Not found"),
    "TypeInvalid": ("FieldValueTypeInvalid", "Invalid value"),
}


def format_value(value: Any) -> str:
    """Render a bad value roughly like Go's ``%#v`` does in real messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "map[string]interface {}{" + ", ".join(
            f"{json.dumps(str(k))}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[]interface {}{" + ", ".join(format_value(v) for v in value) + "}"
    return json.dumps(str(value))


@dataclass
class FieldError:
    """One validation failure at a field path; rendered like Go's ``field.Error``."""

    type: str  # key of FIELD_ERROR_TYPES
    field: str
    value: Any = _OMIT
    detail: str = ""

    def body(self) -> str:
        label = FIELD_ERROR_TYPES[self.type][1]
        if self.type in ("Required", "Forbidden", "TooLong") or self.value is _OMIT:
            text = label
        else:
            text = f"{label}: {format_value(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}" if self.field else self.body()

    def cause(self) -> dict:
        cause = {"reason": FIELD_ERROR_TYPES[self.type][0], "message": self.body()}
        if self.field:
            cause["field"] = self.field
        return cause


def required(field: str, detail: str = "") -> FieldError:
    return FieldError("Required", field, detail=detail)


def invalid(field: str, value: Any, detail: str = "") -> FieldError:
    return FieldError("Invalid", field, value, detail)


def not_supported(field: str, value: Any, supported: list[Any]) -> FieldError:
    return FieldError("NotSupported", field, value,
                      "supported values: " + ", ".join(format_value(s) for s in supported))


def forbidden(field: str, detail: str) -> FieldError:
    return FieldError("Forbidden", field, detail=detail)


# --- constructors mirroring k8s.io/apimachinery/pkg/api/errors ---------------------------------


def _details(resource: str, name: str | None, **extra: Any) -> dict:
    group, _, kind = "", "", resource
    if "." in resource:
        kind, _, group = resource.partition(".")
    details: dict[str, Any] = {}
    if name is not None:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = kind
    details.update(extra)
    return details


def not_found(resource: str, name: str) -> ApiError:
    """``resource`` is the group-qualified plural, e.g. ``pods`` or ``foos.example.com``."""
    return ApiError(404, "NotFound", f'{resource} "{name}" not found', _details(resource, name))


def already_exists(resource: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists',
                    _details(resource, name))


def conflict(resource: str, name: str, why: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": {why}',
                    _details(resource, name))


STALE_OBJECT = ("the object has been modified; please apply your changes to the latest version "
                "and try again")


def stale(resource: str, name: str) -> ApiError:
    return conflict(resource, name, STALE_OBJECT)


def invalid_object(qualified_kind: str, name: str, errors: list[FieldError]) -> ApiError:
    """``qualified_kind`` is ``Pod`` or ``JupyterKernel.elastic.jupyter.org``."""
    if len(errors) == 1:
        text = str(errors[0])
    else:
        text = "[" + ", ".join(str(e) for e in errors) + "]"
    kind, _, group = qualified_kind.partition(".")
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [e.cause() for e in errors]
    return ApiError(422, "Invalid", f'{qualified_kind} "{name}" is invalid: {text}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden_error(resource: str, name: str, why: str) -> ApiError:
    return ApiError(403, "Forbidden", f'{resource} "{name}" is forbidden: {why}',
                    _details(resource, name))


def forbidden_status(group: str, resource: str, name: str, why: str) -> ApiError:
    """apimachinery's ``NewForbidden``: the message and details name the group-qualified
    resource and the object when known (``pods "x" is forbidden: ...``), and say only
    ``forbidden: ...`` for a request that is not about a resource (a non-resource URL)."""
    qualified = f"{resource}.{group}" if group else resource
    if not group and not resource:
        message = f"forbidden: {why}"
    elif not name:
        message = f"{qualified} is forbidden: {why}"
    else:
        message = f"{qualified} {go_quote(name)} is forbidden: {why}"
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if resource:
        details["kind"] = resource
    return ApiError(403, "Forbidden", message, details)


def go_quote(text: str) -> str:
    """Go's ``%q`` of a string, for the printable text names and paths are made of."""
    return json.dumps(text, ensure_ascii=False)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(accepted)}")


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def unprocessable(message: str) -> ApiError:
    """A 422 without field causes, as the real server sends for failed JSON patch operations."""
    return ApiError(422, "Invalid", message)


def internal_error(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}",
                    {"causes": [{"message": message}]})
