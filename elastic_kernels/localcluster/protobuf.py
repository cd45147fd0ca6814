"""Protobuf request bodies: the few kinds kubectl's typed clients send only as protobuf.

kubectl's typed clients (``kubectl create namespace/configmap/secret/serviceaccount``) always send
protobuf bodies.  The simple kinds they create are decoded here from the wire format with their
field numbers (k8s.io/api generated.proto); anything else gets a clear 415 asking for JSON.

Used by the API server's request handler (``handler.py``) for bodies of type
``application/vnd.kubernetes.protobuf``. Nothing here may be overridden; a kind to decode is added
to ``_PB_MESSAGES`` (its fields) and ``_PB_KINDS``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from . import errors as E
from .errors import ApiError


_PB_MESSAGES: dict[str, dict[int, tuple[str, str]]] = {
    "ObjectMeta": {1: ("name", "str"), 2: ("generateName", "str"), 3: ("namespace", "str"),
                   5: ("uid", "str"), 6: ("resourceVersion", "str"), 7: ("generation", "int"),
                   10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", "map"),
                   12: ("annotations", "map"), 13: ("ownerReferences", "[OwnerReference"),
                   14: ("finalizers", "[str")},
    "OwnerReference": {1: ("kind", "str"), 3: ("name", "str"), 4: ("uid", "str"),
                       5: ("apiVersion", "str"), 6: ("controller", "bool"),
                       7: ("blockOwnerDeletion", "bool")},
    "ObjectReference": {1: ("kind", "str"), 2: ("namespace", "str"), 3: ("name", "str"),
                        4: ("uid", "str"), 5: ("apiVersion", "str"), 6: ("resourceVersion", "str"),
                        7: ("fieldPath", "str")},
    "LocalObjectReference": {1: ("name", "str")},
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 2: ("data", "map"), 3: ("binaryData", "mapbytes"),
                  4: ("immutable", "bool")},
    "Secret": {1: ("metadata", "ObjectMeta"), 2: ("data", "mapbytes"), 3: ("type", "str"),
               4: ("stringData", "map"), 5: ("immutable", "bool")},
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec"),
                  3: ("status", "NamespaceStatus")},
    "NamespaceSpec": {1: ("finalizers", "[str")},
    "NamespaceStatus": {1: ("phase", "str")},
    "ServiceAccount": {1: ("metadata", "ObjectMeta"), 2: ("secrets", "[ObjectReference"),
                       3: ("automountServiceAccountToken", "bool"),
                       4: ("imagePullSecrets", "[LocalObjectReference")},
    # k8s.io/api/authentication/v1 (kubectl create token, kubectl auth whoami); the status a
    # client sends (always, as zero values) is the server's to fill in, so it is skipped.
    "TokenRequest": {1: ("metadata", "ObjectMeta"), 2: ("spec", "TokenRequestSpec"),
                     3: ("status", "skip")},
    "TokenRequestSpec": {1: ("audiences", "[str"), 3: ("boundObjectRef", "BoundObjectReference"),
                         4: ("expirationSeconds", "int")},
    "BoundObjectReference": {1: ("kind", "str"), 2: ("apiVersion", "str"), 3: ("name", "str"),
                             4: ("uid", "str")},
    "SelfSubjectReview": {1: ("metadata", "ObjectMeta"), 2: ("status", "skip")},
    # k8s.io/api/authorization/v1 (kubectl auth can-i, can-i --list)
    "SelfSubjectAccessReview": {1: ("metadata", "ObjectMeta"),
                                2: ("spec", "SelfSubjectAccessReviewSpec"), 3: ("status", "skip")},
    "SelfSubjectAccessReviewSpec": {1: ("resourceAttributes", "ResourceAttributes"),
                                    2: ("nonResourceAttributes", "NonResourceAttributes")},
    "ResourceAttributes": {1: ("namespace", "str"), 2: ("verb", "str"), 3: ("group", "str"),
                           4: ("version", "str"), 5: ("resource", "str"),
                           6: ("subresource", "str"), 7: ("name", "str"),
                           8: ("fieldSelector", "skip"), 9: ("labelSelector", "skip")},
    "NonResourceAttributes": {1: ("path", "str"), 2: ("verb", "str")},
    "SelfSubjectRulesReview": {1: ("metadata", "ObjectMeta"),
                               2: ("spec", "SelfSubjectRulesReviewSpec"), 3: ("status", "skip")},
    "SelfSubjectRulesReviewSpec": {1: ("namespace", "str")},
}
_PB_KINDS = {("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Namespace"), ("v1", "ServiceAccount"),
             ("authentication.k8s.io/v1", "TokenRequest"),
             ("authentication.k8s.io/v1", "SelfSubjectReview"),
             ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
             ("authorization.k8s.io/v1", "SelfSubjectRulesReview")}


#: A field's value on the wire: a varint, or the bytes of a length-delimited or fixed-size field.
PBValue = int | bytes


def _as_bytes(value: PBValue) -> bytes:
    if isinstance(value, int):
        raise ValueError("a varint where a string or message belongs")
    return value


def _as_int(value: PBValue) -> int:
    if isinstance(value, bytes):
        raise ValueError("bytes where a varint belongs")
    return value


def _pb_fields(buf: bytes) -> Iterator[tuple[int, PBValue]]:
    pos = 0
    while pos < len(buf):
        key, pos = _pb_varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: PBValue
        if wire == 0:
            value, pos = _pb_varint(buf, pos)
        elif wire == 2:
            size, pos = _pb_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
            if pos > len(buf):
                raise ValueError("truncated field")
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def _pb_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _pb_message(buf: bytes, name: str) -> dict[str, Any]:
    schema = _PB_MESSAGES[name]
    out: dict[str, Any] = {}
    for number, value in _pb_fields(buf):
        if number not in schema:
            if isinstance(value, bytes) and not value:
                continue  # an empty optional message or string the client always sends
            if isinstance(value, int) and value == 0:
                continue
            raise E.bad_request(f"protobuf field {number} of {name} is not understood by this "
                                "server; send the object as JSON")
        field, kind = schema[number]
        if kind == "skip":
            continue
        if kind == "str":
            if value:
                out[field] = _as_bytes(value).decode()
        elif kind == "int":
            if value:
                out[field] = _as_int(value)
        elif kind == "bool":
            out[field] = bool(_as_int(value))
        elif kind in ("map", "mapbytes"):
            entry = dict(_pb_fields(_as_bytes(value)))
            if not entry:
                continue
            key = _as_bytes(entry.get(1, b"")).decode()
            raw_value = _as_bytes(entry.get(2, b""))
            out.setdefault(field, {})[key] = (base64.b64encode(raw_value).decode()
                                              if kind == "mapbytes" else raw_value.decode())
        elif kind.startswith("["):
            item = kind[1:]
            data = _as_bytes(value)
            out.setdefault(field, []).append(data.decode() if item == "str"
                                             else _pb_message(data, item))
        else:
            nested = _pb_message(_as_bytes(value), kind)
            if nested:
                out[field] = nested
    return out


def decode_protobuf(raw: bytes) -> dict[str, Any]:
    """A Kubernetes protobuf envelope (``k8s\\0`` + runtime.Unknown) as a JSON-shaped object."""
    if not raw.startswith(b"k8s\x00"):
        raise E.bad_request("protobuf body without the k8s envelope")
    try:
        envelope = dict(_pb_fields(raw[4:]))
        type_meta = dict(_pb_fields(_as_bytes(envelope.get(1, b""))))
        api_version = _as_bytes(type_meta.get(1, b"")).decode()
        kind = _as_bytes(type_meta.get(2, b"")).decode()
        if (api_version, kind) not in _PB_KINDS:
            raise ApiError(415, "UnsupportedMediaType",
                           "this server decodes protobuf only for ConfigMap, Secret, Namespace, "
                           "ServiceAccount, TokenRequest and the self-reviews, not "
                           f"{api_version}/{kind}; send the object as JSON (for example with "
                           "`kubectl create -f`)")
        obj = _pb_message(_as_bytes(envelope.get(2, b"")), kind)
    except (ValueError, UnicodeDecodeError, KeyError) as exc:
        raise E.bad_request(f"malformed protobuf body: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}
