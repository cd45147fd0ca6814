"""Built-in kind rules: the defaults and validation of kube-apiserver's registry strategies.

Pods (defaults, validation, which fields an update may change, QoS class), Secrets (stringData,
base64 data, immutability), ConfigMaps (keys, immutability), Namespaces (the ``kubernetes``
finalizer and name label), Services (cluster IPs and port defaults) and events.k8s.io Events, each
worded as the real server words it; the storage kinds' rules are in ``storagerules.py``.
``prune_builtin`` decodes a body as the Go types would, dropping or refusing unknown fields.

Called by the store (``store.py``) on create and update of a built-in kind; CRDs and custom
resources have their own rules (``crdregistry.py``). A built-in kind not named here has only the
metadata rules (``objectmeta.py``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from typing import Any

from . import errors as E
from . import storagerules
from .errors import FieldError
from .objectmeta import DNS_LABEL_RE, LABEL_MSG
from .resources import ResourceType
from .schema import BUILTIN_DECODER, DecodeError
from .writeoptions import WriteOptions

PODS = ("", "pods")
NAMESPACES = ("", "namespaces")
SECRETS = ("", "secrets")
CONFIGMAPS = ("", "configmaps")
SERVICES = ("", "services")
EVENTS_V1 = ("events.k8s.io", "events")

_CONFIG_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_CONFIG_KEY_MSG = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
                   "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation "
                   "is '[-._a-zA-Z0-9]+')")


def prepare_create(rtype: ResourceType, obj: dict[str, Any], errs: list[FieldError],
                   service_ips: Iterator[int]) -> None:
    """Default and validate a new object of a built-in kind; ``service_ips`` numbers the
    ClusterIPs handed out."""
    key = rtype.storage_key
    if key == PODS:
        default_pod(obj)
        validate_pod(obj, errs)
        obj["status"] = {"phase": "Pending", "qosClass": qos_class(obj["spec"])}
    elif key == SECRETS:
        prepare_secret(obj, errs)
    elif key == CONFIGMAPS:
        validate_config_keys(obj, "data", errs)
        validate_config_keys(obj, "binaryData", errs)
    elif key == NAMESPACES:
        spec = obj.setdefault("spec", {})
        spec["finalizers"] = ["kubernetes"]
        obj["status"] = {"phase": "Active"}
        labels = obj["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif key == SERVICES:
        default_service(obj, errs, service_ips)
        obj["status"] = {"loadBalancer": {}}
    elif rtype.key == EVENTS_V1:
        validate_events_v1(obj, errs)
    else:
        storagerules.prepare_create(key, obj, errs)


def prepare_update(rtype: ResourceType, old: dict[str, Any], new: dict[str, Any],
                   errs: list[FieldError], service_ips: Iterator[int]) -> None:
    """Default and validate the new state of a built-in kind's object, and what may change."""
    key = rtype.storage_key
    if key == PODS:
        default_pod(new)
        validate_pod(new, errs)
        if not errs:
            validate_pod_update(old, new, errs)
    elif key == SECRETS:
        prepare_secret(new, errs)
        if old.get("type") != new.get("type"):
            errs.append(E.invalid("type", new.get("type"), "field is immutable"))
        check_immutable_data(old, new, errs)
    elif key == CONFIGMAPS:
        validate_config_keys(new, "data", errs)
        validate_config_keys(new, "binaryData", errs)
        check_immutable_data(old, new, errs)
    elif key == NAMESPACES:
        new["spec"] = old.get("spec", {})
        labels = new["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = old["metadata"]["name"]
    elif key == SERVICES:
        default_service(new, errs, service_ips)
        old_ip = (old.get("spec") or {}).get("clusterIP")
        if old_ip and (new.get("spec") or {}).get("clusterIP") != old_ip:
            errs.append(E.invalid("spec.clusterIP", new["spec"].get("clusterIP"),
                                  "field is immutable"))
    else:
        storagerules.prepare_update(key, old, new, errs)


def prune_builtin(rtype: ResourceType, obj: dict[str, Any], opts: WriteOptions) -> None:
    """Decode like the Go types would: wrong types are a 400, unknown fields are dropped."""
    try:
        if rtype.model:
            pruned = BUILTIN_DECODER.decode(rtype.model, obj)
        else:
            pruned = [f"metadata.{p}" for p in BUILTIN_DECODER.decode(
                "V1ObjectMeta", obj.get("metadata") or {})]
    except DecodeError as exc:
        raise E.bad_request(f'{rtype.kind} in version "{rtype.version}" cannot be handled '
                            f"as a {rtype.kind}: {exc}") from None
    if not pruned:
        return
    if opts.field_validation == "Strict":
        raise E.bad_request(f'{rtype.kind} in version "{rtype.version}" cannot be handled as a '
                            f"{rtype.kind}: strict decoding error: " + ", ".join(
                                f'unknown field "{p}"' for p in pruned))
    if opts.field_validation == "Warn":
        opts.warnings.extend(f'unknown field "{p}"' for p in pruned)


def default_service(obj: dict[str, Any], errs: list[FieldError],
                    service_ips: Iterator[int]) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        errs.append(E.invalid("spec", spec, "must be an object"))
        return
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if not spec.get("clusterIP"):
            n = next(service_ips)
            spec["clusterIP"] = f"10.96.{n // 250 % 250}.{n % 250 + 1}"
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for index, port in enumerate(spec.get("ports") or []):
        if not isinstance(port, dict) or not isinstance(port.get("port"), int):
            errs.append(E.required(f"spec.ports[{index}].port"))
            continue
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port["port"])


def spec_changed(old: dict, new: dict) -> bool:
    skip = ("metadata", "status", "apiVersion", "kind")
    keys = (set(old) | set(new)) - set(skip)
    return any(old.get(k) != new.get(k) for k in keys)


def _default_container(container: dict, index: int, path: str) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    image = container.get("image") or ""
    if "imagePullPolicy" not in container and isinstance(image, str):
        tag = image.rsplit("/", 1)[-1]
        latest = "@" not in image and (":" not in tag or tag.endswith(":latest"))
        container["imagePullPolicy"] = "Always" if latest else "IfNotPresent"
    resources = container.setdefault("resources", {})
    if isinstance(resources, dict) and isinstance(resources.get("limits"), dict):
        requests = resources.setdefault("requests", {})
        if isinstance(requests, dict):
            for res, qty in resources["limits"].items():
                requests.setdefault(res, qty)
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def default_pod(pod: dict) -> None:
    spec = pod.setdefault("spec", {})
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    if spec.get("serviceAccount") and not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = spec["serviceAccount"]
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    for field_name in ("containers", "initContainers"):
        for index, container in enumerate(spec.get(field_name) or []):
            if isinstance(container, dict):
                _default_container(container, index, f"spec.{field_name}[{index}]")


def validate_pod(pod: dict, errs: list[FieldError]) -> None:
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        errs.append(E.required("spec"))
        return
    containers = spec.get("containers")
    if not containers:
        errs.append(E.required("spec.containers"))
    names: set[str] = set()
    for field_name in ("initContainers", "containers"):
        items = spec.get(field_name) or []
        if not isinstance(items, list):
            errs.append(E.invalid(f"spec.{field_name}", items, "must be a list"))
            continue
        for index, container in enumerate(items):
            path = f"spec.{field_name}[{index}]"
            if not isinstance(container, dict):
                errs.append(E.invalid(path, container, "must be an object"))
                continue
            name = container.get("name")
            if not name:
                errs.append(E.required(f"{path}.name"))
            elif not isinstance(name, str) or len(name) > 63 or not DNS_LABEL_RE.match(name):
                errs.append(E.invalid(f"{path}.name", name, LABEL_MSG))
            elif name in names:
                errs.append(FieldError("Duplicate", f"{path}.name", name))
            else:
                names.add(name)
            if not container.get("image"):
                errs.append(E.required(f"{path}.image"))
            env_names: set[str] = set()
            for eindex, env in enumerate(container.get("env") or []):
                if not isinstance(env, dict) or not env.get("name"):
                    errs.append(E.required(f"{path}.env[{eindex}].name"))
                elif not isinstance(env.get("value", ""), str):
                    errs.append(E.invalid(f"{path}.env[{eindex}].value", env.get("value"),
                                          "must be a string"))
                else:
                    env_names.add(env["name"])
            for mindex, mount in enumerate(container.get("volumeMounts") or []):
                if isinstance(mount, dict) and mount.get("subPath"):
                    validate_sub_path(mount["subPath"], f"{path}.volumeMounts[{mindex}].subPath",
                                      errs)
    policy = spec.get("restartPolicy")
    if policy not in ("Always", "OnFailure", "Never"):
        errs.append(E.not_supported("spec.restartPolicy", policy, ["Always", "OnFailure", "Never"]))
    volumes: set[str] = set()
    for index, volume in enumerate(spec.get("volumes") or []):
        if not isinstance(volume, dict) or not volume.get("name"):
            errs.append(E.required(f"spec.volumes[{index}].name"))
        elif volume["name"] in volumes:
            errs.append(FieldError("Duplicate", f"spec.volumes[{index}].name", volume["name"]))
        else:
            volumes.add(volume["name"])
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 0):
        errs.append(E.invalid("spec.terminationGracePeriodSeconds", grace,
                              "must be greater than or equal to 0"))


def validate_sub_path(sub_path: Any, path: str, errs: list[FieldError]) -> None:
    """validateLocalDescendingPath: a subPath stays inside its volume."""
    if not isinstance(sub_path, str):
        errs.append(E.invalid(path, sub_path, "must be a string"))
        return
    if sub_path.startswith("/"):
        errs.append(E.invalid(path, sub_path, "must be a relative path"))
    if ".." in sub_path.replace("\\", "/").split("/"):
        errs.append(E.invalid(path, sub_path, "must not contain '..'"))


_POD_MUTABLE_MSG = ("pod updates may not change fields other than `spec.containers[*].image`,"
                    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                    "`spec.tolerations` (only additions to existing tolerations),"
                    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                    "previously negative)")


def validate_pod_update(old: dict, new: dict, errs: list[FieldError]) -> None:
    def masked(spec: dict) -> dict:
        out = dict(spec)
        for key in ("activeDeadlineSeconds", "tolerations", "schedulingGates", "nodeName",
                    "terminationGracePeriodSeconds"):
            out.pop(key, None)
        for key in ("containers", "initContainers"):
            out[key] = [{k: v for k, v in c.items() if k not in ("image", "resources")}
                        if isinstance(c, dict) else c for c in spec.get(key) or []]
        return out

    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if masked(old_spec) != masked(new_spec):
        errs.append(E.forbidden("spec", _POD_MUTABLE_MSG))
    old_node = old_spec.get("nodeName")
    if old_node and new_spec.get("nodeName") != old_node:
        errs.append(E.forbidden("spec", _POD_MUTABLE_MSG))


def qos_class(spec: dict) -> str:
    containers = [c for c in (spec.get("containers") or []) if isinstance(c, dict)]
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        for res in ("cpu", "memory"):
            if res in requests or res in limits:
                any_set = True
            if res not in limits or str(requests.get(res, limits.get(res))) != str(limits[res]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def validate_config_keys(obj: dict, field_name: str, errs: list[FieldError]) -> None:
    values = obj.get(field_name)
    if values is None:
        return
    if not isinstance(values, dict):
        errs.append(E.invalid(field_name, values, "must be a map of strings"))
        return
    for key, value in values.items():
        if len(key) > 253 or not _CONFIG_KEY_RE.match(key):
            errs.append(E.invalid(f"{field_name}[{key}]", key, _CONFIG_KEY_MSG))
        if not isinstance(value, str):
            errs.append(E.invalid(f"{field_name}[{key}]", value, "must be a string"))


def prepare_secret(obj: dict, errs: list[FieldError]) -> None:
    string_data = obj.pop("stringData", None)
    if string_data:
        if not isinstance(string_data, dict):
            errs.append(E.invalid("stringData", string_data, "must be a map of strings"))
        else:
            data = obj.setdefault("data", {}) or {}
            obj["data"] = data
            for key, value in string_data.items():
                if not isinstance(value, str):
                    errs.append(E.invalid(f"stringData[{key}]", value, "must be a string"))
                    continue
                data[key] = base64.b64encode(value.encode()).decode()
    obj.setdefault("type", "Opaque")
    data = obj.get("data")
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str):
                try:
                    base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise E.bad_request(f"Secret in version \"v1\" cannot be handled as a Secret: "
                                        f"illegal base64 data at input for key {key!r}") from None
    validate_config_keys(obj, "data", errs)


def check_immutable_data(old: dict, new: dict, errs: list[FieldError]) -> None:
    if old.get("immutable"):
        if not new.get("immutable"):
            errs.append(E.forbidden("immutable", "field is immutable when `immutable` is set"))
        for field_name in ("data", "binaryData"):
            if old.get(field_name) != new.get(field_name):
                errs.append(E.forbidden(field_name, "field is immutable when `immutable` is set"))


def validate_events_v1(obj: dict, errs: list[FieldError]) -> None:
    # obj is already in the core form here; names in errors use the events.k8s.io fields.
    if not obj.get("eventTime"):
        errs.append(E.required("eventTime"))
    if not obj.get("reportingComponent"):
        errs.append(E.required("reportingController"))
    if not obj.get("reportingInstance"):
        errs.append(E.required("reportingInstance"))
    if not obj.get("action"):
        errs.append(E.required("action"))
    if obj.get("type") not in ("Normal", "Warning"):
        errs.append(E.not_supported("type", obj.get("type"), ["Normal", "Warning"]))
