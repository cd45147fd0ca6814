"""The validating admission a client's write passes after authorization and validation.

kube-apiserver runs its admission plugins in a fixed order on every create and update; this is
that chain for the plugins the project depends on, so that the API server needs one call:
OwnerReferencesPermissionEnforcement, PodSecurity (namespace labels), then
ValidatingAdmissionPolicy. A refusal is raised as the plugin's ``ApiError``; warnings go to the
request's ``Warning`` headers.
"""

from __future__ import annotations

from typing import Any

from .admissionpolicy import ValidatingAdmissionPolicies
from .authn import UserInfo
from .ownerrefs import OwnerReferencesPermissionEnforcement
from .podsecurity import PodSecurityAdmission
from .rbac import Listing, Lookup
from .resources import ResourceType
from .writeoptions import WriteOptions

JSON = dict[str, Any]


class ValidatingAdmission:
    """The plugins in kube-apiserver's order, over the store's objects."""

    def __init__(self, owner_references: OwnerReferencesPermissionEnforcement, lookup: Lookup,
                 listing: Listing) -> None:
        self.owner_references = owner_references
        self._lookup = lookup
        self.pod_security = PodSecurityAdmission(self._namespace_labels)
        self.policies = ValidatingAdmissionPolicies(lookup, listing)

    def _namespace_labels(self, name: str) -> dict[str, str]:
        namespace = self._lookup(("", "namespaces"), None, name) if name else None
        return dict(((namespace or {}).get("metadata") or {}).get("labels") or {})

    def validate(self, user: UserInfo, opts: WriteOptions, operation: str, rtype: ResourceType,
                 subresource: str | None, old: JSON | None, new: JSON) -> None:
        """``WriteOptions.admit`` for ``user``'s request once bound to it (functools.partial)."""
        self.owner_references.validate(user, operation, rtype, subresource, old, new)
        self.pod_security.validate(operation, rtype.group, rtype.plural, subresource, new,
                                   opts.warnings)
        self.policies.validate(user, operation, rtype, subresource, old, new, opts.warnings,
                               opts.dry_run)
