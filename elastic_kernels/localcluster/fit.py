"""Whether a pod fits a node, which node is best, and how a failure is worded.

Pure functions over plain pod/node dicts, so the scheduler's decisions can be tested without a
store and so the wording is in one place. The texts are kube-scheduler's own (filter plugins
NodeUnschedulable, TaintToleration, NodeAffinity and NodeResourcesFit, run in that order, the
first failing plugin giving a node's reasons), because users and our provisioner read them:
``0/2 nodes are available: 2 Insufficient nvidia.com/gpu.``
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any
from collections.abc import Callable, Iterable, Mapping

from .quantities import QuantityError, parse_quantity

JSON = dict[str, Any]
Resources = dict[str, Decimal]

TERMINAL_PHASES = ("Succeeded", "Failed")
DEFAULT_SCHEDULER = "default-scheduler"

# Reasons, worded exactly like the real plugins.
REASON_UNSCHEDULABLE_NODE = "node(s) were unschedulable"
REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_TOO_MANY_PODS = "Too many pods"
NO_NODES_MESSAGE = "no nodes available to schedule pods"

_NOT_READY_TAINT = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
_UNSCHEDULABLE_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


def _quantity(value: Any) -> Decimal | None:
    try:
        return parse_quantity(value)
    except QuantityError:
        return None


def container_requests(container: Mapping[str, Any]) -> Resources:
    """A container's requests; a resource with only a limit requests its limit (API defaulting)."""
    resources = container.get("resources") or {}
    merged: dict[str, Any] = dict(resources.get("limits") or {})
    merged.update(resources.get("requests") or {})
    out: Resources = {}
    for name, value in merged.items():
        q = _quantity(value)
        if q is not None and q > 0:
            out[name] = q
    return out


def container_gpus(container: Mapping[str, Any], resource: str = "nvidia.com/gpu") -> int:
    """Whole devices a container asked for (device plugins only hand out whole devices)."""
    return int(container_requests(container).get(resource, Decimal(0)))


def pod_requests(pod: Mapping[str, Any]) -> Resources:
    """Effective pod request: max(sum of containers, each init container) plus overhead."""
    spec = pod.get("spec") or {}
    total: Resources = {}
    for c in spec.get("containers") or []:
        for name, q in container_requests(c).items():
            total[name] = total.get(name, Decimal(0)) + q
    for c in spec.get("initContainers") or []:
        for name, q in container_requests(c).items():
            if q > total.get(name, Decimal(0)):
                total[name] = q
    for name, value in (spec.get("overhead") or {}).items():
        overhead = _quantity(value)
        if overhead:
            total[name] = total.get(name, Decimal(0)) + overhead
    return total


def node_allocatable(node: Mapping[str, Any]) -> Resources:
    status = node.get("status") or {}
    alloc = status.get("allocatable") or status.get("capacity") or {}
    out: Resources = {}
    for name, value in alloc.items():
        q = _quantity(value)
        if q is not None:
            out[name] = q
    return out


def is_terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in TERMINAL_PHASES


def needs_scheduling(pod: Mapping[str, Any]) -> bool:
    """A pod this scheduler should place: unbound, alive, not held back by scheduling gates, and
    addressed to the default scheduler."""
    spec = pod.get("spec") or {}
    meta = pod.get("metadata") or {}
    return (not spec.get("nodeName")
            and not spec.get("schedulingGates")
            and not meta.get("deletionTimestamp")
            and spec.get("schedulerName", DEFAULT_SCHEDULER) in (DEFAULT_SCHEDULER, "", None)
            and not is_terminal(pod))


def add_resources(into: Resources, extra: Mapping[str, Decimal]) -> None:
    for name, q in extra.items():
        into[name] = into.get(name, Decimal(0)) + q


# What the scorer assumes a container without cpu/memory requests uses, so that such pods
# still spread over nodes (kube-scheduler's DefaultMilliCPURequest / DefaultMemoryRequest).
NONZERO_DEFAULTS = {"cpu": Decimal("0.1"), "memory": Decimal(200 * 1024 * 1024)}


def nonzero_requests(pod: Mapping[str, Any]) -> Resources:
    """cpu/memory requests for scoring only: unset per-container requests count as defaults."""
    total: Resources = {"cpu": Decimal(0), "memory": Decimal(0)}
    for c in (pod.get("spec") or {}).get("containers") or []:
        req = container_requests(c)
        for name, default in NONZERO_DEFAULTS.items():
            total[name] += req.get(name, default)
    return total


def allocated_by_node(pods: Iterable[Mapping[str, Any]]
                      ) -> tuple[dict[str, Resources], Counter[str], dict[str, Resources]]:
    """Per node, for the non-terminal pods bound to it: requests, pod count, scoring usage."""
    used: dict[str, Resources] = {}
    scored: dict[str, Resources] = {}
    counts: Counter[str] = Counter()
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or is_terminal(pod):
            continue
        add_resources(used.setdefault(node, {}), pod_requests(pod))
        add_resources(scored.setdefault(node, {}), nonzero_requests(pod))
        counts[node] += 1
    return used, counts, scored


# --- taints and tolerations ---------------------------------------------------------------------


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """v1.Toleration.ToleratesTaint: an empty key with Exists tolerates every taint."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    if key and key != taint.get("key"):
        return False
    if operator == "Exists":
        return True
    if operator == "Equal":
        return bool(key) and (toleration.get("value") or "") == (taint.get("value") or "")
    return False


def node_taints(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The node's taints plus those the node lifecycle controller adds for NotReady nodes."""
    taints = list((node.get("spec") or {}).get("taints") or [])
    if not node_is_ready(node) and not any(t.get("key") == _NOT_READY_TAINT["key"]
                                           for t in taints):
        taints.append(_NOT_READY_TAINT)
    return taints


def node_is_ready(node: Mapping[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def untolerated_taint(pod: Mapping[str, Any], node: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first NoSchedule/NoExecute taint that none of the pod's tolerations tolerates."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in node_taints(node):
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(tolerates(t, taint) for t in tolerations):
            return taint
    return None


def taint_reason(taint: Mapping[str, Any]) -> str:
    return f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value') or ''}}}"


# --- node selector and affinity -----------------------------------------------------------------


def _requirement_matches(req: Mapping[str, Any], value_of: Mapping[str, str]) -> bool:
    key = req.get("key", "")
    op = req.get("operator", "")
    values = [str(v) for v in req.get("values") or []]
    present = key in value_of
    value = value_of.get(key)
    if op == "In":
        return present and value in values
    if op == "NotIn":
        return not present or value not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt"):
        if not present or len(values) != 1:
            return False
        try:
            have, want = int(str(value)), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _term_matches(term: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # an empty term matches no node, as in the real API
    labels = (node.get("metadata") or {}).get("labels") or {}
    node_fields = {"metadata.name": (node.get("metadata") or {}).get("name", "")}
    return (all(_requirement_matches(r, labels) for r in expressions)
            and all(_requirement_matches(r, node_fields) for r in fields))


def term_matches(term: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """One NodeSelectorTerm against a node (also what a volume's node affinity holds)."""
    return _term_matches(term, node)


def matches_node_selector(pod: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """``spec.nodeSelector`` AND the required node affinity (terms are ORed)."""
    spec = pod.get("spec") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if required is not None:
        terms = required.get("nodeSelectorTerms") or []
        if not any(_term_matches(t, node) for t in terms):
            return False
    return True


# --- the filter chain and the message -----------------------------------------------------------


def fit_failures(pod: Mapping[str, Any], node: Mapping[str, Any],
                 used: Mapping[str, Decimal] | None = None, pods_on_node: int = 0,
                 requests: Resources | None = None) -> list[str]:
    """Why the pod cannot go to this node (empty: it fits). Stops at the first failing filter."""
    spec = pod.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    if (node.get("spec") or {}).get("unschedulable") and not any(
            tolerates(t, _UNSCHEDULABLE_TAINT) for t in tolerations):
        return [REASON_UNSCHEDULABLE_NODE]
    taint = untolerated_taint(pod, node)
    if taint is not None:
        return [taint_reason(taint)]
    if not matches_node_selector(pod, node):
        return [REASON_AFFINITY]
    return insufficient_resources(pod_requests(pod) if requests is None else requests,
                                  node_allocatable(node), used or {}, pods_on_node)


def insufficient_resources(requests: Mapping[str, Decimal], allocatable: Mapping[str, Decimal],
                           used: Mapping[str, Decimal], pods_on_node: int) -> list[str]:
    reasons: list[str] = []
    max_pods = allocatable.get("pods")
    if max_pods is not None and pods_on_node + 1 > max_pods:
        reasons.append(REASON_TOO_MANY_PODS)
    for name in sorted(requests, key=lambda n: (n not in ("cpu", "memory"), n)):
        want = requests[name]
        if name == "pods" or want <= 0:
            continue
        free = allocatable.get(name, Decimal(0)) - used.get(name, Decimal(0))
        if want > free:
            reasons.append(f"Insufficient {name}")
    return reasons


def unschedulable_message(total_nodes: int, failures: Mapping[str, list[str]]) -> str:
    """FitError.Error(): ``0/N nodes are available: <count reason>, ... .``

    Reasons are counted per node and the ``"<count> <reason>"`` strings sorted, exactly like the
    real scheduler (so the order is alphabetical on the count-prefixed text).
    """
    if total_nodes == 0:
        return NO_NODES_MESSAGE
    histogram: Counter[str] = Counter()
    for reasons in failures.values():
        for reason in reasons:
            histogram[reason] += 1
    parts = sorted(f"{count} {reason}" for reason, count in histogram.items())
    return f"0/{total_nodes} nodes are available: {', '.join(parts)}."


def least_allocated_score(requests: Mapping[str, Decimal], allocatable: Mapping[str, Decimal],
                          used: Mapping[str, Decimal]) -> Decimal:
    """NodeResourcesFit LeastAllocated over cpu and memory (0..100, higher is emptier)."""
    scores: list[Decimal] = []
    for name in ("cpu", "memory"):
        cap = allocatable.get(name, Decimal(0))
        if cap <= 0:
            scores.append(Decimal(0))
            continue
        after = used.get(name, Decimal(0)) + requests.get(name, Decimal(0))
        scores.append(max(Decimal(0), (cap - after) * 100 / cap))
    return sum(scores, Decimal(0)) / len(scores)


def choose_node(pod: Mapping[str, Any], nodes: Iterable[Mapping[str, Any]],
                used: Mapping[str, Resources], counts: Mapping[str, int],
                scored: Mapping[str, Resources] | None = None,
                extra: Callable[[Mapping[str, Any]], list[str]] | None = None
                ) -> tuple[str | None, dict[str, list[str]]]:
    """The best fitting node's name (ties broken by name), or None and each node's reasons.

    ``scored`` is the per-node usage for scoring (``allocated_by_node``'s third value); without
    it the real requests are used. ``extra`` is the filters that run after the resource fit
    (the volume plugins, ``volumefit.py``), as kube-scheduler orders them.
    """
    requests = pod_requests(pod)
    score_requests = nonzero_requests(pod) if scored is not None else requests
    failures: dict[str, list[str]] = {}
    best: tuple[Decimal, str] | None = None
    for node in nodes:
        name = (node.get("metadata") or {}).get("name", "")
        node_used = used.get(name, {})
        reasons = fit_failures(pod, node, node_used, counts.get(name, 0), requests)
        if not reasons and extra is not None:
            reasons = extra(node)
        if reasons:
            failures[name] = reasons
            continue
        score = least_allocated_score(
            score_requests, node_allocatable(node),
            (scored or {}).get(name, {}) if scored is not None else node_used)
        if best is None or score > best[0] or (score == best[0] and name < best[1]):
            best = (score, name)
    return (best[1] if best else None), failures
