"""The kubelet of every simulated node: runs bound pods as local process groups.

For each pod bound to a node it knows, a ``PodWorker``:

1. admits it (simulated GPU devices are taken from the node's inventory), gives it its own
   127.x.y.z address and reports ``Pending`` with containers ``Waiting/ContainerCreating``;
2. materialises its volumes and service-account token (``volumes.py``; claims through
   ``claimmounts.py``), resolves each container's env (``podenv.py``) -- missing
   Secrets/ConfigMaps or unbound claims keep it waiting and it retries when they change
   (watched, not polled). Tokens are real ServiceAccount tokens bound to the pod
   (``satokens.py``), requested like a real kubelet does (3607 s) and rewritten in place once
   80 % of their life has passed, so a pod that runs for days keeps a working credential and a
   copied token dies with its pod;
3. "pulls" the image according to the ``ImagePolicy`` (taking simulated time on a node that
   lacks it, ``imagepulls.py``) and runs ``command`` + ``args`` in a new
   session (``processes.py``), reporting the states a real kubelet reports, restarting per
   ``restartPolicy`` with CrashLoopBackOff back-off;
4. on deletion sends SIGTERM to the process group, SIGKILL after the grace period, reports the
   final states and then removes the pod with grace 0, as the real kubelet does.

Status is written through the status subresource only when it really changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import Any
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from .allocators import DeviceAllocator, DeviceExhausted, IPAllocator, device_env
from .errors import ApiError
from .eventrecorder import EventRecorder, now_rfc3339
from .fit import container_gpus, is_terminal, node_allocatable
from .imagepulls import NodeImages
from .images import ImagePolicy
from .nodes import GPU_REPLICAS_LABEL, GPU_RESOURCE, gpu_kind
from .objectmeta import meta_of, rv_of
from .podenv import ConfigError, container_env, expand_command
from .podstatus import crash_backoff, go_duration, merge_conditions, pod_phase, readiness_condition
from .processes import DEFAULT_LOG_LIMIT, ContainerProcess, LogBuffer, StartFailure, runc_exec_error
from .satokens import IssuedToken, ServiceAccountTokens
from .scheduler import run_informer
from .tasks import cancel_all
from .volumes import (DEFAULT_TOKEN, MOUNTS_ENV, TokenSource, VolumeError, container_mounts,
                      materialise_volumes, mounts_env, replace_token, rewrite_arg, rewrite_value,
                      token_sources, write_service_account)

log = logging.getLogger(__name__)

PODS = ("", "pods")
NODES = ("", "nodes")
JSON = dict[str, Any]
HOST_IP = "127.0.0.1"
_EPOCH = "1970-01-01T00:00:00Z"
#: What a real kubelet asks for its projected service-account token.
KUBELET_TOKEN_SECONDS = 3607
#: A token is renewed once this share of its lifetime has passed (as the kubelet's token manager).
TOKEN_RENEW_AFTER = 0.8


class ContainerRuntime:
    """What the kubelet tracks about one container of a pod across its restarts."""

    def __init__(self, spec: JSON, image_id: str) -> None:
        self.spec = spec
        self.name: str = spec.get("name", "")
        self.image: str = spec.get("image", "")
        self.image_id = image_id
        self.restart_count = 0
        self.state: JSON = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: JSON = {}
        self.ready = False
        self.started = False
        self.container_id: str | None = None
        self.process: ContainerProcess | None = None
        self.start_task: asyncio.Future[ContainerProcess] | None = None
        self.instances: list[LogBuffer] = []  # the last two instances' logs
        self.runs = 0
        self.gpus: list[int] = []  # whole nvidia.com/gpu devices
        #: Every device resource's indices it holds (whole GPUs, MIG partitions, shares).
        self.devices: dict[str, list[int]] = {}
        self.finished = False  # exited and will not be restarted

    def status(self) -> JSON:
        out: JSON = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready,
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": self.image_id if self.container_id else "",
            "started": self.started,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out

    def new_instance(self, limit: int) -> LogBuffer:
        buf = LogBuffer(limit)
        self.instances = (self.instances + [buf])[-2:]
        return buf


class PodWorker:
    """Drives one pod from admission to deletion (see the module docstring)."""

    def __init__(self, kubelet: Kubelet, pod: JSON) -> None:
        self.k = kubelet
        self.pod = pod
        meta = meta_of(pod)
        self.uid: str = meta.get("uid", "")
        self.namespace: str = meta.get("namespace", "default")
        self.name: str = meta.get("name", "")
        self.node: str = (pod.get("spec") or {}).get("nodeName", "")
        self.spec: JSON = pod.get("spec") or {}
        self.containers = [ContainerRuntime(c, kubelet.images.image_id(c.get("image", "")))
                           for c in self.spec.get("containers") or []]
        self.init_containers = [ContainerRuntime(c, kubelet.images.image_id(c.get("image", "")))
                                for c in self.spec.get("initContainers") or []]
        self.initialized = not self.init_containers
        if self.init_containers:
            for c in self.containers + self.init_containers:
                c.state = {"waiting": {"reason": "PodInitializing"}}
        self.ip: str | None = None
        self.start_time: str | None = None
        self.pod_dir = kubelet.workdir / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.sa_dir: Path | None = None
        self.token_sources: list[TokenSource] = token_sources(pod)
        self.tokens: dict[tuple[str, str], IssuedToken] = {}
        self.token_task: asyncio.Task[None] | None = None
        self.volume_dirs: dict[str, Path] = {}
        self.final_phase: str | None = None
        self.reason: str | None = None
        self.message: str | None = None
        self.sandbox_ready = False
        self.terminating = False
        self.removed = False
        self.deadline: float | None = None
        self._deadline_changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.term_task: asyncio.Task[None] | None = None

    # -- helpers -----------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"

    def _format_pod(self) -> str:
        return f"{self.name}_{self.namespace}({self.uid})"

    def event(self, etype: str, reason: str, message: str, container: str | None = None) -> None:
        if self.removed:
            return
        field_path = None
        if container:
            kind = ("initContainers" if any(c.name == container for c in self.init_containers)
                    else "containers")
            field_path = f"spec.{kind}{{{container}}}"
        self.k.events.record(self.pod, etype, reason, message, host=self.node,
                             field_path=field_path)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"pod-{self.label}")

    def update(self, pod: JSON) -> None:
        """A newer version of the pod object arrived from the watch."""
        self.pod = pod
        meta = meta_of(pod)
        if meta.get("deletionTimestamp"):
            grace = meta.get("deletionGracePeriodSeconds")
            grace = float(grace if grace is not None else
                          self.spec.get("terminationGracePeriodSeconds", 30) or 0)
            deadline = asyncio.get_running_loop().time() + grace
            if not self.terminating:
                self.terminating = True
                self.deadline = deadline
                self.term_task = asyncio.create_task(self._terminate(),
                                                     name=f"terminate-{self.label}")
            elif self.deadline is None or deadline < self.deadline:
                self.deadline = deadline
                self._deadline_changed.set()

    # -- status ------------------------------------------------------------------------------------

    def _initialized_condition(self) -> JSON:
        if self.initialized:
            return {"type": "Initialized", "status": "True"}
        incomplete = [c.name for c in self.init_containers
                      if (c.state.get("terminated") or {}).get("exitCode") != 0
                      and c.spec.get("restartPolicy") != "Always"]
        return {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized",
                "message": f"containers with incomplete status: [{' '.join(incomplete)}]"}

    def build_status(self, current: JSON, pod_is_terminal: bool = False) -> JSON:
        statuses = [c.status() for c in self.containers]
        if self.final_phase:
            phase = self.final_phase
        elif not self.initialized:
            phase = "Pending"
        else:
            phase = pod_phase(self.spec, statuses, pod_is_terminal)
        now = now_rfc3339()
        status = dict(current)
        status["phase"] = phase
        wanted = [
            {"type": "PodReadyToStartContainers",
             "status": "True" if self.sandbox_ready else "False"},
            self._initialized_condition(),
            readiness_condition("Ready", self.spec, statuses, phase),
            readiness_condition("ContainersReady", self.spec, statuses, phase),
        ]
        status["conditions"] = merge_conditions(current.get("conditions") or [], wanted, now)
        status["hostIP"] = HOST_IP
        status["hostIPs"] = [{"ip": HOST_IP}]
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.start_time:
            status["startTime"] = self.start_time
        status["containerStatuses"] = statuses
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        for key, value in (("reason", self.reason), ("message", self.message)):
            if value:
                status[key] = value
            else:
                status.pop(key, None)
        return status

    def write_status(self, pod_is_terminal: bool = False) -> None:
        """Write the status if it differs from the stored one (never raises for a gone pod)."""
        if self.removed:
            return
        try:
            current = self.k.store.get(PODS, self.namespace, self.name)
        except ApiError as e:
            if e.code == 404:
                return
            raise
        if meta_of(current).get("uid") != self.uid:
            return
        status = self.build_status(current.get("status") or {}, pod_is_terminal)
        if status == current.get("status"):
            return
        current["status"] = status
        try:
            self.k.store.replace(PODS, self.namespace, self.name, current, subresource="status")
        except ApiError as e:
            if e.code not in (404, 409):
                raise

    # -- the pod's life ----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if not self._admit():
                return
            self.ip = self.k.ips.allocate()
            self.start_time = now_rfc3339()
            await asyncio.to_thread(self._make_pod_dir)
            self.sandbox_ready = True
            self.write_status()
            await self._setup_volumes()
            if self.tokens:
                self.token_task = asyncio.create_task(self._rotate_tokens(),
                                                      name=f"tokens-{self.label}")
            sidecars: list[asyncio.Future[None]] = []
            try:
                if not await self._run_init_containers(sidecars):
                    self.final_phase = "Failed"  # an init container failed, restartPolicy Never
                else:
                    self.initialized = True
                    for c in self.containers:
                        c.state = {"waiting": {"reason": "ContainerCreating"}}
                    self.write_status()
                    results = await asyncio.gather(
                        *(self._run_container(c, self.policy) for c in self.containers),
                        return_exceptions=True)
                    for result in results:
                        if isinstance(result, BaseException) and not isinstance(
                                result, asyncio.CancelledError):
                            log.error("pod %s: container loop failed: %r", self.label, result)
            finally:
                for task in sidecars:
                    task.cancel()
            # Every container has finished for good: the pod is terminal. Sidecars go last.
            await self._stop_sidecars()
            await self._stop_token_rotation()
            self._release()
            if self.final_phase is None:
                self.final_phase = pod_phase(self.spec, [c.status() for c in self.containers],
                                             True)
            self.sandbox_ready = False
            self.write_status(pod_is_terminal=True)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s: kubelet worker failed", self.label)

    @property
    def policy(self) -> str:
        return self.spec.get("restartPolicy") or "Always"

    async def _run_init_containers(self, sidecars: list[asyncio.Future[None]]) -> bool:
        """Run init containers in order; native sidecars (restartPolicy Always) keep running.

        Returns False when one failed and the pod's restartPolicy is Never (the pod fails).
        """
        init_policy = "Never" if self.policy == "Never" else "OnFailure"
        for c in self.init_containers:
            if c.spec.get("restartPolicy") == "Always":
                sidecars.append(asyncio.ensure_future(self._run_container(c, "Always")))
                continue
            await self._run_container(c, init_policy)
            if (c.state.get("terminated") or {}).get("exitCode") != 0:
                return False
        return True

    async def _stop_sidecars(self) -> None:
        live = [c for c in self.init_containers
                if c.process is not None and c.process.running]
        if not live:
            return
        grace = float(self.spec.get("terminationGracePeriodSeconds", 30) or 0)
        self.deadline = asyncio.get_running_loop().time() + grace
        await self._kill(live)
        for c in live:
            if c.process is not None:
                started = (c.state.get("running") or {}).get("startedAt", _EPOCH)
                self._record_exit(c, await c.process.wait(), started)

    def _admit(self) -> bool:
        """Device admission: take the GPUs each container asked for, or fail the pod like real."""
        try:
            for c in self.containers:
                c.devices = {}
                for resource in self.k.gpus.resources(self.node):
                    held = self.k.gpus.allocate(self.node, f"{self.uid}/{c.name}",
                                                container_gpus(c.spec, resource), resource)
                    if held:
                        c.devices[resource] = held
                c.gpus = c.devices.get(GPU_RESOURCE, [])
        except DeviceExhausted as e:
            self.k.gpus.release(self.node, self.uid)
            for c in self.containers:
                c.gpus = []
                c.devices = {}
            self.final_phase = "Failed"
            self.reason = "UnexpectedAdmissionError"
            self.message = e.message
            self.event("Warning", "UnexpectedAdmissionError", e.message)
            self.write_status(pod_is_terminal=True)
            return False
        return True

    def _make_pod_dir(self) -> None:
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.pod_dir, 0o700)
        (self.pod_dir / "home").mkdir(exist_ok=True)
        (self.pod_dir / "tmp").mkdir(exist_ok=True)

    async def _setup_volumes(self) -> None:
        while True:
            # Noted before the attempt: a change while the files are written in a thread (a
            # claim binding, say) must still wake the retry.
            seen = self.k.config_generation
            try:
                self._issue_tokens()
                projected = {key: issued.token.encode() for key, issued in self.tokens.items()
                             if key != DEFAULT_TOKEN.key}
                self.volume_dirs = await asyncio.to_thread(
                    materialise_volumes, self.pod, self.pod_dir, self.k.lookup,
                    tokens=projected, node_allocatable=self.k.node_allocatable(self.node))
                default = self.tokens.get(DEFAULT_TOKEN.key)
                if default is not None:
                    self.sa_dir = await asyncio.to_thread(
                        write_service_account, self.pod_dir, self.namespace, default.token,
                        self.k.ca_pem)
                return
            except VolumeError as e:
                self.event("Warning", "FailedMount", e.message)
                await self.k.wait_config_change(seen)

    # -- service-account tokens --------------------------------------------------------------------

    @property
    def service_account(self) -> str:
        return self.spec.get("serviceAccountName") or "default"

    def _issue_tokens(self) -> None:
        """Request every token the pod mounts (on the loop: the issuer reads the store).

        Raises VolumeError, the real FailedMount text, when the ServiceAccount does not exist.
        """
        for source in self.token_sources:
            try:
                self.tokens[source.key] = self.k.token_issuer.issue(
                    self.namespace, self.service_account, pod=self.pod,
                    expiration_seconds=source.expiration_seconds or self.k.token_seconds,
                    audiences=[source.audience] if source.audience else None)
            except ApiError as e:
                volume = source.volume or "kube-api-access"
                raise VolumeError(f'MountVolume.SetUp failed for volume "{volume}" : failed to '
                                  f"fetch token: {e.message}") from None

    def _token_target(self, key: tuple[str, str]) -> Path | None:
        if key == DEFAULT_TOKEN.key:
            return self.sa_dir / "token" if self.sa_dir is not None else None
        volume, path = key
        base = self.volume_dirs.get(volume)
        return base / path if base is not None else None

    async def _rotate_tokens(self) -> None:
        """Rewrite each token once 80 % of its life has passed, until the pod stops."""
        clock = self.k.token_issuer.clock
        while True:
            renew_at = min(t.issued_at + TOKEN_RENEW_AFTER * t.lifetime
                           for t in self.tokens.values())
            await asyncio.sleep(max(0.05, renew_at - clock()))
            try:
                self._issue_tokens()
            except VolumeError as e:
                # The ServiceAccount is gone: the old token stops working; try again later.
                self.event("Warning", "FailedMount", e.message)
                await self.k.wait_config_change()
                continue
            for key, issued in list(self.tokens.items()):
                target = self._token_target(key)
                if target is None:
                    continue
                try:
                    await asyncio.to_thread(replace_token, target, issued.token.encode())
                except OSError as e:  # the old token stays until the next renewal
                    log.warning("pod %s: cannot renew its token file: %s", self.label,
                                e.strerror)

    async def _stop_token_rotation(self) -> None:
        task, self.token_task = self.token_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run_container(self, c: ContainerRuntime, policy: str) -> None:
        base = self.k.crash_backoff_seconds
        cap = self.k.max_backoff_seconds
        while True:
            if not await self._pull(c):
                return
            prepared = await self._prepare(c)
            if prepared is None:
                continue
            argv, env, cwd = prepared
            exit_code, started_at = await self._start_and_wait(c, argv, env, cwd)
            c.runs += 1
            if not (policy == "Always" or (policy == "OnFailure" and exit_code != 0)):
                c.finished = True
                if not all(other.finished for other in self.containers):
                    self.write_status()  # the pod goes on; the last one writes the final status
                return
            self.write_status()
            ran_for = time.time() - started_at if started_at else 0.0
            if ran_for >= 2 * cap:
                c.runs = 1  # a container that ran long enough starts its back-off afresh
            delay = crash_backoff(c.runs, base, cap)
            c.last_state = c.state
            if delay > 0:
                c.state = {"waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {go_duration(delay)} restarting failed "
                               f"container={c.name} pod={self._format_pod()}"}}
                self.event("Warning", "BackOff", f"Back-off restarting failed container {c.name} "
                                                 f"in pod {self._format_pod()}", c.name)
                self.write_status()
                await asyncio.sleep(delay)
            c.restart_count += 1

    async def _pull(self, c: ContainerRuntime) -> bool:
        """Image "pull" per the ImagePolicy; waits in ErrImagePull/ImagePullBackOff if missing."""
        policy = c.spec.get("imagePullPolicy") or "IfNotPresent"
        if c.runs:
            return True  # a restart reuses the image already on the node
        present = self.k.pulls.present(self.node, c.image)
        if self.k.images.is_available(c.image) and (policy != "Never" or present):
            if policy == "Always" or not present:
                # Simulated download time (imagepulls.py): the pod waits in ContainerCreating.
                self.event("Normal", "Pulling", f'Pulling image "{c.image}"', c.name)
                took = go_duration(await self.k.pulls.pull(self.node, c.image))
                self.event("Normal", "Pulled", f'Successfully pulled image "{c.image}" in {took} '
                                               f'({took} including waiting)', c.name)
            else:
                self.event("Normal", "Pulled",
                           f'Container image "{c.image}" already present on machine', c.name)
            return True
        if policy == "Never":
            message = f'Container image "{c.image}" is not present with pull policy of Never'
            c.state = {"waiting": {"reason": "ErrImageNeverPull", "message": message}}
            self.event("Warning", "ErrImageNeverPull", message, c.name)
            self.write_status()
            return False  # the pod stays Pending; nothing will make the image appear
        attempt = 0
        while True:
            attempt += 1
            self.event("Normal", "Pulling", f'Pulling image "{c.image}"', c.name)
            error = self.k.images.pull_error(c.image)
            c.state = {"waiting": {"reason": "ErrImagePull", "message": error}}
            self.event("Warning", "Failed", f'Failed to pull image "{c.image}": {error}', c.name)
            self.event("Warning", "Failed", "Error: ErrImagePull", c.name)
            self.write_status()
            await asyncio.sleep(min(self.k.crash_backoff_seconds, 1.0))
            delay = min(self.k.max_backoff_seconds,
                        self.k.crash_backoff_seconds * (2 ** (attempt - 1)))
            c.state = {"waiting": {"reason": "ImagePullBackOff",
                                   "message": f'Back-off pulling image "{c.image}"'}}
            self.event("Normal", "BackOff", f'Back-off pulling image "{c.image}"', c.name)
            self.event("Warning", "Failed", "Error: ImagePullBackOff", c.name)
            self.write_status()
            await asyncio.sleep(delay)
            if self.k.images.is_available(c.image):
                return True

    async def _prepare(self, c: ContainerRuntime) -> tuple[list[str], dict[str, str], str] | None:
        """argv, env and working directory; None (after waiting) if the config is incomplete."""
        try:
            return self._container_config(c)
        except ConfigError as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": e.message}}
            c.ready = c.started = False
            self.event("Warning", "Failed", f"Error: {e.message}", c.name)
            self.write_status()
            await self.k.wait_config_change()
            return None

    def _device_env(self, c: ContainerRuntime) -> dict[str, str]:
        """What the GPU device plugins would set for the container's devices (allocators.py)."""
        node = self.k._nodes.get(self.node) or {}
        labels = meta_of(node).get("labels") or {}
        try:
            replicas = int(labels.get(GPU_REPLICAS_LABEL) or 1)
        except ValueError:
            replicas = 1
        whole = int(self.k.node_allocatable(self.node).get(GPU_RESOURCE, 0) or 0)
        env: dict[str, str] = {}
        for resource, indices in sorted(c.devices.items()):
            env.update(device_env(self.node, resource, indices, kind=gpu_kind(resource),
                                  whole_gpus=whole, replicas=replicas))
        return env

    def _container_config(self, c: ContainerRuntime) -> tuple[list[str], dict[str, str], str]:
        spec = c.spec
        mounts = container_mounts(spec, self.volume_dirs, self.sa_dir)
        declared = container_env(self.pod_with_status(), spec, self.k.lookup,
                                 service_env=self.k.service_env,
                                 node_allocatable=self.k.node_allocatable(self.node))
        env: dict[str, str] = self.k.images.base_env()
        env["HOME"] = str(self.pod_dir / "home")
        # A container's /tmp dies with it; here the pod directory does (connection files with
        # kernel keys included), so temporary files go there and not to the host's /tmp.
        env["TMPDIR"] = str(self.pod_dir / "tmp")
        env["HOSTNAME"] = self.spec.get("hostname") or self.name
        env.update(self._device_env(c))
        env.update({k: rewrite_value(v, mounts) for k, v in declared.items()})
        env["PATH"] = self.k.images.search_path(env.get("PATH") if "PATH" in declared else None)
        env[MOUNTS_ENV] = mounts_env(mounts)
        env["LOCALCLUSTER_API_URL"] = self.k.api_url
        argv = [rewrite_arg(a, mounts)
                for a in expand_command(spec, env, self.k.images.entrypoint(c.image))]
        workdir = spec.get("workingDir")
        cwd = rewrite_value(str(workdir), mounts) if workdir else str(self.pod_dir)
        return argv, env, cwd

    def pod_with_status(self) -> JSON:
        """The pod as fieldRefs see it: with this kubelet's podIP/hostIP already filled in."""
        pod = dict(self.pod)
        status = dict(pod.get("status") or {})
        status.update({"hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}]})
        if self.ip:
            status.update({"podIP": self.ip, "podIPs": [{"ip": self.ip}]})
        pod["status"] = status
        return pod

    async def _start_and_wait(self, c: ContainerRuntime, argv: list[str], env: dict[str, str],
                              cwd: str) -> tuple[int, float | None]:
        """Run one instance to its end; returns (exit code, start time or None)."""
        c.container_id = "containerd://" + secrets.token_hex(32)
        logbuf = c.new_instance(self.k.log_limit)
        try:
            executable = await asyncio.to_thread(_prepare_exec, argv, env.get("PATH", ""), cwd)
            c.start_task = asyncio.ensure_future(ContainerProcess.start(
                [executable, *argv[1:]], env=env, cwd=cwd, log_buffer=logbuf))
            c.process = await asyncio.shield(c.start_task)
        except StartFailure as e:
            logbuf.close()
            c.start_task = None
            now = now_rfc3339()
            c.state = {"terminated": {"exitCode": 128, "reason": "StartError",
                                      "message": e.message, "startedAt": _EPOCH,
                                      "finishedAt": now, "containerID": c.container_id}}
            c.ready = c.started = False
            self.event("Warning", "Failed", f"Error: {e.message}", c.name)
            return 128, None
        started_at = time.time()
        started = now_rfc3339()
        c.state = {"running": {"startedAt": started}}
        c.ready = c.started = True
        self.event("Normal", "Created", f"Created container {c.name}", c.name)
        self.event("Normal", "Started", f"Started container {c.name}", c.name)
        self.write_status()
        exit_code = await c.process.wait()
        self._record_exit(c, exit_code, started)
        return exit_code, started_at

    def _record_exit(self, c: ContainerRuntime, exit_code: int, started: str) -> None:
        terminated: JSON = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0
                            else "Error", "startedAt": started, "finishedAt": now_rfc3339(),
                            "containerID": c.container_id}
        if exit_code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = c.instances[-1].text(tail_lines=80)[-2048:] if c.instances else ""
            if tail:
                terminated["message"] = tail
        c.state = {"terminated": terminated}
        c.ready = c.started = False
        c.process = None
        c.start_task = None

    # -- ending ------------------------------------------------------------------------------------

    def _release(self) -> None:
        """Give back devices and the address (before the terminal status is visible)."""
        self.k.gpus.release(self.node, self.uid)
        if self.ip:
            self.k.ips.release(self.ip)

    async def _stop_lifecycle(self) -> list[ContainerRuntime]:
        """Stop restarting anything; return the containers that have a live process."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self._stop_token_rotation()
        live = []
        for c in self.containers + self.init_containers:
            if c.start_task is not None:
                with contextlib.suppress(Exception):
                    c.process = await c.start_task
            if c.process is not None and c.process.running:
                live.append(c)
        return live

    async def _kill(self, live: list[ContainerRuntime]) -> None:
        """SIGTERM every group, SIGKILL at the deadline (which a later delete may shorten)."""
        loop = asyncio.get_running_loop()
        for c in live:
            assert c.process is not None
            c.process.signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(c.process.wait()) for c in live if c.process is not None]
        try:
            while waits and not all(w.done() for w in waits):
                remaining = (self.deadline or loop.time()) - loop.time()
                if remaining <= 0:
                    break
                self._deadline_changed.clear()
                changed = asyncio.ensure_future(self._deadline_changed.wait())
                await asyncio.wait([*waits, changed], timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
            for c in live:
                if c.process is not None and c.process.running:
                    c.process.signal(signal.SIGKILL)
            await asyncio.gather(*waits, return_exceptions=True)
        finally:
            for w in waits:
                w.cancel()

    async def _terminate(self) -> None:
        """Graceful deletion requested through the API."""
        try:
            live = await self._stop_lifecycle()
            for c in live:
                self.event("Normal", "Killing", f"Stopping container {c.name}", c.name)
            started = {c.name: (c.state.get("running") or {}).get("startedAt", _EPOCH)
                       for c in live}
            await self._kill(live)
            for c in live:
                assert c.process is not None
                code = await c.process.wait()
                self._record_exit(c, code, started[c.name])
            self._release()
            self.sandbox_ready = False
            if (any(c.container_id for c in self.containers + self.init_containers)
                    and self.final_phase is None):
                self.final_phase = pod_phase(self.spec, [c.status() for c in self.containers],
                                             True)
                self.write_status(pod_is_terminal=True)
            # Volumes (secrets) leave the disk before the object goes, as the kubelet
            # unmounts them before it removes the pod.
            await asyncio.to_thread(shutil.rmtree, self.pod_dir, True)
            self._delete_object()
        except Exception:
            log.exception("pod %s: termination failed", self.label)
            self._delete_object()
        finally:
            self.k.forget(self)
            await asyncio.to_thread(shutil.rmtree, self.pod_dir, True)

    def _delete_object(self) -> None:
        if self.removed:
            return
        try:
            self.k.store.delete(PODS, self.namespace, self.name, grace_period_seconds=0,
                                preconditions={"uid": self.uid})
        except ApiError as e:
            if e.code not in (404, 409):
                log.warning("pod %s: final delete failed: %s", self.label, e.message)

    async def on_removed(self) -> None:
        """The object is gone (force delete, or after our own delete): kill at once, clean up."""
        self.removed = True
        if self.term_task is not None:
            self.deadline = 0.0
            self._deadline_changed.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.term_task
            return
        await self.shutdown(grace=0)
        self.k.forget(self)
        await asyncio.to_thread(shutil.rmtree, self.pod_dir, True)

    async def shutdown(self, grace: float) -> None:
        """Kubelet stop: end the processes without writing anything."""
        self.removed = True
        if self.term_task is not None and not self.term_task.done():
            self.deadline = 0.0
            self._deadline_changed.set()
        live = await self._stop_lifecycle()
        self.deadline = asyncio.get_running_loop().time() + grace
        await self._kill(live)
        if self.term_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.term_task
        self._release()


def _prepare_exec(argv: list[str], path: str, cwd: str) -> str:
    """Create the working directory and find argv[0] as the runtime would (runc's wording)."""
    try:
        os.makedirs(cwd, exist_ok=True)
    except OSError as e:
        raise StartFailure(runc_exec_error(argv[0] if argv else "", f"chdir to cwd (\"{cwd}\") "
                                           f"set in config.json failed: {e.strerror}")) from None
    if not argv or not argv[0]:
        raise StartFailure("failed to create containerd task: failed to create shim task: OCI "
                           "runtime create failed: runc create failed: unable to start container "
                           "process: error during container init: no command specified: unknown")
    name = argv[0]
    if "/" in name:
        candidate = name if os.path.isabs(name) else os.path.join(cwd, name)
        if not os.path.exists(candidate):
            raise StartFailure(runc_exec_error(name, f"stat {name}: no such file or directory"))
        if os.path.isdir(candidate) or not os.access(candidate, os.X_OK):
            raise StartFailure(runc_exec_error(name, "permission denied"))
        return candidate
    found = shutil.which(name, path=path)
    if found is None:
        raise StartFailure(runc_exec_error(name, "executable file not found in $PATH"))
    return found


class Kubelet:
    """Runs every pod bound to a known node (see the module docstring).

    ``crash_backoff_seconds`` is the first CrashLoopBackOff/ImagePullBackOff delay (10 s in a
    real cluster); tests make it small. ``stop_grace_seconds`` is how long ``stop()`` lets
    processes handle SIGTERM before SIGKILL.
    """

    def __init__(self, store: Any, workdir: Path, *, api_url: str,
                 service_url: str | None = None, ca_pem: bytes = b"",
                 token_issuer: ServiceAccountTokens | None = None,
                 token_seconds: int = KUBELET_TOKEN_SECONDS,
                 image_policy: ImagePolicy | None = None, crash_backoff_seconds: float = 10.0,
                 max_backoff_seconds: float = 300.0, stop_grace_seconds: float = 2.0,
                 log_limit: int = DEFAULT_LOG_LIMIT, ip_seed: int | None = None) -> None:
        self.store = store
        # The API server's TokenRequest implementation, called in process (it is what the real
        # kubelet reaches over the API); pods' tokens live ``token_seconds`` unless a projected
        # source asks for another lifetime.
        self.token_issuer = token_issuer or ServiceAccountTokens(store)
        self.token_seconds = token_seconds
        self.workdir = Path(workdir)
        self.api_url = api_url
        self.images = image_policy or ImagePolicy()
        #: Which images each node holds, and simulated pull time (imagepulls.py).
        self.pulls = NodeImages(self.images)
        self.crash_backoff_seconds = float(crash_backoff_seconds)
        self.max_backoff_seconds = max(float(max_backoff_seconds), self.crash_backoff_seconds)
        self.stop_grace_seconds = stop_grace_seconds
        self.log_limit = log_limit
        self.events = EventRecorder(store, "kubelet")
        self.ips = IPAllocator(ip_seed)
        self.gpus = DeviceAllocator(GPU_RESOURCE)
        # Pods reach the API as a real pod does: KUBERNETES_SERVICE_* name the HTTPS listener
        # (service_url) and ca.crt is its CA; LOCALCLUSTER_API_URL stays the plain-HTTP one.
        self.service_env = _service_env(service_url or api_url)
        self.ca_pem = ca_pem
        self._nodes: dict[str, JSON] = {}
        self._workers: dict[str, PodWorker] = {}
        self._by_name: dict[tuple[str, str], PodWorker] = {}
        self._unplaced: dict[str, JSON] = {}  # bound to a node we do not know (yet)
        self._config_changed = asyncio.Event()
        #: Bumped by every Secret, ConfigMap, ServiceAccount, claim or volume change.
        self.config_generation = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        await asyncio.to_thread(self.workdir.mkdir, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.workdir, 0o700)
        # Nodes first, so pods listed next find their node.
        items, _ = self.store.list(NODES)
        self._on_node_list(items)
        self._tasks = [
            asyncio.create_task(self._informer(NODES, self._on_node_list, self._on_node_event)),
            asyncio.create_task(self._informer(PODS, self._on_pod_list, self._on_pod_event)),
            asyncio.create_task(self._informer(("", "secrets"), self._on_config_list,
                                               self._on_config_event)),
            asyncio.create_task(self._informer(("", "configmaps"), self._on_config_list,
                                               self._on_config_event)),
            # A pod waiting for its ServiceAccount (FailedMount) retries when one appears.
            asyncio.create_task(self._informer(("", "serviceaccounts"), self._on_config_list,
                                               self._on_config_event)),
            # A pod waiting for its claim to exist or bind (FailedMount) retries when it does.
            asyncio.create_task(self._informer(("", "persistentvolumeclaims"),
                                               self._on_config_list, self._on_config_event)),
            asyncio.create_task(self._informer(("", "persistentvolumes"), self._on_config_list,
                                               self._on_config_event)),
        ]
        await asyncio.sleep(0)

    async def stop(self) -> None:
        """Stop watching, then end every pod process (SIGTERM, short grace, SIGKILL)."""
        self._stopping = True
        await cancel_all(self._tasks)
        self._tasks = []
        workers = list(self._workers.values())
        await asyncio.gather(*(w.shutdown(self.stop_grace_seconds) for w in workers),
                             return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.pulls.close()
        for w in workers:
            await asyncio.to_thread(shutil.rmtree, w.pod_dir, True)
        self._workers.clear()
        self._by_name.clear()

    def _informer(self, key: tuple[str, str], on_list: Any, on_event: Any) -> Any:
        return run_informer(self.store, key, on_list, on_event, lambda: self._stopping, "kubelet")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- nodes -------------------------------------------------------------------------------------

    def _on_node_list(self, nodes: list[JSON]) -> None:
        for node in nodes:
            self._on_node_event("ADDED", node)

    def _on_node_event(self, etype: str, node: JSON) -> None:
        name = meta_of(node).get("name", "")
        if etype == "DELETED":
            self._nodes.pop(name, None)
            self.pulls.forget_node(name)
            return
        self._nodes[name] = node
        allocatable = node_allocatable(node)
        for resource in {*allocatable, *self.gpus.resources(name), GPU_RESOURCE}:
            if not gpu_kind(resource):
                continue  # only GPU device plugins are simulated
            try:
                count = int(allocatable.get(resource, 0))
            except (ValueError, ArithmeticError):
                count = 0
            self.gpus.set_capacity(name, count, resource)
        for uid, pod in list(self._unplaced.items()):
            if (pod.get("spec") or {}).get("nodeName") == name:
                del self._unplaced[uid]
                self._on_pod_event("MODIFIED", pod)

    def node_allocatable(self, node: str) -> dict[str, Any]:
        obj = self._nodes.get(node)
        return node_allocatable(obj) if obj else {}

    # -- pods --------------------------------------------------------------------------------------

    def _on_pod_list(self, pods: list[JSON]) -> None:
        live = {meta_of(p).get("uid") for p in pods}
        for uid, worker in list(self._workers.items()):
            if uid not in live:
                self._spawn(worker.on_removed())
        for pod in pods:
            self._on_pod_event("MODIFIED", pod)

    def _on_pod_event(self, etype: str, pod: JSON) -> None:
        meta = meta_of(pod)
        uid = meta.get("uid", "")
        worker = self._workers.get(uid)
        if etype == "DELETED":
            self._unplaced.pop(uid, None)
            self.events.forget(uid)
            if worker is not None:
                self._spawn(worker.on_removed())
            return
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            return
        if worker is not None:
            if rv_of(pod) >= rv_of(worker.pod):
                worker.update(pod)
            return
        if node not in self._nodes:
            self._unplaced[uid] = pod
            return
        if meta.get("deletionTimestamp"):
            # Bound but never started here: nothing to stop, finish the deletion now.
            with contextlib.suppress(ApiError):
                self.store.delete(PODS, meta.get("namespace"), meta.get("name"),
                                  grace_period_seconds=0, preconditions={"uid": uid})
            return
        if is_terminal(pod):
            return
        worker = PodWorker(self, pod)
        self._workers[uid] = worker
        self._by_name[(worker.namespace, worker.name)] = worker
        worker.start()

    def forget(self, worker: PodWorker) -> None:
        if self._workers.get(worker.uid) is worker:
            del self._workers[worker.uid]
        if self._by_name.get((worker.namespace, worker.name)) is worker:
            del self._by_name[(worker.namespace, worker.name)]

    # -- secrets and config maps -------------------------------------------------------------------

    def _on_config_list(self, _items: list[JSON]) -> None:
        self._notify_config()

    def _on_config_event(self, _etype: str, _obj: JSON) -> None:
        self._notify_config()

    def _notify_config(self) -> None:
        self.config_generation += 1
        self._config_changed.set()
        self._config_changed = asyncio.Event()

    async def wait_config_change(self, since: int | None = None) -> None:
        """Until some Secret, ConfigMap, claim or volume changes (or the longest back-off, as a
        safety net); at once if one changed after ``config_generation`` was ``since``."""
        if since is not None and since != self.config_generation:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._config_changed.wait(), self.max_backoff_seconds)

    def lookup(self, kind: str, namespace: str, name: str) -> JSON | None:
        try:
            return self.store.get(("", kind), namespace, name)
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    # -- introspection (tests, the API server) -----------------------------------------------------

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        return self._by_name.get((namespace, name))

    def pod_processes(self, namespace: str, name: str) -> dict[str, int]:
        """Container name -> pid of its running process."""
        w = self._by_name.get((namespace, name))
        if w is None:
            return {}
        return {c.name: c.process.pid for c in w.containers
                if c.process is not None and c.process.running}

    def _log_buffer(self, namespace: str, name: str, container: str | None,
                    previous: bool) -> LogBuffer:
        pod_obj = self.store.get(PODS, namespace, name)  # ApiError 404 for an unknown pod
        spec = pod_obj.get("spec") or {}
        names = [c.get("name") for c in spec.get("containers") or []]
        init_names = [c.get("name") for c in spec.get("initContainers") or []]
        if container is None:
            default = (meta_of(pod_obj).get("annotations") or {}).get(
                "kubectl.kubernetes.io/default-container")
            if default in names:
                container = default
            elif len(names) == 1:
                container = names[0]
            else:
                message = (f"a container name must be specified for pod {name}, choose one of: "
                           f"[{' '.join(str(n) for n in names)}]")
                if init_names:
                    message += (f" or one of the init containers: "
                                f"[{' '.join(str(n) for n in init_names)}]")
                raise ApiError(400, "BadRequest", message)
        if container not in names and container not in init_names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        w = self._by_name.get((namespace, name))
        runtime = None
        if w is not None and w.uid == meta_of(pod_obj).get("uid"):
            runtime = next((c for c in w.containers + w.init_containers if c.name == container),
                           None)
        instances = runtime.instances if runtime is not None else []
        if previous:
            if len(instances) < 2:
                raise ApiError(400, "BadRequest", f'previous terminated container "{container}" '
                                                  f'in pod "{name}" not found')
            return instances[-2]
        if not instances:
            reason = "ContainerCreating"
            if runtime is not None:
                reason = (runtime.state.get("waiting") or {}).get("reason") or reason
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is '
                                              f'waiting to start: {reason}')
        return instances[-1]

    def log_provider(self, namespace: str, name: str, container: str | None = None,
                     previous: bool = False, *, timestamps: bool = False,
                     tail_lines: int | None = None, since_seconds: float | None = None,
                     limit_bytes: int | None = None) -> str:
        """The ``pods/log`` text; raises ApiError (404 pod, 400 container) like the real API."""
        buf = self._log_buffer(namespace, name, container, previous)
        since = time.time() - since_seconds if since_seconds is not None else None
        return buf.text(timestamps=timestamps, tail_lines=tail_lines, since=since,
                        limit_bytes=limit_bytes)

    async def follow_logs(self, namespace: str, name: str, container: str | None = None, *,
                          timestamps: bool = False, tail_lines: int | None = None
                          ) -> AsyncIterator[str]:
        """``pods/log?follow=true``: lines of the current instance until it ends."""
        buf = self._log_buffer(namespace, name, container, False)
        async for line in buf.follow(timestamps=timestamps, tail_lines=tail_lines):
            yield line


def _service_env(api_url: str) -> dict[str, str]:
    """The ``kubernetes`` service variables every pod gets, pointing at the local API server."""
    parts = urlsplit(api_url)
    host = parts.hostname or "127.0.0.1"
    port = str(parts.port or (443 if parts.scheme == "https" else 80))
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": port,
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }
