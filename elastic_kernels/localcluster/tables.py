"""Server-side tables: what ``kubectl get`` prints, computed by the server as kube-apiserver does.

``table_for(rtype)`` gives the column definitions and a row function of a kind: the built-in
kinds' columns as the real server prints them, a CRD's ``additionalPrinterColumns`` (evaluated
with the JSONPath subset they use, ``jsonpath_values``) for custom resources. Ages are
kubectl's ``HumanDuration``. Used by the API server's request handler (``handler.py``) for
``Accept: application/json;as=Table``. Nothing here may be overridden.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from .claims import access_modes_text, claim_class, is_default_class, volume_class
from .resources import ResourceType

_NAME_COL = {"name": "Name", "type": "string", "format": "name", "priority": 0,
             "description": "Name must be unique within a namespace. Is required when creating "
                            "resources, although some resources may allow a client to request the "
                            "generation of an appropriate name automatically."}
_AGE_COL = {"name": "Age", "type": "string", "format": "", "priority": 0,
            "description": "CreationTimestamp is a timestamp representing the server time when "
                           "this object was created."}


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration (k8s.io/apimachinery/pkg/util/duration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(obj: dict, now: datetime) -> str:
    created = _parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    if created is None:
        return "<unknown>"
    return human_duration((now - created).total_seconds())


_JSONPATH_TOKEN = re.compile(
    r"\.(?P<field>(?:[A-Za-z0-9_\-$/]|\\\.)+)|\[(?P<index>-?\d+|\*)\]|\[\?\(@\.(?P<fkey>[A-Za-z0-9_.\-]+)"
    r"\s*==\s*(?P<fval>\"[^\"]*\"|'[^']*'|[^)\s]+)\)\]|\[['\"](?P<quoted>[^'\"]+)['\"]\]")


def jsonpath_values(obj: Any, path: str) -> list[Any]:
    """Evaluate the simple JSONPath subset printer columns use (``.a.b``, ``[0]``, ``[*]``,
    ``[?(@.type=="Ready")]``, ``['x.y']``); missing keys give no values."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    values = [obj]
    pos = 0
    while pos < len(path):
        match = _JSONPATH_TOKEN.match(path, pos)
        if not match:
            return []
        pos = match.end()
        nxt: list[Any] = []
        for value in values:
            name = match.group("quoted") or (match.group("field") or "").replace("\\.", ".") \
                or None
            if name is not None:
                if isinstance(value, dict) and name in value:
                    nxt.append(value[name])
            elif match.group("index") is not None:
                if isinstance(value, list):
                    if match.group("index") == "*":
                        nxt.extend(value)
                    else:
                        index = int(match.group("index"))
                        if -len(value) <= index < len(value):
                            nxt.append(value[index])
                elif isinstance(value, dict) and match.group("index") == "*":
                    nxt.extend(value.values())
            else:
                want = match.group("fval").strip("\"'")
                if isinstance(value, list):
                    for item in value:
                        got = jsonpath_values(item, "." + match.group("fkey"))
                        if not got:
                            continue
                        shown = got[0]
                        text = ("true" if shown else "false") if isinstance(shown, bool) else str(
                            shown)
                        if text == want:
                            nxt.append(item)
        values = nxt
    return values


def _cell(values: list[Any], col_type: str, now: datetime) -> Any:
    if not values:
        return None
    value = values[0] if len(values) == 1 else values
    if col_type == "date":
        moment = _parse_time(value) if isinstance(value, str) else None
        return human_duration((now - moment).total_seconds()) if moment else value
    if isinstance(value, (dict, list)):
        if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            return ",".join(str(v) for v in value)
        return json.dumps(value, separators=(",", ":"))
    if col_type == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _pod_row(pod: dict, now: datetime) -> list[Any]:
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    total = len(spec.get("containers") or [])
    ready = 0
    restarts = 0
    reason = status.get("reason") or status.get("phase") or "Unknown"
    for cs in reversed(status.get("containerStatuses") or []):
        restarts += int(cs.get("restartCount") or 0)
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
        elif "terminated" in state:
            term = state["terminated"]
            reason = (f"Signal:{term['signal']}" if term.get("signal")
                      else f"ExitCode:{term.get('exitCode', 0)}")
        elif "running" in state and cs.get("ready"):
            ready += 1
    if pod.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    return [pod["metadata"]["name"], f"{ready}/{total}", reason, restarts, _age(pod, now),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", "<none>"]


def _column(name: str, col_type: str = "string", priority: int = 0, description: str = "",
            fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": col_type, "format": fmt, "description": description,
            "priority": priority}


def _builtin_table(rtype: ResourceType) -> tuple[list[dict], Callable[[dict, datetime], list]]:
    key = rtype.storage_key
    if key == ("", "pods"):
        return [_NAME_COL, _column("Ready", description="The aggregate readiness state of this "
                                                        "pod for accepting traffic."),
                _column("Status", description="The aggregate status of the containers in this "
                                              "pod."),
                _column("Restarts", "string", description="The number of times the containers "
                                                          "in this pod have been restarted."),
                _AGE_COL, _column("IP", priority=1, description="The IP address of the pod."),
                _column("Node", priority=1, description="The name of the node."),
                _column("Nominated Node", priority=1, description="The nominated node."),
                _column("Readiness Gates", priority=1,
                        description="The readiness gates.")], _pod_row
    if key == ("", "namespaces"):
        return [_NAME_COL, _column("Status"), _AGE_COL], lambda o, now: [
            o["metadata"]["name"], (o.get("status") or {}).get("phase", ""), _age(o, now)]
    if key == ("", "secrets"):
        return [_NAME_COL, _column("Type"), _column("Data", "string"), _AGE_COL], lambda o, now: [
            o["metadata"]["name"], o.get("type", ""), len(o.get("data") or {}), _age(o, now)]
    if key == ("", "configmaps"):
        return [_NAME_COL, _column("Data", "string"), _AGE_COL], lambda o, now: [
            o["metadata"]["name"], len(o.get("data") or {}) + len(o.get("binaryData") or {}),
            _age(o, now)]
    if key == ("", "serviceaccounts"):
        return [_NAME_COL, _column("Secrets", "string"), _AGE_COL], lambda o, now: [
            o["metadata"]["name"], len(o.get("secrets") or []), _age(o, now)]
    if key == ("", "services"):
        def service_row(o: dict, now: datetime) -> list:
            spec = o.get("spec") or {}
            ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}"
                             for p in spec.get("ports") or []) or "<none>"
            return [o["metadata"]["name"], spec.get("type", ""), spec.get("clusterIP", "<none>"),
                    "<none>", ports, _age(o, now)]
        return [_NAME_COL, _column("Type"), _column("Cluster-IP"), _column("External-IP"),
                _column("Port(s)"), _AGE_COL], service_row
    if key == ("", "nodes"):
        def node_row(o: dict, now: datetime) -> list:
            conds = {c.get("type"): c.get("status") for c in
                     (o.get("status") or {}).get("conditions") or []}
            state = "Ready" if conds.get("Ready") == "True" else (
                "NotReady" if "Ready" in conds else "Unknown")
            if (o.get("spec") or {}).get("unschedulable"):
                state += ",SchedulingDisabled"
            version = ((o.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
            return [o["metadata"]["name"], state, "<none>", _age(o, now), version]
        return [_NAME_COL, _column("Status"), _column("Roles"), _AGE_COL, _column("Version")], \
            node_row
    if key == ("", "events"):
        def event_row(o: dict, now: datetime) -> list:
            involved = o.get("involvedObject") or o.get("regarding") or {}
            last = _parse_time(o.get("lastTimestamp") or o.get("eventTime")
                               or o.get("metadata", {}).get("creationTimestamp"))
            seen = human_duration((now - last).total_seconds()) if last else "<unknown>"
            return [seen, o.get("type", ""), o.get("reason", ""),
                    f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
                    o.get("message") or o.get("note") or ""]
        return [_column("Last Seen"), _column("Type"), _column("Reason"), _column("Object"),
                _column("Message")], event_row
    storage = _storage_table(key)
    if storage is not None:
        return storage
    if key == ("coordination.k8s.io", "leases"):
        return [_NAME_COL, _column("Holder"), _AGE_COL], lambda o, now: [
            o["metadata"]["name"], (o.get("spec") or {}).get("holderIdentity", ""), _age(o, now)]
    if key == ("apiextensions.k8s.io", "customresourcedefinitions"):
        return [_NAME_COL, _column("Created At", "date")], lambda o, now: [
            o["metadata"]["name"], o["metadata"].get("creationTimestamp")]
    return [_NAME_COL, _AGE_COL], lambda o, now: [o["metadata"]["name"], _age(o, now)]


def _pvc_row(o: dict, now: datetime) -> list:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    phase = "Terminating" if o["metadata"].get("deletionTimestamp") else status.get("phase", "")
    capacity = modes = ""
    if spec.get("volumeName"):  # a claim shows what it got, once it has a volume
        capacity = str((status.get("capacity") or {}).get("storage") or "")
        modes = access_modes_text(status.get("accessModes"))
    return [o["metadata"]["name"], phase, spec.get("volumeName") or "", capacity, modes,
            claim_class(o), spec.get("volumeAttributesClassName") or "<unset>", _age(o, now),
            spec.get("volumeMode") or "<unset>"]


def _pv_row(o: dict, now: datetime) -> list:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    ref = spec.get("claimRef") or {}
    claim = f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref else ""
    phase = "Terminating" if o["metadata"].get("deletionTimestamp") else status.get("phase", "")
    return [o["metadata"]["name"], str((spec.get("capacity") or {}).get("storage") or "0"),
            access_modes_text(spec.get("accessModes")),
            spec.get("persistentVolumeReclaimPolicy", ""), phase, claim, volume_class(o),
            spec.get("volumeAttributesClassName") or "<unset>", status.get("reason") or "",
            _age(o, now), spec.get("volumeMode") or "<unset>"]


def _storage_class_row(o: dict, now: datetime) -> list:
    name = o["metadata"]["name"] + (" (default)" if is_default_class(o) else "")
    return [name, o.get("provisioner", ""), o.get("reclaimPolicy") or "Delete",
            o.get("volumeBindingMode") or "Immediate", bool(o.get("allowVolumeExpansion")),
            _age(o, now)]


def _storage_table(key: tuple[str, str]
                   ) -> tuple[list[dict], Callable[[dict, datetime], list]] | None:
    """The columns of kube's printers.go for claims, volumes and classes."""
    if key == ("", "persistentvolumeclaims"):
        return [_NAME_COL, _column("Status"), _column("Volume"), _column("Capacity"),
                _column("Access Modes"), _column("StorageClass"),
                _column("VolumeAttributesClass"), _AGE_COL,
                _column("VolumeMode", priority=1)], _pvc_row
    if key == ("", "persistentvolumes"):
        return [_NAME_COL, _column("Capacity"), _column("Access Modes"),
                _column("Reclaim Policy"), _column("Status"), _column("Claim"),
                _column("StorageClass"), _column("VolumeAttributesClass"), _column("Reason"),
                _AGE_COL, _column("VolumeMode", priority=1)], _pv_row
    if key == ("storage.k8s.io", "storageclasses"):
        return [_NAME_COL, _column("Provisioner"), _column("ReclaimPolicy"),
                _column("VolumeBindingMode"), _column("AllowVolumeExpansion"),
                _AGE_COL], _storage_class_row
    return None


def table_for(rtype: ResourceType) -> tuple[list[dict], Callable[[dict, datetime], list]]:
    """Column definitions and a row function for ``rtype`` (CRD printer columns if custom)."""
    if not rtype.is_custom:
        return _builtin_table(rtype)
    columns = [c for c in rtype.printer_columns]
    if not columns:
        return [_NAME_COL, _AGE_COL], lambda o, now: [o["metadata"]["name"], _age(o, now)]
    definitions = [_NAME_COL] + [
        {"name": c.name, "type": c.type if c.type != "date" else "date", "format": c.format,
         "description": c.description, "priority": c.priority} for c in columns]

    def row(obj: dict, now: datetime) -> list:
        return [obj["metadata"]["name"]] + [_cell(jsonpath_values(obj, c.json_path), c.type, now)
                                            for c in columns]
    return definitions, row


def partial_metadata(obj: dict, api_version: str = "meta.k8s.io/v1") -> dict:
    return {"kind": "PartialObjectMetadata", "apiVersion": api_version,
            "metadata": obj.get("metadata", {})}


def build_table(rtype: ResourceType, objects: list[dict], *, version: str, include_object: str,
                rv: str, include_columns: bool = True) -> dict[str, Any]:
    """A ``meta.k8s.io/{version}`` Table of ``objects`` (external form); each row carries the
    object as ``include_object`` says (``Object``, ``PartialObjectMetadata`` or ``None``)."""
    columns, row = table_for(rtype)
    now = datetime.now(timezone.utc)
    rows = []
    for obj in objects:
        entry: dict[str, Any] = {"cells": row(obj, now)}
        if include_object == "Object":
            entry["object"] = obj
        elif include_object != "None":
            entry["object"] = partial_metadata(obj, f"meta.k8s.io/{version}")
        rows.append(entry)
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}",
            "metadata": {"resourceVersion": rv},
            "columnDefinitions": columns if include_columns else [], "rows": rows}
