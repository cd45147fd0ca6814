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
by watches on Deployments and pods; nothing polls.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
from collections.abc import Iterable
from typing import Any

from .errors import ApiError
from .eventrecorder import EventRecorder, now_rfc3339
from .fit import is_terminal
from .podsecurity import PodSecurityAdmission
from .scheduler import run_informer
from .tasks import cancel_all

log = logging.getLogger(__name__)

JSON = dict[str, Any]
DEPLOYMENTS = ("apps", "deployments")
PODS = ("", "pods")
NAMESPACES = ("", "namespaces")
HASH_LABEL = "pod-template-hash"
#: kube's ``rand.SafeEncodeString`` alphabet: no vowels, no 0/1/3, so no words and no look-alikes.
_SAFE_LETTERS = "bcdfghjklmnpqrstvwxz2456789"
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}

AVAILABLE = "Available"
PROGRESSING = "Progressing"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"


def _meta(obj: JSON) -> JSON:
    return obj.get("metadata") or {}


def _rv(obj: JSON) -> int:
    try:
        return int(_meta(obj).get("resourceVersion") or 0)
    except ValueError:
        return 0


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
    return f"{_meta(deployment).get('name', '')}-{template_hash(deployment)}"


def desired_replicas(deployment: JSON) -> int:
    """``spec.replicas``, 1 when unset (the API's default)."""
    value = (deployment.get("spec") or {}).get("replicas")
    try:
        return max(0, int(1 if value is None else value))
    except (TypeError, ValueError):
        return 1


def replica_pod(deployment: JSON) -> JSON:
    """A pod of the Deployment's current template (see the module docstring)."""
    meta = _meta(deployment)
    template = copy.deepcopy((deployment.get("spec") or {}).get("template") or {})
    tmeta = template.get("metadata") or {}
    labels = {**(tmeta.get("labels") or {}), HASH_LABEL: template_hash(deployment)}
    pod_meta: JSON = {
        "generateName": f"{replica_set_name(deployment)}-",
        "namespace": meta.get("namespace"),
        "labels": labels,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                             "name": meta.get("name"), "uid": meta.get("uid"),
                             "controller": True, "blockOwnerDeletion": True}],
    }
    if tmeta.get("annotations"):
        pod_meta["annotations"] = dict(tmeta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta,
            "spec": template.get("spec") or {}}


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


def is_ready(pod: JSON) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def is_active(pod: JSON) -> bool:
    """``controller.IsPodActive``: neither being deleted nor ended."""
    return not _meta(pod).get("deletionTimestamp") and not is_terminal(pod)


def _restarts(pod: JSON) -> int:
    return sum(int(s.get("restartCount") or 0)
               for s in (pod.get("status") or {}).get("containerStatuses") or [])


def deletion_order(pods: Iterable[JSON]) -> list[JSON]:
    """The pods a scale-down takes first come first (``controller.ActivePods`` ordering)."""
    newest_first = sorted(pods, key=lambda p: (str(_meta(p).get("creationTimestamp") or ""),
                                               str(_meta(p).get("name") or "")), reverse=True)
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
                               if (_meta(p).get("labels") or {}).get(HASH_LABEL) == revision),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, max(desired_replicas(deployment), len(active)) - ready),
    }
    status: JSON = {"observedGeneration": int(_meta(deployment).get("generation") or 1),
                    **{k: v for k, v in counts.items() if v}}
    status["conditions"] = [available_condition(deployment, ready, now),
                            progressing_condition(deployment, status, now)]
    return status


class DeploymentController:
    """Keeps each Deployment's pods and status (see the module docstring)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.events = EventRecorder(store, "deployment-controller")
        self.pod_security = PodSecurityAdmission(self._namespace_labels)
        self._deployments: dict[str, JSON] = {}
        self._pods: dict[str, JSON] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._informer(DEPLOYMENTS, self._deployments),
                                name="deployments-deployments"),
            asyncio.create_task(self._informer(PODS, self._pods), name="deployments-pods"),
            asyncio.create_task(self._run(), name="deployments-loop"),
        ]
        await asyncio.sleep(0)

    async def stop(self) -> None:
        self._stopping = True
        await cancel_all(self._tasks)
        self._tasks = []

    def _informer(self, key: tuple[str, str], index: dict[str, JSON]) -> Any:
        def on_list(items: list[JSON]) -> None:
            index.clear()
            for obj in items:
                index[str(_meta(obj).get("uid"))] = obj
            self._wake.set()

        def on_event(etype: str, obj: JSON) -> None:
            uid = str(_meta(obj).get("uid"))
            if etype == "DELETED":
                index.pop(uid, None)
            elif uid not in index or _rv(obj) > _rv(index[uid]):
                # What this controller wrote is in the index already (``_remember``); an event
                # older than that must not undo it.
                index[uid] = obj
            self._wake.set()

        return run_informer(self.store, key, on_list, on_event, lambda: self._stopping,
                            "deployment-controller")

    def _namespace_labels(self, name: str) -> dict[str, str]:
        try:
            namespace = self.store.get(NAMESPACES, None, name)
        except ApiError:
            return {}
        return dict(_meta(namespace).get("labels") or {})

    def _remember(self, pod: JSON, deleted: bool = False) -> None:
        """Put a pod this controller just created or deleted into its view at once, so that a
        sync before the watch delivers the change counts it (the role of kube's expectations).
        One the store removed outright stays, as being deleted, until its DELETED event: the
        events still on their way are older and must not bring it back."""
        meta = _meta(pod)
        if deleted and not meta.get("deletionTimestamp"):
            pod = {**pod, "metadata": {**meta, "deletionTimestamp": now_rfc3339()}}
        self._pods[str(meta.get("uid"))] = pod

    async def _run(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            for deployment in list(self._deployments.values()):
                try:
                    self.sync(deployment)
                except Exception:
                    log.exception("deployment-controller: syncing %s/%s failed",
                                  _meta(deployment).get("namespace"),
                                  _meta(deployment).get("name"))
            await asyncio.sleep(0)  # let the watches deliver what this pass wrote

    # -- one Deployment --------------------------------------------------------------------------

    def _owned(self, deployment: JSON) -> list[JSON]:
        uid = _meta(deployment).get("uid")
        return [p for p in self._pods.values()
                if any(r.get("controller") and r.get("uid") == uid
                       for r in _meta(p).get("ownerReferences") or [])]

    def _split(self, deployment: JSON) -> tuple[list[JSON], list[JSON], bool]:
        """(active pods of the current template, active older ones, whether any older pod is
        still there at all: being deleted counts, ended does not)."""
        revision = template_hash(deployment)
        new: list[JSON] = []
        old: list[JSON] = []
        old_left = False
        for pod in self._owned(deployment):
            current = (_meta(pod).get("labels") or {}).get(HASH_LABEL) == revision
            if is_active(pod):
                (new if current else old).append(pod)
            old_left = old_left or (not current and not is_terminal(pod))
        return new, old, old_left

    def sync(self, deployment: JSON) -> None:
        """Bring one Deployment's pods and status in line with its spec."""
        if _meta(deployment).get("deletionTimestamp"):
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
        namespace = str(_meta(deployment).get("namespace") or "default")
        for _ in range(max(0, count)):
            pod = replica_pod(deployment)
            # kube-apiserver's refusal names the generateName: no name is generated before
            # admission (apiserver's admission.NewForbidden).
            named = {**pod, "metadata": {**pod["metadata"], "namespace": namespace,
                                         "name": pod["metadata"]["generateName"]}}
            try:
                self.pod_security.validate("CREATE", "", "pods", None, named, [])
                created = self.store.create(PODS, namespace, pod)
            except ApiError as e:
                self.events.record(deployment, "Warning", "FailedCreate",
                                   f"Error creating: {e.message}")
                return
            self._remember(created)
            self.events.record(deployment, "Normal", "SuccessfulCreate",
                               f"Created pod: {_meta(created).get('name')}")

    def _delete(self, deployment: JSON, pod: JSON) -> None:
        meta = _meta(pod)
        try:
            deleted = self.store.delete(PODS, meta.get("namespace"), meta.get("name"),
                                        preconditions={"uid": meta.get("uid")})
        except ApiError as e:
            if e.code not in (404, 409):
                self.events.record(deployment, "Warning", "FailedDelete",
                                   f"Error deleting: {e.message}")
            return
        self._remember(deleted, deleted=True)
        self.events.record(deployment, "Normal", "SuccessfulDelete",
                           f"Deleted pod: {meta.get('name')}")

    def _write_status(self, deployment: JSON) -> None:
        meta = _meta(deployment)
        status = deployment_status(deployment, self._owned(deployment), now_rfc3339())
        if (deployment.get("status") or {}) == status:
            return
        try:
            current = self.store.get(DEPLOYMENTS, meta.get("namespace"), meta.get("name"))
        except ApiError:
            return
        if _meta(current).get("uid") != meta.get("uid") or (
                _meta(current).get("generation") != meta.get("generation")):
            return  # a newer spec is on its way to the informer: sync that one instead
        current["status"] = status
        try:
            written = self.store.replace(DEPLOYMENTS, meta.get("namespace"), meta.get("name"),
                                         current, subresource="status")
        except ApiError as e:
            if e.code not in (404, 409):
                raise
            return
        self._deployments[str(meta.get("uid"))] = written
