"""``ElasticKernelProvisioner``: each kernel in its own pod, found and watched through shared
caches.

The lifecycle follows DESIGN §3:

1. ``pre_launch`` reads the kernelspec and template from the watch cache (no API round trip),
   makes the HMAC key, and renders the JupyterKernel, Secret and Pod with one pure function.
2. ``launch_kernel`` creates the three objects, then waits on the *shared* pod watch. It fails
   fast, in the cluster's own words, on image pull errors, crash loops, exited containers and
   unschedulable pods; it waits (until ``launchTimeout``) only for GPU capacity. A failed start
   removes what it created; when the API server cannot say whether a create happened (a hung
   server answers late or never), the removal by name goes on in the background
   (``provisioner/leftovers.py``) and the client gets its error at once.
3. ``poll`` and ``wait`` answer from the cache: a deleted or crashed pod is noticed within one
   watch event, at no API cost.
4. ``terminate``/``kill`` delete the JupyterKernel; garbage collection removes the pod and the
   Secret. On restart only the pod is replaced and ``restartCount`` goes up.

A normal start costs four writes (three creates and one status patch) and no reads.

Use in any jupyter_server: kernelspecs served by
:class:`elastic_kernels.kernelspecs.ElasticKernelSpecManager` name this provisioner in their
``metadata.kernel_provisioner``; ``c.ClusterConnection`` says which cluster and namespace.
Our gateway hands each start its fair GPU queue (:data:`GPU_QUEUE_KWARG`, a :class:`GpuQueueDoor`);
without one (a plain jupyter_server) GPU pods are created ungated and wait for the scheduler.
Every status write and Event goes through :mod:`elastic_kernels.kube.records`.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import secrets
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Float, List, Unicode, default

from ..kube.client import PODS, SECRETS, JSON, KubeError
from ..kube.connection import ClusterConnection
from ..kube.informer import Informer, at_least_version
from ..kube import records
from ..kube import resources as R
from .envpolicy import filter_client_env
from .errors import KernelLaunchError
from .podstate import PodAssessment, Progress, assess_pod, waiting_resources
from .gates import GPU_QUEUE_GATE
from .leftovers import START_ID_ANNOTATION, Leftover, cause_of, cleaner_for, live_start, retryable
from .readiness import KernelNotReady, wait_kernel_info
from .templatepolicy import check_template, default_forbidden_service_accounts
from .render import RenderError, RenderRequest, connection_info, render_kernel, with_owner
from . import pool
from .pullprogress import REASON_PULLING, follow_pulls, watch_pulls

log = logging.getLogger(__name__)


#: The ``start_kernel`` keyword that makes the provisioner re-attach instead of launching.
ATTACH_KWARG = "elastic_attach"
#: The ``start_kernel`` keyword by which our gateway hands the provisioner its GPU queue.
GPU_QUEUE_KWARG = "elastic_gpu_queue"
#: The ``start_kernel`` keyword by which our gateway hands the provisioner its warm pools.
WARM_POOL_KWARG = "elastic_warm_pool"
#: How long a status write waits for the shared watch to deliver it (usually already there).
RECORD_CATCH_UP_TIMEOUT = 5.0


class GpuQueueDoor(Protocol):
    """What a start asks of the gateway's fair GPU queue (``gateway/lifecycle/gpuqueue.py``)."""

    def has_waiting(self, resource: str | None = None) -> bool:
        """Whether a new start of GPU flavor ``resource`` must queue behind others (then its
        pod starts gated)."""

    def enqueue(self, kernel_id: str, user: str, gpus: int, namespace: str, pod_name: str,
                *, gated: bool, resource: str = ...) -> Any:
        """Join the queue of flavor ``resource`` with a pod created gated."""

    def unschedulable(self, kernel_id: str, user: str, gpus: int, namespace: str,
                      pod_name: str, message: str, resource: str = ...) -> None:
        """The scheduler found no room for the pod: wait (joining if not queued yet)."""

    def leave(self, kernel_id: str) -> None:
        """The pod was bound, or the start ended."""

    def describe(self, kernel_id: str) -> str:
        """Where the start stands, in words ("" when it is not waiting)."""


@dataclass(frozen=True)
class Attachment:
    """What re-attaching to a kernel that already runs needs (see ``attachment()``).

    It travels through ``start_kernel``'s keyword arguments, which jupyter_server logs at DEBUG;
    the repr therefore names the kernel and its pod and never shows the key.
    """

    kernel_id: str
    pod_name: str
    provisioner_info: dict[str, Any] = field(repr=False)
    spec: R.KernelSpecView | None = field(default=None, repr=False)


class ElasticKernelProvisioner(KernelProvisionerBase):
    """Runs one kernel as one pod; the JupyterKernel record is its durable identity."""

    namespace = Unicode(
        None, allow_none=True, config=True,
        help="Namespace for kernels. Default: ClusterConnection's namespace.",
    )
    launch_timeout = Float(
        300.0, config=True,
        help="Seconds to wait for GPU capacity when the kernelspec sets no launchTimeout.",
    )
    kernel_ready_timeout = Float(
        120.0, config=True,
        help="Seconds a kernel in a running pod gets to answer its first kernel_info request.",
    )
    shutdown_wait_time = Float(
        3.0, config=True,
        help="Seconds a kernel gets to exit after shutdown_request before its pod is deleted.",
    )
    leftover_timeout = Float(
        300.0, config=True,
        help="Seconds to keep trying, in the background, to delete the JupyterKernel of a "
        "failed start when the API server could not be asked or its create may still be "
        "carried out (a timeout, a broken connection, a 5xx). Past it, the gateway's sweep and "
        "the cull cron delete a pod-less record once it is older than its launch timeout.",
    )
    forbidden_service_accounts = List(
        Unicode(), config=True,
        help="ServiceAccounts a JupyterKernelTemplate may not run kernels as (kernel code would "
        "get their rights). Default: the gateway's and the cull cron's, and the one this process "
        "runs as. Set to [] only if you really mean it.",
    )

    @default("forbidden_service_accounts")
    def _default_forbidden_service_accounts(self) -> list[str]:
        return default_forbidden_service_accounts()

    # -- state -------------------------------------------------------------------------------
    # Set by pre_launch (or load_provisioner_info when re-attaching).
    _spec: R.KernelSpecView | None = None
    _ns: str = ""
    _user: str = ""
    _key: str = ""
    _kernel_uid: str = ""
    _pod_name: str | None = None
    _pod_ip: str = ""
    _restart_count: int = -1
    _rendered: Any = None
    _exit_code: int | None = None
    _client_patience: float | None = None
    _attaching: bool = False
    #: Why the running pod died, when the restarter restarts the kernel (for its status).
    restart_cause: PodAssessment | None = None
    #: The gateway's fair GPU queue, handed over with each start (``GPU_QUEUE_KWARG``); None
    #: in a plain jupyter_server, whose GPU pods are then created ungated.
    gpu_queue: GpuQueueDoor | None = None
    #: The gateway's warm pools (``WARM_POOL_KWARG``): starts claim a pool pod when they can.
    warm_pool: pool.WarmPoolDoor | None = None
    #: Set by the gateway before a resume's restart: that restart may claim a pool pod too.
    resume_from_pool: bool = False

    @property
    def connection(self) -> ClusterConnection:
        return ClusterConnection.instance()

    @property
    def kernel_cr_name(self) -> str:
        return R.kernel_object_name(self.kernel_id)

    @property
    def has_process(self) -> bool:
        return self._pod_name is not None

    async def pod_cache(self) -> Informer:
        """The namespace's shared kernel-pod watch (one per gateway, not one per kernel)."""
        return await self.connection.informer(PODS, self._ns, label_selector=R.KERNEL_POD_SELECTOR)

    async def record_cache(self) -> Informer:
        """The namespace's shared JupyterKernel watch."""
        return await self.connection.informer(R.JUPYTERKERNELS, self._ns)

    def secret_values(self) -> tuple[str, ...]:
        """What the log scrubber must never let through: the kernel's HMAC key."""
        return (self._key,) if self._key else ()

    # -- launch ------------------------------------------------------------------------------

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Render the kernel's objects from cached CRs; nothing is written yet."""
        attachment = kwargs.pop(ATTACH_KWARG, None)
        queue = kwargs.pop(GPU_QUEUE_KWARG, None)
        if queue is not None:
            self.gpu_queue = queue
        door = kwargs.pop(WARM_POOL_KWARG, None)
        if door is not None:
            self.warm_pool = door
        if attachment is not None and self._restart_count < 0:
            return await self._pre_attach(attachment, kwargs)
        user = kwargs.pop("elastic_user", None)
        client_env = kwargs.pop("elastic_client_env", None)
        kwargs = await super().pre_launch(**kwargs)
        env: dict[str, str] = kwargs.get("env") or {}
        conn = self.connection
        try:
            self._ns = self.namespace or conn.default_namespace
            specs = await conn.informer(R.KERNELSPECS, self._ns)
            templates = await conn.informer(R.TEMPLATES, self._ns)
        except KubeError as e:
            raise KernelLaunchError("ClusterUnavailable", f"cannot reach the cluster: {e.message}",
                                    503) from None

        name = self.kernel_spec.name
        obj = specs.get(name)
        if obj is None:
            raise KernelLaunchError("NoSuchKernelSpec",
                                    f"no JupyterKernelSpec {name!r} in namespace {self._ns}", 404)
        try:
            spec = R.KernelSpecView.from_object(obj)
        except ValueError as e:
            raise KernelLaunchError("InvalidKernelSpec", f"JupyterKernelSpec {name}: {e}", 500) \
                from None
        template = None
        if spec.template_name:
            tobj = templates.get(spec.template_name)
            if tobj is None:
                raise KernelLaunchError(
                    "TemplateNotFound",
                    f"JupyterKernelSpec {name} references JupyterKernelTemplate "
                    f"{spec.template_name!r}, which does not exist in namespace {self._ns}",
                    500,
                )
            try:
                template = R.TemplateView.from_object(tobj)
            except ValueError as e:
                raise KernelLaunchError(
                    "InvalidTemplate", f"JupyterKernelTemplate {spec.template_name}: {e}", 500
                ) from None
            check_template(template, self.forbidden_service_accounts)

        if self._restart_count < 0:  # first launch (a restart keeps user, key and record)
            self._user = str(user or env.get("KERNEL_USERNAME") or getpass.getuser())
            self._key = secrets.token_hex(32)
            self._restart_count = 0
        else:
            # Another replica may have restarted the kernel since we last looked: the record
            # knows, and the next pod name must be past every one already used.
            self._restart_count = max(self._restart_count, await self._recorded_restarts()) + 1
        source_env = client_env if client_env is not None else env
        self._client_patience = _client_launch_timeout(source_env)
        try:
            allowed_env = filter_client_env(source_env, spec)
        except ValueError as e:
            raise KernelLaunchError("InvalidEnvironment", str(e), 400) from None

        self._spec = spec
        try:
            self._rendered = self._render(spec, template, allowed_env)
        except (RenderError, ValueError) as e:
            raise KernelLaunchError("InvalidKernelRequest", str(e), 400) from None
        kwargs["cmd"] = list(spec.argv)
        return kwargs

    def _render(self, spec: R.KernelSpecView, template: R.TemplateView | None,
                allowed_env: dict[str, str]) -> Any:
        return render_kernel(RenderRequest(
            kernel_id=self.kernel_id,
            namespace=self._ns,
            user=self._user,
            spec=spec,
            template=template,
            client_env=allowed_env,
            gateway_id=_gateway_id(self.parent),
            key=self._key.encode(),
            restart_count=self._restart_count,
        ))

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Create the objects and wait, on the shared pod watch, until the kernel's pod runs."""
        if self._attaching:  # re-attaching: the kernel runs already (see pre_launch)
            self._attaching = False
            return self.connection_info
        assert self._spec is not None and self._rendered is not None, "pre_launch first"
        # While it runs, the gateway's sweep of pod-less records leaves this one alone.
        with live_start(self._ns, self.kernel_cr_name):
            return await self._launch()

    async def _launch(self) -> KernelConnectionInfo:
        assert self._spec is not None and self._rendered is not None
        client = self.connection.client
        rendered = self._rendered
        pods = await self.pod_cache()
        started = time.monotonic()
        try:
            if not self._kernel_uid:
                created = await self._create_record(client, rendered.kernel)
                self._kernel_uid = created["metadata"]["uid"]
                owner = {"name": self.kernel_cr_name, "uid": self._kernel_uid}
                await client.create(SECRETS, with_owner(rendered.secret, owner), self._ns)
            owner = {"name": self.kernel_cr_name, "uid": self._kernel_uid}
            pod = with_owner(rendered.pod, owner)
            self._pod_name = pod["metadata"]["name"]
            self._exit_code = None
            claimed = await self._claim_pool_pod(client, owner, pod)
            queue = self._gpu_queue()
            if claimed:
                self._pod_name = claimed  # a warm pool pod, now this kernel's (pool.py)
            elif queue is not None and queue.has_waiting(self._spec.gpu_resource):
                # Others wait for GPUs already: queue behind them; the gateway ungates our pod
                # when it is our turn (fair across users, see gateway/lifecycle/gpuqueue.py).
                pod["spec"]["schedulingGates"] = [{"name": GPU_QUEUE_GATE}]
                queue.enqueue(self.kernel_id, self._user, self._spec.gpus, self._ns,
                              self._pod_name, gated=True, resource=self._spec.gpu_resource)
            if not claimed:
                await self._create_pod(client, pod)
        except KubeError as e:
            queue = self._gpu_queue()
            if queue is not None:
                queue.leave(self.kernel_id)
            await self._abandon(f"creating the kernel's objects failed: {e.message}")
            if e.unreachable:
                raise KernelLaunchError("ClusterUnavailable", str(e), 503) from None
            raise KernelLaunchError("CreateFailed", f"the cluster refused the kernel: {e}",
                                    500) from None

        try:
            # A pod waiting for its image says so in the kernel's status (pullprogress.py).
            async with follow_pulls(self.connection, self._ns, str(self._pod_name),
                                    self._report_pull):
                running = await self._wait_running(pods, started)
            self._pod_ip = str((running.get("status") or {}).get("podIP"))
            info = connection_info(self._pod_ip, self._key.encode(), self.kernel_spec.name)
            # Written while the kernel is asked whether it answers, not after: the pod runs,
            # and a start whose kernel does not answer deletes its record anyway (after this
            # write, which it awaits). One API round trip less on every start's path.
            recorded = asyncio.ensure_future(self._patch_status({
                "phase": "Running",
                **self._started_status(),
                "podName": self._pod_name,
                "podIP": self._pod_ip,
                "node": (running.get("spec") or {}).get("nodeName", ""),
                "gpus": self._spec.gpus,
                **({"gpuResource": self._spec.gpu_resource} if self._spec.gpus else {}),
                "startedAt": records.now_timestamp(),
                "restartCount": self._restart_count,
            }))
            try:
                await self._wait_answering(pods, info)
            finally:
                await self._until_cached(await asyncio.shield(recorded))
        except KernelLaunchError as e:
            await self._abandon(e.message, reason=e.reason)
            raise
        except asyncio.CancelledError:
            await self._abandon("the start was cancelled")
            raise
        finally:
            queue = self._gpu_queue()
            if queue is not None:
                queue.leave(self.kernel_id)

        # jupyter_client types connection info as a TypedDict; ours has its keys and values.
        self.connection_info = cast(KernelConnectionInfo, info)
        return self.connection_info

    async def _wait_running(self, pods: Informer, started: float) -> JSON:
        """Follow the pod's events until it runs, fails, or the launch timeout passes."""
        assert self._spec is not None
        timeout = self.launch_timeout_seconds
        deadline = started + timeout
        seen = False
        last = PodAssessment(Progress.PENDING, "Pending")
        reported_wait = ""
        queue = self._gpu_queue() if self._spec.gpus else None

        def changed(pod: JSON | None) -> bool:
            nonlocal seen
            if pod is None and not seen:
                return False  # created, but the watch has not delivered it yet
            seen = True
            return assess_pod(pod) != last

        while True:
            remaining = deadline - time.monotonic()
            try:
                pod = await pods.wait_for(changed, self._pod_name, self._ns,
                                          timeout=max(remaining, 0.0))
            except asyncio.TimeoutError:
                waited = time.monotonic() - started
                queued = queue.describe(self.kernel_id) if queue is not None else ""
                if queued:
                    raise KernelLaunchError(
                        "LaunchTimeout",
                        f"gave up after {waited:.0f}s {queued}"
                        + (f"; the scheduler said: {last.message}" if last.message else ""),
                        504,
                    ) from None
                if last.progress is Progress.WAITING_FOR_CAPACITY:
                    short = ", ".join(waiting_resources(last.message)) or "capacity"
                    raise KernelLaunchError(
                        "LaunchTimeout",
                        f"gave up after {waited:.0f}s waiting for {self._spec.gpus} {short}: "
                        f"{last.message}", 504,
                    ) from None
                raise KernelLaunchError(
                    "LaunchTimeout",
                    f"the kernel pod did not start within {waited:.0f}s "
                    f"(last state: {last.reason})", 504,
                ) from None
            last = assess_pod(pod)
            if queue is not None and pod is not None and (pod.get("spec") or {}).get("nodeName"):
                queue.leave(self.kernel_id)  # bound: the capacity is ours, the next may go
            if last.progress is Progress.RUNNING:
                assert pod is not None
                return pod
            if last.progress in (Progress.FAILED, Progress.GONE):
                raise KernelLaunchError(last.reason, f"kernel failed to start: {last.message}",
                                        500)
            if last.progress is Progress.WAITING_FOR_CAPACITY and queue is not None:
                queue.unschedulable(self.kernel_id, self._user, self._spec.gpus, self._ns,
                                    str(self._pod_name), last.message, self._spec.gpu_resource)
            elif last.progress is Progress.WAITING_FOR_CAPACITY and last.message != reported_wait:
                reported_wait = last.message
                short = ", ".join(waiting_resources(last.message)) or "capacity"
                await self._patch_status({
                    "phase": "Pending",
                    "reason": "WaitingForCapacity",
                    "message": f"waiting for {self._spec.gpus} {short}: {last.message}",
                    "podName": self._pod_name,
                })

    async def _wait_answering(self, pods: Informer, info: dict[str, Any]) -> None:
        """The container runs; wait for the kernel to answer, or for its pod to fail first."""
        answered = asyncio.ensure_future(wait_kernel_info(info, self.kernel_ready_timeout))
        died = asyncio.ensure_future(pods.wait_for(
            lambda p: assess_pod(p).progress in (Progress.FAILED, Progress.GONE),
            self._pod_name, self._ns,
        ))
        try:
            await asyncio.wait({answered, died}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answered, died):
                task.cancel()
        if died.done() and not died.cancelled():
            last = assess_pod(died.result())
            raise KernelLaunchError(last.reason, f"kernel failed to start: {last.message}", 500)
        try:
            answered.result()
        except KernelNotReady as e:
            raise KernelLaunchError(
                "KernelNotAnswering",
                f"the kernel's pod runs but the kernel did not answer: {e}", 504) from None

    async def _claim_pool_pod(self, client: Any, owner: dict[str, str], pod: JSON) -> str:
        """Claim a warm pool pod of the kernelspec instead of creating one (pool.py): its
        name, or "" (no pool, none ready, or the claim failed: the start goes cold)."""
        resuming, self.resume_from_pool = self.resume_from_pool, False
        spec, door = self._spec, self.warm_pool
        if spec is None or door is None or not spec.warm_pool.size:
            return ""
        if self._restart_count > 0 and not resuming:
            return ""  # a restart's pod is named by its count: replicas agree on it (see below)
        container = pod["spec"]["containers"][0]
        claim = pool.Claim(
            namespace=self._ns, spec=spec, kernel_id=self.kernel_id, user=self._user,
            key=self._key, client_env=dict(self._rendered.client_env),
            working_dir=str(container.get("workingDir") or ""),
            restart_count=self._restart_count, image=str(container.get("image") or ""))
        pools = await self.connection.informer(PODS, self._ns,
                                               label_selector=R.POOL_POD_SELECTOR)
        taken, outcome = await pool.claim_pool_pod(client, pools, claim, owner)
        door.claimed(spec.name, outcome)
        if taken is None:
            return ""
        self.log.info("Kernel %s: claimed warm pool pod %s", self.kernel_id,
                      taken["metadata"]["name"])
        return str(taken["metadata"]["name"])

    def _gpu_queue(self) -> GpuQueueDoor | None:
        """The gateway's fair GPU queue, if this kernel has GPUs and the gateway gave one."""
        if not (self._spec and self._spec.gpus):
            return None
        return self.gpu_queue

    async def _report_pull(self, message: str) -> None:
        await self._patch_status({"reason": REASON_PULLING, "message": message[:1024]})

    async def _patch_status(self, status: JSON) -> JSON | None:
        """Best effort: a failed status write must not fail the kernel itself."""
        try:
            return await records.patch_kernel_status(self.connection.client, self.kernel_cr_name,
                                                     self._ns, status)
        except KubeError as e:
            self.log.warning("Kernel %s: could not record status %s: %s",
                             self.kernel_id, status.get("phase"), e)
            return None

    async def _create_record(self, client: Any, kernel: JSON) -> JSON:
        """Create the JupyterKernel, marked with a random start id. If the API server may still
        carry the create out although it failed, a background task removes the record by name
        (only one with this start id) should it appear: see provisioner/leftovers.py."""
        start_id = secrets.token_hex(8)
        meta = dict(kernel.get("metadata") or {})
        meta["annotations"] = {**(meta.get("annotations") or {}), START_ID_ANNOTATION: start_id}
        try:
            return await client.create(R.JUPYTERKERNELS, {**kernel, "metadata": meta}, self._ns)
        except KubeError as e:
            if e.outcome_unknown:
                await self._leave_behind(Leftover(
                    self._ns, self.kernel_cr_name, self.kernel_id, start_id=start_id,
                    cause=f"creating its record had an unknown outcome ({cause_of(e)})"))
            raise

    async def _leave_behind(self, item: Leftover) -> None:
        """Hand a record that could not be deleted now to the background cleaner."""
        conn = self.connection
        records: Informer | None
        try:
            records = await conn.informer(R.JUPYTERKERNELS, item.namespace, wait=False)
        except KubeError:
            records = None
        cleaner_for(conn.client).remove(item, timeout=self.leftover_timeout, records=records,
                                        logger=self.log)

    async def _abandon(self, message: str, reason: str = "LaunchFailed") -> None:
        """A start failed: leave an Event saying why, then remove everything it created.

        When the API server is not answering, the Event is skipped and the record is removed in
        the background: each would only hold the client's error back by another timeout.
        """
        client = self.connection.client
        if self._kernel_uid and client.reachable:
            try:
                await records.record_kernel_event(
                    client, self.kernel_cr_name, self._ns, uid=self._kernel_uid, reason=reason,
                    message=message, type="Warning", component="elastic-kernels")
            except KubeError:
                pass
        await self._delete_record(grace_period_seconds=0)
        self._pod_name = None

    async def _delete_record(self, grace_period_seconds: int | None = None) -> None:
        """Delete the kernel's JupyterKernel (its pod and Secret go with it).

        If the API server cannot be asked now, or its answer leaves the outcome open, the
        deletion goes on in the background: a record left behind keeps counting against its
        user's kernel limit and GPU quota, and the user has no way to remove it.
        """
        if not self._kernel_uid:
            return
        client = self.connection.client
        cause = "the API server is not answering"
        if client.reachable:
            try:
                await client.delete(
                    R.JUPYTERKERNELS, self.kernel_cr_name, self._ns,
                    grace_period_seconds=grace_period_seconds,
                    preconditions={"uid": self._kernel_uid},
                )
                cause = ""
            except KubeError as e:
                if e.not_found:
                    cause = ""
                elif retryable(e):
                    cause = f"deleting its record failed ({cause_of(e)})"
                else:
                    cause = ""
                    self.log.warning("Kernel %s: could not delete its record: %s",
                                     self.kernel_id, e)
        if cause:
            await self._leave_behind(Leftover(self._ns, self.kernel_cr_name, self.kernel_id,
                                              uid=self._kernel_uid, cause=cause))
        self._kernel_uid = ""

    async def _delete_pod(self, grace_period_seconds: int | None = None) -> None:
        if not self._pod_name:
            return
        try:
            await self.connection.client.delete(
                PODS, self._pod_name, self._ns, grace_period_seconds=grace_period_seconds
            )
        except KubeError as e:
            if not e.not_found:
                self.log.warning("Kernel %s: could not delete pod %s: %s",
                                 self.kernel_id, self._pod_name, e)

    # -- liveness, from the cache -------------------------------------------------------------

    def _assessment(self, pods: Informer) -> PodAssessment:
        return assess_pod(pods.get(self._pod_name, self._ns) if self._pod_name else None)

    async def poll(self) -> int | None:
        if not self._pod_name:
            return self._exit_code if self._exit_code is not None else 0
        a = self._assessment(await self.pod_cache())
        if a.progress in (Progress.RUNNING, Progress.PENDING, Progress.WAITING_FOR_CAPACITY):
            return None
        self._exit_code = a.exit_code if a.exit_code is not None else 1
        return self._exit_code

    async def wait(self) -> int | None:
        if not self._pod_name:
            return self._exit_code
        pods = await self.pod_cache()
        await pods.wait_for(
            lambda p: assess_pod(p).progress in (Progress.FAILED, Progress.GONE),
            self._pod_name, self._ns,
        )
        return await self.poll()

    async def send_signal(self, signum: int) -> None:
        """Only termination signals make sense across the network; interrupts are messages."""
        if signum == 0:
            return
        if signum == signal.SIGKILL:
            await self.kill()
        elif signum == signal.SIGTERM:
            await self.terminate()
        else:
            self.log.warning(
                "Kernel %s: signal %d cannot be sent to a pod; kernelspecs served by "
                "elastic-kernels use interrupt_mode 'message'", self.kernel_id, signum)

    async def kill(self, restart: bool = False) -> None:
        await self._delete_pod(grace_period_seconds=0)
        if not restart:
            await self._delete_record(grace_period_seconds=0)

    async def terminate(self, restart: bool = False) -> None:
        await self._delete_pod()
        if not restart:
            await self._delete_record()

    async def cleanup(self, restart: bool = False) -> None:
        """After shutdown: on restart drop the old pod; otherwise drop the whole record."""
        if restart:
            await self._delete_pod(grace_period_seconds=0)
        else:
            await self._delete_record()
        self._pod_name = None
        self._pod_ip = ""

    async def shutdown_requested(self, restart: bool = False) -> None:
        if restart:
            await self.announce_restart("restart requested")
        else:
            await self._patch_status({"phase": "Terminating", "reason": "ShutdownRequested",
                                      "message": ""})

    async def suspend(self, reason: str, message: str) -> None:
        """Let the pod and its GPUs go, keeping the JupyterKernel, its Secret and the kernel id:
        phase Suspended until a resume starts a new pod for the same record (a restart).

        The status is written first, so that every gateway holding the kernel reads the pod's
        deletion that follows as a suspension, not as a death to restart from.
        """
        await self._patch_status({"phase": R.PHASE_SUSPENDED, "reason": reason,
                                  "message": message[:4096], "gpus": 0})
        # Not forced: the pod object stays until the kubelet has stopped it and released its
        # GPUs, so the scheduler never hands them to the waiter while they are still in use.
        await self._delete_pod()
        self._pod_name = None
        self._pod_ip = ""

    async def announce_restart(self, why: str) -> None:
        """Say on the record that this kernel is being restarted (phase Starting), before its
        pod goes: other gateways holding the kernel then wait for the new pod instead of
        taking the old one's death for a crash and restarting it as well."""
        await self._patch_status({"phase": R.PHASE_STARTING, "reason": "Restarting",
                                  "message": why[:1024]})

    @property
    def launch_timeout_seconds(self) -> float:
        """The kernelspec's launchTimeout, cut to what the client said it will wait.

        jupyter_server's GatewayClient sends ``KERNEL_LAUNCH_TIMEOUT`` and abandons the request
        after it; giving up first means the user reads why (e.g. still 3rd in the GPU queue)
        instead of a bare client timeout, and no kernel starts that nobody waits for.
        """
        timeout = (self._spec.launch_timeout if self._spec is not None else None) \
            or self.launch_timeout
        if self._client_patience:
            timeout = min(timeout, self._client_patience)
        return timeout

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return min(recommended, self.shutdown_wait_time)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return recommended

    # -- re-attaching --------------------------------------------------------------------------

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update({
            "namespace": self._ns,
            "kernel_uid": self._kernel_uid,
            "pod_name": self._pod_name,
            "pod_ip": self._pod_ip,
            "restart_count": self._restart_count,
            "user": self._user,
        })
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        self._ns = provisioner_info.get("namespace") or self.connection.default_namespace
        self._kernel_uid = provisioner_info.get("kernel_uid", "")
        self._pod_name = provisioner_info.get("pod_name")
        self._pod_ip = provisioner_info.get("pod_ip", "")
        self._restart_count = int(provisioner_info.get("restart_count", 0))
        self._user = provisioner_info.get("user", "")
        key = (self.connection_info or {}).get("key", b"")
        self._key = key.decode() if isinstance(key, bytes) else str(key)

    @classmethod
    def attachment(cls, record: JSON, pod: JSON | None, key: str,
                   spec: R.KernelSpecView | None = None) -> Attachment:
        """Re-attach information for a kernel that runs already, built from the cluster alone:
        its JupyterKernel, its pod from the watch cache (None: gone, the restarter then applies
        the restart policy) and the key read from its Secret. Raises ValueError for a record
        that cannot be used."""
        view = R.KernelView.from_object(record)
        pod_name = view.pod_name or R.kernel_pod_name(view.kernel_id, view.restart_count)
        ip = str(((pod or {}).get("status") or {}).get("podIP") or view.pod_ip or "")
        if not ip:
            raise ValueError(f"JupyterKernel {view.name} has no pod IP to connect to")
        info = {
            "kernel_id": view.kernel_id,
            "connection_info": connection_info(ip, key.encode(), view.kernel_spec),
            "namespace": view.namespace,
            "kernel_uid": view.uid,
            "pod_name": pod_name,
            "pod_ip": ip,
            "restart_count": view.restart_count,
            "user": view.user,
        }
        return Attachment(view.kernel_id, pod_name, info, spec)

    async def _pre_attach(self, attachment: Attachment, kwargs: dict[str, Any]) -> dict[str, Any]:
        """pre_launch of a re-attach: load what ``attachment()`` read; ``launch_kernel`` then
        returns the connection info without creating anything."""
        kwargs.pop("elastic_user", None)
        kwargs.pop("elastic_client_env", None)
        kwargs = await super().pre_launch(**kwargs)
        await self.load_provisioner_info(attachment.provisioner_info)
        self._spec = attachment.spec
        self._attaching = True
        kwargs["cmd"] = list(self._spec.argv) if self._spec is not None else []
        return kwargs

    async def _recorded_restarts(self) -> int:
        record = (await self.record_cache()).get(self.kernel_cr_name, self._ns)
        try:
            return int(((record or {}).get("status") or {}).get("restartCount") or 0)
        except (TypeError, ValueError):
            return 0

    async def _create_pod(self, client: Any, pod: JSON) -> None:
        """Create the kernel's pod. On a restart, the pod of this restart count existing already
        means another replica restarted the kernel at the same moment: pod names are the
        compare-and-swap, so both follow the one pod instead of restarting twice."""
        try:
            await client.create(PODS, pod, self._ns)
        except KubeError as e:
            if not (e.already_exists and self._restart_count > 0):
                raise
            self.log.info("Kernel %s: pod %s exists already (another gateway restarted the "
                          "kernel); following it", self.kernel_id, self._pod_name)

    def _started_status(self) -> JSON:
        cause, self.restart_cause = self.restart_cause, None
        if self._restart_count <= 0:
            # e.g. a KERNEL_WORKING_DIR outside the user's volumes (render.py's warnings)
            warnings = self._rendered.warnings if self._rendered is not None else ()
            return {"reason": "Started", "message": "; ".join(warnings)[:1024]}
        if cause is None:
            return {"reason": "Restarted", "message": "restarted on request"}
        return {"reason": "Restarted",
                "message": f"restarted after {cause.reason}: {cause.message}"[:1024]}

    @property
    def attached(self) -> bool:
        """Whether this provisioner still stands for a kernel (not shut down, not released)."""
        return bool(self._kernel_uid) or self._pod_name is not None

    @property
    def restart_policy(self) -> str:
        return self._spec.restart_policy if self._spec is not None else "Restart"

    @property
    def restart_count(self) -> int:
        return self._restart_count

    @property
    def namespace_name(self) -> str:
        return self._ns

    def follow(self, pod: JSON) -> None:
        """Another replica restarted the kernel: its newer pod is the kernel from now on.

        The kernel manager's ``ip`` changes with the connection info, which re-points every
        ZeroMQ socket already open towards the kernel (websockets keep working).
        """
        meta = pod.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        try:
            count = int(annotations.get(R.ANNOTATION_RESTART_COUNT, self._restart_count))
        except (TypeError, ValueError):
            count = self._restart_count
        self._pod_name = str(meta.get("name"))
        self._pod_ip = str((pod.get("status") or {}).get("podIP") or "")
        self._restart_count = max(count, self._restart_count)
        self._exit_code = None
        self.connection_info = cast(KernelConnectionInfo, connection_info(
            self._pod_ip, self._key.encode(), self.kernel_spec.name))
        km = self.parent
        if km is not None and hasattr(km, "load_connection_info"):
            km.load_connection_info(self.connection_info)

    def release(self) -> None:
        """The kernel's JupyterKernel was deleted elsewhere (another replica shut it down, or
        it was culled): forget it without touching the cluster, so nothing restarts it and
        shutting its manager down makes no API call."""
        self._kernel_uid = ""
        self._pod_name = None
        self._pod_ip = ""

    async def record_failure(self, cause: PodAssessment) -> None:
        """The kernel died and its restart policy (or the restart limit) says it stays dead.

        Returns once the shared watch shows the write: the caller then announces ``dead``.
        """
        await self._until_cached(await self._patch_status({
            "phase": "Failed", "reason": cause.reason or "KernelDied",
            "message": cause.message[:1024]}))

    async def _until_cached(self, written: JSON | None) -> None:
        """Wait until the shared JupyterKernel watch has delivered ``written`` (or a later write).

        The kernel's model is read from that watch's cache, and the watch may deliver a write
        after the news that follows it reaches the client (``dead``, or the reply to a restart):
        a client reading the model then would find the record before the write (Running with
        the old restart count). Usually the event is already there and this returns at once.
        """
        if written is None:
            return
        version = str((written.get("metadata") or {}).get("resourceVersion") or "")
        status = written.get("status") or {}

        def caught_up(record: JSON | None) -> bool:
            if record is None:
                return True
            cached = str((record.get("metadata") or {}).get("resourceVersion") or "")
            if at_least_version(cached, version):
                return True
            return all((record.get("status") or {}).get(k) == v for k, v in status.items())

        try:
            cache = await self.record_cache()
            await cache.wait_for(caught_up, self.kernel_cr_name, self._ns,
                                 timeout=RECORD_CATCH_UP_TIMEOUT)
        except (asyncio.TimeoutError, KubeError):
            pass  # the watch lags or is down: the record is written, the model catches up later

    # -- what the gateway shows -----------------------------------------------------------------

    @property
    def user(self) -> str:
        return self._user

    @property
    def pod_name(self) -> str | None:
        return self._pod_name


async def start_kernel_watches(namespace: str | None = None) -> list[Informer]:
    """Start every shared watch a kernel start reads from, so no start pays for a first list.

    A gateway calls this at startup; a plain jupyter_server gets it lazily on its first start.
    """
    conn = ClusterConnection.instance()
    ns = namespace or conn.default_namespace
    # Started, not waited for (and not returned): starts report pulls once it has listed.
    await watch_pulls(conn, ns)
    return list(await asyncio.gather(
        conn.informer(R.KERNELSPECS, ns),
        conn.informer(R.TEMPLATES, ns),
        conn.informer(R.JUPYTERKERNELS, ns),
        conn.informer(PODS, ns, label_selector=R.KERNEL_POD_SELECTOR),
    ))


def _client_launch_timeout(env: Any) -> float | None:
    """The client's ``KERNEL_LAUNCH_TIMEOUT`` minus a margin for the reply, if it sent one."""
    raw = (env or {}).get("KERNEL_LAUNCH_TIMEOUT") if hasattr(env, "get") else None
    try:
        value = float(str(raw))
    except (TypeError, ValueError):
        return None
    if not 1.0 <= value <= 86400.0:
        return None
    return max(1.0, value - 2.0)


def _gateway_id(parent: Any) -> str:
    """The gateway identity recorded on the kernel; a plain jupyter_server has none."""
    for obj in (parent, getattr(parent, "parent", None)):
        gid = getattr(obj, "gateway_id", None)
        if gid:
            return str(gid)
    return ""
