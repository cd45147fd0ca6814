"""A DaemonSet controller: one pod of each ``apps/v1`` DaemonSet on every node it selects.

The project's image pre-puller is a DaemonSet, and a cluster without the controller would store
it and never run it, so the tests would pass on a pre-pull that pulls nothing. This is the part
of kube-controller-manager's daemon controller that matters for that, in its words and shapes:

* **Which nodes.** A node runs the DaemonSet when the pod template's ``nodeSelector`` and
  required node affinity match it and its pod tolerates the node's NoSchedule/NoExecute taints
  (``fit.py``: the same rules the scheduler applies), with the tolerations the real controller
  adds to every daemon pod (not-ready, unreachable, disk/memory/pid pressure, unschedulable).
* **Its pods.** ``generateName: <daemonset>-``, the template's labels plus
  ``controller-revision-hash`` (a hash of the template) and ``pod-template-generation``, a
  controller ownerReference (so garbage collection removes them with the DaemonSet), and node
  affinity ``matchFields metadata.name In [<node>]`` in every required term: the default
  scheduler binds each pod to its node, as on a real cluster since daemon pods stopped being
  bound by the controller. Init containers then run in order on that node (``kubelet.py``),
  which is where images get pulled (``imagepulls.py``).
* **Admission.** The pods are checked against the namespace's Pod Security labels like any
  created pod; a refusal is a ``FailedCreate`` Event with kube-apiserver's message, as the real
  controller records it, and the DaemonSet keeps trying on the next change.
* **Updates.** ``RollingUpdate`` deletes pods of an older template hash, at most
  ``maxUnavailable`` (an integer or a percentage of the desired count, rounded up; at least 1)
  unavailable at a time, and creates their replacements once they are gone; ``OnDelete``
  replaces a pod only when someone deletes it. Failed or succeeded daemon pods are deleted and
  replaced. Pods on nodes that no longer qualify are deleted.
* **Status.** ``desiredNumberScheduled``, ``currentNumberScheduled``, ``numberMisscheduled``,
  ``numberReady``, ``numberAvailable``, ``numberUnavailable``, ``updatedNumberScheduled`` and
  ``observedGeneration``, written through the status subresource when they change, so a client
  can wait for a rollout the way ``kubectl rollout status daemonset`` does.

Not simulated: ControllerRevision objects (the hash is only a label), ``maxSurge``,
``minReadySeconds`` (a ready pod counts as available at once) and the creation back-off.
Everything is driven by watches on DaemonSets, nodes and pods; nothing polls. The watches, the
loop and the pod and status writes are ``workloadcontroller.py``'s, shared with the Deployment
controller.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import TYPE_CHECKING, Any

from .fit import is_terminal, matches_node_selector, untolerated_taint
from .objectmeta import meta_of
from .resources import ResourceKey
from .workloadcontroller import PODS, WorkloadController, is_ready, pod_from_template

if TYPE_CHECKING:
    from .store import Store

JSON = dict[str, Any]
DAEMONSETS = ("apps", "daemonsets")
NODES = ("", "nodes")
REVISION_LABEL = "controller-revision-hash"
GENERATION_LABEL = "pod-template-generation"

#: What the daemon controller adds to every daemon pod (``util.AddOrUpdateDaemonPodTolerations``).
DEFAULT_TOLERATIONS: tuple[JSON, ...] = (
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
)


def template_hash(ds: JSON) -> str:
    """A short, stable hash of the pod template (what ``controller-revision-hash`` carries)."""
    template = (ds.get("spec") or {}).get("template") or {}
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def _with_tolerations(spec: JSON) -> list[JSON]:
    tolerations = [dict(t) for t in spec.get("tolerations") or []]
    for extra in DEFAULT_TOLERATIONS:
        if not any(t.get("key") == extra["key"] and t.get("effect") == extra["effect"]
                   for t in tolerations):
            tolerations.append(dict(extra))
    return tolerations


def _pin_to_node(spec: JSON, node: str) -> None:
    """``util.ReplaceDaemonSetPodNodeNameNodeAffinity``: every required term names the node."""
    pin = [{"key": "metadata.name", "operator": "In", "values": [node]}]
    affinity = spec.setdefault("affinity", {}) or {}
    spec["affinity"] = affinity
    node_affinity = affinity.setdefault("nodeAffinity", {}) or {}
    affinity["nodeAffinity"] = node_affinity
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = [dict(t) for t in required.get("nodeSelectorTerms") or []]
    if not terms:
        terms = [{}]
    for term in terms:
        term["matchFields"] = pin
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
        "nodeSelectorTerms": terms}


def daemon_pod(ds: JSON, node: str) -> JSON:
    """The pod the controller creates for ``ds`` on ``node`` (see the module docstring)."""
    meta = meta_of(ds)
    template = copy.deepcopy((ds.get("spec") or {}).get("template") or {})
    tmeta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    labels = dict(tmeta.get("labels") or {})
    labels[REVISION_LABEL] = template_hash(ds)
    labels[GENERATION_LABEL] = str(meta.get("generation") or 1)
    spec["tolerations"] = _with_tolerations(spec)
    _pin_to_node(spec, node)
    return pod_from_template(ds, "DaemonSet", f"{meta.get('name', '')}-", tmeta, labels, spec)


def should_run(ds: JSON, node: JSON) -> bool:
    """Whether ``node`` is one of the DaemonSet's: selector, affinity and taints, as scheduled."""
    spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    probe = {"spec": {**spec, "tolerations": _with_tolerations(spec)}}
    return matches_node_selector(probe, node) and untolerated_taint(probe, node) is None


def max_unavailable(ds: JSON, desired: int) -> int:
    """``rollingUpdate.maxUnavailable`` as a count (a percentage rounds up); at least 1."""
    strategy = (ds.get("spec") or {}).get("updateStrategy") or {}
    value: Any = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1)
    if isinstance(value, str) and value.endswith("%"):
        try:
            count = math.ceil(desired * float(value[:-1]) / 100)
        except ValueError:
            count = 1
    else:
        try:
            count = int(value)
        except (TypeError, ValueError):
            count = 1
    return max(1, count)


class DaemonSetController(WorkloadController):
    """Keeps every DaemonSet's pods, one per selected node (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, "daemonset-controller", DAEMONSETS)
        self._nodes = self._watch(NODES)
        self._pods = self._watch(PODS)
        #: Pods created and not yet seen on the watch: (DaemonSet uid, node) -> count.
        self._expected: dict[tuple[str, str], int] = {}

    def _listed(self, key: ResourceKey) -> None:
        if key == PODS:
            self._expected.clear()  # the list shows every pod created so far

    def _seen(self, key: ResourceKey, etype: str, obj: JSON) -> None:
        owner = self._owner_uid(obj) if key == PODS and etype == "ADDED" else None
        if owner is None:
            return
        pending = (owner, self._pod_node(obj))
        if self._expected.get(pending):
            self._expected[pending] -= 1
            if not self._expected[pending]:
                del self._expected[pending]

    # -- one DaemonSet ---------------------------------------------------------------------------

    @staticmethod
    def _owner_uid(pod: JSON) -> str | None:
        for ref in meta_of(pod).get("ownerReferences") or []:
            if ref.get("controller") and ref.get("kind") == "DaemonSet":
                return str(ref.get("uid"))
        return None

    @staticmethod
    def _pod_node(pod: JSON) -> str:
        spec = pod.get("spec") or {}
        if spec.get("nodeName"):
            return str(spec["nodeName"])
        required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                    .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
        for term in required.get("nodeSelectorTerms") or []:
            for field in term.get("matchFields") or []:
                if field.get("key") == "metadata.name" and field.get("values"):
                    return str(field["values"][0])
        return ""

    def sync(self, ds: JSON) -> None:
        """Bring one DaemonSet's pods and status in line with its nodes and template."""
        meta = meta_of(ds)
        if meta.get("deletionTimestamp"):
            return  # garbage collection removes its pods
        uid = str(meta.get("uid"))
        revision = template_hash(ds)
        wanted = {n_meta["name"] for n in self._nodes.values()
                  if should_run(ds, n) and (n_meta := meta_of(n)).get("name")}
        by_node: dict[str, list[JSON]] = {}
        for pod in self._pods.values():
            if self._owner_uid(pod) == uid and not meta_of(pod).get("deletionTimestamp"):
                by_node.setdefault(self._pod_node(pod), []).append(pod)
        terminating = {self._pod_node(p) for p in self._pods.values()
                       if self._owner_uid(p) == uid and meta_of(p).get("deletionTimestamp")}

        for node, pods in by_node.items():
            if node not in wanted:
                for pod in pods:
                    self._delete_pod(ds, pod)
                continue
            keep, *extra = sorted(pods, key=lambda p: str(meta_of(p).get("creationTimestamp")))
            for pod in extra:
                self._delete_pod(ds, pod)
            if is_terminal(keep):
                self._delete_pod(ds, keep)
        for node in sorted(wanted):
            if node in terminating or self._expected.get((uid, node)):
                continue
            live = [p for p in by_node.get(node, []) if not is_terminal(p)]
            if not live:
                self._create(ds, node)

        strategy = ((ds.get("spec") or {}).get("updateStrategy") or {}).get("type")
        if strategy != "OnDelete":
            self._roll(ds, wanted, by_node, revision)
        self._write_status(ds, wanted, by_node, revision)

    def _roll(self, ds: JSON, wanted: set[str], by_node: dict[str, list[JSON]],
              revision: str) -> None:
        current = [pods[0] for node, pods in by_node.items() if node in wanted and pods]
        old = [p for p in current
               if (meta_of(p).get("labels") or {}).get(REVISION_LABEL) != revision]
        if not old:
            return
        unavailable = len(wanted) - sum(1 for p in current if is_ready(p))
        budget = max_unavailable(ds, len(wanted))
        # Old pods that are not available anyway go first: deleting them costs nothing.
        old.sort(key=is_ready)
        for pod in old:
            if is_ready(pod):
                if unavailable >= budget:
                    break
                unavailable += 1
            self._delete_pod(ds, pod)

    def _create(self, ds: JSON, node: str) -> None:
        if self._create_pod(ds, daemon_pod(ds, node)) is not None:
            key = (str(meta_of(ds).get("uid")), node)
            self._expected[key] = self._expected.get(key, 0) + 1

    def _write_status(self, ds: JSON, wanted: set[str], by_node: dict[str, list[JSON]],
                      revision: str) -> None:
        meta = meta_of(ds)
        scheduled = [pods[0] for node, pods in by_node.items() if node in wanted and pods]
        ready = sum(1 for p in scheduled if is_ready(p))
        status = {
            "currentNumberScheduled": len(scheduled),
            "desiredNumberScheduled": len(wanted),
            "numberMisscheduled": sum(len(p) for n, p in by_node.items() if n not in wanted),
            "numberReady": ready,
            "numberAvailable": ready,
            "updatedNumberScheduled": sum(
                1 for p in scheduled
                if (meta_of(p).get("labels") or {}).get(REVISION_LABEL) == revision),
            "observedGeneration": meta.get("generation") or 1,
        }
        if len(wanted) - ready:
            status["numberUnavailable"] = len(wanted) - ready
        self._replace_status(ds, status)
