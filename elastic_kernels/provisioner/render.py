"""One pure function that turns a kernel start into the three objects we create.

``render_kernel(RenderRequest) -> RenderedKernel`` builds the JupyterKernel, the Secret holding
the HMAC key, and the Pod, as plain dicts. It reads nothing and writes nothing (no API calls, no
clock, no randomness, no logging), never mutates its input, and returns fresh objects each time:
the same request always renders the same objects, so tests can pin every field and a restart or
a second gateway replica renders exactly what the first did.

Objects are built as data, never by templating text, so no value (a user name, a client variable
holding YAML or JSON) can add or change a field.

Contract with ``launchers/elastic-kernel-launcher`` (keep both files in step):

* The kernel listens on fixed, well-known ports (``KERNEL_PORTS``): every pod has its own IP, so
  ports never collide and the connection info is known before the pod exists, except its IP.
* The container's command is ``["elastic-kernel-launcher", "--", *spec.argv]``; argv still holds
  ``{connection_file}``, which the launcher replaces with the path of the file it writes.
* Its environment carries ``EK_KERNEL_ID``, ``EK_KERNEL_NAME``, ``EK_IP`` (the pod IP, from the
  downward API), ``EK_SHELL_PORT``, ``EK_IOPUB_PORT``, ``EK_STDIN_PORT``, ``EK_CONTROL_PORT``,
  ``EK_HB_PORT``, ``EK_TRANSPORT=tcp``, ``EK_SIGNATURE_SCHEME=hmac-sha256`` and ``EK_KEY_FILE``.
* The key is only in the Secret ``kernel-<id>-key`` (``data.key``, base64), mounted read-only at
  ``/var/run/elastic-kernels/key`` with mode 0400; ``EK_KEY_FILE`` points at it. It is never in
  the pod's env, command or annotations. The pod's default ``fsGroup`` lets the kernel user read
  the file (Kubernetes then makes it group-readable).

Security: without a template the pod meets the Pod Security Standard ``restricted``
(``DEFAULT_POD_SECURITY_CONTEXT``, ``DEFAULT_CONTAINER_SECURITY_CONTEXT``); a template's
securityContext fields override those defaults one by one. A kernel without GPUs gets
``NVIDIA_VISIBLE_DEVICES=void`` so the NVIDIA runtime shows it none of the node's GPUs.

Precedence: our labels win over the template's; in the container env, ours (``EK_*``,
``KERNEL_ID``, ``KERNEL_USERNAME``, and ``NVIDIA_VISIBLE_DEVICES`` of a CPU kernel) win over the
client's allowed variables, which win over the kernelspec's env, which wins over the template's
env.

Client-supplied values (env and user name) have every ``$`` doubled, because the kubelet expands
``$(VAR)`` in env values: a client writing ``$(OTHER_VAR)`` gets that literal text, not the value
of another variable. ``JupyterKernel.spec.clientEnv`` keeps the values as the client sent them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..kube.resources import (
    ANNOTATION_KERNELSPEC,
    ANNOTATION_RESTART_COUNT,
    ANNOTATION_USER,
    API_VERSION,
    COMPONENT_KERNEL,
    CONTAINER_NAME,
    DNS_LABEL_RE,
    GPU_RESOURCE,
    KERNEL_ID_RE,
    KERNEL_KIND,
    LABEL_COMPONENT,
    LABEL_KERNEL_ID,
    LABEL_KERNELSPEC,
    LABEL_MANAGED_BY,
    LABEL_USER,
    MANAGED_BY,
    PHASE_PENDING,
    USER_MAX_CHARS,
    KernelSpecView,
    TemplateView,
    kernel_object_name,
    kernel_pod_name,
    key_secret_name,
    sanitize_label_value,
    thaw,
)
from .envpolicy import IMAGE_VAR, WORKING_DIR_VAR, decide_client_env
from .uservolumes import (
    UserMounts,
    UserVolumeError,
    WorkingDir,
    decide_working_dir,
    launcher_env,
    render_user_volumes,
)

LAUNCHER = "elastic-kernel-launcher"

#: Ports every kernel listens on, by channel; the connection file names them f"{channel}_port".
KERNEL_PORTS: Mapping[str, int] = MappingProxyType(
    {
        "shell": 52700,
        "iopub": 52701,
        "stdin": 52702,
        "control": 52703,
        "hb": 52704,
    }
)
TRANSPORT = "tcp"
SIGNATURE_SCHEME = "hmac-sha256"

KEY_VOLUME_NAME = "elastic-kernel-key"
KEY_MOUNT_DIR = "/var/run/elastic-kernels/key"
KEY_SECRET_ITEM = "key"
KEY_FILE = f"{KEY_MOUNT_DIR}/{KEY_SECRET_ITEM}"
KEY_FILE_MODE = 0o400

DEFAULT_TERMINATION_GRACE_SECONDS = 5

#: The pod securityContext every kernel pod starts from, so that a kernelspec without a template
#: still renders a pod the Pod Security Standard ``restricted`` admits (kernels run user code).
#: No ``runAsUser``: our kernel images declare a numeric non-root ``USER 1000:100``, which the
#: kubelet checks against ``runAsNonRoot``; an image that runs as root (or as a named user) is
#: refused at container start (CreateContainerConfigError) rather than silently run as a uid it
#: was not built for; a template sets ``runAsUser`` for such an image. ``fsGroup`` makes the key
#: file (mode 0400, owned by root) group-readable by the kernel whatever its uid.
DEFAULT_POD_SECURITY_CONTEXT: Mapping[str, Any] = MappingProxyType(
    {
        "runAsNonRoot": True,
        "fsGroup": 100,
        "seccompProfile": MappingProxyType({"type": "RuntimeDefault"}),
    }
)
#: The kernel container's securityContext before a template's: what ``restricted`` requires.
DEFAULT_CONTAINER_SECURITY_CONTEXT: Mapping[str, Any] = MappingProxyType(
    {
        "allowPrivilegeEscalation": False,
        "capabilities": MappingProxyType({"drop": ("ALL",)}),
    }
)

#: Set in the kernel container of a kernel that holds no GPU. The NVIDIA container runtime
#: exposes the GPUs named by this variable, and CUDA base images set it to ``all`` in their
#: image env, so a CPU kernel on a GPU node would otherwise see (and could use) every GPU of the
#: node, outside the device plugin's accounting. ``void`` exposes none. GPU kernels do not get
#: it: the device plugin sets it to the GPUs it allocated.
ENV_NVIDIA_VISIBLE_DEVICES = "NVIDIA_VISIBLE_DEVICES"
NO_GPU_DEVICES = "void"

# Names of the launcher's environment variables.
ENV_KERNEL_ID = "EK_KERNEL_ID"
ENV_KERNEL_NAME = "EK_KERNEL_NAME"
ENV_IP = "EK_IP"
ENV_TRANSPORT = "EK_TRANSPORT"
ENV_SIGNATURE_SCHEME = "EK_SIGNATURE_SCHEME"
ENV_KEY_FILE = "EK_KEY_FILE"
ENV_PORTS: Mapping[str, str] = MappingProxyType(
    {channel: f"EK_{channel.upper()}_PORT" for channel in KERNEL_PORTS}  # shell -> EK_SHELL_PORT
)

_KEY_MIN_BYTES = 16
_KEY_MAX_BYTES = 1024


class RenderError(ValueError):
    """A render request that cannot produce valid objects; the message says which input."""


@dataclass(frozen=True)
class KernelOwner:
    """The created JupyterKernel that owns a kernel's Pod and Secret (for garbage collection)."""

    name: str
    uid: str


@dataclass(frozen=True)
class RenderRequest:
    """Everything a kernel's objects depend on; nothing else is read.

    ``client_env`` is what the client sent, unfiltered: rendering applies the kernelspec's policy
    (see envpolicy) so that no caller can forget to. ``key`` is the HMAC key, printable ASCII.
    """

    kernel_id: str
    namespace: str
    user: str
    spec: KernelSpecView
    key: bytes = field(repr=False)
    template: TemplateView | None = None
    client_env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    gateway_id: str = ""
    restart_count: int = 0
    owner: KernelOwner | Mapping[str, str] | None = None
    key_secret_name: str | None = None


@dataclass(frozen=True)
class RenderedKernel:
    """The objects to create, in order: ``kernel`` first, then (owned by it) ``secret`` and ``pod``.

    ``kernel_status`` is the initial status to write through the status subresource (the API
    server ignores status on create). ``client_env`` holds the accepted client variables and
    ``dropped_env`` the names the policy dropped, for a debug log.
    """

    kernel: dict[str, Any]
    secret: dict[str, Any] = field(repr=False)
    pod: dict[str, Any]
    kernel_status: dict[str, Any]
    client_env: Mapping[str, str]
    dropped_env: tuple[str, ...]
    #: For the kernel's status and the gateway's log, e.g. a KERNEL_WORKING_DIR outside the
    #: user's volumes (the launcher logs the same text in the kernel's log).
    warnings: tuple[str, ...] = ()

    @property
    def pod_name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def secret_name(self) -> str:
        return str(self.secret["metadata"]["name"])

    @property
    def kernel_name(self) -> str:
        return str(self.kernel["metadata"]["name"])


def connection_info(ip: str, key: bytes, kernel_name: str = "") -> dict[str, Any]:
    """The Jupyter connection info of a kernel at ``ip``: what the launcher writes in the pod."""
    return {
        "ip": ip,
        "transport": TRANSPORT,
        **{f"{channel}_port": port for channel, port in KERNEL_PORTS.items()},
        "key": key,
        "signature_scheme": SIGNATURE_SCHEME,
        "kernel_name": kernel_name,
    }


def as_owner(owner: KernelOwner | Mapping[str, str]) -> KernelOwner:
    """A KernelOwner from itself or from a ``{"name", "uid"}`` mapping (e.g. created metadata)."""
    if isinstance(owner, KernelOwner):
        result = owner
    elif isinstance(owner, Mapping):
        result = KernelOwner(name=str(owner.get("name") or ""), uid=str(owner.get("uid") or ""))
    else:
        raise RenderError(f"an owner is a KernelOwner or a name/uid mapping, not {owner!r}")
    if not result.name or not result.uid:
        raise RenderError("an owner needs both the JupyterKernel's name and its uid")
    return result


def owner_reference(owner: KernelOwner | Mapping[str, str]) -> dict[str, Any]:
    """A controller ownerReference to a JupyterKernel: deleting it deletes the dependent."""
    owner = as_owner(owner)
    return {
        "apiVersion": API_VERSION,
        "kind": KERNEL_KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def with_owner(obj: Mapping[str, Any], owner: KernelOwner | Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``obj`` owned by ``owner`` (any other controller reference is replaced).

    For the usual order of a start: create ``rendered.kernel``, then create
    ``with_owner(rendered.secret, created_metadata)`` and ``with_owner(rendered.pod, ...)``.
    """
    owner = as_owner(owner)
    result = thaw(obj)
    meta = result.setdefault("metadata", {})
    refs = [r for r in meta.get("ownerReferences", []) if not r.get("controller")]
    meta["ownerReferences"] = [*refs, owner_reference(owner)]
    return result


def render_kernel(request: RenderRequest) -> RenderedKernel:
    """Render the JupyterKernel, Secret and Pod of one kernel start (or restart).

    Raises RenderError for an invalid request and envpolicy.ClientEnvError for a client
    variable whose value is refused; both are ValueErrors whose message is safe to show the user.
    """
    _check(request)
    spec = request.spec
    template = request.template
    decision = decide_client_env(request.client_env, spec)
    client_env = dict(decision.accepted)
    try:
        user_mounts = render_user_volumes(template, request.user)
    except (UserVolumeError, ValueError) as e:
        raise RenderError(str(e)) from None
    working_dir = decide_working_dir(decision.working_dir, user_mounts.roots)
    warnings = (working_dir.warning,) if working_dir and working_dir.warning else ()

    kernel_name = kernel_object_name(request.kernel_id)
    secret_name = request.key_secret_name or key_secret_name(request.kernel_id)
    pod_name = kernel_pod_name(request.kernel_id, request.restart_count)
    gpus = spec.gpus

    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_COMPONENT: COMPONENT_KERNEL,
        LABEL_KERNEL_ID: request.kernel_id,
        LABEL_KERNELSPEC: sanitize_label_value(spec.name),
        LABEL_USER: sanitize_label_value(request.user),
    }
    annotations = {ANNOTATION_USER: request.user, ANNOTATION_KERNELSPEC: spec.name}

    kernel_spec: dict[str, Any] = {
        "kernelId": request.kernel_id,
        "user": request.user,
        "kernelSpec": spec.name,
    }
    if request.gateway_id:
        kernel_spec["gateway"] = request.gateway_id
    if client_env:
        kernel_spec["clientEnv"] = dict(client_env)
    kernel = {
        "apiVersion": API_VERSION,
        "kind": KERNEL_KIND,
        "metadata": {
            "name": kernel_name,
            "namespace": request.namespace,
            "labels": dict(labels),
            "annotations": dict(annotations),
        },
        "spec": kernel_spec,
    }

    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name,
            "namespace": request.namespace,
            "labels": dict(labels),
            "annotations": dict(annotations),
        },
        "type": "Opaque",
        "immutable": True,
        "data": {KEY_SECRET_ITEM: base64.b64encode(request.key).decode("ascii")},
    }

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": request.namespace,
            "labels": {**(template.labels if template else {}), **labels},
            "annotations": {
                **(template.annotations if template else {}),
                **annotations,
                ANNOTATION_RESTART_COUNT: str(request.restart_count),
            },
        },
        "spec": _pod_spec(request, client_env, secret_name, gpus, user_mounts, working_dir),
    }

    if request.owner is not None:
        secret = with_owner(secret, request.owner)
        pod = with_owner(pod, request.owner)

    status = {
        "phase": PHASE_PENDING,
        "gpus": gpus,
        "restartCount": request.restart_count,
        **({"gpuResource": spec.gpu_resource} if gpus else {}),
        "podName": pod_name,
    }
    if warnings:
        status["message"] = "; ".join(warnings)
    return RenderedKernel(
        kernel=kernel,
        secret=secret,
        pod=pod,
        kernel_status=status,
        client_env=MappingProxyType(client_env),
        dropped_env=decision.dropped,
        warnings=warnings,
    )


def _check(request: RenderRequest) -> None:
    if not isinstance(request.kernel_id, str) or not KERNEL_ID_RE.match(request.kernel_id):
        raise RenderError(f"kernel id {request.kernel_id!r} is not a lowercase UUID")
    if not isinstance(request.namespace, str) or not DNS_LABEL_RE.match(request.namespace) or len(
        request.namespace
    ) > 63:
        raise RenderError(f"namespace {request.namespace!r} is not a valid namespace name")
    user = request.user
    if not isinstance(user, str) or not user or len(user) > USER_MAX_CHARS:
        raise RenderError(
            f"the user must be a non-empty string of at most {USER_MAX_CHARS} characters"
        )
    if not user.isprintable():
        raise RenderError("the user name contains control or separator characters")
    if isinstance(request.restart_count, bool) or not isinstance(request.restart_count, int) or (
        request.restart_count < 0
    ):
        raise RenderError(f"restart_count must be an integer >= 0, not {request.restart_count!r}")
    if not isinstance(request.gateway_id, str) or len(request.gateway_id) > 253:
        raise RenderError("the gateway id must be a string of at most 253 characters")
    key = request.key
    if not isinstance(key, bytes) or not (_KEY_MIN_BYTES <= len(key) <= _KEY_MAX_BYTES):
        raise RenderError(f"the key must be {_KEY_MIN_BYTES} to {_KEY_MAX_BYTES} bytes")
    if any(b < 0x21 or b > 0x7E for b in key):
        # It travels as text in the connection file; printable ASCII survives every hop.
        raise RenderError("the key must be printable ASCII without spaces (e.g. a hex string)")
    if request.key_secret_name is not None and not DNS_LABEL_RE.match(request.key_secret_name):
        raise RenderError(f"secret name {request.key_secret_name!r} is not a valid name")
    if request.owner is not None and as_owner(request.owner).name != kernel_object_name(
        request.kernel_id
    ):
        raise RenderError(
            f"owner {as_owner(request.owner).name!r} is not this kernel's JupyterKernel "
            f"{kernel_object_name(request.kernel_id)!r}"
        )
    template = request.template
    if template is not None:
        if any(v.get("name") == KEY_VOLUME_NAME for v in template.volumes):
            raise RenderError(
                f"template {template.name}: volume name {KEY_VOLUME_NAME!r} is reserved for the key"
            )
        if any(v.name == KEY_VOLUME_NAME for v in template.user_volumes):
            raise RenderError(
                f"template {template.name}: volume name {KEY_VOLUME_NAME!r} is reserved for the key"
            )
        paths = [str(m.get("mountPath", "")) for m in template.volume_mounts]
        for path in [*paths, *(v.mount_path for v in template.user_volumes)]:
            path = path.rstrip("/")
            if path == KEY_MOUNT_DIR or path.startswith(KEY_MOUNT_DIR + "/"):
                raise RenderError(
                    f"template {template.name}: mount path {KEY_MOUNT_DIR} is reserved for the key"
                )
        user_paths = {v.mount_path for v in template.user_volumes}
        clash = sorted(user_paths & {p.rstrip("/") for p in paths})
        if clash:
            raise RenderError(f"template {template.name}: {clash[0]} is both a user volume's and "
                              "a pod volume's mount path")
        container_sc = template.container_security_context or {}
        if template.run_as is not None and ({"runAsUser", "runAsGroup"} & set(container_sc)):
            raise RenderError(f"template {template.name}: spec.runAs and "
                              "spec.pod.containerSecurityContext.runAsUser/runAsGroup disagree; "
                              "set one of them")
    wanted = request.spec.template_name
    if wanted and (template is None or template.name != wanted):
        found = "none" if template is None else repr(template.name)
        raise RenderError(
            f"kernelspec {request.spec.name} uses template {request.spec.template_name!r}, "
            f"but {found} was given"
        )


def _literal(value: str) -> str:
    """Keep the kubelet from expanding $(VAR) in a value that did not come from an admin."""
    return value.replace("$", "$$")


def _container_env(request: RenderRequest, client_env: Mapping[str, str],
                   launcher: Mapping[str, str]) -> list[dict[str, Any]]:
    ours: dict[str, dict[str, Any]] = {}

    def put(name: str, value: str) -> None:
        ours[name] = {"name": name, "value": value}

    put(ENV_KERNEL_ID, request.kernel_id)
    put(ENV_KERNEL_NAME, request.spec.name)
    ours[ENV_IP] = {
        "name": ENV_IP,
        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}},
    }
    for channel, number in KERNEL_PORTS.items():
        put(ENV_PORTS[channel], str(number))
    put(ENV_TRANSPORT, TRANSPORT)
    put(ENV_SIGNATURE_SCHEME, SIGNATURE_SCHEME)
    put(ENV_KEY_FILE, KEY_FILE)
    for name, value in launcher.items():
        put(name, _literal(value))  # may quote the client's KERNEL_WORKING_DIR
    put("KERNEL_ID", request.kernel_id)
    put("KERNEL_USERNAME", _literal(request.user))
    if not request.spec.gpus:
        # Ours, so no spec or template env can hand a CPU kernel the node's GPUs.
        put(ENV_NVIDIA_VISIBLE_DEVICES, NO_GPU_DEVICES)

    entries: dict[str, dict[str, Any]] = dict(ours)
    layers: list[list[dict[str, Any]]] = [
        [thaw(e) for e in (request.template.env if request.template else ())],
        [{"name": k, "value": v} for k, v in request.spec.env.items()],
        [{"name": k, "value": _literal(v)} for k, v in client_env.items()],
    ]
    for layer in layers:
        for entry in layer:
            if entry["name"] not in ours:
                entries[entry["name"]] = entry  # a later layer wins; the first position stays
    return list(entries.values())


def _resources(spec: KernelSpecView, gpus: int) -> dict[str, Any]:
    requests = dict(spec.resources.requests)
    limits = dict(spec.resources.limits)
    flavor = spec.gpu_resource or GPU_RESOURCE
    if gpus or flavor in requests or flavor in limits:
        # Extended resources cannot be overcommitted: the request must equal the limit.
        requests[flavor] = limits[flavor] = str(gpus)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def _security_context(
    default: Mapping[str, Any], template: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Our default with the template's fields on top, field by field (not a replacement).

    A template that sets only ``fsGroup`` or ``runAsUser`` keeps the rest of the restricted
    defaults, so it cannot lose them by omission; to drop one it sets that field itself (e.g.
    ``runAsNonRoot: false``, or ``capabilities: {drop: [], add: [...]}``), which a restricted
    namespace then refuses, as it should. A template's field replaces ours whole (a
    ``seccompProfile`` or ``capabilities`` object is not merged further).
    """
    return {**thaw(default), **thaw(template or {})}


def _pod_spec(
    request: RenderRequest, client_env: Mapping[str, str], secret_name: str, gpus: int,
    user_mounts: UserMounts, working_dir: WorkingDir | None,
) -> dict[str, Any]:
    spec = request.spec
    template = request.template
    overrides = spec.client_overrides

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": client_env[IMAGE_VAR]
        if overrides.image and IMAGE_VAR in client_env
        else spec.image,
        "command": [LAUNCHER, "--", *spec.argv],
        "env": _container_env(request, client_env, launcher_env(working_dir, user_mounts.roots)),
        "resources": _resources(spec, gpus),
        "volumeMounts": [
            *(thaw(m) for m in (template.volume_mounts if template else ())),
            *user_mounts.mounts,
            {"name": KEY_VOLUME_NAME, "mountPath": KEY_MOUNT_DIR, "readOnly": True},
        ],
        "securityContext": _security_context(
            DEFAULT_CONTAINER_SECURITY_CONTEXT,
            template.container_security_context if template else None,
        ),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if working_dir is not None:
        # The volume root, which exists; the launcher changes into the notebook's folder.
        container["workingDir"] = working_dir.root
    elif overrides.working_dir and WORKING_DIR_VAR in client_env:
        container["workingDir"] = client_env[WORKING_DIR_VAR]
    pod_security = _security_context(
        DEFAULT_POD_SECURITY_CONTEXT, template.security_context if template else None
    )
    if template is not None and template.run_as is not None:
        # The users' notebook servers' uid and gid, so files the kernel writes in the user's
        # volumes belong to the user; fsGroup keeps the key file and the volumes readable.
        pod_security.update(runAsUser=template.run_as.uid, runAsGroup=template.run_as.gid,
                            fsGroup=template.run_as.gid)

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the gateway owns restarts: a new pod, same kernel id
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": template.termination_grace_period_seconds
        if template and template.termination_grace_period_seconds is not None
        else DEFAULT_TERMINATION_GRACE_SECONDS,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": [
            *(thaw(v) for v in (template.volumes if template else ())),
            *user_mounts.volumes,
            {
                "name": KEY_VOLUME_NAME,
                "secret": {
                    "secretName": secret_name,
                    "defaultMode": KEY_FILE_MODE,
                    "items": [{"key": KEY_SECRET_ITEM, "path": KEY_SECRET_ITEM}],
                },
            },
        ],
    }
    if template is not None and template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    else:
        pod_spec["automountServiceAccountToken"] = False
    if template is not None:
        optional = {
            "nodeSelector": dict(template.node_selector) or None,
            "tolerations": thaw(template.tolerations) or None,
            "affinity": thaw(template.affinity),
            "priorityClassName": template.priority_class_name,
            "runtimeClassName": template.runtime_class_name,
            "imagePullSecrets": [{"name": n} for n in template.image_pull_secrets] or None,
        }
        pod_spec.update({k: v for k, v in optional.items() if v is not None})
    return pod_spec

