"""Each gateway's claim on its kernels: one ``coordination.k8s.io/v1`` Lease it keeps renewing.

Why a Lease per gateway and not a timestamp per kernel: the claim costs one write per renewal
period per gateway, however many kernels it holds. A kernel names its gateway in
``JupyterKernel.spec.gateway``; the cron (``elastic-kernels cull``) looks up that gateway's Lease
and treats the kernel as orphaned once the Lease is missing or expired beyond a grace period
(:func:`elastic_kernels.culling.policy.orphan_message`). A gateway that takes a kernel over
(hydrating it after another replica died) rewrites ``spec.gateway`` to itself with
:func:`adopt`, so its own Lease protects the kernel from then on.

The Lease is named ``elastic-kernels-gateway-<gateway id>`` (see :func:`lease_name`) in the
kernels' namespace; ``holderIdentity`` is the gateway id, ``renewTime`` the last renewal (client
clock: the grace period must cover clock skew between gateway and cron).

Configuration (traitlets)::

    c.GatewayLease.duration = 30          # seconds; renewed every duration / 3
    c.GatewayLease.release_on_stop = False
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from traitlets import Bool, Integer, default
from traitlets.config import LoggingConfigurable

from .culling.policy import LeaseFacts
from .kube import resources as R
from .kube.client import JSON, LEASES, KubeClient, KubeError

log = logging.getLogger(__name__)

LEASE_PREFIX = "elastic-kernels-gateway-"
COMPONENT_GATEWAY = "gateway"
#: Selects the Leases of elastic-kernels gateways (what the cron lists).
LEASE_SELECTOR = f"{R.LABEL_MANAGED_BY}={R.MANAGED_BY},{R.LABEL_COMPONENT}={COMPONENT_GATEWAY}"

_NAME_MAX = 253


def lease_name(gateway_id: str) -> str:
    """The Lease name for a gateway id: readable when the id is a DNS name, unique always.

    Gateway ids default to host names, which may be upper case or too long for an object name;
    those keep their readable part and gain a short hash of the exact id, so two ids never share
    a Lease by accident.
    """
    if not isinstance(gateway_id, str) or not gateway_id:
        raise ValueError("a gateway id is a non-empty string")
    plain = LEASE_PREFIX + gateway_id
    if len(plain) <= _NAME_MAX and R.DNS_SUBDOMAIN_RE.match(plain):
        return plain
    digest = hashlib.sha256(gateway_id.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9]+", "-", gateway_id.lower()).strip("-")
    readable = readable[: _NAME_MAX - len(LEASE_PREFIX) - len(digest) - 1].strip("-")
    return f"{LEASE_PREFIX}{readable}-{digest}" if readable else f"{LEASE_PREFIX}{digest}"


def format_micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (what Lease times are): ``2024-01-01T00:00:00.000000Z``."""
    if moment.tzinfo is None:
        raise ValueError("format_micro_time needs an aware datetime")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_facts(obj: Mapping[str, Any]) -> LeaseFacts:
    """Read a Lease dict; a malformed one reads as "never renewed" rather than failing the cron."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    renew: datetime | None = None
    raw = spec.get("renewTime") or spec.get("acquireTime")
    if isinstance(raw, str):
        try:
            renew = R.parse_timestamp(raw)
        except ValueError:
            renew = None
    duration = spec.get("leaseDurationSeconds")
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
        duration = 0
    holder = spec.get("holderIdentity")
    return LeaseFacts(
        name=str(meta.get("name") or ""),
        holder=holder if isinstance(holder, str) else "",
        renew_time=renew,
        duration=float(duration),
    )


def leases_by_gateway(objects: Any) -> dict[str, LeaseFacts]:
    """Index listed Leases by lease name, for :func:`gateway_lease`."""
    found: dict[str, LeaseFacts] = {}
    for obj in objects:
        facts = lease_facts(obj)
        if facts.name:
            found[facts.name] = facts
    return found


def gateway_lease(leases: Mapping[str, LeaseFacts], gateway_id: str) -> LeaseFacts | None:
    """The Lease of ``gateway_id`` among leases indexed by :func:`leases_by_gateway`."""
    if not gateway_id:
        return None
    return leases.get(lease_name(gateway_id))


class GatewayLease(LoggingConfigurable):
    """Holds and renews this gateway's Lease from an asyncio task: one write per period.

    Renewal failures (API down) are logged and retried sooner; the task never dies of them. If
    the Lease vanished (someone deleted it) the next renewal creates it again.
    """

    duration = Integer(
        30, config=True,
        help="leaseDurationSeconds of the gateway's Lease. It is renewed every duration/3 "
        "seconds; the cull job treats this gateway's kernels as orphaned once the Lease has "
        "been expired longer than CullingDefaults.orphan_grace.",
    )
    release_on_stop = Bool(
        False, config=True,
        help="Delete the Lease when the gateway stops. Its kernels then become orphans for the "
        "cull job as soon as the grace period allows, unless another gateway adopts them. "
        "Keep False for a gateway that restarts under the same id.",
    )

    @default("log")
    def _log_default(self) -> logging.Logger:
        return log

    def __init__(self, client: KubeClient, gateway_id: str, namespace: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.duration < 1:
            raise ValueError(f"GatewayLease.duration must be >= 1 second, not {self.duration}")
        self.client = client
        self.gateway_id = gateway_id
        self.namespace = namespace or client.namespace
        self.name = lease_name(gateway_id)
        self._task: asyncio.Task[None] | None = None
        self._uid = ""
        #: When the Lease was last written successfully (None: never).
        self.renewed_at: datetime | None = None

    @property
    def period(self) -> float:
        return self.duration / 3.0

    @property
    def held(self) -> bool:
        """Whether the last successful renewal is younger than the lease duration."""
        if self.renewed_at is None:
            return False
        age = (datetime.now(timezone.utc) - self.renewed_at).total_seconds()
        return age < self.duration

    def _spec(self, now: datetime, acquired: bool) -> JSON:
        spec: JSON = {
            "holderIdentity": self.gateway_id,
            "leaseDurationSeconds": int(self.duration),
            "renewTime": format_micro_time(now),
        }
        if acquired:
            spec["acquireTime"] = format_micro_time(now)
        return spec

    async def acquire(self) -> JSON:
        """Create the Lease, or take it over from an earlier holder. One write when it is new."""
        now = datetime.now(timezone.utc)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {R.LABEL_MANAGED_BY: R.MANAGED_BY,
                           R.LABEL_COMPONENT: COMPONENT_GATEWAY},
            },
            "spec": {**self._spec(now, True), "leaseTransitions": 0},
        }
        try:
            lease = await self.client.create(LEASES, body, self.namespace)
        except KubeError as e:
            if not e.already_exists:
                raise
            lease = await self._take_over()
        return self._held(lease, now)

    async def _take_over(self) -> JSON:
        """The Lease exists: a previous run of this gateway id, or a holder that changed."""
        for _ in range(3):
            current = await self.client.get(LEASES, self.name, self.namespace)
            spec = current.get("spec") or {}
            now = datetime.now(timezone.utc)
            changed = spec.get("holderIdentity") != self.gateway_id
            patch_spec = self._spec(now, changed)
            if changed:
                patch_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                     "spec": patch_spec}
            try:
                return await self.client.patch(LEASES, self.name, patch, self.namespace)
            except KubeError as e:
                if not (e.conflict or e.not_found):
                    raise
                if e.not_found:
                    return await self.acquire()
        raise KubeError(409, "Conflict", f"Lease {self.name} keeps changing; another gateway "
                        f"may be running with the id {self.gateway_id!r}")

    async def renew(self) -> JSON:
        """One write: move ``renewTime`` to now (re-creating the Lease if it was deleted)."""
        now = datetime.now(timezone.utc)
        try:
            lease = await self.client.patch(LEASES, self.name, {"spec": self._spec(now, False)},
                                            self.namespace)
        except KubeError as e:
            if not e.not_found:
                raise
            self.log.warning("Gateway lease %s was deleted; creating it again", self.name)
            return await self.acquire()
        return self._held(lease, now)

    def _held(self, lease: JSON, now: datetime) -> JSON:
        self._uid = str((lease.get("metadata") or {}).get("uid") or "")
        self.renewed_at = now
        return lease

    async def start(self) -> None:
        """Acquire the Lease now (errors propagate: a gateway should not serve unclaimed), then
        renew it in the background."""
        if self._task is not None:
            return
        await self.acquire()
        self._task = asyncio.ensure_future(self._renew_forever())

    async def _renew_forever(self) -> None:
        delay = self.period
        while True:
            await asyncio.sleep(delay)
            try:
                await self.renew()
                delay = self.period
            except KubeError as e:
                delay = max(0.5, self.period / 4)
                self.log.warning("Could not renew gateway lease %s (retrying in %.1fs): %s",
                                 self.name, delay, e)
            except Exception:  # a bug must not silently end the claim on every kernel
                delay = max(0.5, self.period / 4)
                self.log.exception("Unexpected error renewing gateway lease %s", self.name)

    async def stop(self, release: bool | None = None) -> None:
        """Stop renewing; with ``release`` (default: ``release_on_stop``) delete the Lease too."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if release if release is not None else self.release_on_stop:
            await self.release()

    async def release(self) -> None:
        """Delete the Lease, only if it is still the one this gateway wrote (same uid)."""
        try:
            await self.client.delete(LEASES, self.name, self.namespace,
                                     preconditions={"uid": self._uid} if self._uid else None)
        except KubeError as e:
            if not (e.not_found or e.conflict):
                raise
        self.renewed_at = None


async def adopt(client: KubeClient, kernel: Mapping[str, Any], gateway_id: str) -> JSON:
    """Make ``gateway_id`` the kernel's gateway, if the record is still as read. One write.

    The patch is conditional on the record's resourceVersion: of two gateways adopting at once,
    or a gateway adopting while the cron culls the kernel as an orphan, exactly one wins; the
    other gets a KubeError with status 409 (or 404 when the record is gone) and must not use the
    kernel. Returns the updated record.
    """
    meta = kernel.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("adopt() needs a JupyterKernel record with metadata.name")
    if not isinstance(gateway_id, str) or not gateway_id or len(gateway_id) > 253:
        raise ValueError("a gateway id is a non-empty string of at most 253 characters")
    patch: JSON = {"spec": {"gateway": gateway_id}}
    # The resourceVersion makes the write conditional (409 when the record moved on, which
    # includes being deleted and re-created); the uid only stands in when there is none.
    if meta.get("resourceVersion"):
        patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    elif meta.get("uid"):
        patch["metadata"] = {"uid": meta["uid"]}
    return await client.patch(R.JUPYTERKERNELS, name, patch, meta.get("namespace"))


def is_expired(lease: LeaseFacts, now: datetime, grace: float = 0.0) -> bool:
    """Whether ``lease`` ran out more than ``grace`` seconds before ``now``."""
    expires = lease.expires_at()
    if expires is None:
        return True
    return (now - expires).total_seconds() > grace
