"""``elastic-kernels cull`` as the CronJob runs it: a subprocess against the local cluster.

The records are written directly (a gateway would write them): idleness is an old
``status.lastActivity``, age a short ``maxAge``, orphans a Lease that is stale or missing. One
test starts a real kernel through the provisioner to show its pod and Secret go with its record.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import yaml

from elastic_kernels import cli, cull
from elastic_kernels.culling import actions as A
from elastic_kernels.culling import policy as C
from elastic_kernels.gateway.lifecycle.kernelmanager import ElasticKernelManager
from elastic_kernels.leases import format_micro_time, lease_name
from elastic_kernels.kernelspecs import ElasticKernelSpecManager
from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import EVENTS, LEASES, PODS, SECRETS, KubeClient, KubeError
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.localcluster.cluster import LocalCluster
from elastic_kernels.testing import free_port

from .conftest import REPO, derived_kernelspec

pytestmark = pytest.mark.timeout(60)

JSONDict = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- helpers (also used by test_lease) -----------------------------------------------------------


async def run_cull(*args: str, kubeconfig: Path | None = None,
                   timeout: float = 40) -> tuple[int, str, str]:
    """Run the command in a subprocess without blocking the loop the local cluster runs on."""
    argv = [sys.executable, "-m", "elastic_kernels", "cull"]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    proc = await asyncio.create_subprocess_exec(
        *argv, *args, cwd=str(REPO),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def add_kernelspec(client: KubeClient, base: str, name: str, **culling: Any) -> None:
    await client.create(R.KERNELSPECS, derived_kernelspec(base, name, culling=culling))


async def make_kernel(client: KubeClient, spec: str, *, gateway: str = "", user: str = "alice",
                      last_activity: datetime | None = None, phase: str = "Running",
                      gpus: int = 0, started_at: datetime | None = None) -> JSONDict:
    """A JupyterKernel record as a gateway writes it (no pod: the cron needs none)."""
    kernel_id = str(uuid.uuid4())
    body: JSONDict = {
        "apiVersion": R.API_VERSION, "kind": R.KERNEL_KIND,
        "metadata": {"name": R.kernel_object_name(kernel_id),
                     "labels": {R.LABEL_MANAGED_BY: R.MANAGED_BY,
                                R.LABEL_COMPONENT: R.COMPONENT_KERNEL}},
        "spec": {"kernelId": kernel_id, "user": user, "kernelSpec": spec},
    }
    if gateway:
        body["spec"]["gateway"] = gateway
    created = await client.create(R.JUPYTERKERNELS, body)
    status: JSONDict = {"phase": phase, "gpus": gpus,
                        "startedAt": R.format_timestamp(started_at) if started_at
                        else created["metadata"]["creationTimestamp"]}
    if last_activity is not None:
        status["lastActivity"] = R.format_timestamp(last_activity)
    return await client.patch(R.JUPYTERKERNELS, body["metadata"]["name"], {"status": status},
                              subresource="status")


async def put_lease(client: KubeClient, gateway: str, renewed: datetime,
                    duration: int = 30) -> JSONDict:
    """A gateway Lease as GatewayLease writes it, with the renewal time we choose."""
    return await client.create(LEASES, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": lease_name(gateway),
                     "labels": {R.LABEL_MANAGED_BY: R.MANAGED_BY,
                                R.LABEL_COMPONENT: "gateway"}},
        "spec": {"holderIdentity": gateway, "leaseDurationSeconds": duration,
                 "acquireTime": format_micro_time(renewed),
                 "renewTime": format_micro_time(renewed)},
    })


async def names(client: KubeClient) -> set[str]:
    return {o["metadata"]["name"] for o in (await client.list(R.JUPYTERKERNELS))["items"]}


async def cull_events(client: KubeClient) -> list[JSONDict]:
    items = (await client.list(EVENTS))["items"]
    return [e for e in items if e.get("source", {}).get("component") == "elastic-kernels-cull"]


async def wait_until_older_than(record: JSONDict, seconds: float) -> None:
    """Let a record reach an age (the API sets creationTimestamp; it cannot be back-dated)."""
    created = R.parse_timestamp(record["metadata"]["creationTimestamp"])
    remaining = (created + timedelta(seconds=seconds) - utcnow()).total_seconds()
    if remaining > 0:
        await asyncio.sleep(remaining + 0.05)


# --- the scenario -------------------------------------------------------------------------------


class Scenario:
    """Kernels with known fates. ``expected`` maps record name -> reason; the rest must stay."""

    def __init__(self) -> None:
        self.records: dict[str, JSONDict] = {}
        self.expected: dict[str, str] = {}

    def name(self, label: str) -> str:
        return self.records[label]["metadata"]["name"]

    @property
    def kept(self) -> set[str]:
        return {r["metadata"]["name"] for r in self.records.values()} - set(self.expected)


@pytest_asyncio.fixture
async def scenario(conn: ClusterConnection) -> AsyncIterator[Scenario]:
    client = conn.client
    now = utcnow()
    await add_kernelspec(client, "python-gpu", "cron-gpu", idleTimeout="10m")
    await add_kernelspec(client, "python-cpu", "cron-cpu", idleTimeout="4h")
    await add_kernelspec(client, "python-cpu", "cron-young", maxAge="1s")
    await put_lease(client, "gw-dead", now - timedelta(hours=1), duration=30)
    await put_lease(client, "gw-live", now, duration=3600)
    s = Scenario()
    two_hours_ago = now - timedelta(hours=2)
    s.records["idle"] = await make_kernel(client, "cron-gpu", last_activity=two_hours_ago,
                                          gpus=1, user="bob")
    s.records["active"] = await make_kernel(client, "cron-gpu", last_activity=now, gpus=1)
    s.records["cpu"] = await make_kernel(client, "cron-cpu", last_activity=two_hours_ago)
    s.records["old"] = await make_kernel(client, "cron-young", last_activity=now)
    s.records["expired"] = await make_kernel(client, "cron-cpu", gateway="gw-dead",
                                             last_activity=now)
    s.records["missing"] = await make_kernel(client, "cron-cpu", gateway="gw-gone",
                                             last_activity=now)
    s.records["live"] = await make_kernel(client, "cron-cpu", gateway="gw-live",
                                          last_activity=now)
    s.records["plain"] = await make_kernel(client, "cron-cpu", last_activity=now)
    # Waiting for a GPU since long ago: its launch timeout governs it, not idleness.
    s.records["queued"] = await make_kernel(client, "cron-gpu", phase="Pending",
                                            started_at=two_hours_ago)
    s.expected = {s.name("idle"): "IdleTimeout", s.name("old"): "MaxAge",
                  s.name("expired"): "Orphaned", s.name("missing"): "Orphaned"}
    await wait_until_older_than(s.records["old"], 1.0)
    yield s


def parse_table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0].split()
    assert header == ["KERNEL", "USER", "SPEC", "REASON", "IDLE", "AGE", "ACTION"]
    rows = []
    for line in lines[1:]:
        cells = line.split(None, 6)
        rows.append(dict(zip(header, cells)))
    return rows


# --- tests --------------------------------------------------------------------------------------


async def test_dry_run_lists_what_it_would_delete_and_deletes_nothing(
        cluster: LocalCluster, conn: ClusterConnection, scenario: Scenario) -> None:
    before = await names(conn.client)
    code, out, err = await run_cull("--dry-run", "--orphan-grace", "0",
                                    kubeconfig=cluster.kubeconfig_path)
    assert code == 0, err
    rows = parse_table(out)
    by_kernel = {row["KERNEL"]: row for row in rows}
    assert {R.kernel_object_name(k): row["REASON"] for k, row in by_kernel.items()} == \
        scenario.expected
    assert {row["ACTION"] for row in rows} == {"would delete"}
    idle_row = by_kernel[scenario.records["idle"]["spec"]["kernelId"]]
    assert (idle_row["USER"], idle_row["SPEC"], idle_row["IDLE"]) == ("bob", "cron-gpu", "2h")
    assert "dry run" in err and "9 kernels checked" in err
    assert await names(conn.client) == before
    assert await cull_events(conn.client) == []


async def test_a_run_deletes_exactly_the_due_kernels_and_records_why(
        cluster: LocalCluster, conn: ClusterConnection, scenario: Scenario) -> None:
    code, out, err = await run_cull("--orphan-grace", "0", "--output", "json",
                                    kubeconfig=cluster.kubeconfig_path)
    assert code == 0, err
    report = json.loads(out)
    assert {r["name"]: r["reason"] for r in report} == scenario.expected
    assert {r["action"] for r in report} == {"deleted"}
    orphan = next(r for r in report if r["name"] == scenario.name("expired"))
    assert orphan["gateway"] == "gw-dead" and "gw-dead" in orphan["message"]
    idle = next(r for r in report if r["name"] == scenario.name("idle"))
    assert idle["idle_seconds"] >= 7200 and idle["user"] == "bob"
    assert idle["kernelspec"] == "cron-gpu" and idle["kernel"] in idle["name"]

    assert await names(conn.client) == scenario.kept
    events = await cull_events(conn.client)
    assert sorted((e["involvedObject"]["name"], e["reason"]) for e in events) == \
        sorted(scenario.expected.items())
    uids = {r["metadata"]["name"]: r["metadata"]["uid"] for r in scenario.records.values()}
    assert all(e["involvedObject"]["uid"] == uids[e["involvedObject"]["name"]] for e in events)
    assert all(e["involvedObject"]["kind"] == "JupyterKernel" for e in events)

    # A second run (in-process, same code) finds nothing left to do.
    report2 = await cull.run_cull(conn.client, "default", C.Policy(), orphan_grace=0)
    assert (report2.checked, report2.results, report2.warnings) == (5, [], [])
    text = io.StringIO()
    cull.write_report(report2, "table", False, text, io.StringIO())
    assert text.getvalue() == "no kernels to cull (5 checked)\n"


async def test_overlapping_runs_both_succeed_and_delete_each_kernel_once(
        cluster: LocalCluster, conn: ClusterConnection, scenario: Scenario) -> None:
    args = ("--orphan-grace", "0", "-o", "json")
    runs = await asyncio.gather(*(run_cull(*args, kubeconfig=cluster.kubeconfig_path)
                                  for _ in range(2)))
    for code, _, err in runs:
        assert code == 0, err
    reports = [json.loads(out) for _, out, _ in runs]
    deleted = [r["name"] for report in reports for r in report if r["outcome"] == "deleted"]
    assert sorted(deleted) == sorted(scenario.expected)  # each exactly once, by some run
    for report in reports:
        for r in report:
            assert r["outcome"] in ("deleted", "already_gone"), r
    assert await names(conn.client) == scenario.kept
    events = await cull_events(conn.client)
    assert sorted(e["involvedObject"]["name"] for e in events) == sorted(scenario.expected)


async def test_two_runs_that_decided_on_the_same_state_delete_each_kernel_once(
        conn: ClusterConnection, scenario: Scenario) -> None:
    """The subprocess race above depends on timing; this one forces the worst case: both runs
    have listed and decided before either deletes."""
    client = conn.client
    first, second = [await cull.run_cull(client, "default", C.Policy(), orphan_grace=0,
                                         dry_run=True) for _ in range(2)]
    assert [r.decision.kernel.name for r in first.results] == \
        [r.decision.kernel.name for r in second.results]
    assert len(first.results) == len(scenario.expected)

    a, b = await asyncio.gather(
        A.cull_all(client, [r.decision for r in first.results], component=cull.COMPONENT),
        A.cull_all(client, [r.decision for r in second.results], component=cull.COMPONENT))

    for ra, rb in zip(a, b):
        assert sorted([ra.outcome.name, rb.outcome.name]) == ["ALREADY_GONE", "DELETED"], (ra, rb)
    assert await names(client) == scenario.kept
    events = await cull_events(client)
    assert sorted(e["involvedObject"]["name"] for e in events) == sorted(scenario.expected)


async def test_defaults_from_the_command_line_apply_where_the_kernelspec_is_silent(
        cluster: LocalCluster, conn: ClusterConnection) -> None:
    client = conn.client
    await add_kernelspec(client, "python-cpu", "silent")  # no culling fields at all
    await add_kernelspec(client, "python-cpu", "says-never", idleTimeout="0")
    long_ago = utcnow() - timedelta(hours=3)
    silent = await make_kernel(client, "silent", last_activity=long_ago)
    never = await make_kernel(client, "says-never", last_activity=long_ago)
    orphaned_spec = await make_kernel(client, "deleted-spec", last_activity=long_ago)

    args = cull.build_parser().parse_args(["--idle-timeout", "1h", "--max-age", "0"])
    defaults = C.Policy(idle_timeout=args.idle_timeout, max_age=args.max_age)
    result = await cull.run_cull(client, "default", defaults, orphan_grace=args.orphan_grace)
    report = {r.decision.kernel.name: r.decision.reason.value for r in result.results}
    assert all(r.outcome is A.CullOutcome.DELETED for r in result.results)
    assert report == {silent["metadata"]["name"]: "IdleTimeout",
                      orphaned_spec["metadata"]["name"]: "IdleTimeout"}
    assert await names(client) == {never["metadata"]["name"]}


async def test_a_real_kernel_goes_with_its_pod_and_secret(
        cluster: LocalCluster, conn: ClusterConnection) -> None:
    client = conn.client
    await add_kernelspec(client, "python-cpu", "cron-real", idleTimeout="30m")
    ksm = ElasticKernelSpecManager()
    await ksm.start_watching()
    specs = await conn.informer(R.KERNELSPECS)
    await specs.wait_for(lambda o: o is not None, "cron-real", timeout=10)
    # No auto-restart: this test is about the cron, not about a gateway reacting to a cull.
    km = ElasticKernelManager(kernel_name="cron-real", kernel_spec_manager=ksm,
                              autorestart=False)
    try:
        await km.start_kernel(elastic_user="carol")
        kernel_id = km.kernel_id
        record_name = R.kernel_object_name(kernel_id)
        pod_name = km.provisioner.pod_name
        pods = await conn.informer(PODS, label_selector=R.KERNEL_POD_SELECTOR)
        secrets = await conn.informer(SECRETS, label_selector=R.KERNEL_SELECTOR)
        secret_name = R.key_secret_name(kernel_id)
        assert pods.get(pod_name) is not None and secrets.get(secret_name) is not None
        await client.patch(R.JUPYTERKERNELS, record_name, {"status": {
            "lastActivity": R.format_timestamp(utcnow() - timedelta(hours=1))}},
            subresource="status")

        code, out, err = await run_cull("-o", "json", kubeconfig=cluster.kubeconfig_path)

        assert code == 0, err
        assert [(r["kernel"], r["reason"], r["action"], r["user"]) for r in json.loads(out)] == \
            [(kernel_id, "IdleTimeout", "deleted", "carol")]
        with pytest.raises(KubeError) as gone:
            await client.get(R.JUPYTERKERNELS, record_name)
        assert gone.value.not_found
        # Garbage collection follows the ownerReferences: the pod and the Secret go too.
        await pods.wait_for(lambda p: p is None, pod_name, timeout=30)
        await secrets.wait_for(lambda s: s is None, secret_name, timeout=30)
        assert not await km.is_alive()
    finally:
        if km.has_kernel:
            try:
                await km.shutdown_kernel(now=True)
            except Exception:
                pass



async def test_an_unreachable_api_exits_1_with_a_clear_message(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }))
    code, out, err = await run_cull(kubeconfig=kubeconfig)
    assert code == 1
    assert out == ""
    assert "cannot reach the Kubernetes API server" in err and "127.0.0.1" in err
    assert "Traceback" not in err


def test_a_missing_kubeconfig_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cull", "--kubeconfig", str(tmp_path / "nowhere")]) == 1
    assert "no kubeconfig at" in capsys.readouterr().err


async def test_a_bad_duration_exits_2_with_the_usage() -> None:
    code, out, err = await run_cull("--idle-timeout", "soon")
    assert code == 2 and out == ""
    assert err.startswith("usage: elastic-kernels cull")
    assert "argument --idle-timeout: 'soon' is not a duration" in err


@pytest.mark.parametrize("args, complaint", [
    (("--max-age", "-5"), "argument --max-age: '-5' is negative"),
    (("--orphan-grace", "nan"), "argument --orphan-grace: 'nan' is not a number of seconds"),
    (("--output", "yaml"), "argument --output/-o: invalid choice"),
    (("--concurrency", "0"), "argument --concurrency: '0' must be at least 1"),
    (("--dry-run", "extra"), "unrecognized arguments: extra"),
])
def test_bad_arguments_exit_2(args: tuple[str, ...], complaint: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """The same entry point in-process (the subprocess case above covers the real command)."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["cull", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: elastic-kernels cull") and complaint in err


def test_durations_accept_seconds_and_the_cr_syntax() -> None:
    parse = cull.build_parser().parse_args
    args = parse(["--idle-timeout", "90", "--max-age", "1h30m", "--orphan-grace", "2.5"])
    assert (args.idle_timeout, args.max_age, args.orphan_grace) == (90.0, 5400.0, 2.5)
    assert parse([]).orphan_grace == C.CullingDefaults().orphan_grace


async def test_a_suspended_kernel_past_max_age_goes_with_its_snapshot(
        cluster: LocalCluster, conn: ClusterConnection, tmp_path: Path) -> None:
    """Suspended kernels are not idle-culled or orphaned (no gateway needs to hold them), but
    maxAge ends them, and ``--snapshot-store`` removes their snapshots with them."""
    client = conn.client
    # maxAge is long at first, so a slow first run cannot reach it; it is cut before the second.
    await add_kernelspec(client, "python-gpu", "cron-suspend", idleTimeout="1s", maxAge="1h",
                         onCull="Suspend")
    await put_lease(client, "gw-dead", utcnow() - timedelta(hours=1), duration=30)
    long_ago = utcnow() - timedelta(hours=2)
    young = await make_kernel(client, "cron-suspend", phase="Suspended", gateway="gw-dead",
                              last_activity=long_ago)
    store = tmp_path / "snapshots"
    store.mkdir()
    young_id = young["spec"]["kernelId"]
    (store / f"{young_id}.eksnap").write_bytes(b"sealed")
    # What a gateway killed mid-save left a day ago goes; a save under way now stays.
    dead, under_way = store / ".tmp-dead.eksnap", store / ".tmp-now.eksnap"
    for partial in (dead, under_way):
        partial.write_bytes(b"half a snapshot")
    a_day_ago = dead.stat().st_mtime - 25 * 3600
    os.utime(dead, (a_day_ago, a_day_ago))
    code, out, err = await run_cull("--orphan-grace", "0", "--snapshot-store", str(store),
                                    "--output", "json", kubeconfig=cluster.kubeconfig_path)
    assert code == 0, err
    assert json.loads(out) == []  # idle for hours, its gateway gone: still kept
    assert (store / f"{young_id}.eksnap").exists()
    assert not dead.exists() and under_way.exists()
    assert "removed 1 unfinished snapshot save(s) from the store: .tmp-dead.eksnap" in err

    await client.patch(R.KERNELSPECS, "cron-suspend", {"spec": {"culling": {"maxAge": "1s"}}})
    await wait_until_older_than(young, 1.0)
    code, out, err = await run_cull("--orphan-grace", "0", "--snapshot-store", str(store),
                                    "--output", "json", kubeconfig=cluster.kubeconfig_path)
    assert code == 0, err
    assert [(r["name"], r["reason"]) for r in json.loads(out)] == [
        (young["metadata"]["name"], "MaxAge")]
    assert not (store / f"{young_id}.eksnap").exists()
    assert young["metadata"]["name"] not in await names(client)
