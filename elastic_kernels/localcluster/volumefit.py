"""The scheduler's volume plugins: may this pod be placed yet, and on which nodes, given its claims.

kube-scheduler's VolumeBinding and VolumeRestrictions plugins, for ``persistentVolumeClaim``
volumes, worded as they word it:

* before any node is tried (PreFilter): a missing claim (``persistentvolumeclaim "x" not
  found``), a claim being deleted, or a claim of an ``Immediate`` class not bound yet (``pod has
  unbound immediate PersistentVolumeClaims``) keeps the pod Pending; a claim of a
  ``WaitForFirstConsumer`` class not bound yet makes it wait silently (the PV controller
  provisions it now that a pod uses it, and the pod is retried when it binds);
* per node (Filter): a bound volume's ``nodeAffinity`` must match the node (``node(s) had volume
  node affinity conflict``); a ``ReadWriteOncePod`` claim may serve one pod at a time (``node
  has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode``).

One rule is this cluster's own: a ``ReadWriteOnce`` claim (without ``ReadWriteMany`` or
``ReadOnlyMany``) keeps every pod using it on one node, so a second pod waits for the node of
the first (``RWO_ELSEWHERE``). A real cluster enforces this later, when the attach/detach
controller refuses a second attachment (``Multi-Attach error``) and the pod hangs in
ContainerCreating; here every node shares one disk, so only the scheduler can say no.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable, Mapping

from .claims import ROX, RWO, RWOP, RWX, claim_class, is_bound, pod_claims
from .fit import is_terminal, term_matches
from .objectmeta import meta_of

JSON = dict[str, Any]

#: The pod must wait without being reported unschedulable (a claim is being provisioned).
WAIT = "wait"
REASON_NODE_AFFINITY = "node(s) had volume node affinity conflict"
REASON_RWOP = ("node has pod using PersistentVolumeClaim with the same name and "
               "ReadWriteOncePod access mode")
REASON_RWO_ELSEWHERE = ("node(s) did not have the pods already using a ReadWriteOnce "
                        "PersistentVolumeClaim of this pod")
REASON_PV_MISSING = ("node(s) unavailable due to one or more pvc(s) bound to non-existent "
                     "pv(s)")
UNBOUND_IMMEDIATE = "pod has unbound immediate PersistentVolumeClaims"


@dataclass
class StorageView:
    """What the scheduler knows of claims, volumes and classes (from its informers)."""

    claims: dict[tuple[str, str], JSON] = field(default_factory=dict)
    volumes: dict[str, JSON] = field(default_factory=dict)
    classes: dict[str, JSON] = field(default_factory=dict)

    def claim(self, namespace: str, name: str) -> JSON | None:
        return self.claims.get((namespace, name))


def sharing(claim: Mapping[str, Any]) -> str:
    """How a claim may be shared: ``RWOP`` (one pod), ``RWO`` (one node) or ``""`` (any)."""
    modes = set((claim.get("status") or {}).get("accessModes")
                or (claim.get("spec") or {}).get("accessModes") or ())
    if RWOP in modes:
        return RWOP
    if modes & {RWX, ROX}:
        return ""
    return RWO if RWO in modes else ""


class ClaimUsage:
    """Which nodes' pods use each claim: the bound, unfinished pods (kept up to date within a
    scheduling pass as pods are bound)."""

    def __init__(self, pods: Iterable[Mapping[str, Any]]) -> None:
        self._users: dict[tuple[str, str], dict[str, str]] = {}  # claim -> pod uid -> node
        for pod in pods:
            self.add(pod)

    def add(self, pod: Mapping[str, Any], node: str | None = None) -> None:
        node = node or (pod.get("spec") or {}).get("nodeName")
        if not node or is_terminal(pod):
            return
        namespace, uid = str(meta_of(pod).get("namespace")), str(meta_of(pod).get("uid"))
        for _, claim, _ in pod_claims(pod):
            self._users.setdefault((namespace, claim), {})[uid] = node

    def nodes_of_others(self, namespace: str, claim: str, uid: str) -> set[str]:
        return {n for u, n in self._users.get((namespace, claim), {}).items() if u != uid}


def prefilter(pod: Mapping[str, Any], view: StorageView) -> str | None:
    """None (go on to the nodes), ``WAIT``, or the message that keeps the pod Pending."""
    namespace = str(meta_of(pod).get("namespace") or "default")
    wait = False
    for _, name, _ in pod_claims(pod):
        claim = view.claim(namespace, name)
        if claim is None:
            return f'persistentvolumeclaim "{name}" not found'
        if meta_of(claim).get("deletionTimestamp"):
            return f'persistentvolumeclaim "{name}" is being deleted'
        if is_bound(claim):
            continue
        storage_class = view.classes.get(claim_class(claim)) or {}
        if storage_class.get("volumeBindingMode") == "WaitForFirstConsumer":
            wait = True
            continue
        return UNBOUND_IMMEDIATE
    return WAIT if wait else None


def node_failures(pod: Mapping[str, Any], node: Mapping[str, Any], view: StorageView,
                  usage: ClaimUsage) -> list[str]:
    """Why the pod's claims rule this node out (empty: they allow it)."""
    namespace = str(meta_of(pod).get("namespace") or "default")
    uid = str(meta_of(pod).get("uid") or "")
    node_name = str(meta_of(node).get("name") or "")
    for _, name, _ in pod_claims(pod):
        claim = view.claim(namespace, name)
        if claim is None:
            continue
        mode = sharing(claim)
        others = usage.nodes_of_others(namespace, name, uid)
        if mode == RWOP and others:
            return [REASON_RWOP]
        if mode == RWO and others and node_name not in others:
            return [REASON_RWO_ELSEWHERE]
        volume_name = (claim.get("spec") or {}).get("volumeName")
        if not volume_name or not is_bound(claim):
            continue
        volume = view.volumes.get(str(volume_name))
        if volume is None:
            return [REASON_PV_MISSING]
        required = (((volume.get("spec") or {}).get("nodeAffinity") or {})
                    .get("required") or {})
        terms = required.get("nodeSelectorTerms")
        if terms is not None and not any(term_matches(t, node) for t in terms):
            return [REASON_NODE_AFFINITY]
    return []
