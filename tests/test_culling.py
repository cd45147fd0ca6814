"""The idle policy (pure), and carrying a decision out on the local cluster (conditional writes).

The pure part feeds :mod:`elastic_kernels.culling` facts at a fixed ``now``: no clocks, no sleeps.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from traitlets import TraitError
from traitlets.config import Config

from elastic_kernels.culling import actions as A
from elastic_kernels.culling import policy as C
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import EVENTS
from elastic_kernels.kube.connection import ClusterConnection

from .conftest import derived_kernelspec

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def facts(name: str = "k", **changes: Any) -> C.KernelFacts:
    base = C.KernelFacts(
        name=f"kernel-{name}", namespace="default", kernel_id=str(uuid.uuid4()), user="alice",
        kernel_spec="python-cpu", phase=R.PHASE_RUNNING, created_at=ago(3600),
        started_at=ago(3590), last_activity=ago(10),
    )
    return replace(base, **changes)


def spec_view(base: str, name: str, **culling: str | bool) -> R.KernelSpecView:
    return R.KernelSpecView.from_object(derived_kernelspec(base, name, culling=culling))


# --- each reason --------------------------------------------------------------------------------


def test_idle_timeout_culls_an_idle_kernel_and_says_why() -> None:
    policy = C.Policy(idle_timeout=600)
    decision = C.decide(facts(last_activity=ago(601)), policy, NOW)
    assert decision is not None
    assert decision.reason is C.CullReason.IDLE_TIMEOUT
    assert decision.idle == 601
    assert "idle for 10m1s" in decision.message and "idleTimeout of 10m" in decision.message
    assert C.decide(facts(last_activity=ago(599)), policy, NOW) is None


def test_idleness_counts_from_start_then_creation_without_recorded_activity() -> None:
    policy = C.Policy(idle_timeout=600)
    never_active = facts(last_activity=None, started_at=ago(700), created_at=ago(900))
    assert C.decide(never_active, policy, NOW).idle == 700  # type: ignore[union-attr]
    unstarted = replace(never_active, started_at=None)
    assert C.decide(unstarted, policy, NOW).idle == 900  # type: ignore[union-attr]


def test_zero_disables_and_starting_kernels_are_not_idle() -> None:
    very_idle = facts(last_activity=ago(10**6))
    assert C.decide(very_idle, C.Policy(idle_timeout=0), NOW) is None
    for phase in (R.PHASE_PENDING, R.PHASE_STARTING):
        assert C.decide(replace(very_idle, phase=phase), C.Policy(idle_timeout=60), NOW) is None
    assert C.decide(replace(very_idle, deleting=True), C.Policy(idle_timeout=60), NOW) is None


def test_max_age_counts_from_creation_whatever_the_activity() -> None:
    policy = C.Policy(max_age=3600, idle_timeout=600)
    old_busy = facts(created_at=ago(3601), execution_state="busy", connections=2,
                     last_activity=NOW)
    decision = C.decide(old_busy, policy, NOW)
    assert decision is not None and decision.reason is C.CullReason.MAX_AGE
    assert decision.age == 3601
    assert "maxAge of 1h" in decision.message
    # A restart (new pod, later startedAt) does not make the kernel younger.
    assert C.decide(replace(old_busy, started_at=ago(5)), policy, NOW) is not None
    assert C.decide(facts(created_at=ago(3599), last_activity=NOW), policy, NOW) is None


def lease(holder: str, renewed: datetime | None, duration: float = 30) -> C.LeaseFacts:
    return C.LeaseFacts(name=f"elastic-kernels-gateway-{holder}", holder=holder,
                        renew_time=renewed, duration=duration)


def test_orphaned_when_the_gateway_lease_expired_beyond_grace() -> None:
    policy = C.Policy()
    k = facts(gateway="gw-1", lease_checked=True, created_at=ago(7200))
    expired = replace(k, gateway_lease=lease("gw-1", ago(400), 30))  # expired 370 s ago
    decision = C.decide(expired, policy, NOW, orphan_grace=300)
    assert decision is not None and decision.reason is C.CullReason.ORPHANED
    assert "gw-1" in decision.message and "grace 5m" in decision.message
    assert C.decide(expired, policy, NOW, orphan_grace=400) is None  # still within grace
    live = replace(k, gateway_lease=lease("gw-1", ago(5), 30))
    assert C.decide(live, policy, NOW, orphan_grace=0) is None


def test_orphaned_when_the_lease_is_missing_or_held_by_someone_else() -> None:
    k = facts(gateway="gw-1", lease_checked=True, created_at=ago(7200))
    missing = C.decide(k, C.Policy(), NOW, orphan_grace=60)
    assert missing is not None and missing.reason is C.CullReason.ORPHANED
    assert "holds no lease" in missing.message
    other = C.decide(replace(k, gateway_lease=lease("gw-2", NOW)), C.Policy(), NOW,
                     orphan_grace=60)
    assert other is not None and "held by 'gw-2'" in other.message


def test_recent_claims_and_gatewayless_kernels_are_never_orphans() -> None:
    policy = C.Policy()
    fresh = facts(gateway="gw-1", lease_checked=True, created_at=ago(30))
    assert C.decide(fresh, policy, NOW, orphan_grace=60) is None  # created within grace
    claimed = replace(fresh, created_at=ago(7200), lease_renewed_at=ago(30))
    assert C.decide(claimed, policy, NOW, orphan_grace=60) is None  # claimed within grace
    plain = facts(gateway="", lease_checked=True, created_at=ago(10**6))
    assert C.decide(plain, policy, NOW, orphan_grace=0) is None
    # The gateway does not judge orphans: lease_checked is False in its facts.
    unchecked = facts(gateway="gw-1", created_at=ago(10**6))
    assert C.decide(unchecked, policy, NOW, orphan_grace=0) is None


def test_activity_slack_delays_the_crons_idle_cull() -> None:
    policy = C.Policy(idle_timeout=600)
    k = facts(last_activity=ago(630))
    assert C.decide(k, policy, NOW) is not None
    assert C.decide(k, policy, NOW, activity_slack=C.MIRROR_INTERVAL) is None
    assert C.decide(facts(last_activity=ago(661)), policy, NOW,
                    activity_slack=C.MIRROR_INTERVAL) is not None


# --- per-kernelspec policy over the defaults ------------------------------------------------------


def test_kernelspec_timeouts_override_the_defaults() -> None:
    defaults = C.Policy(idle_timeout=7200, max_age=86400, reclaim_after=600)
    gpu = spec_view("python-gpu", "gpu-fast", idleTimeout="2s", cullConnected=True)
    cpu = spec_view("python-cpu", "cpu-slow", idleTimeout="1h")
    book = C.PolicyBook.from_objects(defaults, [
        derived_kernelspec("python-gpu", "gpu-fast", culling={"idleTimeout": "2s"}),
        derived_kernelspec("python-cpu", "cpu-slow", culling={"idleTimeout": "1h"}),
    ])
    assert C.effective_policy(gpu, defaults) == C.Policy(
        idle_timeout=2, cull_connected=True, max_age=86400, reclaim_after=600)
    assert book.for_spec("gpu-fast").idle_timeout == 2
    assert book.for_spec("cpu-slow").idle_timeout == 3600

    idle_5s = dict(last_activity=ago(5), connections=0, execution_state="idle")
    gpu_kernel = facts("g", kernel_spec="gpu-fast", gpus=1, **idle_5s)
    cpu_kernel = facts("c", kernel_spec="cpu-slow", **idle_5s)
    culled = C.decide(gpu_kernel, book(gpu_kernel), NOW)
    assert culled is not None and culled.reason is C.CullReason.IDLE_TIMEOUT
    assert C.decide(cpu_kernel, book(cpu_kernel), NOW) is None
    assert C.effective_policy(cpu, defaults).cull_connected is False


def test_zero_in_the_kernelspec_disables_a_default_and_missing_specs_get_defaults() -> None:
    defaults = C.Policy(idle_timeout=60, max_age=3600)
    off = spec_view("python-cpu", "never", idleTimeout="0", maxAge="0")
    assert C.effective_policy(off, defaults) == C.Policy()
    broken = derived_kernelspec("python-cpu", "broken", culling={"idleTimeout": "soon"})
    book = C.PolicyBook.from_objects(defaults, [broken])
    assert book.for_spec("broken") == defaults
    assert book.for_spec("deleted-since") == defaults
    assert len(book.problems) == 1 and "spec.culling.idleTimeout" in book.problems[0]


def test_culling_defaults_are_traitlets_config_and_reject_negatives() -> None:
    cfg = Config()
    cfg.CullingDefaults.idle_timeout = 1800
    cfg.CullingDefaults.cull_busy = True
    defaults = C.CullingDefaults(config=cfg)
    assert defaults.as_policy() == C.Policy(idle_timeout=1800, cull_busy=True, reclaim_after=600)
    with pytest.raises(TraitError, match="idle_timeout must be >= 0"):
        C.CullingDefaults(idle_timeout=-1)
    with pytest.raises(TraitError, match="interval must be > 0"):
        C.CullingDefaults(interval=0)


# --- busy and connected ------------------------------------------------------------------------


def test_cull_busy_false_never_culls_a_busy_kernel() -> None:
    busy = facts(execution_state="busy", last_activity=ago(10**5))
    assert C.decide(busy, C.Policy(idle_timeout=60, cull_busy=False), NOW) is None
    culled = C.decide(busy, C.Policy(idle_timeout=60, cull_busy=True), NOW)
    assert culled is not None and culled.reason is C.CullReason.IDLE_TIMEOUT


def test_cull_connected_false_never_culls_a_connected_kernel() -> None:
    connected = facts(connections=1, execution_state="idle", last_activity=ago(10**5))
    assert C.decide(connected, C.Policy(idle_timeout=60, cull_connected=False), NOW) is None
    assert C.decide(connected, C.Policy(idle_timeout=60, cull_connected=True), NOW) is not None
    assert C.decide(replace(connected, connections=0), C.Policy(idle_timeout=60), NOW) is not None


# --- the cron judges from the record what the gateway mirrored -----------------------------------


def record(gateway: str = "gw-1", **status: Any) -> dict[str, Any]:
    """A JupyterKernel as the claiming gateway leaves it: Running, idle for a day."""
    kernel_id = str(uuid.uuid4())
    return {
        "apiVersion": R.API_VERSION, "kind": R.KERNEL_KIND,
        "metadata": {"name": R.kernel_object_name(kernel_id), "namespace": "default",
                     "creationTimestamp": R.format_timestamp(ago(2 * 86400))},
        "spec": {"kernelId": kernel_id, "user": "alice", "kernelSpec": "python-cpu",
                 **({"gateway": gateway} if gateway else {})},
        "status": {"phase": "Running", "lastActivity": R.format_timestamp(ago(86400)),
                   **status},
    }


def cron_decides(obj: dict[str, Any], policy: C.Policy, lease_renewed: datetime = NOW,
                 ) -> C.CullDecision | None:
    """As the cron does: facts from the record alone, the gateway's lease checked."""
    view = R.KernelView.from_object(obj)
    live = lease(view.gateway, lease_renewed) if view.gateway else None
    kernel = C.KernelFacts.from_view(view, lease_checked=True, gateway_lease=live)
    return C.decide(kernel, policy, NOW, orphan_grace=300, activity_slack=C.MIRROR_INTERVAL)


def test_the_cron_keeps_what_the_record_shows_connected_or_busy() -> None:
    policy = C.Policy(idle_timeout=3600)
    assert cron_decides(record(), policy) is not None  # a day idle, nobody there
    assert cron_decides(record(connections=0, executionState="idle"), policy) is not None
    assert cron_decides(record(connections=2), policy) is None
    assert cron_decides(record(executionState="busy"), policy) is None
    # The kernelspec's cullConnected / cullBusy make them irrelevant, as in the gateway.
    assert cron_decides(record(connections=2), replace(policy, cull_connected=True)) is not None
    assert cron_decides(record(executionState="busy"), replace(policy, cull_busy=True)) \
        is not None
    # maxAge is not protected against (rule 1), whatever the record says.
    old = cron_decides(record(connections=1, executionState="busy"), C.Policy(max_age=86400))
    assert old is not None and old.reason is C.CullReason.MAX_AGE


def test_recorded_state_is_trusted_only_while_its_gateway_lives() -> None:
    policy = C.Policy(idle_timeout=3600)
    connected = record(connections=1, executionState="busy")
    # The gateway's lease ran out an hour ago: its view is stale, the kernel an orphan.
    orphan = cron_decides(connected, policy, lease_renewed=ago(3600))
    assert orphan is not None and orphan.reason is C.CullReason.ORPHANED
    # A record naming no gateway has no lease to vouch for the view: it does not protect.
    facts_of = C.KernelFacts.from_object(record(gateway="", connections=1, executionState="busy"))
    assert facts_of.connections is None and facts_of.execution_state is None
    unclaimed = cron_decides(record(gateway="", connections=1, executionState="busy"), policy)
    assert unclaimed is not None and unclaimed.reason is C.CullReason.IDLE_TIMEOUT
    # The gateway's own live values override the record's.
    live = C.KernelFacts.from_object(connected, connections=0, execution_state="idle")
    assert C.decide(live, policy, NOW) is not None


def test_the_record_rejects_malformed_connections_and_states() -> None:
    for bad in ({"connections": -1}, {"connections": "2"}, {"connections": True},
                {"executionState": "starting"}, {"executionState": 1}):
        with pytest.raises(ValueError):
            R.KernelView.from_object(record(**bad))
    view = R.KernelView.from_object(record(connections=3, executionState="busy"))
    assert (view.connections, view.execution_state) == (3, "busy")
    bare = R.KernelView.from_object(record())
    assert (bare.connections, bare.execution_state) == (None, None)


def test_the_mirror_writes_changes_only() -> None:
    def view(**status: Any) -> R.KernelView:
        return R.KernelView.from_object(record(**status))

    mirrored = ago(600)
    at_rest = view(connections=1, executionState="idle", lastActivity=R.format_timestamp(mirrored))
    connected_idle = facts(connections=1, execution_state="idle", last_activity=mirrored)
    # An idle kernel with a client connected: nothing to write, pass after pass.
    assert C.status_to_mirror(connected_idle, at_rest, mirrored) == {}
    # A fresh record (no field yet) reads as 0 connections and idle: a new kernel costs nothing.
    fresh = facts(connections=0, execution_state="starting", last_activity=None)
    assert C.status_to_mirror(fresh, view(), None) == {}
    # Each change is written once.
    assert C.status_to_mirror(replace(connected_idle, connections=0), at_rest, mirrored) == {
        "connections": 0}
    assert C.status_to_mirror(replace(connected_idle, connections=2), at_rest, mirrored) == {
        "connections": 2}
    # Busy is what is sampled at the pass; every other state is idle to the policy.
    assert C.status_to_mirror(replace(connected_idle, execution_state="busy"), at_rest,
                              mirrored) == {"executionState": "busy"}
    busy_record = view(connections=1, executionState="busy",
                       lastActivity=R.format_timestamp(mirrored))
    for state in ("idle", "starting", "restarting", "dead"):
        assert C.status_to_mirror(replace(connected_idle, execution_state=state), busy_record,
                                  mirrored) == {"executionState": "idle"}
    assert C.status_to_mirror(replace(connected_idle, execution_state=None), busy_record,
                              mirrored) == {}  # unknown: leave the record alone
    # Real activity: at most once per MIRROR_INTERVAL...
    assert C.status_to_mirror(replace(connected_idle, last_activity=ago(590)), at_rest,
                              mirrored) == {}
    assert C.status_to_mirror(replace(connected_idle, last_activity=ago(500)), at_rest,
                              mirrored) == {"lastActivity": R.format_timestamp(ago(500))}
    # Due against what the cron counts from: the newer of this gateway's last write and the
    # record's, else the pod's start. A kernel unused since it started costs no write at all.
    assert C.status_to_mirror(replace(connected_idle, last_activity=ago(500)), at_rest,
                              ago(550)) == {}
    started = view(connections=1, lastActivity=None, startedAt=R.format_timestamp(ago(100)))
    assert C.status_to_mirror(replace(connected_idle, last_activity=ago(101)), started,
                              None) == {}
    assert C.status_to_mirror(replace(connected_idle, last_activity=ago(70)), started, None) == {}
    assert C.status_to_mirror(replace(connected_idle, last_activity=ago(39)), started, None) == {
        "lastActivity": R.format_timestamp(ago(39))}
    # ... but free along with another write.
    assert C.status_to_mirror(replace(connected_idle, connections=0, last_activity=ago(590)),
                              at_rest, mirrored) == {
        "connections": 0, "lastActivity": R.format_timestamp(ago(590))}
    # A stale record (another gateway's count, a lost race) is corrected to this gateway's view.
    assert C.status_to_mirror(facts(connections=0, execution_state="idle", last_activity=mirrored),
                              view(connections=4, executionState="busy",
                                   lastActivity=R.format_timestamp(mirrored)), mirrored) == {
        "connections": 0, "executionState": "idle"}


def test_mirror_is_due_at_most_once_per_interval() -> None:
    assert C.mirror_due(None, ago(1))
    assert not C.mirror_due(None, None)
    assert not C.mirror_due(ago(30), ago(1))  # newer, but the last write is recent
    assert C.mirror_due(ago(61), ago(1))
    assert not C.mirror_due(ago(1), ago(100))  # never move backwards


# --- reclaim under GPU pressure ---------------------------------------------------------------


def test_reclaim_takes_only_idle_gpu_kernels_past_reclaim_after_oldest_idle_first() -> None:
    gpu = C.Policy(idle_timeout=3600, reclaim_after=600)
    never = C.Policy(reclaim_after=0)
    policies = {"python-gpu": gpu, "gpu-never": never, "python-cpu": gpu}
    idle = dict(execution_state="idle", connections=1, gpus=1, kernel_spec="python-gpu")
    kernels = [
        facts("recent", last_activity=ago(599), **idle),  # under its threshold
        facts("oldest", last_activity=ago(5000), **idle),
        facts("middle", last_activity=ago(1200), **idle),
        facts("busy", last_activity=ago(9000), **{**idle, "execution_state": "busy"}),
        facts("unknown", last_activity=ago(9000), **{**idle, "execution_state": None}),
        facts("cpu", last_activity=ago(9000), **{**idle, "gpus": 0, "kernel_spec": "python-cpu"}),
        facts("optout", last_activity=ago(9000), **{**idle, "kernel_spec": "gpu-never"}),
        facts("queued", last_activity=None, started_at=None, created_at=ago(9000),
              **{**idle, "phase": R.PHASE_PENDING}),
        facts("leaving", last_activity=ago(9000), deleting=True, **idle),
        facts("two", last_activity=ago(3000), **{**idle, "gpus": 2}),
    ]
    picked = C.reclaim_candidates(kernels, lambda k: policies[k.kernel_spec], NOW)
    assert [d.kernel.name for d in picked] == ["kernel-oldest", "kernel-two", "kernel-middle"]
    assert all(d.reason is C.CullReason.RECLAIMED for d in picked)
    assert "reclaimAfter of 10m" in picked[0].message
    assert "2 nvidia.com/gpu" in picked[1].message


def test_reclaim_ties_break_by_name_so_replicas_agree() -> None:
    idle = dict(execution_state="idle", gpus=1, kernel_spec="python-gpu",
                last_activity=ago(1000))
    kernels = [facts("b", **idle), facts("a", **idle), facts("c", **idle)]
    picked = C.reclaim_candidates(kernels, lambda k: C.Policy(reclaim_after=60), NOW)
    assert [d.kernel.name for d in picked] == ["kernel-a", "kernel-b", "kernel-c"]


def test_a_reclaim_names_the_flavor_the_kernel_held() -> None:
    mig = facts("mig", execution_state="idle", gpus=1, kernel_spec="python-mig",
                last_activity=ago(1000), gpu_resource="nvidia.com/mig-1g.10gb")
    (picked,) = C.reclaim_candidates([mig], lambda k: C.Policy(reclaim_after=60), NOW)
    assert "its 1 nvidia.com/mig-1g.10gb went to that kernel" in picked.message


# --- carrying a decision out (local cluster) ------------------------------------------------------


async def make_record(conn: ClusterConnection, **status: Any) -> dict[str, Any]:
    kernel_id = str(uuid.uuid4())
    body = {
        "apiVersion": R.API_VERSION, "kind": R.KERNEL_KIND,
        "metadata": {"name": R.kernel_object_name(kernel_id)},
        "spec": {"kernelId": kernel_id, "user": "alice", "kernelSpec": "python-gpu"},
    }
    created = await conn.client.create(R.JUPYTERKERNELS, body)
    return await conn.client.patch(
        R.JUPYTERKERNELS, created["metadata"]["name"],
        {"status": {"phase": "Running", "reason": "Started", "message": "", **status}},
        subresource="status")


async def events_for(conn: ClusterConnection, name: str) -> list[dict[str, Any]]:
    listed = await conn.client.list(EVENTS, field_selector=f"involvedObject.name={name}")
    return listed["items"]


def idle_decision(record: dict[str, Any]) -> C.CullDecision:
    kernel = C.KernelFacts.from_object(record)
    decision = C.decide(kernel, C.Policy(idle_timeout=60), datetime.now(timezone.utc))
    assert decision is not None
    return decision


async def test_cull_records_the_reason_then_deletes_once_with_one_event(
        conn: ClusterConnection) -> None:
    record = await make_record(conn, lastActivity="2024-01-01T00:00:00Z")
    name = record["metadata"]["name"]
    informer = await conn.informer(R.JUPYTERKERNELS)
    seen: list[tuple[str, dict[str, Any]]] = []
    informer.add_listener(lambda kind, obj, old: seen.append((kind, obj)))
    decision = idle_decision(record)

    results = await asyncio.gather(*(A.cull_kernel(conn.client, decision) for _ in range(3)))

    outcomes = sorted(r.outcome.name for r in results)
    assert outcomes == ["ALREADY_GONE", "ALREADY_GONE", "DELETED"], results
    await informer.wait_for(lambda o: o is None, name, timeout=10)
    deleted = [obj for kind, obj in seen if kind == "DELETED" and obj["metadata"]["name"] == name]
    assert deleted and deleted[-1]["status"]["reason"] == "IdleTimeout"
    assert deleted[-1]["status"]["phase"] == "Terminating"
    events = await events_for(conn, name)
    assert [(e["reason"], e["involvedObject"]["uid"]) for e in events] == [
        ("IdleTimeout", record["metadata"]["uid"])]
    assert "idleTimeout of 1m" in events[0]["message"]


async def test_a_record_written_after_the_decision_is_not_culled(
        conn: ClusterConnection) -> None:
    record = await make_record(conn, lastActivity="2024-01-01T00:00:00Z")
    name = record["metadata"]["name"]
    decision = idle_decision(record)
    fresh = await conn.client.patch(
        R.JUPYTERKERNELS, name, {"status": {"lastActivity": R.format_timestamp(
            datetime.now(timezone.utc))}}, subresource="status")

    result = await A.cull_kernel(conn.client, decision)

    assert result.outcome is A.CullOutcome.CHANGED
    assert result.current is not None
    assert result.current["metadata"]["resourceVersion"] == fresh["metadata"]["resourceVersion"]
    kept = await conn.client.get(R.JUPYTERKERNELS, name)
    assert kept["status"]["phase"] == "Running" and kept["status"]["reason"] == "Started"
    assert await events_for(conn, name) == []
    # Judged again on the current record, the kernel is active: nothing to do.
    assert C.decide(C.KernelFacts.from_object(result.current), C.Policy(idle_timeout=60),
                    datetime.now(timezone.utc)) is None


async def test_unmark_restores_the_status_only_if_the_mark_is_still_ours(
        conn: ClusterConnection) -> None:
    record = await make_record(conn, lastActivity="2024-01-01T00:00:00Z", message="ok")
    name = record["metadata"]["name"]
    decision = idle_decision(record)
    await A.mark_culled(conn.client, decision)
    await A._unmark(conn.client, decision)
    restored = (await conn.client.get(R.JUPYTERKERNELS, name))["status"]
    assert (restored["phase"], restored["reason"], restored["message"]) == (
        "Running", "Started", "ok")

    marked = await A.mark_culled(conn.client, replace(
        decision, kernel=C.KernelFacts.from_object(await conn.client.get(R.JUPYTERKERNELS, name))))
    assert marked["status"]["reason"] == "IdleTimeout"
    await conn.client.patch(R.JUPYTERKERNELS, name,
                            {"status": {"reason": "ShutdownRequested"}}, subresource="status")
    await A._unmark(conn.client, decision)
    assert (await conn.client.get(R.JUPYTERKERNELS, name))["status"]["reason"] == \
        "ShutdownRequested"


async def test_cull_all_runs_culls_concurrently_and_keeps_order(conn: ClusterConnection) -> None:
    records = [await make_record(conn, lastActivity="2024-01-01T00:00:00Z") for _ in range(5)]
    decisions = [idle_decision(r) for r in records]
    gone = replace(decisions[2].kernel, uid=str(uuid.uuid4()))  # a record that is not there
    decisions[2] = replace(decisions[2], kernel=replace(gone, name="kernel-" + str(uuid.uuid4())))

    results = await A.cull_all(conn.client, decisions, concurrency=2)

    assert [r.decision for r in results] == decisions
    assert [r.outcome for r in results] == [
        A.CullOutcome.DELETED, A.CullOutcome.DELETED, A.CullOutcome.ALREADY_GONE,
        A.CullOutcome.DELETED, A.CullOutcome.DELETED]
    listed = await conn.client.list(R.JUPYTERKERNELS)
    assert [o["metadata"]["name"] for o in listed["items"]] == [records[2]["metadata"]["name"]]
    with pytest.raises(ValueError):
        await A.cull_all(conn.client, decisions, concurrency=0)
