"""Whose kernel is it: every kernel belongs to the user who started it.

A user lists, reads, connects to, interrupts, restarts and shuts down only their own kernels;
admins (see :class:`~elastic_kernels.gateway.web.auth.ElasticUser`) see and act on all. For anyone
else a kernel answers exactly as a kernel id that does not exist (404, same message), so the API
is no oracle for which ids exist. A kernel whose owner cannot be told is an admin's business only.

The owner comes from the kernel manager, which knows it from the authenticated user it was given
at start: ``kernel_owner(kernel_id)`` if it has one, else the ``user`` of its
``elastic_model(kernel_id)`` (the provisioner's user, or ``spec.user`` of the kernel's
JupyterKernel record, so a kernel another replica started has its owner too). For kernel
managers that know neither (jupyter_server's local ones), the gateway remembers who started
each kernel.

Each user may have at most ``max_kernels_per_user`` kernels, counting the kernels being started
and, with the Kubernetes kernel manager, every JupyterKernel record of that user (so the limit
holds across gateway replicas). Over the limit, a start gets 403 saying the limit and the count.

Configure as ``c.KernelOwnership.max_kernels_per_user = 10``.
"""

from __future__ import annotations

import typing as t
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from jupyter_server.auth.identity import User
from traitlets import Bool, Int
from traitlets.config import LoggingConfigurable

from elastic_kernels.gateway.web.errors import GatewayHTTPError

__all__ = ["KernelOwnership", "is_admin", "ownership"]

_SETTINGS_KEY = "elastic_kernel_ownership"
_REMEMBERED = 10000


def is_admin(user: User | None) -> bool:
    """Only a user the identity provider marked as an admin is one."""
    return getattr(user, "admin", False) is True


def no_such_kernel(kernel_id: str) -> GatewayHTTPError:
    """The one answer for a kernel that does not exist *or* is not the caller's."""
    return GatewayHTTPError(404, f"Kernel does not exist: {kernel_id}", "NoSuchKernel")


class KernelOwnership(LoggingConfigurable):
    """Ownership checks and per-user kernel limits (see the module docstring)."""

    max_kernels_per_user = Int(
        10, config=True,
        help="Most kernels one user may have at once, including kernels being started "
        "(0: no limit).",
    )
    admins_exempt = Bool(
        True, config=True, help="Admins are not held to max_kernels_per_user."
    )

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._starting: dict[str, set[str]] = {}

    # -- who owns what ------------------------------------------------------------------------

    def remember(self, kernel_id: str, owner: str) -> None:
        self._owners[kernel_id] = owner
        self._owners.move_to_end(kernel_id)
        while len(self._owners) > _REMEMBERED:
            self._owners.popitem(last=False)

    def owner_of(self, km: t.Any, kernel_id: str) -> str | None:
        """The kernel's owner, or None when nobody can tell."""
        owner: t.Any = None
        lookup = getattr(km, "kernel_owner", None)
        if lookup is not None:
            owner = lookup(kernel_id)
        if not owner:
            model_of = getattr(km, "elastic_model", None)
            if model_of is not None:
                try:
                    model = model_of(kernel_id)
                except Exception:  # noqa: BLE001 - no model, no owner from it
                    model = None
                if isinstance(model, dict):
                    owner = model.get("user")
        if owner and isinstance(owner, str):
            self.remember(kernel_id, owner)
            return owner
        return self._owners.get(kernel_id)

    def may_use(self, user: User | None, km: t.Any, kernel_id: str) -> bool:
        if user is None:
            return False
        if is_admin(user):
            return True
        return self.owner_of(km, kernel_id) == user.username

    def check(self, user: User | None, km: t.Any, kernel_id: str) -> None:
        """404, as for a kernel that does not exist, unless ``user`` may use the kernel."""
        if not self.may_use(user, km, kernel_id):
            raise no_such_kernel(kernel_id)

    def visible_ids(self, user: User | None, km: t.Any) -> list[str]:
        ids = list(km.list_kernel_ids())
        if is_admin(user):
            return ids
        return [k for k in ids if user is not None and self.owner_of(km, k) == user.username]

    def forget(self, kernel_id: str) -> None:
        self._owners.pop(kernel_id, None)

    def status_for(self, user: User | None, status: dict[str, t.Any]) -> dict[str, t.Any]:
        """``/api/elastic/status`` as ``user`` may see it: others' queued kernels are anonymous.

        The GPU queue shows everyone where they stand; only admins see whose the other
        entries are and their kernel ids, and which kernel was reclaimed for whom (even in the
        user's own entry: the reclaimed kernel was someone else's).
        """
        if is_admin(user):
            return status
        me = user.username if user is not None else None
        result = dict(status)
        for key, value in status.items():
            if isinstance(value, list) and all(isinstance(v, dict) for v in value):
                result[key] = [
                    {k: x for k, x in v.items()
                     if k not in _ADMIN_ONLY and (v.get("user", me) == me or k not in _OWNER_ONLY)}
                    for v in value]
        return result

    # -- limits -------------------------------------------------------------------------------

    def kernels_of(self, username: str, km: t.Any) -> set[str]:
        """Ids of the user's kernels: held here, being started here, or recorded in the cluster."""
        ids = {k for k in km.list_kernel_ids() if self.owner_of(km, k) == username}
        ids.update(self._starting.get(username, ()))
        records = getattr(km, "_kernel_records", None)
        if records is not None:
            for record in records.items():
                spec = record.get("spec") or {}
                meta = record.get("metadata") or {}
                if spec.get("user") == username and not meta.get("deletionTimestamp") \
                        and spec.get("kernelId"):
                    ids.add(str(spec["kernelId"]))
        return ids

    @contextmanager
    def starting(self, user: User, km: t.Any, kernel_id: str) -> Iterator[None]:
        """Hold a place for a kernel being started; 403 if it would pass the user's limit.

        The check and the reservation happen without yielding to the event loop, so concurrent
        starts of one user cannot all slip under the limit.
        """
        limit = self.max_kernels_per_user
        if limit > 0 and not (self.admins_exempt and is_admin(user)):
            count = len(self.kernels_of(user.username, km))
            if count >= limit:
                raise GatewayHTTPError(
                    403,
                    f"Kernel limit reached: user {user.username!r} has {count} kernel"
                    f"{'' if count == 1 else 's'} and may have at most {limit}. Shut one down "
                    "first.",
                    "KernelLimitExceeded",
                )
        starting = self._starting.setdefault(user.username, set())
        starting.add(kernel_id)
        try:
            yield
        finally:
            starting.discard(kernel_id)
            if not starting:
                self._starting.pop(user.username, None)


#: Keys of status list entries only admins see, and those only the entry's owner sees besides.
_ADMIN_ONLY = frozenset({"reclaimed_kernel"})
_OWNER_ONLY = frozenset({"user", "kernel_id"})


def ownership(handler: t.Any) -> KernelOwnership:
    """The gateway's one KernelOwnership, configured from the server app's config."""
    settings = handler.settings
    policy = settings.get(_SETTINGS_KEY)
    if policy is None:
        policy = KernelOwnership(parent=settings.get("serverapp"))
        settings[_SETTINGS_KEY] = policy
    return t.cast(KernelOwnership, policy)
