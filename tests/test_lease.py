"""Gateway Leases on the local cluster: renewal, take-over, expiry after SIGKILL, adoption."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from datetime import datetime, timedelta, timezone
import pytest

from elastic_kernels import cull
from elastic_kernels.culling import actions as A
from elastic_kernels.culling import policy as C
from elastic_kernels.leases import (
    LEASE_SELECTOR, GatewayLease, adopt, format_micro_time, is_expired, lease_facts, lease_name,
)
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import LEASES, KubeError
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.localcluster.cluster import LocalCluster

from .conftest import REPO
from .test_cull_cron import add_kernelspec, make_kernel, put_lease

pytestmark = pytest.mark.timeout(30)

MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- pure ---------------------------------------------------------------------------------------


def test_lease_names_are_object_names_and_never_shared() -> None:
    assert lease_name("gw-1") == "elastic-kernels-gateway-gw-1"
    odd = ["My_Host.Example.COM", "my-host-example-com", "x" * 300, "äöü", "..", "a b"]
    made = [lease_name(g) for g in odd]
    assert len(set(made)) == len(made)
    for name in made:
        assert len(name) <= 253 and R.DNS_SUBDOMAIN_RE.match(name), name
    with pytest.raises(ValueError):
        lease_name("")


def test_lease_facts_and_expiry() -> None:
    now = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
    obj = {"metadata": {"name": "elastic-kernels-gateway-a"},
           "spec": {"holderIdentity": "a", "leaseDurationSeconds": 30,
                    "renewTime": format_micro_time(now - timedelta(seconds=40))}}
    facts = lease_facts(obj)
    assert facts == C.LeaseFacts("elastic-kernels-gateway-a", "a",
                                 now - timedelta(seconds=40), 30.0)
    assert is_expired(facts, now) and not is_expired(facts, now, grace=15)
    assert format_micro_time(now) == "2024-01-01T12:00:00.000000Z"
    broken = lease_facts({"metadata": {"name": "x"},
                          "spec": {"renewTime": "yesterday", "leaseDurationSeconds": "30"}})
    assert (broken.renew_time, broken.duration, broken.holder) == (None, 0.0, "")
    assert is_expired(broken, now)


# --- on the cluster -----------------------------------------------------------------------------


async def test_a_gateway_lease_is_acquired_and_renewed_with_one_write(
        cluster: LocalCluster, conn: ClusterConnection) -> None:
    lease = GatewayLease(conn.client, "gw-a", duration=3)
    await lease.start()
    try:
        first = await conn.client.get(LEASES, lease_name("gw-a"))
        spec = first["spec"]
        assert spec["holderIdentity"] == "gw-a" and spec["leaseDurationSeconds"] == 3
        assert MICRO_TIME.match(spec["renewTime"]) and MICRO_TIME.match(spec["acquireTime"])
        assert first["metadata"]["labels"] == {R.LABEL_MANAGED_BY: R.MANAGED_BY,
                                               R.LABEL_COMPONENT: "gateway"}
        assert lease.held

        leases = await conn.informer(LEASES, label_selector=LEASE_SELECTOR)
        renewed = await leases.wait_for(
            lambda o: o is not None and o["spec"]["renewTime"] > spec["renewTime"],
            lease_name("gw-a"), timeout=10)
        assert renewed is not None
        assert renewed["spec"]["acquireTime"] == spec["acquireTime"]
    finally:
        await lease.stop()
    # Stopping without release keeps the claim until it expires.
    kept = await conn.client.get(LEASES, lease_name("gw-a"))
    assert kept["spec"]["holderIdentity"] == "gw-a"

    # One renewal is one write, whatever the number of kernels.
    before = cluster.request_counter.snapshot()
    await lease.renew()
    made = cluster.request_counter.since(before)
    assert sum(made.values()) == 1 and all("leases" in map(str, key) for key in made), made

    await lease.release()
    with pytest.raises(KubeError) as gone:
        await conn.client.get(LEASES, lease_name("gw-a"))
    assert gone.value.not_found


async def test_acquire_takes_over_and_renew_recreates_a_deleted_lease(
        conn: ClusterConnection) -> None:
    old = utcnow() - timedelta(hours=1)
    created = await put_lease(conn.client, "gw-b", old)
    await conn.client.patch(LEASES, created["metadata"]["name"],
                            {"spec": {"holderIdentity": "previous-owner"}})
    lease = GatewayLease(conn.client, "gw-b", duration=30)
    taken = await lease.acquire()
    assert taken["spec"]["holderIdentity"] == "gw-b"
    assert taken["spec"]["leaseTransitions"] == 1
    assert R.parse_timestamp(taken["spec"]["acquireTime"]) > old

    again = await GatewayLease(conn.client, "gw-b", duration=30).acquire()  # same id restarting
    assert again["spec"]["leaseTransitions"] == 1

    await conn.client.delete(LEASES, lease_name("gw-b"))
    back = await lease.renew()
    assert back["spec"]["holderIdentity"] == "gw-b"
    assert (await conn.client.get(LEASES, lease_name("gw-b")))["metadata"]["uid"] == \
        back["metadata"]["uid"]
    with pytest.raises(ValueError):
        GatewayLease(conn.client, "gw-c", duration=0)


HOLDER = """
import asyncio, sys
from elastic_kernels.leases import GatewayLease
from elastic_kernels.kube.client import KubeClient
from elastic_kernels.kube.config import load_cluster_config

async def main() -> None:
    cfg = load_cluster_config(sys.argv[1])
    lease = GatewayLease(KubeClient(cfg.api_client, cfg.namespace), sys.argv[2], duration=1)
    await lease.start()
    print("held", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.timeout(45)
async def test_a_gateway_killed_with_sigkill_leaves_its_kernels_orphaned(
        cluster: LocalCluster, conn: ClusterConnection) -> None:
    client = conn.client
    await add_kernelspec(client, "python-cpu", "lease-cpu", idleTimeout="4h")
    live = GatewayLease(client, "gw-live", duration=30)
    await live.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(cluster.kubeconfig_path), "gw-killed",
        cwd=str(REPO), stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"held\n"
        now = utcnow()
        dead_kernel = await make_kernel(client, "lease-cpu", gateway="gw-killed",
                                        last_activity=now)
        live_kernel = await make_kernel(client, "lease-cpu", gateway="gw-live",
                                        last_activity=now)
        report = await cull.run_cull(client, "default", C.Policy(), orphan_grace=0,
                                     dry_run=True)
        assert report.results == []  # both gateways hold their leases

        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await live.stop()

    try:
        stale = lease_facts(await client.get(LEASES, lease_name("gw-killed")))
        expires = stale.expires_at()
        assert expires is not None
        await asyncio.sleep(max(0.0, (expires - utcnow()).total_seconds()) + 0.05)

        report = await cull.run_cull(client, "default", C.Policy(), orphan_grace=0)
        assert [(r.decision.kernel.name, r.decision.reason, r.outcome) for r in report.results] \
            == [(dead_kernel["metadata"]["name"], C.CullReason.ORPHANED, A.CullOutcome.DELETED)]
        assert "gw-killed" in report.results[0].decision.message
        remaining = {o["metadata"]["name"] for o in (await client.list(R.JUPYTERKERNELS))["items"]}
        assert remaining == {live_kernel["metadata"]["name"]}
    finally:
        await live.release()


async def test_adoption_protects_a_kernel_and_only_one_of_two_racers_wins(
        conn: ClusterConnection) -> None:
    client = conn.client
    await add_kernelspec(client, "python-cpu", "adopt-cpu", idleTimeout="4h")
    await put_lease(client, "gw-dead", utcnow() - timedelta(hours=1), duration=30)
    survivor = GatewayLease(client, "gw-survivor", duration=30)
    await survivor.acquire()
    record = await make_kernel(client, "adopt-cpu", gateway="gw-dead", last_activity=utcnow())

    before = await cull.run_cull(client, "default", C.Policy(), orphan_grace=0, dry_run=True)
    assert [r.decision.reason for r in before.results] == [C.CullReason.ORPHANED]
    stale_decision = before.results[0].decision

    adopted = await adopt(client, record, "gw-survivor")
    assert adopted["spec"]["gateway"] == "gw-survivor"

    # A second gateway adopting from the same (now stale) read loses, and so does a cull
    # decided on it: the kernel stays with its adopter.
    with pytest.raises(KubeError) as lost:
        await adopt(client, record, "gw-other")
    assert lost.value.conflict
    culled = await A.cull_kernel(client, stale_decision)
    assert culled.outcome is A.CullOutcome.CHANGED
    assert (await client.get(R.JUPYTERKERNELS, record["metadata"]["name"]))["spec"]["gateway"] \
        == "gw-survivor"

    after = await cull.run_cull(client, "default", C.Policy(), orphan_grace=0)
    assert after.results == []
    with pytest.raises(ValueError):
        await adopt(client, adopted, "")
