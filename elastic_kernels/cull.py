"""``elastic-kernels cull``: the cron safety net that deletes idle, over-age and orphaned kernels,
and the records of starts that failed after their JupyterKernel was written.

It works from the API alone (JupyterKernel records, gateway Leases, kernelspecs), so it runs
when no gateway is up. What it cannot see (open connections, busy kernels) it reads from the
records, where the claiming gateway writes it when it changes (``status.connections``,
``status.executionState``); an orphan's records are not trusted for that. One list of each, a
decision per kernel with :mod:`elastic_kernels.culling` (the same rules the gateway applies),
concurrent conditional deletions, and a report of what it deleted (or, with ``--dry-run``,
would delete) and why. Garbage collection then removes each kernel's pod and Secret.

It also lists the kernel pods, for one rule the gateways cannot apply to every record: a record
that never started, has no pod and is older than its launch timeout (plus ``--launch-grace``) is
what remains of a start that failed while the API server hung and carried the create out later
(``LaunchAbandoned``). Whatever gateway claims it, nothing else would remove it, and it counts
against its user's kernel limit and GPU quota. Kernels waiting for GPUs have their (gated or
Pending) pod and are never taken for one.

With ``--report`` it deletes nothing and prints, per user and kernelspec, the GPUs held now,
GPU-seconds held and used, and how many of the held GPUs sit idle now
(:mod:`elastic_kernels.culling.usage`), from the records and one reading of the GPU utilisation
source given by ``--scrape-url`` (dcgm-exporter) or ``--prometheus-url``.

Overlapping runs are safe: every deletion is conditional on the record's uid and
resourceVersion, so a kernel is deleted once and the other run reports it "already gone".
Exit status: 0 when nothing failed (kernels already gone are not failures), 1 on errors (API
unreachable, a deletion refused), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, TextIO

from traitlets import TraitError

from .culling import actions as A
from .culling import gpusource as G
from .culling import policy as C
from .culling import usage as U
from .leases import LEASE_SELECTOR, gateway_lease, leases_by_gateway
from .kube import resources as R
from .kube.client import JSON, LEASES, PODS, KubeClient, KubeError
from .kube.config import KubeConfigError, load_cluster_config
from .snapshot.store import SnapshotStore, open_store

log = logging.getLogger("elastic_kernels.cull")

COMPONENT = "elastic-kernels-cull"
#: The provisioner's default launch timeout (ElasticKernelProvisioner.launch_timeout).
DEFAULT_LAUNCH_TIMEOUT = 300.0
DEFAULT_LAUNCH_GRACE = 60.0
#: A save that old has died with its gateway: a save is bounded by its suspend.timeout.
DEFAULT_UNFINISHED_SNAPSHOT_AGE = 24 * 3600.0
COLUMNS = ("KERNEL", "USER", "SPEC", "REASON", "IDLE", "AGE", "ACTION")


def duration_arg(text: str) -> float:
    """Seconds (``90``, ``1.5``) or a CR duration (``30m``, ``1h30m``, ``7d``); ``0`` disables."""
    value: float
    try:
        value = float(text)
    except ValueError:
        try:
            value = R.parse_duration(text)
        except R.DurationError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    else:
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; use 0 to disable the rule")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = C.CullingDefaults()
    p = argparse.ArgumentParser(
        prog="elastic-kernels cull",
        description="Delete JupyterKernels that are idle past their kernelspec's policy, older "
        "than maxAge, or orphaned (their gateway's Lease expired and no gateway adopted them). "
        "A kernelspec's spec.culling wins over the defaults given here. Durations are seconds "
        "or like 30m, 1h30m, 7d; 0 disables a rule.",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG, "
                   "~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--namespace", "-n", help="namespace of the kernels (default: the "
                   "context's, or the pod's own)")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would be deleted, delete nothing")
    p.add_argument("--idle-timeout", type=duration_arg, default=defaults.idle_timeout,
                   metavar="DURATION",
                   help="idle timeout for kernelspecs that set none (default: 0, off)")
    p.add_argument("--max-age", type=duration_arg, default=defaults.max_age, metavar="DURATION",
                   help="maximum age for kernelspecs that set none (default: 0, off)")
    p.add_argument("--orphan-grace", type=duration_arg, default=defaults.orphan_grace,
                   metavar="DURATION",
                   help="how long a gateway's Lease may be expired or missing before its "
                   f"kernels are orphans (default: {R.format_duration(defaults.orphan_grace)})")
    p.add_argument("--activity-slack", type=duration_arg, default=C.MIRROR_INTERVAL,
                   metavar="DURATION",
                   help="added to idle timeouts, because the gateway writes a kernel's activity "
                   "to its record at most about once a minute, and whether it is busy or was "
                   "disconnected at its next culling pass; should cover the gateway's "
                   "CullingDefaults.interval (default: "
                   f"{R.format_duration(C.MIRROR_INTERVAL)})")
    p.add_argument("--launch-timeout", type=duration_arg, default=DEFAULT_LAUNCH_TIMEOUT,
                   metavar="DURATION",
                   help="launch timeout for kernelspecs that set no launchTimeout: the "
                   "gateway's ElasticKernelProvisioner.launch_timeout (default: "
                   f"{R.format_duration(DEFAULT_LAUNCH_TIMEOUT)}; 0: records of such "
                   "kernelspecs are never taken for abandoned starts)")
    p.add_argument("--launch-grace", type=duration_arg, default=DEFAULT_LAUNCH_GRACE,
                   metavar="DURATION",
                   help="how long past its launch timeout a record that never started and has "
                   "no pod is kept before it is deleted as an abandoned start; covers clock "
                   "skew (default: "
                   f"{R.format_duration(DEFAULT_LAUNCH_GRACE)})")
    p.add_argument("--concurrency", type=positive_int, default=8, metavar="N",
                   help="deletions in flight at once (default: 8)")
    p.add_argument("--snapshot-store", default="", metavar="URL",
                   help="the gateway's snapshot store (its snapshot_store): the snapshots of "
                   "the kernels this run deletes (e.g. suspended ones past maxAge) go too")
    p.add_argument("--unfinished-snapshot-age", type=duration_arg,
                   default=DEFAULT_UNFINISHED_SNAPSHOT_AGE, metavar="DURATION",
                   help="with --snapshot-store: delete the temporary objects of snapshot saves "
                   "older than this, which a gateway killed in the middle of a save leaves "
                   "behind; longer than any kernelspec's suspend.timeout (default: "
                   f"{R.format_duration(DEFAULT_UNFINISHED_SNAPSHOT_AGE)})")
    p.add_argument("--report", action="store_true",
                   help="delete nothing; print GPU-seconds held and used per user and "
                   "kernelspec and the GPUs that sit idle now (needs --scrape-url or "
                   "--prometheus-url for utilisation)")
    p.add_argument("--scrape-url", action="append", default=[], metavar="URL",
                   help="a dcgm-exporter /metrics URL to read GPU utilisation from (repeat "
                   "for each node's exporter)")
    p.add_argument("--prometheus-url", default="", metavar="URL",
                   help="a Prometheus-compatible query API to read GPU utilisation from; it "
                   "also gives GPU-seconds used over each kernel's life")
    p.add_argument("--util-query", default=G.UTIL_METRIC, metavar="PROMQL",
                   help=f"PromQL for each GPU's utilisation (default: {G.UTIL_METRIC})")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    p.add_argument("--log-level", default="WARNING",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper)
    return p


# --- the run -----------------------------------------------------------------------------------


@dataclass
class CullReport:
    checked: int = 0
    results: list[A.CullResult] = field(default_factory=list)
    #: Things an operator should see that are not failures (unreadable records or kernelspecs).
    warnings: list[str] = field(default_factory=list)
    #: Temporary objects of snapshot saves that never finished (a gateway killed mid-save).
    unfinished_snapshots: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[A.CullResult]:
        return [r for r in self.results if r.outcome is A.CullOutcome.FAILED]


class CullError(Exception):
    """The run could not look at the kernels at all (API unreachable, forbidden, no CRD)."""


async def _list(client: KubeClient, resource: Any, namespace: str, what: str,
                label_selector: str | None = None) -> list[JSON]:
    try:
        listed = await client.list(resource, namespace, label_selector=label_selector)
    except KubeError as e:
        if e.unreachable:
            raise CullError(f"cannot reach the Kubernetes API server: {e.message}") from None
        if e.not_found and resource.group:
            raise CullError(f"cannot list {what} in namespace {namespace}: the API has no "
                            f"{resource.plural}.{resource.group} (is the CRD installed?)") \
                from None
        raise CullError(f"cannot list {what} in namespace {namespace}: {e}") from None
    return list(listed.get("items") or [])


async def _kernel_pods(client: KubeClient, namespace: str,
                       warnings: list[str]) -> tuple[set[str], set[str]] | None:
    """The kernel ids and owner uids of the namespace's kernel pods; None when they cannot be
    listed (then no record is judged for lacking a pod)."""
    try:
        listed = await client.list(PODS, namespace, label_selector=R.KERNEL_POD_SELECTOR)
    except KubeError as e:
        if e.unreachable:
            raise CullError(f"cannot reach the Kubernetes API server: {e.message}") from None
        warnings.append(f"cannot list kernel pods ({e}): records without a pod are not "
                        "checked (grant the cull job list on pods)")
        return None
    kernel_ids: set[str] = set()
    owners: set[str] = set()
    for pod in listed.get("items") or []:
        meta = pod.get("metadata") or {}
        kernel_id = (meta.get("labels") or {}).get(R.LABEL_KERNEL_ID)
        if isinstance(kernel_id, str):
            kernel_ids.add(kernel_id)
        owners.update(str(ref.get("uid")) for ref in meta.get("ownerReferences") or []
                      if isinstance(ref, dict) and ref.get("uid"))
    return kernel_ids, owners


async def run_cull(
    client: KubeClient,
    namespace: str,
    defaults: C.Policy,
    *,
    orphan_grace: float,
    activity_slack: float = C.MIRROR_INTERVAL,
    launch_grace: float = DEFAULT_LAUNCH_GRACE,
    dry_run: bool = False,
    concurrency: int = 8,
    now: datetime | None = None,
    snapshots: SnapshotStore | None = None,
    unfinished_snapshot_age: float = DEFAULT_UNFINISHED_SNAPSHOT_AGE,
) -> CullReport:
    """List once, decide per kernel, cull concurrently. Raises CullError when it cannot list."""
    warnings: list[str] = []
    kernels, specs, leases, pods = await asyncio.gather(
        _list(client, R.JUPYTERKERNELS, namespace, "JupyterKernels"),
        _list(client, R.KERNELSPECS, namespace, "JupyterKernelSpecs"),
        _list(client, LEASES, namespace, "gateway Leases", LEASE_SELECTOR),
        _kernel_pods(client, namespace, warnings),
    )
    now = now or datetime.now(timezone.utc)
    book = C.PolicyBook.from_objects(defaults, specs)
    by_name = leases_by_gateway(leases)
    report = CullReport(checked=len(kernels), warnings=list(book.problems) + warnings)

    def facts_of(obj: JSON, pods_seen: bool = True) -> C.KernelFacts:
        view = R.KernelView.from_object(obj)
        has_pod = None
        if pods is not None and pods_seen:
            has_pod = view.kernel_id in pods[0] or (bool(view.uid) and view.uid in pods[1])
        return C.KernelFacts.from_view(view, lease_checked=True,
                                       gateway_lease=gateway_lease(by_name, view.gateway),
                                       has_pod=has_pod)

    def decide(facts: C.KernelFacts) -> C.CullDecision | None:
        return C.decide(facts, book(facts), now, orphan_grace=orphan_grace,
                        activity_slack=activity_slack, launch_grace=launch_grace)

    decisions: list[C.CullDecision] = []
    for obj in kernels:
        try:
            facts = facts_of(obj)
        except ValueError as e:
            report.warnings.append(f"skipped an unreadable record: {e}")
            continue
        decision = decide(facts)
        if decision is not None:
            decisions.append(decision)

    if dry_run:
        report.results = [A.CullResult(d, A.CullOutcome.WOULD_DELETE) for d in decisions]
        return report
    if snapshots is not None:
        try:
            report.unfinished_snapshots = await asyncio.to_thread(
                snapshots.remove_unfinished, unfinished_snapshot_age)
        except OSError as e:
            report.warnings.append(f"could not remove unfinished snapshot saves: {e}")

    results = await A.cull_all(client, decisions, concurrency=concurrency, component=COMPONENT)
    # A record written between our list and our delete (fresh activity, adoption, a status
    # update) is judged once more on its current state, so an unrelated write does not spare
    # a kernel that is still due, and a kernel that became active is spared.
    again: list[tuple[int, C.CullDecision]] = []
    for index, result in enumerate(results):
        if result.outcome is not A.CullOutcome.CHANGED or result.current is None:
            continue
        try:
            # The pod list is older than this record: judge it without (never for LaunchAbandoned).
            fresh = decide(facts_of(result.current, pods_seen=False))
        except ValueError as e:
            report.warnings.append(f"skipped an unreadable record: {e}")
            continue
        if fresh is None:
            results[index] = replace(result, detail="changed since it was listed and is no "
                                     "longer due; kept")
        else:
            again.append((index, fresh))
    if again:
        retried = await A.cull_all(client, [d for _, d in again], concurrency=concurrency,
                                   component=COMPONENT)
        for (index, _), result in zip(again, retried):
            results[index] = result
    report.results = results
    if snapshots is not None:
        await _drop_snapshots(snapshots, results, report)
    return report


async def _drop_snapshots(store: SnapshotStore, results: Sequence[A.CullResult],
                          report: CullReport) -> None:
    """Delete the snapshots of the kernels that are gone (a suspended kernel past its maxAge
    leaves one; the gateway drops those of the kernels it ends itself)."""
    gone = (A.CullOutcome.DELETED, A.CullOutcome.ALREADY_GONE)
    for result in results:
        if result.outcome not in gone:
            continue
        kernel_id = result.decision.kernel.kernel_id
        try:
            await asyncio.to_thread(store.delete, kernel_id)
        except (OSError, ValueError) as e:
            report.warnings.append(f"could not delete the snapshot of kernel {kernel_id}: {e}")


# --- output ------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    """Like kubectl's AGE: the largest unit and the next one down, e.g. 2h, 2h4m, 3d1h, 45s."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (unit, size) in enumerate(units):
        if whole >= size or unit == "s":
            text = f"{whole // size}{unit}"
            if index + 1 < len(units):
                sub_unit, sub_size = units[index + 1]
                rest = (whole % size) // sub_size
                if rest:
                    text += f"{rest}{sub_unit}"
            return text
    return "0s"


def _action(result: A.CullResult) -> str:
    if result.outcome is A.CullOutcome.CHANGED:
        return "kept (changed)"
    return str(result.outcome)


def result_json(result: A.CullResult) -> JSON:
    d = result.decision
    k = d.kernel
    return {
        "kernel": k.kernel_id,
        "name": k.name,
        "namespace": k.namespace,
        "user": k.user,
        "kernelspec": k.kernel_spec,
        "gateway": k.gateway,
        "reason": d.reason.value,
        "message": d.message,
        "idle_seconds": None if d.idle is None else round(d.idle, 3),
        "age_seconds": None if d.age is None else round(d.age, 3),
        "action": _action(result),
        "outcome": result.outcome.name.lower(),
        "detail": result.detail,
    }


def render_table(results: Sequence[A.CullResult]) -> str:
    rows: list[tuple[str, ...]] = [COLUMNS, *[
        (r.decision.kernel.kernel_id, r.decision.kernel.user, r.decision.kernel.kernel_spec,
         r.decision.reason.value, _duration(r.decision.idle), _duration(r.decision.age),
         _action(r))
        for r in results
    ]]
    rows = [tuple(_one_line(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        for row in rows
    )


def _one_line(text: str) -> str:
    """User names are free text: keep a table row on one line whatever they contain."""
    return "".join(c if c.isprintable() else "?" for c in text)


def write_report(report: CullReport, output: str, dry_run: bool, out: TextIO,
                 err: TextIO) -> None:
    for warning in report.warnings:
        print(f"elastic-kernels cull: warning: {warning}", file=err)
    if output == "json":
        json.dump([result_json(r) for r in report.results], out, indent=2)
        out.write("\n")
    elif report.results:
        print(render_table(report.results), file=out)
    else:
        print(f"no kernels to cull ({report.checked} checked)", file=out)
    for r in report.results:
        if r.outcome is A.CullOutcome.FAILED or (r.detail and
                                                 r.outcome is A.CullOutcome.DELETED):
            print(f"elastic-kernels cull: {r.decision.kernel.name}: {r.detail}", file=err)
    counts: dict[str, int] = {}
    for r in report.results:
        counts[_action(r)] = counts.get(_action(r), 0) + 1
    summary = ", ".join(f"{n} {what}" for what, n in counts.items()) or "nothing to do"
    mode = " (dry run)" if dry_run else ""
    print(f"elastic-kernels cull{mode}: {report.checked} kernels checked: {summary}", file=err)
    if report.unfinished_snapshots:
        print(f"elastic-kernels cull: removed {len(report.unfinished_snapshots)} unfinished "
              f"snapshot save(s) from the store: {', '.join(report.unfinished_snapshots)}",
              file=err)


# --- the GPU usage report ------------------------------------------------------------------------


def gpu_source(args: argparse.Namespace) -> G.GpuUseSource:
    """The utilisation source the flags name; ValueError (or TraitError) for a bad choice."""
    if args.scrape_url and args.prometheus_url:
        raise ValueError("give --scrape-url or --prometheus-url, not both")
    if args.scrape_url:
        return G.GpuUseSource(source=G.SOURCE_SCRAPE, scrape_urls=list(args.scrape_url))
    if args.prometheus_url:
        return G.GpuUseSource(source=G.SOURCE_PROMETHEUS, prometheus_url=args.prometheus_url,
                              util_query=args.util_query)
    return G.GpuUseSource()


async def run_report(client: KubeClient, namespace: str, defaults: C.Policy,
                     source: G.GpuUseSource, *, now: datetime | None = None) -> U.UsageReport:
    """One list of the records and kernelspecs, one reading (and, with a Prometheus, one
    average); raises CullError when it cannot list."""
    kernels, specs = await asyncio.gather(
        _list(client, R.JUPYTERKERNELS, namespace, "JupyterKernels"),
        _list(client, R.KERNELSPECS, namespace, "JupyterKernelSpecs"),
    )
    now = now or datetime.now(timezone.utc)
    book = C.PolicyBook.from_objects(defaults, specs)
    report = U.UsageReport(now, warnings=list(book.problems), source=source.describe())
    current: G.GpuReading | None = None
    if source.enabled:
        current = await source.read(now)
        report.source_available = current.available
        report.warnings.extend(f"GPU utilisation: {e}" for e in current.errors)
    else:
        report.warnings.append("no GPU utilisation source (--scrape-url or --prometheus-url): "
                               "GPU use is unknown")
    found = U.kernel_usage(kernels, book, now, current, None, report.warnings)
    average: G.GpuReading | None = None
    if found and source.source == G.SOURCE_PROMETHEUS:
        average = await source.read_average(now, U.oldest_window(found))
        report.warnings.extend(f"GPU-seconds used: {e}" for e in average.errors)
        found = U.kernel_usage(kernels, book, now, current, average, [])
    report.kernels = found
    report.rows = U.rows_of(found)
    return report


USAGE_COLUMNS = ("USER", "SPEC", "KERNELS", "GPUS", "GPU-SECONDS HELD", "GPU-SECONDS USED",
                 "USED", "IDLE GPUS NOW")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render_usage(report: U.UsageReport) -> str:
    rows: list[tuple[str, ...]] = [USAGE_COLUMNS]
    for r in report.rows:
        share = ("-" if r.used_seconds is None or r.held_seconds <= 0
                 else f"{100 * r.used_seconds / r.held_seconds:.0f}%")
        idle = str(r.idle_gpus) + (f" ({r.unknown_gpus} unknown)" if r.unknown_gpus else "")
        rows.append((r.user, r.kernel_spec, str(r.kernels), str(r.gpus),
                     _seconds(r.held_seconds), _seconds(r.used_seconds), share, idle))
    rows = [tuple(_one_line(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(USAGE_COLUMNS))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def usage_json(report: U.UsageReport) -> JSON:
    return {
        "generatedAt": R.format_timestamp(report.generated_at),
        "source": {"description": report.source, "available": report.source_available},
        "rows": [{"user": r.user, "kernelspec": r.kernel_spec, "kernels": r.kernels,
                  "gpus": r.gpus, "gpuSecondsHeld": r.held_seconds,
                  "gpuSecondsUsed": r.used_seconds, "idleGpus": r.idle_gpus,
                  "unknownGpus": r.unknown_gpus} for r in report.rows],
        "kernels": [{"kernelId": k.kernel_id, "user": k.user, "kernelspec": k.kernel_spec,
                     "pod": k.pod, "gpus": k.gpus, "gpuSecondsHeld": k.held_seconds,
                     "gpuSecondsUsed": k.used_seconds, "utilisation": k.utilisation,
                     "gpuIdle": k.gpu_idle, "averageUtilisation": k.average}
                    for k in report.kernels],
        "warnings": report.warnings,
    }


def write_usage(report: U.UsageReport, output: str, out: TextIO, err: TextIO) -> None:
    for warning in report.warnings:
        print(f"elastic-kernels cull --report: warning: {warning}", file=err)
    if output == "json":
        json.dump(usage_json(report), out, indent=2)
        out.write("\n")
    elif report.rows:
        print(render_usage(report), file=out)
    else:
        print("no running GPU kernels", file=out)


# --- entry point -------------------------------------------------------------------------------


async def _report(args: argparse.Namespace, client: KubeClient, namespace: str, host: str,
                  defaults: C.Policy) -> int:
    try:
        source = gpu_source(args)
    except (ValueError, TraitError) as e:
        print(f"elastic-kernels cull --report: {e}", file=sys.stderr)
        return 2
    try:
        report = await run_report(client, namespace, defaults, source)
    except CullError as e:
        print(f"elastic-kernels cull --report: {e} (API server {host})", file=sys.stderr)
        return 1
    write_usage(report, args.output, sys.stdout, sys.stderr)
    return 0


async def _main(args: argparse.Namespace) -> int:
    try:
        cluster = load_cluster_config(args.kubeconfig, args.context, args.namespace)
    except KubeConfigError as e:
        print(f"elastic-kernels cull: {e}", file=sys.stderr)
        return 1
    client = KubeClient(cluster.api_client, cluster.namespace,
                        max_workers=max(4, args.concurrency))
    defaults = replace(C.CullingDefaults().as_policy(), idle_timeout=args.idle_timeout,
                       max_age=args.max_age, launch_timeout=args.launch_timeout)
    if args.report:
        try:
            return await _report(args, client, cluster.namespace, cluster.host, defaults)
        finally:
            await client.close()
    store: SnapshotStore | None = None
    if args.snapshot_store:
        try:
            store = open_store(args.snapshot_store)
        except (ValueError, ImportError) as e:
            print(f"elastic-kernels cull: --snapshot-store: {e}", file=sys.stderr)
            await client.close()
            return 1
    try:
        report = await run_cull(
            client, cluster.namespace, defaults, orphan_grace=args.orphan_grace,
            snapshots=store, unfinished_snapshot_age=args.unfinished_snapshot_age,
            activity_slack=args.activity_slack, launch_grace=args.launch_grace,
            dry_run=args.dry_run,
            concurrency=args.concurrency,
        )
    except CullError as e:
        print(f"elastic-kernels cull: {e} (API server {cluster.host})", file=sys.stderr)
        return 1
    finally:
        await client.close()
    write_report(report, args.output, args.dry_run, sys.stdout, sys.stderr)
    return 1 if report.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``elastic-kernels cull``; bad arguments exit 2 with the usage (argparse)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="[%(levelname).1s %(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    return asyncio.run(_main(args))
