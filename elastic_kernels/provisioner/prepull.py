"""Image pre-pulling: DaemonSets that put the kernelspecs' images on the nodes their kernels use.

A first kernel on a node otherwise waits for its image, minutes for a multi-GB CUDA image, and
that wait eats into ``launchTimeout``. The usual cure (JupyterHub's z2jh image puller) is a
DaemonSet whose pod lists every image as an init container that runs a no-op, then a tiny pause
container: the kubelet pulls each image to run its init container, and the images stay on the
node for the kernels that come later.

What this module renders, from the installed JupyterKernelSpecs and their templates (a pure
function, :func:`render_prepull`, so the gateway's controller and ``elastic-kernels prepull``
make the same objects):

* **One DaemonSet per node placement.** A placement is what decides where a template's kernels
  may run: its ``nodeSelector``, the *required* part of its node affinity and its tolerations
  (preferred affinity and pod (anti-)affinity do not restrict nodes, so they are not copied). Specs
  whose templates place the same way share one DaemonSet; a GPU template's images therefore go
  to GPU nodes only. A spec without a template runs anywhere, and so do its images.
* **Its pod.** Each image (sorted, deduplicated) is an init container named after a hash of the
  image, running ``command`` (``true`` by default, which every kernel image has), then a
  ``pause`` container. Pull policy IfNotPresent: the point is a copy on the node, not a fresh
  one. Kernelspecs with ``imagePullPolicy: Never`` are left out (their images are put on nodes
  some other way). Pull secrets are the union of the templates' ``imagePullSecrets``.
* **Small and restricted.** Every container requests 1m CPU and 8Mi memory (limits 50m, 64Mi):
  init containers run one at a time, so the pod never asks for more than one of them. The pod
  meets Pod Security ``restricted``: non-root uid 65534 (any image can run a no-op as nobody),
  ``seccompProfile: RuntimeDefault``, no privilege escalation, all capabilities dropped, a
  read-only root filesystem, no ServiceAccount token, and a zero grace period.
* **Ownership.** Labelled ``app.kubernetes.io/managed-by=elastic-kernels`` and
  ``app.kubernetes.io/component=image-prepuller``: :func:`apply_prepull` creates, updates and
  deletes only DaemonSets carrying both (and never others, whatever their name). Each carries
  the kernelspecs and images it serves as annotations, and a hash of what was rendered, so an
  unchanged DaemonSet is not written again.

Updates are JSON patches that replace ``spec``, labels and annotations whole (so a removed image
goes), and need only ``patch`` (no ``update``) in RBAC. The rollout is ``maxUnavailable: 100%``:
pre-pull pods serve nobody, so all nodes may re-run them at once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import DAEMONSETS, JSON, KubeClient, KubeError

COMPONENT_PREPULLER = "image-prepuller"
PREPULL_SELECTOR = (f"{R.LABEL_MANAGED_BY}={R.MANAGED_BY},"
                    f"{R.LABEL_COMPONENT}={COMPONENT_PREPULLER}")
#: On the DaemonSet's pods too: which DaemonSet (placement) a pod belongs to.
LABEL_PREPULL = f"{R.GROUP}/prepull"
ANNOTATION_KERNELSPECS = f"{R.GROUP}/kernelspecs"
ANNOTATION_IMAGES = f"{R.GROUP}/images"
ANNOTATION_HASH = f"{R.GROUP}/prepull-hash"

DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
DEFAULT_NAME_PREFIX = "elastic-kernels-prepull"
#: Room left in a DaemonSet name for the pods' generated suffix and the revision label.
MAX_NAME = 52
NOBODY = 65534

_RESOURCES: JSON = {"requests": {"cpu": "1m", "memory": "8Mi"},
                    "limits": {"cpu": "50m", "memory": "64Mi"}}
_CONTAINER_SECURITY: JSON = {"allowPrivilegeEscalation": False,
                             "capabilities": {"drop": ["ALL"]},
                             "readOnlyRootFilesystem": True,
                             "runAsNonRoot": True}
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class PrepullError(ValueError):
    """Pre-pull settings that cannot make valid objects; says which setting and why."""


@dataclass(frozen=True)
class PrepullSettings:
    """What an admin chooses (the gateway's ``ImagePrepuller`` traits, the command's flags)."""

    namespace: str
    pause_image: str = DEFAULT_PAUSE_IMAGE
    #: Images pulled wherever kernels run, besides the kernelspecs' (e.g. images users may pick
    #: through ``clientOverrides.image``).
    extra_images: tuple[str, ...] = ()
    name_prefix: str = DEFAULT_NAME_PREFIX
    command: tuple[str, ...] = ("true",)

    def __post_init__(self) -> None:
        if not self.namespace:
            raise PrepullError("the pre-pull namespace is empty")
        if not _NAME_RE.match(self.name_prefix) or len(self.name_prefix) > 30:
            raise PrepullError(f"name prefix {self.name_prefix!r} must be a DNS label of at "
                               "most 30 characters (lower-case letters, digits, '-')")
        for image in (self.pause_image, *self.extra_images):
            if not image or any(c.isspace() for c in image):
                raise PrepullError(f"image {image!r} is not an image reference (empty, or it "
                                   "has spaces)")
        if not self.command or not all(self.command):
            raise PrepullError("the init containers' command is empty")


@dataclass(frozen=True)
class Placement:
    """Where one template's kernels may run (see the module docstring)."""

    node_selector: tuple[tuple[str, str], ...] = ()
    required_affinity: str = ""  # canonical JSON of the required node affinity, or ""
    tolerations: tuple[str, ...] = ()  # canonical JSON of each toleration, sorted

    @classmethod
    def of(cls, template: R.TemplateView | None) -> Placement:
        if template is None:
            return cls()
        required = ((R.thaw(template.affinity) or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution")
        return cls(
            node_selector=tuple(sorted(template.node_selector.items())),
            required_affinity=_canonical(required) if required else "",
            tolerations=tuple(sorted(_canonical(R.thaw(t)) for t in template.tolerations)),
        )

    @property
    def digest(self) -> str:
        return hashlib.sha256(_canonical([list(self.node_selector), self.required_affinity,
                                          list(self.tolerations)]).encode()).hexdigest()

    def pod_fields(self) -> JSON:
        out: JSON = {}
        if self.node_selector:
            out["nodeSelector"] = dict(self.node_selector)
        if self.required_affinity:
            out["affinity"] = {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution":
                    json.loads(self.required_affinity)}}
        if self.tolerations:
            out["tolerations"] = [json.loads(t) for t in self.tolerations]
        return out


@dataclass
class _Group:
    placement: Placement
    kernelspecs: set[str] = field(default_factory=set)
    templates: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)
    pull_secrets: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Rendered:
    """The DaemonSets to have, and why a kernelspec was left out (for logs and the command)."""

    daemonsets: tuple[JSON, ...]
    skipped: tuple[str, ...] = ()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _short(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def render_prepull(specs: Iterable[R.KernelSpecView],
                   templates: Mapping[str, R.TemplateView | None],
                   settings: PrepullSettings) -> Rendered:
    """The pre-pull DaemonSets for these kernelspecs (``templates``: name -> view, or None for
    one that does not parse); no API call."""
    groups: dict[Placement, _Group] = {}
    skipped: list[str] = []
    for spec in sorted(specs, key=lambda s: s.name):
        if spec.image_pull_policy == "Never":
            skipped.append(f"{spec.name}: imagePullPolicy Never")
            continue
        template = None
        if spec.template_name:
            if spec.template_name not in templates:
                skipped.append(f"{spec.name}: template {spec.template_name} does not exist")
                continue
            template = templates[spec.template_name]
            if template is None:
                skipped.append(f"{spec.name}: template {spec.template_name} is not valid")
                continue
        placement = Placement.of(template)
        group = groups.setdefault(placement, _Group(placement))
        group.kernelspecs.add(spec.name)
        group.images.add(spec.image)
        if template is not None:
            group.templates.add(template.name)
            group.pull_secrets.update(template.image_pull_secrets)
    if settings.extra_images and not groups:
        groups[Placement()] = _Group(Placement())
    daemonsets = [_daemonset(g, settings) for g in groups.values()
                  if g.images or settings.extra_images]
    daemonsets.sort(key=lambda d: d["metadata"]["name"])
    return Rendered(tuple(daemonsets), tuple(skipped))


def _name(group: _Group, prefix: str) -> str:
    label = min(group.templates) if group.templates else "default"
    suffix = _short(group.placement.digest, 6)
    room = MAX_NAME - len(prefix) - len(suffix) - 2
    label = label[:room].strip("-.").replace(".", "-") or "t"
    return f"{prefix}-{label}-{suffix}"


def _daemonset(group: _Group, settings: PrepullSettings) -> JSON:
    name = _name(group, settings.name_prefix)
    images = sorted(group.images | set(settings.extra_images))
    labels = {R.LABEL_MANAGED_BY: R.MANAGED_BY, R.LABEL_COMPONENT: COMPONENT_PREPULLER,
              LABEL_PREPULL: name}
    init = [{
        "name": f"pull-{_short(image, 10)}",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(settings.command),
        "resources": copy.deepcopy(_RESOURCES),
        "securityContext": copy.deepcopy(_CONTAINER_SECURITY),
    } for image in images]
    pod_spec: JSON = {
        **group.placement.pod_fields(),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 0,
        "securityContext": {"runAsNonRoot": True, "runAsUser": NOBODY, "runAsGroup": NOBODY,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": init,
        "containers": [{"name": "pause", "image": settings.pause_image,
                        "imagePullPolicy": "IfNotPresent",
                        "resources": copy.deepcopy(_RESOURCES),
                        "securityContext": copy.deepcopy(_CONTAINER_SECURITY)}],
    }
    if group.pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in sorted(group.pull_secrets)]
    annotations = {ANNOTATION_KERNELSPECS: ",".join(sorted(group.kernelspecs)),
                   ANNOTATION_IMAGES: ",".join(images)}
    spec = {
        "selector": {"matchLabels": {R.LABEL_COMPONENT: COMPONENT_PREPULLER,
                                     LABEL_PREPULL: name}},
        "updateStrategy": {"type": "RollingUpdate",
                           "rollingUpdate": {"maxUnavailable": "100%"}},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    annotations[ANNOTATION_HASH] = _short(_canonical([labels, annotations, spec]), 16)
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": settings.namespace, "labels": labels,
                         "annotations": annotations},
            "spec": spec}


def owned(obj: Mapping[str, Any]) -> bool:
    """A DaemonSet this module made (and so may change or delete)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return (labels.get(R.LABEL_MANAGED_BY) == R.MANAGED_BY
            and labels.get(R.LABEL_COMPONENT) == COMPONENT_PREPULLER)


def _hash(obj: Mapping[str, Any]) -> str:
    return str(((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_HASH, ""))


async def apply_prepull(client: KubeClient, namespace: str, desired: Iterable[JSON],
                        current: Iterable[Mapping[str, Any]]) -> list[str]:
    """Make the namespace's pre-pull DaemonSets ``desired``: create the missing, patch the
    changed, delete the owned ones no longer wanted. ``current`` is what exists (a watch cache
    or a list); returns what was done, as ``created/updated/deleted daemonset/<name>``."""
    have = {str(o["metadata"]["name"]): o for o in current if owned(o)}
    done: list[str] = []
    for ds in desired:
        name = ds["metadata"]["name"]
        old = have.pop(name, None)
        if old is None:
            try:
                await client.create(DAEMONSETS, ds, namespace)
                done.append(f"created daemonset/{name}")
                continue
            except KubeError as e:
                if not e.already_exists:
                    raise
            # Made meanwhile (another replica, a cache behind): ours to update only if owned.
            old = await client.get(DAEMONSETS, name, namespace)
            if not owned(old):
                raise PrepullError(f"daemonset {namespace}/{name} exists and is not managed by "
                                   f"elastic-kernels ({PREPULL_SELECTOR}); delete or rename it, "
                                   "or choose another name prefix")
        if _hash(old) == _hash(ds):
            continue
        # "add" replaces a member that exists and creates one that does not (RFC 6902).
        patch = [{"op": "add", "path": "/spec", "value": ds["spec"]},
                 {"op": "add", "path": "/metadata/labels", "value": ds["metadata"]["labels"]},
                 {"op": "add", "path": "/metadata/annotations",
                  "value": ds["metadata"]["annotations"]}]
        await client.patch(DAEMONSETS, name, patch, namespace, patch_type="json")
        done.append(f"updated daemonset/{name}")
    for name in sorted(have):
        try:
            await client.delete(DAEMONSETS, name, namespace)
        except KubeError as e:
            if not e.not_found:
                raise
        done.append(f"deleted daemonset/{name}")
    return done
