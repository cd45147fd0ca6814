"""CustomResourceDefinitions: their own rules, and the custom resource types they make served.

A CRD is defaulted and validated like kube-apiserver's apiextensions registry does, gets the
``NamesAccepted`` and ``Established`` conditions (``NameConflict`` when its names are taken), and
once established adds a custom resource type to the ``Registry`` with a structural schema per
served version. Custom objects are then pruned, defaulted and validated against the schema of
their version (``prepare_custom``; the status subresource with ``status_errors``).

The store (``store.py``) owns one ``CRDRegistry`` and calls it on every write of a CRD or a custom
object; it keeps the storage of each registered type itself (``register`` and ``unregister`` say
which type to add or drop). Nothing here may be overridden.
"""

from __future__ import annotations

from typing import Any

from . import errors as E
from .errors import FieldError
from .objectmeta import deep_copy, now_rfc3339
from .resources import Registry, ResourceKey, ResourceType, custom_resource_type
from .schema import StructuralSchema, default_crd, validate_crd
from .writeoptions import WriteOptions

CRDS: ResourceKey = ("apiextensions.k8s.io", "customresourcedefinitions")


class CRDRegistry:
    """The served custom resource types of ``registry`` and their schemas, by version."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._schemas: dict[ResourceKey, dict[str, StructuralSchema]] = {}

    # -- the CRDs themselves -----------------------------------------------------------------------

    def prepare(self, obj: dict[str, Any], old: dict[str, Any] | None,
                errs: list[FieldError]) -> None:
        """Default and validate a CRD being created (``old`` None) or updated; set its status."""
        default_crd(obj)
        errs.extend(validate_crd(obj))
        if errs:
            return
        spec = obj["spec"]
        if old is not None:
            old_spec = old["spec"]
            if spec.get("group") != old_spec.get("group"):
                errs.append(E.invalid("spec.group", spec.get("group"), "field is immutable"))
            if spec["names"].get("plural") != old_spec["names"].get("plural"):
                errs.append(E.invalid("spec.names.plural", spec["names"].get("plural"),
                                      "field is immutable"))
            if spec.get("scope") != old_spec.get("scope"):
                errs.append(E.invalid("spec.scope", spec.get("scope"), "field is immutable"))
        conflict = self.name_conflict(obj)
        accepted = dict(spec["names"])
        storage = next(v["name"] for v in spec["versions"] if v.get("storage"))
        stored = list((old or {}).get("status", {}).get("storedVersions") or [])
        if storage not in stored:
            stored.append(storage)
        stamp = now_rfc3339()
        obj["status"] = {
            "acceptedNames": accepted if not conflict else {"kind": "", "plural": ""},
            "conditions": [
                {"type": "NamesAccepted", "status": "False" if conflict else "True",
                 "reason": "NameConflict" if conflict else "NoConflicts",
                 "message": conflict or "no conflicts found", "lastTransitionTime": stamp},
                {"type": "Established", "status": "False" if conflict else "True",
                 "reason": "NotAccepted" if conflict else "InitialNamesAccepted",
                 "message": "not all names are accepted" if conflict else
                 "the initial names have been accepted", "lastTransitionTime": stamp},
            ],
            "storedVersions": stored,
        }

    def name_conflict(self, crd: dict[str, Any]) -> str:
        """Why another type of the group already holds one of ``crd``'s names ("" if none)."""
        spec = crd["spec"]
        group, names = spec["group"], spec["names"]
        for rtype in self.registry.all():
            if rtype.group != group or rtype.crd_name == crd["metadata"]["name"]:
                continue
            for attr in ("plural", "singular", "kind"):
                mine = names.get(attr)
                if mine and mine in (rtype.plural, rtype.singular, rtype.kind) and attr != "kind":
                    return f'"{mine}" is already in use'
                if attr == "kind" and mine == rtype.kind:
                    return f'"{mine}" is already in use'
        return ""

    def register(self, crd: dict[str, Any]) -> ResourceKey | None:
        """Serve the type a stored, established CRD defines; its key, for the store to give it
        storage (None when the CRD is not established or serves no version)."""
        if any(c["type"] == "Established" and c["status"] != "True"
               for c in crd.get("status", {}).get("conditions", [])):
            return None
        rtype = custom_resource_type(crd)
        versions = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served", True)}
        schemas = {}
        for name, version in versions.items():
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            schemas[name] = StructuralSchema(schema)
        if not versions:
            self.registry.remove(rtype.key)
            return None
        self.registry.add(rtype, versions)
        self._schemas[rtype.key] = schemas
        return rtype.key

    def unregister(self, crd: dict[str, Any]) -> ResourceKey | None:
        """Stop serving the type of a removed CRD; its key, for the store to drop its storage
        (None when the type is not this CRD's)."""
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        rtype = self.registry.get(key)
        if rtype is None or rtype.crd_name != crd["metadata"]["name"]:
            return None
        self.registry.remove(key)
        self._schemas.pop(key, None)
        return key

    # -- custom objects ----------------------------------------------------------------------------

    def _schema(self, rtype: ResourceType, version: str) -> StructuralSchema | None:
        schemas = self._schemas.get(rtype.key) or {}
        return schemas.get(version) or schemas.get(rtype.version)

    def prepare_custom(self, rtype: ResourceType, obj: dict[str, Any], opts: WriteOptions,
                       errs: list[FieldError], old: dict[str, Any] | None = None) -> None:
        """Prune, default and validate a custom object against its version's schema (``old``,
        the stored object on update, for CEL transition rules)."""
        api_version = obj.get("apiVersion") or rtype.api_version
        version = api_version.rpartition("/")[2]
        schemas = self._schemas.get(rtype.key) or {}
        schema = self._schema(rtype, version)
        if version not in schemas:
            version = rtype.version
        obj["apiVersion"] = f"{rtype.group}/{version}"
        if schema is None:
            return
        pruned = schema.prune(obj)
        if pruned:
            if opts.field_validation == "Strict":
                raise E.bad_request("strict decoding error: " + ", ".join(
                    f'unknown field "{p}"' for p in pruned))
            if opts.field_validation == "Warn":
                opts.warnings.extend(f'unknown field "{p}"' for p in pruned)
        schema.default(obj)
        errs.extend(schema.validate(obj, old))

    def status_errors(self, rtype: ResourceType, obj: dict[str, Any]) -> list[FieldError]:
        """Prune and default the status of a custom object written through ``/status``; what is
        wrong with it."""
        version = (obj.get("apiVersion") or "").rpartition("/")[2]
        schema = self._schema(rtype, version)
        if schema is None:
            return []
        work = deep_copy(obj)
        schema.prune(work)
        schema.default(work)
        if "status" in work:
            obj["status"] = work["status"]
        return [e for e in schema.validate(work) if e.field.startswith("status")]
