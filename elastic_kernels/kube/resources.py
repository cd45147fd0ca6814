"""Names of our custom resources and small typed, frozen views of them.

Why views: the CRs arrive as plain JSON dicts from the watch caches. Parsing them once, with an
error that names the object and the field, keeps "what does this field mean and what is its
default" in one place, lets the provisioner and the gateway work with checked values, and makes
a CR that slipped past the API server's validation (an old CRD, the local cluster) fail with a
clear message instead of a KeyError deep in a launch.

The views are frozen and hold only immutable values (nested pod fragments are frozen into
read-only mappings and tuples): a view can be shared between coroutines and cached without anyone
mutating what another sees. ``thaw`` gives back fresh, mutable JSON.

The schema in ``deploy/crds`` is the contract; the checks here mirror it (plus a few that an
OpenAPI schema cannot express, such as "the GPU count is a whole number").
"""

from __future__ import annotations

import base64
import fnmatch
import binascii
import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, NoReturn

from .client import Resource
from .slugs import SCHEMES, PatternError, check_pattern

# --- API coordinates ---------------------------------------------------------------------------

GROUP = "elastic.jupyter.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

KERNELSPEC_KIND = "JupyterKernelSpec"
KERNELSPEC_PLURAL = "jupyterkernelspecs"
TEMPLATE_KIND = "JupyterKernelTemplate"
TEMPLATE_PLURAL = "jupyterkerneltemplates"
KERNEL_KIND = "JupyterKernel"
KERNEL_PLURAL = "jupyterkernels"

#: REST coordinates for the KubeClient and informers.
KERNELSPECS = Resource(GROUP, VERSION, KERNELSPEC_PLURAL, KERNELSPEC_KIND)
TEMPLATES = Resource(GROUP, VERSION, TEMPLATE_PLURAL, TEMPLATE_KIND)
JUPYTERKERNELS = Resource(GROUP, VERSION, KERNEL_PLURAL, KERNEL_KIND)

# --- labels and annotations --------------------------------------------------------------------

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "elastic-kernels"
LABEL_COMPONENT = "app.kubernetes.io/component"
COMPONENT_KERNEL = "kernel"
#: Warm-pool pods (``spec.warmPool``): not kernels until claimed, so not in KERNEL_SELECTOR.
COMPONENT_POOL = "kernel-pool"
LABEL_KERNEL_ID = f"{GROUP}/kernel-id"
LABEL_KERNELSPEC = f"{GROUP}/kernelspec"
#: A label-safe form of the user (see sanitize_label_value); the exact user is in ANNOTATION_USER
#: and in JupyterKernel.spec.user. Never use the label for authorisation.
LABEL_USER = f"{GROUP}/user"
ANNOTATION_USER = f"{GROUP}/user"
ANNOTATION_KERNELSPEC = f"{GROUP}/kernelspec"
ANNOTATION_RESTART_COUNT = f"{GROUP}/restart-count"
#: Selects every kernel pod (and JupyterKernel and key Secret) elastic-kernels made.
KERNEL_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT_KERNEL}"
#: The label selector of the shared kernel-pod watch (the same labels; pods are one kind).
KERNEL_POD_SELECTOR = KERNEL_SELECTOR
POOL_POD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT_POOL}"

# --- other well-known values -------------------------------------------------------------------

#: The whole-GPU resource of NVIDIA's device plugin; the default flavor, and the one a record
#: without a recorded flavor (written before flavors existed) is taken to hold.
GPU_RESOURCE = "nvidia.com/gpu"
PROVISIONER_NAME = "elastic-kernel-provisioner"
CONTAINER_NAME = "kernel"

PHASE_PENDING = "Pending"
PHASE_STARTING = "Starting"
PHASE_RUNNING = "Running"
PHASE_TERMINATING = "Terminating"
PHASE_FAILED = "Failed"
#: Culled or reclaimed with ``onCull: Suspend``: no pod, the namespace saved; resumed on return.
PHASE_SUSPENDED = "Suspended"
PHASES = (PHASE_PENDING, PHASE_STARTING, PHASE_RUNNING, PHASE_TERMINATING, PHASE_FAILED,
          PHASE_SUSPENDED)
ON_CULL_DELETE = "Delete"
ON_CULL_SUSPEND = "Suspend"
ON_CULL = (ON_CULL_DELETE, ON_CULL_SUSPEND)

#: ``JupyterKernel.status.executionState``: the holding gateway's view, sampled at its culler
#: passes (see elastic_kernels/culling.py); only "busy" matters to the policy.
EXECUTION_BUSY = "busy"
EXECUTION_IDLE = "idle"
EXECUTION_STATES = (EXECUTION_BUSY, EXECUTION_IDLE)

INTERRUPT_MODES = ("message", "signal")
RESTART_POLICIES = ("Restart", "Fail")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

CONNECTION_FILE_PLACEHOLDER = "{connection_file}"

# --- patterns shared with the CRD schemas ------------------------------------------------------

KERNEL_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
CLIENT_ENV_NAME_RE = re.compile(r"^KERNEL_[A-Z0-9_]+$")
QUANTITY_RE = re.compile(
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DURATION_RE = re.compile(r"^(0|([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+)$")
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ENV_NAME_RE = re.compile(r"^[!-<>-~]+$")  # printable ASCII without space and "="

_DURATION_MAX_CHARS = 64
LABEL_VALUE_MAX = 63
USER_MAX_CHARS = 1024


# --- errors ------------------------------------------------------------------------------------


class ResourceError(ValueError):
    """A custom resource that cannot be used. The message names the object and the field."""

    def __init__(self, kind: str, namespace: str, name: str, path: str, problem: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.path = path
        self.problem = problem
        where = f"{namespace}/{name}" if namespace else name
        prefix = f"{kind} {where}: {path}" if path else f"{kind} {where}"
        super().__init__(f"{prefix}: {problem}")


class DurationError(ValueError):
    """A duration string that is not like 30m, 2s, 1h30m or 7d."""


# --- small pure helpers ------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """Seconds in a duration: ``30m``, ``2s``, ``1h30m``, ``1.5h``, ``7d``, ``250ms`` or ``0``.

    Units may repeat and appear in any order (they add up), as in Go's time.ParseDuration, plus
    ``d`` for days because culling ages are naturally counted in days.
    """
    if not isinstance(text, str):
        raise DurationError(
            "a duration must be a string such as 30m, 2s or 1h30m, "
            f"not {type(text).__name__} {text!r}"
        )
    if len(text) > _DURATION_MAX_CHARS:
        raise DurationError(f"a duration is at most {_DURATION_MAX_CHARS} characters")
    if not DURATION_RE.match(text):
        raise DurationError(
            f"{text!r} is not a duration: use a number and a unit (ms, s, m, h, d), "
            "e.g. 30m, 2s, 1h30m or 7d, or 0"
        )
    if text == "0":
        return 0.0
    seconds = sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART_RE.findall(text)
    )
    if not math.isfinite(seconds):
        raise DurationError(f"{text!r} is too long a duration")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest duration string parse_duration reads back as the same whole seconds."""
    if seconds < 0 or not math.isfinite(seconds):
        raise DurationError(f"cannot format {seconds!r} as a duration")
    whole = int(round(seconds))
    if whole == 0:
        return "0"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


_TIMESTAMP_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from an RFC 3339 timestamp as the API server writes it.

    Written by hand because the API server uses "Z" and up to 9 fractional digits, which
    ``datetime.fromisoformat`` only partly accepts before Python 3.11.
    """
    if not isinstance(text, str):
        raise ValueError(f"a timestamp must be an RFC 3339 string, not {type(text).__name__}")
    match = _TIMESTAMP_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    if offset in ("Z", "z"):
        tz = timezone.utc
    else:
        sign = 1 if offset[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    try:
        value = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz
        )
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid timestamp: {exc}") from None
    return value.astimezone(timezone.utc)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a Z, second precision: what status date-time fields hold."""
    if value.tzinfo is None:
        raise ValueError("format_timestamp needs an aware datetime (naive times are ambiguous)")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sanitize_label_value(value: str) -> str:
    """A valid label value that stands for ``value``, readable when it can be.

    A value that is already valid is returned as is, so ``-l elastic.jupyter.org/user=alice``
    works. Anything else (``a@b.com``, unicode, more than 63 characters) keeps its valid
    characters and gains a short hash of the exact value, so two different users never share a
    label by accident.
    """
    if len(value) <= LABEL_VALUE_MAX and LABEL_VALUE_RE.match(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[: LABEL_VALUE_MAX - len(digest) - 1]
    readable = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", readable)
    return f"{readable}-{digest}" if readable else digest


def is_label_key(key: str) -> bool:
    """Whether ``key`` is a valid label (or annotation) key: optional DNS prefix, then a name."""
    if not isinstance(key, str) or not key:
        return False
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN_RE.match(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME_RE.match(name))


def kernel_object_name(kernel_id: str) -> str:
    """The JupyterKernel's name for a kernel id."""
    return f"kernel-{kernel_id}"


def key_secret_name(kernel_id: str) -> str:
    """The name of the Secret holding a kernel's HMAC key."""
    return f"kernel-{kernel_id}-key"


def kernel_pod_name(kernel_id: str, restart_count: int = 0) -> str:
    """The pod of a kernel after ``restart_count`` restarts: a new name each time, so the old
    pod's termination and the new pod's start never race on one name."""
    if restart_count < 0:
        raise ValueError(f"restart_count must be >= 0, not {restart_count}")
    return f"kernel-{kernel_id}" if restart_count == 0 else f"kernel-{kernel_id}-r{restart_count}"


def freeze(value: Any) -> Any:
    """A read-only copy of JSON: dicts become mappingproxies and lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """A fresh, mutable JSON copy of a (possibly frozen) value."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value




def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


# --- reading a CR with errors that point at the field ------------------------------------------

_MISSING = object()


class _Reader:
    """Walks one CR dict; every failure names the object and the dotted field path."""

    def __init__(self, obj: Any, kind: str) -> None:
        self.kind = kind
        if not isinstance(obj, Mapping):
            raise ResourceError(kind, "", "?", "", f"is not an object but {type(obj).__name__}")
        meta = obj.get("metadata")
        if not isinstance(meta, Mapping):
            raise ResourceError(kind, "", "?", "metadata", "is missing")
        self.obj = obj
        self.meta = meta
        name, namespace = meta.get("name"), meta.get("namespace")
        self.name: str = name if isinstance(name, str) else ""
        self.namespace: str = namespace if isinstance(namespace, str) else ""
        if not self.name:
            self.fail("metadata.name", "is missing")
        found_kind = obj.get("kind")
        if found_kind is not None and found_kind != kind:
            self.fail("kind", f"is {found_kind!r}, expected {kind}")

    def fail(self, path: str, problem: str) -> NoReturn:
        raise ResourceError(self.kind, self.namespace, self.name or "?", path, problem)

    def raw(self, path: str) -> Any:
        node: Any = self.obj
        walked: list[str] = []
        for part in path.split("."):
            if node is None:
                return _MISSING
            if not isinstance(node, Mapping):
                self.fail(".".join(walked), f"must be an object, not {type(node).__name__}")
            walked.append(part)
            node = node.get(part, _MISSING)
            if node is _MISSING:
                return _MISSING
        return node

    def string(
        self,
        path: str,
        *,
        required: bool = False,
        default: str | None = None,
        pattern: re.Pattern[str] | None = None,
        choices: Sequence[str] | None = None,
        min_length: int = 0,
        max_length: int | None = None,
        hint: str = "",
    ) -> str | None:
        value = self.raw(path)
        if value is _MISSING or value is None:
            if required:
                self.fail(path, "is required")
            return default
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {type(value).__name__} {value!r}")
        if len(value) < min_length:
            self.fail(path, "must not be empty" if min_length == 1 else "is too short")
        if max_length is not None and len(value) > max_length:
            self.fail(path, f"is longer than {max_length} characters")
        if choices is not None and value not in choices:
            self.fail(path, f"is {value!r}, expected one of {', '.join(choices)}")
        if pattern is not None and not pattern.match(value):
            self.fail(path, f"{value!r} is not valid{': ' + hint if hint else ''}")
        return value

    def boolean(self, path: str, default: bool) -> bool:
        value = self.raw(path)
        if value is _MISSING or value is None:
            return default
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, not {value!r}")
        return value

    def integer(
        self,
        path: str,
        default: int | None,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        value = self.raw(path)
        if value is _MISSING or value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, not {value!r}")
        if minimum is not None and value < minimum:
            self.fail(path, f"must be >= {minimum}, not {value}")
        if maximum is not None and value > maximum:
            self.fail(path, f"must be <= {maximum}, not {value}")
        return value

    def duration(self, path: str) -> float | None:
        value = self.raw(path)
        if value is _MISSING or value is None:
            return None
        try:
            return parse_duration(value)
        except DurationError as exc:
            self.fail(path, str(exc))

    def mapping(self, path: str) -> Mapping[str, Any] | None:
        value = self.raw(path)
        if value is _MISSING or value is None:
            return None
        if not isinstance(value, Mapping):
            self.fail(path, f"must be an object, not {type(value).__name__}")
        return value

    def string_map(self, path: str, *, max_value: int | None = None) -> dict[str, str]:
        value = self.mapping(path) or {}
        result: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(item, str):
                self.fail(f"{path}.{key}", f"must be a string, not {type(item).__name__} {item!r}")
            if max_value is not None and len(item) > max_value:
                self.fail(f"{path}.{key}", f"is longer than {max_value} characters")
            result[str(key)] = item
        return result

    def logos(self, path: str) -> dict[str, bytes]:
        """Base64 PNG logos by file name: checked here, so a bad one fails the whole spec with
        its field named, instead of being served as something else later."""
        logos: dict[str, bytes] = {}
        for name, text in self.string_map(path, max_value=LOGO_MAX_BASE64).items():
            where = f"{path}.{name}"
            if name not in LOGO_NAMES:
                self.fail(where, f"is not a logo name (allowed: {', '.join(sorted(LOGO_NAMES))})")
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                self.fail(where, "is not base64")
            if not data.startswith(PNG_SIGNATURE):
                self.fail(where, "is not a PNG image")
            logos[name] = data
        return logos

    def array(self, path: str) -> list[Any]:
        value = self.raw(path)
        if value is _MISSING or value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list, not {type(value).__name__}")
        return value

    def objects(
        self, path: str, required_keys: Sequence[str] = ()
    ) -> tuple[Mapping[str, Any], ...]:
        items = []
        for index, item in enumerate(self.array(path)):
            if not isinstance(item, Mapping):
                self.fail(f"{path}[{index}]", f"must be an object, not {type(item).__name__}")
            for key in required_keys:
                if not isinstance(item.get(key), str) or not item.get(key):
                    self.fail(f"{path}[{index}].{key}", "is required (a non-empty string)")
            items.append(freeze(item))
        return tuple(items)

    def quantities(self, path: str) -> dict[str, str]:
        value = self.mapping(path) or {}
        result: dict[str, str] = {}
        for key, item in value.items():
            where = f"{path}[{key}]"
            if not is_label_key(str(key)):
                self.fail(where, "is not a valid resource name")
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                self.fail(where, f"must be a quantity such as 2, 500m or 4Gi, not {item!r}")
            if isinstance(item, int):
                if item < 0:
                    self.fail(where, f"must not be negative, not {item}")
                item = str(item)
            if not QUANTITY_RE.match(item):
                self.fail(where, f"{item!r} is not a non-negative quantity such as 2, 500m or 4Gi")
            result[str(key)] = item
        return result


# --- JupyterKernelSpec -------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceRequirements:
    """Container requests and limits as canonical strings (quantities are never numbers here)."""

    requests: Mapping[str, str] = field(default_factory=_empty)
    limits: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True)
class CullingPolicy:
    """Seconds, or None for "use the gateway's default". 0 disables that rule."""

    idle_timeout: float | None = None
    cull_connected: bool = False
    cull_busy: bool = False
    max_age: float | None = None
    reclaim_after: float | None = None
    #: What an idle cull or a reclaim does: Delete, or Suspend (save the namespace first).
    on_cull: str = ON_CULL_DELETE
    #: Suspend's limits; None: the gateway's defaults.
    suspend_max_bytes: int | None = None
    suspend_timeout: float | None = None
    #: Culling by measured GPU use (a GPU utilisation source in the gateway); None: default.
    gpu_idle_timeout: float | None = None
    #: Percent under which a GPU counts as idle.
    gpu_idle_threshold: float | None = None


@dataclass(frozen=True)
class WarmPool:
    """``spec.warmPool``: pods started ahead, imports done, waiting to be claimed."""

    size: int = 0
    #: Modules the pooled process imports before it waits (besides the kernel's own).
    imports: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientOverrides:
    """Pod fields the kernelspec lets a client choose. All off by default."""

    working_dir: bool = False
    image: bool = False


#: Kernelspec resources a JupyterKernelSpec may carry (``spec.logos``): PNG only, because an
#: SVG can hold script and resources are served from the notebook server's own origin.
LOGO_NAMES = frozenset({"logo-32x32.png", "logo-64x64.png"})
LOGO_MAX_BASE64 = 65536
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _percentage(r: _Reader, path: str) -> float | None:
    """A percentage in (0, 100]: a number, so 5 and 2.5 both read as people write them."""
    value = r.raw(path)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        r.fail(path, f"must be a number, not {value!r}")
    if not math.isfinite(value) or not 0 < value <= 100:
        r.fail(path, f"must be a percentage greater than 0 and at most 100, not {value!r}")
    return float(value)


#: Parsed kernelspec versions, (uid, resourceVersion, GPU flavors) -> view, oldest first.
_PARSED_SPECS: dict[tuple[str, str, int], KernelSpecView] = {}
_PARSED_SPECS_MAX = 1024


@dataclass(frozen=True)
class KernelSpecView:
    """A checked JupyterKernelSpec. ``name`` is the Jupyter kernel name."""

    name: str
    namespace: str
    display_name: str
    language: str
    argv: tuple[str, ...]
    image: str
    env: Mapping[str, str] = field(default_factory=_empty)
    interrupt_mode: str = "message"
    image_pull_policy: str | None = None
    resources: ResourceRequirements = field(default_factory=ResourceRequirements)
    template_name: str | None = None
    culling: CullingPolicy = field(default_factory=CullingPolicy)
    launch_timeout: float | None = None
    allowed_client_env: frozenset[str] = frozenset()
    client_overrides: ClientOverrides = field(default_factory=ClientOverrides)
    metadata: Mapping[str, Any] = field(default_factory=_empty)
    restart_policy: str = "Restart"
    logos: Mapping[str, bytes] = field(default_factory=_empty)
    warm_pool: WarmPool = field(default_factory=WarmPool)
    uid: str = ""
    resource_version: str = ""
    generation: int = 0

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> KernelSpecView:
        """Parse a JupyterKernelSpec dict; raises ResourceError naming the bad field.

        A version of an object from the API server (its uid and resourceVersion: any change
        gives a new version) is parsed once and its view remembered: the status stream, the
        culler, the warm pools and the kernelspec manager all read the same informer cache,
        several times per kernel event, and parsing was a tenth of the gateway's CPU while
        kernels started (py-spy). A view is immutable, so sharing it is safe; a broken object
        is parsed (and reported) each time.
        """
        meta = obj.get("metadata") if isinstance(obj, Mapping) else None
        uid = meta.get("uid") if isinstance(meta, Mapping) else None
        version = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
        if not (isinstance(uid, str) and uid and isinstance(version, str) and version):
            return cls._parse(obj)
        key = (uid, version, _gpu_flavors_set)  # what a GPU is changes how resources parse
        view = _PARSED_SPECS.get(key)
        if view is None:
            view = cls._parse(obj)
            _PARSED_SPECS[key] = view
            while len(_PARSED_SPECS) > _PARSED_SPECS_MAX:
                _PARSED_SPECS.pop(next(iter(_PARSED_SPECS)))
        return view

    @classmethod
    def _parse(cls, obj: Mapping[str, Any]) -> KernelSpecView:
        r = _Reader(obj, KERNELSPEC_KIND)
        if not DNS_SUBDOMAIN_RE.match(r.name) or len(r.name) > 253:
            r.fail("metadata.name", f"{r.name!r} is not a valid object name")
        if r.mapping("spec") is None:
            r.fail("spec", "is required")

        argv_raw = r.array("spec.argv")
        if not argv_raw:
            r.fail("spec.argv", "is required and must have at least one item")
        for index, arg in enumerate(argv_raw):
            if not isinstance(arg, str):
                r.fail(f"spec.argv[{index}]", f"must be a string, not {type(arg).__name__} {arg!r}")
        if not any(CONNECTION_FILE_PLACEHOLDER in arg for arg in argv_raw):
            r.fail(
                "spec.argv",
                f"must contain the placeholder {CONNECTION_FILE_PLACEHOLDER} "
                "(the launcher substitutes the connection file's path there)",
            )

        env = r.string_map("spec.env")
        for key in env:
            if not _ENV_NAME_RE.match(key):
                r.fail(f"spec.env[{key}]", "is not a valid environment variable name")

        allowed = r.array("spec.allowedClientEnv")
        for index, name in enumerate(allowed):
            if not isinstance(name, str) or not CLIENT_ENV_NAME_RE.match(name) or len(name) > 71:
                r.fail(
                    f"spec.allowedClientEnv[{index}]",
                    f"{name!r} is not a name like KERNEL_FOO (^KERNEL_[A-Z0-9_]+$)",
                )

        resources = ResourceRequirements(
            requests=MappingProxyType(r.quantities("spec.resources.requests")),
            limits=MappingProxyType(r.quantities("spec.resources.limits")),
        )
        _gpu_count(resources, r)  # fail at parse time, not at launch

        metadata = r.mapping("spec.metadata") or {}
        view = cls(
            name=r.name,
            namespace=r.namespace,
            display_name=r.string("spec.displayName", required=True, min_length=1, max_length=256)
            or "",
            language=r.string("spec.language", required=True, min_length=1, max_length=64) or "",
            argv=tuple(argv_raw),
            image=r.string(
                "spec.image",
                required=True,
                min_length=1,
                max_length=512,
                pattern=re.compile(r"^\S+$"),
                hint="an image reference has no spaces",
            )
            or "",
            env=MappingProxyType(env),
            interrupt_mode=r.string(
                "spec.interruptMode", default="message", choices=INTERRUPT_MODES
            )
            or "message",
            image_pull_policy=r.string("spec.imagePullPolicy", choices=PULL_POLICIES),
            resources=resources,
            template_name=r.string(
                "spec.templateRef.name", pattern=DNS_SUBDOMAIN_RE, max_length=253, hint="not a name"
            ),
            culling=CullingPolicy(
                idle_timeout=r.duration("spec.culling.idleTimeout"),
                cull_connected=r.boolean("spec.culling.cullConnected", False),
                cull_busy=r.boolean("spec.culling.cullBusy", False),
                max_age=r.duration("spec.culling.maxAge"),
                reclaim_after=r.duration("spec.culling.reclaimAfter"),
                on_cull=r.string("spec.culling.onCull", default=ON_CULL_DELETE,
                                 choices=ON_CULL) or ON_CULL_DELETE,
                suspend_max_bytes=r.integer("spec.culling.suspend.maxBytes", None, minimum=1),
                suspend_timeout=r.duration("spec.culling.suspend.timeout"),
                gpu_idle_timeout=r.duration("spec.culling.gpuIdleTimeout"),
                gpu_idle_threshold=_percentage(r, "spec.culling.gpuIdleThreshold"),
            ),
            launch_timeout=r.duration("spec.launchTimeout"),
            allowed_client_env=frozenset(allowed),
            client_overrides=ClientOverrides(
                working_dir=r.boolean("spec.clientOverrides.workingDir", False),
                image=r.boolean("spec.clientOverrides.image", False),
            ),
            metadata=freeze(metadata),
            restart_policy=r.string(
                "spec.restartPolicy", default="Restart", choices=RESTART_POLICIES
            )
            or "Restart",
            logos=MappingProxyType(r.logos("spec.logos")),
            warm_pool=_warm_pool(r),
            uid=str(r.meta.get("uid") or ""),
            resource_version=str(r.meta.get("resourceVersion") or ""),
            generation=int(r.meta.get("generation") or 0),
        )
        if r.raw("spec.templateRef") is not _MISSING and view.template_name is None:
            r.fail("spec.templateRef.name", "is required")
        return view

    @property
    def gpus(self) -> int:
        """Devices of its GPU flavor each kernel of this spec holds (0 for CPU kernels)."""
        return gpu_request(self.resources)[1]

    @property
    def gpu_resource(self) -> str:
        """The GPU flavor (extended resource name) this spec asks for; "" for CPU kernels."""
        return gpu_request(self.resources)[0]

    def to_jupyter_kernelspec(self) -> dict[str, Any]:
        """The kernelspec dict jupyter_server serves under ``spec`` in /api/kernelspecs.

        ``metadata.kernel_provisioner`` makes jupyter_client hand the kernel to our provisioner;
        ``metadata.elastic`` tells clients (and people) what a kernel of this spec will hold.
        """
        metadata = thaw(self.metadata)
        elastic: dict[str, Any] = {
            "namespace": self.namespace,
            "kernelspec": self.name,
            "image": self.image,
            "gpus": self.gpus,
            "gpu_resource": self.gpu_resource,
            "resources": {
                "requests": dict(self.resources.requests),
                "limits": dict(self.resources.limits),
            },
            "template": self.template_name,
            "restart_policy": self.restart_policy,
        }
        culling = {
            "idle_timeout": self.culling.idle_timeout,
            "cull_connected": self.culling.cull_connected,
            "cull_busy": self.culling.cull_busy,
            "max_age": self.culling.max_age,
            "reclaim_after": self.culling.reclaim_after,
            "on_cull": self.culling.on_cull,
        }
        elastic["culling"] = culling
        if self.launch_timeout is not None:
            elastic["launch_timeout"] = self.launch_timeout
        metadata["kernel_provisioner"] = {"provisioner_name": PROVISIONER_NAME, "config": {}}
        metadata["elastic"] = elastic
        return {
            "argv": list(self.argv),
            "display_name": self.display_name,
            "language": self.language,
            "env": dict(self.env),
            "interrupt_mode": self.interrupt_mode,
            "metadata": metadata,
        }


_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _warm_pool(r: _Reader) -> WarmPool:
    size = r.integer("spec.warmPool.size", 0, minimum=0, maximum=64) or 0
    imports = r.array("spec.warmPool.imports")
    for index, name in enumerate(imports):
        if not isinstance(name, str) or not _MODULE_RE.match(name) or len(name) > 256:
            r.fail(f"spec.warmPool.imports[{index}]", f"{name!r} is not a module name")
    return WarmPool(size=size, imports=tuple(imports))


def _gpu_count(resources: ResourceRequirements, reader: _Reader) -> None:
    """Refuse a malformed GPU request at parse time, not at launch."""
    try:
        gpu_request(resources)
    except GpuFlavorError as e:
        field_, _, problem = str(e).partition(": ")
        reader.fail(field_, problem)


# --- GPU flavors ---------------------------------------------------------------------------------

#: Extended resources that count as GPUs unless configured otherwise (``gpu_flavors``): whole
#: NVIDIA GPUs, MIG profiles as the device plugin's ``mixed`` strategy names them
#: (``nvidia.com/mig-1g.10gb``), time-sliced shares under the ``renameByDefault`` name, and AMD's.
DEFAULT_GPU_FLAVORS = ("nvidia.com/gpu", "nvidia.com/mig-*", "nvidia.com/gpu.shared",
                       "amd.com/gpu")

# A qualified extended resource name (domain/name), with ``*`` allowed in the name part only:
# a pattern that could match ``cpu`` or another vendor's domain by accident is refused.
_FLAVOR_PATTERN_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9*]([-A-Za-z0-9_.*]*)?$")


class GpuFlavorError(ValueError):
    """A GPU flavor pattern or a request for one is malformed; the text says which and why."""


@dataclass(frozen=True)
class GpuFlavors:
    """Which extended resources are GPUs: each one is a *flavor* with its own queue and quota.

    A MIG slice, a time-sliced share and a whole GPU are not interchangeable (a kernel asking
    for one is never given another, and the scheduler counts them separately), so everything
    that counts GPUs counts them per resource name; this decides which names take part.
    """

    patterns: tuple[str, ...] = DEFAULT_GPU_FLAVORS

    def __post_init__(self) -> None:
        if not self.patterns:
            raise GpuFlavorError("gpu_flavors is empty: name at least one GPU resource, e.g. "
                                 f"{GPU_RESOURCE}")
        for pattern in self.patterns:
            if not isinstance(pattern, str) or not _FLAVOR_PATTERN_RE.match(pattern):
                raise GpuFlavorError(
                    f"GPU flavor {pattern!r} is not an extended resource name like "
                    "nvidia.com/gpu or a pattern like nvidia.com/mig-* (domain/name; '*' only "
                    "in the name)")

    def matches(self, resource: str) -> bool:
        return any(fnmatch.fnmatchcase(resource, p) for p in self.patterns)

    def of(self, resources: Iterable[str]) -> list[str]:
        """The GPU flavors among ``resources`` (in their order)."""
        return [r for r in resources if self.matches(r)]


_gpu_flavors = GpuFlavors()
#: How many times the flavors were set (part of the parsed-kernelspec cache's key).
_gpu_flavors_set = 0


def gpu_flavors() -> GpuFlavors:
    """The process's GPU flavors (the gateway sets them from its config at start)."""
    return _gpu_flavors


def set_gpu_flavors(flavors: GpuFlavors) -> None:
    """Configure the process's GPU flavors, before any kernelspec is read.

    One setting per process rather than a parameter of every reader: the kernelspec views,
    the provisioner, the queue and the status stream must all agree on what a GPU is, and they
    are created by different parents (jupyter_client makes the provisioners).
    """
    global _gpu_flavors, _gpu_flavors_set
    _gpu_flavors = flavors
    _gpu_flavors_set += 1


def gpu_request(resources: ResourceRequirements,
                flavors: GpuFlavors | None = None) -> tuple[str, int]:
    """(flavor, count) a container with ``resources`` asks for; ("", 0) for a CPU kernel.

    Counts come from limits (or requests); they must agree and be whole, as device plugins
    need, and a kernel asks for one flavor only: a queue entry waits for one kind of device.
    Raises :class:`GpuFlavorError` naming the field.
    """
    flavors = flavors or _gpu_flavors
    found: dict[str, dict[str, int]] = {}
    for section, values in (("limits", resources.limits), ("requests", resources.requests)):
        for name in flavors.of(values):
            text = values[name]
            if not text.isdigit():
                raise GpuFlavorError(f"spec.resources.{section}[{name}]: {text!r} is not a "
                                     f"whole number of devices")
            found.setdefault(name, {})[section] = int(text)
    if len(found) > 1:
        raise GpuFlavorError(
            f"spec.resources: asks for {len(found)} GPU flavors ({', '.join(sorted(found))}); a "
            "kernel may ask for one (a whole GPU, a MIG profile or a time-sliced share)")
    for name, counts in found.items():
        if len(set(counts.values())) > 1:
            raise GpuFlavorError(f"spec.resources.requests[{name}]: GPU requests and limits "
                                 "differ; set the count under limits only")
        count = next(iter(counts.values()))
        return (name, count) if count else ("", 0)
    return "", 0


# --- JupyterKernelTemplate ---------------------------------------------------------------------


@dataclass(frozen=True)
class UserVolume:
    """One ``spec.userVolumes`` entry of a template: a volume of the kernel's user.

    ``volume`` is a Pod volume source (``{persistentVolumeClaim: {claimName: claim-{username}}}``)
    whose strings, like ``sub_path``, may hold user placeholders (see :mod:`.slugs`); they are
    expanded with the authenticated user's name when a kernel is rendered, never from anything
    the client sends. ``notebook_path`` is where the user's notebook server sees the mount's
    root (by default ``mount_path``): KERNEL_WORKING_DIR is mapped from it to ``mount_path``.
    """

    name: str
    volume: Mapping[str, Any]
    mount_path: str
    sub_path: str = ""
    read_only: bool = False
    notebook_path: str = ""

    @property
    def notebook_root(self) -> str:
        return self.notebook_path or self.mount_path


@dataclass(frozen=True)
class RunAs:
    """``spec.runAs``: the uid and gid kernels run as (those of the users' notebook servers)."""

    uid: int
    gid: int


def _clean_absolute(path: str) -> bool:
    return path.startswith("/") and ".." not in path.split("/") and "\x00" not in path


def _user_volumes(r: _Reader, pod_volume_names: set[str]) -> tuple[UserVolume, ...]:
    """Read ``spec.userVolumes``; every failure names the entry and the field."""
    result: list[UserVolume] = []
    seen: set[str] = set()
    mount_paths: set[str] = set()
    for index, item in enumerate(r.objects("spec.userVolumes", required_keys=("name",
                                                                            "mountPath"))):
        where = f"spec.userVolumes[{index}]"
        name = str(item["name"])
        if len(name) > 63 or not DNS_LABEL_RE.match(name):
            r.fail(f"{where}.name", f"{name!r} is not a DNS label (a volume name)")
        if name in seen or name in pod_volume_names:
            r.fail(f"{where}.name", f"volume name {name!r} is used twice")
        seen.add(name)
        source = item.get("volume")
        if not isinstance(source, Mapping) or len(source) != 1 or "name" in source:
            r.fail(f"{where}.volume", "must be one volume source, e.g. {persistentVolumeClaim: "
                                      "{claimName: claim-{username}}}")
        (kind, body), = source.items()
        if not isinstance(body, Mapping):
            r.fail(f"{where}.volume.{kind}", "must be an object")
        for path, text in _strings(source, f"{where}.volume"):
            try:
                check_pattern(text)
            except PatternError as e:
                r.fail(path, str(e))
        mount_path = str(item["mountPath"]).rstrip("/") or "/"
        if not _clean_absolute(mount_path) or mount_path == "/":
            r.fail(f"{where}.mountPath", "must be an absolute path below / without '..'")
        if mount_path in mount_paths:
            r.fail(f"{where}.mountPath", f"{mount_path} is mounted twice")
        mount_paths.add(mount_path)
        sub_path = item.get("subPath", "")
        if not isinstance(sub_path, str) or sub_path.startswith("/") or (
                ".." in sub_path.split("/")):
            r.fail(f"{where}.subPath", "must be a relative path without '..'")
        try:
            check_pattern(sub_path)
        except PatternError as e:
            r.fail(f"{where}.subPath", str(e))
        read_only = item.get("readOnly", False)
        if not isinstance(read_only, bool):
            r.fail(f"{where}.readOnly", f"must be true or false, not {read_only!r}")
        notebook_path = item.get("notebookPath", "")
        if not isinstance(notebook_path, str) or (
                notebook_path and not _clean_absolute(notebook_path)):
            r.fail(f"{where}.notebookPath", "must be an absolute path without '..'")
        try:
            check_pattern(notebook_path)
        except PatternError as e:
            r.fail(f"{where}.notebookPath", str(e))
        result.append(UserVolume(name, freeze(source), mount_path, sub_path, read_only,
                                 notebook_path.rstrip("/") or notebook_path))
    return tuple(result)


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value, with its dotted path."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}[{index}]")


@dataclass(frozen=True)
class TemplateView:
    """A checked JupyterKernelTemplate. Pod fragments stay frozen JSON; ``thaw`` them to use."""

    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=_empty)
    annotations: Mapping[str, str] = field(default_factory=_empty)
    node_selector: Mapping[str, str] = field(default_factory=_empty)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str | None = None
    security_context: Mapping[str, Any] | None = None
    container_security_context: Mapping[str, Any] | None = None
    volumes: tuple[Mapping[str, Any], ...] = ()
    volume_mounts: tuple[Mapping[str, Any], ...] = ()
    service_account_name: str | None = None
    runtime_class_name: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    env: tuple[Mapping[str, Any], ...] = ()
    termination_grace_period_seconds: int | None = None
    #: Per-user volumes (``spec.userVolumes``), patterns not yet expanded; see UserVolume.
    user_volumes: tuple[UserVolume, ...] = ()
    #: How ``{username}`` is written (``spec.usernameScheme``): KubeSpawner's slug scheme.
    username_scheme: str = "safe"
    #: ``spec.runAs``: the uid and gid of the users' notebook servers, or None.
    run_as: RunAs | None = None
    uid: str = ""
    resource_version: str = ""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> TemplateView:
        """Parse a JupyterKernelTemplate dict; raises ResourceError naming the bad field."""
        r = _Reader(obj, TEMPLATE_KIND)
        labels = r.string_map("spec.labels")
        for key, value in labels.items():
            if not is_label_key(key):
                r.fail(f"spec.labels[{key}]", "is not a valid label key")
            if len(value) > LABEL_VALUE_MAX or not LABEL_VALUE_RE.match(value):
                r.fail(f"spec.labels[{key}]", f"{value!r} is not a valid label value")
        annotations = r.string_map("spec.annotations")
        for key in annotations:
            if not is_label_key(key):
                r.fail(f"spec.annotations[{key}]", "is not a valid annotation key")
        node_selector = r.string_map("spec.pod.nodeSelector")

        tolerations = r.objects("spec.pod.tolerations")
        for index, tol in enumerate(tolerations):
            if tol.get("operator", "Equal") not in ("Exists", "Equal"):
                r.fail(f"spec.pod.tolerations[{index}].operator", "must be Exists or Equal")
            if tol.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
                r.fail(
                    f"spec.pod.tolerations[{index}].effect",
                    "must be NoSchedule, PreferNoSchedule or NoExecute",
                )

        volumes = r.objects("spec.pod.volumes", required_keys=("name",))
        names = [v["name"] for v in volumes]
        if len(set(names)) != len(names):
            r.fail("spec.pod.volumes", "volume names must be unique")
        mounts = r.objects("spec.pod.volumeMounts", required_keys=("name", "mountPath"))
        for index, mount in enumerate(mounts):
            if mount["name"] not in names:
                r.fail(f"spec.pod.volumeMounts[{index}].name", f"no volume named {mount['name']!r}")
        env = r.objects("spec.pod.env", required_keys=("name",))
        pull_secrets = r.objects("spec.pod.imagePullSecrets", required_keys=("name",))

        def optional_object(path: str) -> Mapping[str, Any] | None:
            value = r.mapping(path)
            return None if value is None else freeze(value)

        def dns_name(path: str) -> str | None:
            return r.string(path, pattern=DNS_SUBDOMAIN_RE, max_length=253, hint="not a DNS name")

        user_volumes = _user_volumes(r, set(names))
        run_as = None
        if r.mapping("spec.runAs") is not None:
            uid = r.integer("spec.runAs.uid", None, minimum=1, maximum=2**31 - 1)
            gid = r.integer("spec.runAs.gid", None, minimum=0, maximum=2**31 - 1)
            if uid is None or gid is None:
                r.fail("spec.runAs", "needs both uid and gid")
            run_as = RunAs(uid, gid)

        return cls(
            name=r.name,
            namespace=r.namespace,
            labels=MappingProxyType(labels),
            annotations=MappingProxyType(annotations),
            node_selector=MappingProxyType(node_selector),
            tolerations=tolerations,
            affinity=optional_object("spec.pod.affinity"),
            priority_class_name=dns_name("spec.pod.priorityClassName"),
            security_context=optional_object("spec.pod.securityContext"),
            container_security_context=optional_object("spec.pod.containerSecurityContext"),
            volumes=volumes,
            volume_mounts=mounts,
            service_account_name=dns_name("spec.pod.serviceAccountName"),
            runtime_class_name=dns_name("spec.pod.runtimeClassName"),
            image_pull_secrets=tuple(s["name"] for s in pull_secrets),
            env=env,
            termination_grace_period_seconds=r.integer(
                "spec.pod.terminationGracePeriodSeconds", None, minimum=0, maximum=86400
            ),
            user_volumes=user_volumes,
            username_scheme=str(r.string("spec.usernameScheme", default="safe",
                                         choices=SCHEMES)),
            run_as=run_as,
            uid=str(r.meta.get("uid") or ""),
            resource_version=str(r.meta.get("resourceVersion") or ""),
        )


# --- JupyterKernel -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelView:
    """A checked JupyterKernel: the durable record of one kernel, spec and status together."""

    name: str
    namespace: str
    kernel_id: str
    user: str
    kernel_spec: str
    gateway: str = ""
    client_env: Mapping[str, str] = field(default_factory=_empty)
    phase: str = PHASE_PENDING
    reason: str = ""
    message: str = ""
    pod_name: str = ""
    pod_ip: str = ""
    node: str = ""
    gpus: int = 0
    #: The GPU flavor the kernel holds ``gpus`` of ("": not recorded; see :attr:`gpu_flavor`).
    gpu_resource: str = ""
    started_at: datetime | None = None
    last_activity: datetime | None = None
    restart_count: int = 0
    queue_position: int | None = None
    lease_renewed_at: datetime | None = None
    #: The holding gateway's open client websockets and busy/idle, as it last wrote them;
    #: None when never written.
    connections: int | None = None
    execution_state: str | None = None
    uid: str = ""
    resource_version: str = ""
    created_at: datetime | None = None
    deleting: bool = False
    labels: Mapping[str, str] = field(default_factory=_empty)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> KernelView:
        """Parse a JupyterKernel dict; raises ResourceError naming the bad field."""
        r = _Reader(obj, KERNEL_KIND)

        def timestamp(path: str) -> datetime | None:
            value = r.raw(path)
            if value is _MISSING or value is None:
                return None
            try:
                return parse_timestamp(value)
            except ValueError as exc:
                r.fail(path, str(exc))

        def text(path: str, max_length: int) -> str:
            return r.string(path, default="", max_length=max_length) or ""

        labels = r.raw("metadata.labels")
        return cls(
            name=r.name,
            namespace=r.namespace,
            kernel_id=r.string(
                "spec.kernelId", required=True, pattern=KERNEL_ID_RE, hint="not a lowercase UUID"
            )
            or "",
            user=r.string("spec.user", required=True, min_length=1, max_length=USER_MAX_CHARS)
            or "",
            kernel_spec=r.string(
                "spec.kernelSpec", required=True, pattern=DNS_SUBDOMAIN_RE, max_length=253
            )
            or "",
            gateway=text("spec.gateway", 253),
            client_env=MappingProxyType(r.string_map("spec.clientEnv")),
            phase=r.string("status.phase", default=PHASE_PENDING, choices=PHASES) or PHASE_PENDING,
            reason=text("status.reason", 1024),
            message=text("status.message", 32768),
            pod_name=text("status.podName", 253),
            pod_ip=text("status.podIP", 64),
            node=text("status.node", 253),
            gpus=r.integer("status.gpus", 0, minimum=0) or 0,
            gpu_resource=text("status.gpuResource", 253),
            started_at=timestamp("status.startedAt"),
            last_activity=timestamp("status.lastActivity"),
            restart_count=r.integer("status.restartCount", 0, minimum=0) or 0,
            queue_position=r.integer("status.queuePosition", None, minimum=0),
            lease_renewed_at=timestamp("status.leaseRenewedAt"),
            connections=r.integer("status.connections", None, minimum=0),
            execution_state=r.string("status.executionState", default=None,
                                     choices=EXECUTION_STATES),
            uid=str(r.meta.get("uid") or ""),
            resource_version=str(r.meta.get("resourceVersion") or ""),
            created_at=timestamp("metadata.creationTimestamp"),
            deleting=bool(r.meta.get("deletionTimestamp")),
            labels=MappingProxyType(
                {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}
            ),
        )
