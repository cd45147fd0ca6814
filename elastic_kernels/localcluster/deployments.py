"""A Deployment controller: ``spec.replicas`` pods of each ``apps/v1`` Deployment's template.

Opt-in (``LocalCluster(controllers={"deployment"})``, ``elastic-kernels cluster --controllers
deployment``): most tests apply the install's Deployments and then run the pods they need from
the templates themselves, with the changes this host needs; a controller on by default would give
them the install's pods besides. With it on, an admin's own commands work here as on a cluster:
``kubectl apply -k``, ``kubectl rollout status deployment/X``, ``kubectl wait
--for=condition=Available``, deleting a pod and getting another. This is the part of
kube-controller-manager's deployment and replica set controllers that matters for that, in their
words and shapes:

* **Its pods.** ``generateName: <deployment>-<hash>-``, the template's labels plus
  ``pod-template-hash`` (an FNV-32a hash of the template, in the letters kube's
  ``rand.SafeEncodeString`` uses), and a controller ownerReference to the Deployment
  (``blockOwnerDeletion``), so garbage collection removes them with it.
* **Admission.** The pods are checked against the namespace's Pod Security labels like any
  created pod (the DaemonSet controller's path); a refusal is a ``FailedCreate`` Event on the
  Deployment with kube-apiserver's message, and the Deployment is tried again on the next change.
* **Replacement.** A pod being deleted, or that has ended (``Failed``/``Succeeded``), no longer
  counts, and another is made at once. An ended pod is left where it is, as the replica set
  controller leaves it to the pod garbage collector; it goes with the Deployment.
* **Rollouts.** A template change makes pods of the new hash. ``RollingUpdate`` (the default)
  does what ``rolloutRolling`` does: new pods up to ``replicas + maxSurge`` in all, old ones
  deleted while at least ``replicas - maxUnavailable`` stay available, not-ready ones first
  (``maxSurge`` rounded up, ``maxUnavailable`` down, 25% each by default, and
  ``maxUnavailable`` 1 when both come to 0). ``Recreate`` deletes every old pod and makes the new
  ones once the old are gone. Surplus pods go in the replica set controller's order: unscheduled,
  pending, not ready, most restarts, newest first.
* **Status.** ``observedGeneration``, ``replicas``, ``updatedReplicas``, ``readyReplicas``,
  ``availableReplicas``, ``unavailableReplicas`` (a count of 0 is left out, as the API's
  ``omitempty`` does) and the conditions ``Available`` (``MinimumReplicasAvailable``) and
  ``Progressing`` (``NewReplicaSetCreated``, ``ReplicaSetUpdated``, ``NewReplicaSetAvailable``),
  written through the status subresource when they change. That is all ``kubectl rollout
  status`` (it compares the counts with ``spec.replicas`` once ``observedGeneration`` has caught
  up) and ``kubectl wait --for=condition=Available`` read.

Not simulated: ReplicaSets (the pods belong to the Deployment itself, ``pod-template-hash`` is only
a label, and the "replica set" the conditions name is ``<deployment>-<hash>``, the prefix of its
pods' names), so neither the ``deployment.kubernetes.io/revision`` annotation, ``kubectl rollout
history``/``undo`` nor ``rollout status --revision``; the ``scale`` subresource (``kubectl
scale``: patch ``spec.replicas`` instead); adopting orphaned pods that match the selector;
``paused``; ``minReadySeconds`` (a ready pod counts as available at once);
``progressDeadlineSeconds`` (never ``ProgressDeadlineExceeded``); proportional scaling in the
middle of a rollout; the creation back-off and ``ScalingReplicaSet`` Events. Everything is driven
by watches on Deployments and pods; nothing polls. The watches, the loop and the pod and status
writes are ``workloadcontroller.py``'s, shared with the DaemonSet controller.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .eventrecorder import now_rfc3339
from .fit import is_terminal
from .objectmeta import meta_of
from .workloadcontroller import PODS, WorkloadController, is_ready, pod_from_template

if TYPE_CHECKING:
    from .store import Store

JSON = dict[str, Any]
DEPLOYMENTS = ("apps", "deployments")
HASH_LABEL = "pod-template-hash"
#: kube's ``rand.SafeEncodeString`` alphabet: no vowels, no 0/1/3, so no words and no look-alikes.
_SAFE_LETTERS = "bcdfghjklmnpqrstvwxz2456789"
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}

AVAILABLE = "Available"
PROGRESSING = "Progressing"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"


def template_hash(deployment: JSON) -> str:
    """``pod-template-hash``: FNV-32a of the template, its decimal digits safe-encoded as kube
    does, so names look like a real cluster's (``gateway-5d8f7c9b64-x2k4q``)."""
    template = (deployment.get("spec") or {}).get("template") or {}
    digest = 0x811C9DC5
    for byte in json.dumps(template, sort_keys=True, separators=(",", ":")).encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(_SAFE_LETTERS[ord(c) % len(_SAFE_LETTERS)] for c in str(digest))


def replica_set_name(deployment: JSON) -> str:
    """The name the Deployment's ReplicaSet would have; its pods' names start with it."""
    return f"{meta_of(deployment).get('name', '')}-{template_hash(deployment)}"


def desired_replicas(deployment: JSON) -> int:
    """``spec.replicas``, 1 when unset (the API's default)."""
    value = (deployment.get("spec") or {}).get("replicas")
    try:
        return max(0, int(1 if value is None else value))
    except (TypeError, ValueError):
        return 1


def replica_pod(deployment: JSON) -> JSON:
    """A pod of the Deployment's current template (see the module docstring)."""
    template = copy.deepcopy((deployment.get("spec") or {}).get("template") or {})
    tmeta = template.get("metadata") or {}
    labels = {**(tmeta.get("labels") or {}), HASH_LABEL: template_hash(deployment)}
    return pod_from_template(deployment, "Deployment", f"{replica_set_name(deployment)}-", tmeta,
                             labels, template.get("spec") or {})


def _scaled(value: Any, total: int, round_up: bool) -> int:
    """``intstr.GetScaledValueFromIntOrPercent``; a malformed value (which kube-apiserver would
    have refused) counts as 0."""
    if isinstance(value, str) and value.endswith("%"):
        try:
            share = total * float(value[:-1]) / 100
        except ValueError:
            return 0
        return max(0, math.ceil(share) if round_up else math.floor(share))
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def is_rolling(deployment: JSON) -> bool:
    strategy = (deployment.get("spec") or {}).get("strategy") or {}
    return strategy.get("type", "RollingUpdate") != "Recreate"


def fenceposts(deployment: JSON) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as counts: ``ResolveFenceposts`` with the API's 25% defaults."""
    strategy = (deployment.get("spec") or {}).get("strategy") or {}
    rolling = strategy.get("rollingUpdate") or {}
    desired = desired_replicas(deployment)
    surge = _scaled(rolling.get("maxSurge", "25%"), desired, round_up=True)
    unavailable = _scaled(rolling.get("maxUnavailable", "25%"), desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_unavailable(deployment: JSON) -> int:
    """``deploymentutil.MaxUnavailable``: what the Available condition allows to be missing."""
    desired = desired_replicas(deployment)
    if not is_rolling(deployment) or desired == 0:
        return 0
    return min(desired, fenceposts(deployment)[1])


def is_active(pod: JSON) -> bool:
    """``controller.IsPodActive``: neither being deleted nor ended."""
    return not meta_of(pod).get("deletionTimestamp") and not is_terminal(pod)


def _restarts(pod: JSON) -> int:
    return sum(int(s.get("restartCount") or 0)
               for s in (pod.get("status") or {}).get("containerStatuses") or [])


def deletion_order(pods: Iterable[JSON]) -> list[JSON]:
    """The pods a scale-down takes first come first (``controller.ActivePods`` ordering)."""
    newest_first = sorted(pods, key=lambda p: (str(meta_of(p).get("creationTimestamp") or ""),
                                               str(meta_of(p).get("name") or "")), reverse=True)
    return sorted(newest_first, key=lambda p: (
        bool((p.get("spec") or {}).get("nodeName")),
        _PHASE_RANK.get(str((p.get("status") or {}).get("phase")), 0),
        is_ready(p), -_restarts(p)))


def set_condition(old: JSON | None, status: str, reason: str, message: str,
                  now: str, ctype: str) -> JSON:
    """``deploymentutil.SetDeploymentCondition``: the same status and reason is no change; the
    same status keeps its lastTransitionTime."""
    if old is not None and old.get("status") == status and old.get("reason") == reason:
        return old
    transition = old.get("lastTransitionTime") if old and old.get("status") == status else now
    return {"type": ctype, "status": status, "lastUpdateTime": now,
            "lastTransitionTime": transition, "reason": reason, "message": message}


def _progressed(old: JSON, new: JSON) -> bool:
    """``deploymentutil.DeploymentProgressing``: more updated, ready or available pods, or fewer
    old ones, than the last status said."""
    def count(status: JSON, key: str) -> int:
        return int(status.get(key) or 0)

    old_old = count(old, "replicas") - count(old, "updatedReplicas")
    new_old = count(new, "replicas") - count(new, "updatedReplicas")
    return (count(new, "updatedReplicas") > count(old, "updatedReplicas") or new_old < old_old
            or count(new, "readyReplicas") > count(old, "readyReplicas")
            or count(new, "availableReplicas") > count(old, "availableReplicas"))


def _complete(desired: int, status: JSON) -> bool:
    """``deploymentutil.DeploymentComplete`` (the generation is the one just observed)."""
    return all(int(status.get(k) or 0) == desired
               for k in ("updatedReplicas", "replicas", "availableReplicas"))


def progressing_condition(deployment: JSON, status: JSON, now: str) -> JSON:
    """``syncRolloutStatus``'s Progressing condition, for the "replica set" of the current hash."""
    old_status = deployment.get("status") or {}
    rs = replica_set_name(deployment)
    cond = next((c for c in old_status.get("conditions") or [] if c.get("type") == PROGRESSING),
                None)
    if cond is None or f'"{rs}"' not in str(cond.get("message")):
        cond = set_condition(None, "True", "NewReplicaSetCreated",
                             f'Created new replica set "{rs}"', now, PROGRESSING)
    if cond.get("reason") == NEW_RS_AVAILABLE and (
            int(status.get("replicas") or 0) == int(status.get("updatedReplicas") or 0)):
        return cond
    if _complete(desired_replicas(deployment), status):
        return set_condition(cond, "True", NEW_RS_AVAILABLE,
                             f'ReplicaSet "{rs}" has successfully progressed.', now, PROGRESSING)
    if _progressed(old_status, status):
        return {**cond, "lastUpdateTime": now, "reason": "ReplicaSetUpdated",
                "message": f'ReplicaSet "{rs}" is progressing.'}
    return cond


def available_condition(deployment: JSON, available: int, now: str) -> JSON:
    old = next((c for c in (deployment.get("status") or {}).get("conditions") or []
                if c.get("type") == AVAILABLE), None)
    if available >= desired_replicas(deployment) - max_unavailable(deployment):
        return set_condition(old, "True", "MinimumReplicasAvailable",
                             "Deployment has minimum availability.", now, AVAILABLE)
    return set_condition(old, "False", "MinimumReplicasUnavailable",
                         "Deployment does not have minimum availability.", now, AVAILABLE)


def deployment_status(deployment: JSON, pods: list[JSON], now: str) -> JSON:
    """The status ``calculateStatus`` and ``syncRolloutStatus`` would write, from its pods."""
    revision = template_hash(deployment)
    active = [p for p in pods if is_active(p)]
    ready = sum(1 for p in active if is_ready(p))
    counts = {
        "replicas": len(active),
        "updatedReplicas": sum(1 for p in active
                               if (meta_of(p).get("labels") or {}).get(HASH_LABEL) == revision),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, max(desired_replicas(deployment), len(active)) - ready),
    }
    status: JSON = {"observedGeneration": int(meta_of(deployment).get("generation") or 1),
                    **{k: v for k, v in counts.items() if v}}
    status["conditions"] = [available_condition(deployment, ready, now),
                            progressing_condition(deployment, status, now)]
    return status


class DeploymentController(WorkloadController):
    """Keeps each Deployment's pods and status (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, "deployment-controller", DEPLOYMENTS)
        self._deployments = self._watch(DEPLOYMENTS)
        self._pods = self._watch(PODS)

    def _remember(self, pod: JSON, deleted: bool = False) -> None:
        """Put a pod this controller just created or deleted into its view at once, so that a
        sync before the watch delivers the change counts it (the role of kube's expectations).
        One the store removed outright stays, as being deleted, until its DELETED event: the
        events still on their way are older and must not bring it back."""
        meta = meta_of(pod)
        if deleted and not meta.get("deletionTimestamp"):
            pod = {**pod, "metadata": {**meta, "deletionTimestamp": now_rfc3339()}}
        self._pods[str(meta.get("uid"))] = pod

    # -- one Deployment --------------------------------------------------------------------------

    def _owned(self, deployment: JSON) -> list[JSON]:
        uid = meta_of(deployment).get("uid")
        return [p for p in self._pods.values()
                if any(r.get("controller") and r.get("uid") == uid
                       for r in meta_of(p).get("ownerReferences") or [])]

    def _split(self, deployment: JSON) -> tuple[list[JSON], list[JSON], bool]:
        """(active pods of the current template, active older ones, whether any older pod is
        still there at all: being deleted counts, ended does not)."""
        revision = template_hash(deployment)
        new: list[JSON] = []
        old: list[JSON] = []
        old_left = False
        for pod in self._owned(deployment):
            current = (meta_of(pod).get("labels") or {}).get(HASH_LABEL) == revision
            if is_active(pod):
                (new if current else old).append(pod)
            old_left = old_left or (not current and not is_terminal(pod))
        return new, old, old_left

    def sync(self, deployment: JSON) -> None:
        """Bring one Deployment's pods and status in line with its spec."""
        if meta_of(deployment).get("deletionTimestamp"):
            return  # garbage collection removes its pods
        if is_rolling(deployment):
            self._roll(deployment)
        else:
            self._recreate(deployment)
        self._write_status(deployment)

    def _scale_new(self, deployment: JSON, new: list[JSON], limit: int) -> None:
        """Up to ``limit`` more pods of the current template, or the surplus over replicas gone."""
        desired = desired_replicas(deployment)
        if len(new) < desired:
            self._create(deployment, min(limit, desired - len(new)))
        elif len(new) > desired:
            for pod in deletion_order(new)[:len(new) - desired]:
                self._delete(deployment, pod)

    def _roll(self, deployment: JSON) -> None:
        """``rolloutRolling``: scale the new pods up within maxSurge, then the old ones down
        within maxUnavailable, the not-ready ones first."""
        desired = desired_replicas(deployment)
        surge, unavailable = fenceposts(deployment)
        new, old, _ = self._split(deployment)
        self._scale_new(deployment, new, desired + surge - len(new) - len(old))
        new, old, _ = self._split(deployment)
        if not old:
            return
        min_available = desired - unavailable
        new_unavailable = sum(1 for p in new if not is_ready(p))
        budget = len(new) + len(old) - min_available - new_unavailable
        if budget <= 0:
            return
        unhealthy = [p for p in deletion_order(old) if not is_ready(p)][:budget]
        for pod in unhealthy:
            self._delete(deployment, pod)
        healthy = [p for p in deletion_order(old) if is_ready(p)]
        available = sum(1 for p in new if is_ready(p)) + len(healthy)
        for pod in healthy[:max(0, min(available - min_available, budget - len(unhealthy)))]:
            self._delete(deployment, pod)

    def _recreate(self, deployment: JSON) -> None:
        """``rolloutRecreate``: every old pod deleted, and the new ones only once they are gone."""
        new, old, old_left = self._split(deployment)
        for pod in old:
            self._delete(deployment, pod)
        if old_left:
            return
        self._scale_new(deployment, new, desired_replicas(deployment))

    def _create(self, deployment: JSON, count: int) -> None:
        """Create ``count`` pods; the first refusal ends the batch (as ``slowStartBatch``)."""
        for _ in range(max(0, count)):
            created = self._create_pod(deployment, replica_pod(deployment))
            if created is None:
                return
            self._remember(created)

    def _delete(self, deployment: JSON, pod: JSON) -> None:
        deleted = self._delete_pod(deployment, pod)
        if deleted is not None:
            self._remember(deleted, deleted=True)

    def _write_status(self, deployment: JSON) -> None:
        status = deployment_status(deployment, self._owned(deployment), now_rfc3339())
        written = self._replace_status(deployment, status)
        if written is not None:
            self._deployments[str(meta_of(deployment).get("uid"))] = written
