"""Warm pools (``spec.warmPool``, issue 15): a kernelspec's pods started ahead, claimed by starts.

The design, and why:

* **A pool pod has no kernel and no key.** It runs ``elastic-kernel-launcher --pool``: the
  launcher re-executes itself under the kernel's Python, imports the kernel's modules
  (ipykernel; the kernelspec's ``warmPool.imports``, e.g. numpy or torch) and waits on a small
  control port (:data:`POOL_PORT`) for one claim. Its spec, env and Secrets hold no kernel key:
  the key is made at claim time, as for a cold start, and sent to that one pod. A pool kernel is
  therefore *started only at claim from a pre-imported process*, never re-keyed: nothing that
  one user's kernel saw can reach another's, because each pool process serves one claim and
  becomes that kernel (the listener closes; the module runs in the same process, with
  everything imported already). We chose this over re-keying a kernel that already runs: a
  running kernel has state (history, the cwd, modules' import-time env) that a second user
  would inherit, and a key swap in a live Session is not something ipykernel supports.
* **The claim is authenticated and sealed** with a secret of the pod's own (a per-pod Secret,
  mounted as a file; never in env): the launcher sends a fresh nonce; the gateway answers with
  the claim (kernel id, key, user, the client's allowed env, working directory) encrypted under
  an HMAC-SHA256 keystream and tagged with HMAC-SHA256 (encrypt-then-MAC, keys derived from the
  pool secret, see :func:`seal_claim`). The kernel's key never crosses the network in clear, and
  a pod only obeys whoever knows its own secret: the gateway. Per pod, so a user whose kernel
  reads its mounted pool secret learns nothing about any other pool pod.
* **Late binding.** What a cold start puts in the pod's spec is applied at claim instead: the
  user (``KERNEL_USERNAME``), ``KERNEL_ID``, the client's allowed variables (set in the
  process's environment before the kernel module runs; a module imported ahead read its
  environment at import time, which the kernelspec's ``warmPool.imports`` docs say), and the
  working directory (``clientOverrides.workingDir``). Per-user volumes cannot be mounted late,
  so a template with ``userVolumes`` cannot pool: :func:`pool_refusal` says why, and the
  gateway writes it into the kernelspec's status. A start whose client chose another image
  (``clientOverrides.image``) starts cold.
* **Objects.** A pool pod is labelled ``app.kubernetes.io/component=kernel-pool`` (not
  ``kernel``): no kernel watch, the GPU queue, hydration, the cull cron or the sweep of
  pod-less records ever sees it as a kernel or an orphan. It is owned by its JupyterKernelSpec
  (deleting the kernelspec deletes its pool); its pool Secret is owned by the pod. A claim is
  the usual start (JupyterKernel record, key Secret, one status patch) with the pod create
  replaced by one *conditional* patch of the pool pod (its resourceVersion: two gateways
  never claim the same pod) that relabels it as the kernel's pod and makes the JupyterKernel
  its controller; from then on it is an ordinary kernel pod (restarts make new, cold pods).
* **Readiness.** The launcher listens before it imports and greets a connection only once the
  imports are done; the gateway that keeps the pool connects once to each new pool pod and, on
  the greeting, marks it ready (annotation :data:`ANNOTATION_READY`). Starts claim ready pods
  only.

Keeping the pools full, reclaiming GPU pool pods first and the metrics are the gateway's
(``gateway/lifecycle/warmpool.py``); this module is what a start needs: render a pool pod
(pure), say whether a kernelspec can pool, and claim a pod.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..kube import resources as R
from ..kube.client import JSON, PODS, SECRETS, KubeClient, KubeError
from ..kube.informer import Informer
from .podstate import Progress, assess_pod
from .render import (
    ENV_KERNEL_ID,
    KEY_VOLUME_NAME,
    LAUNCHER,
    RenderRequest,
    owner_reference,
    render_kernel,
)

log = logging.getLogger(__name__)

#: The launcher's claim port in a pool pod (beside the kernel's well-known ports).
POOL_PORT = 52705
POOL_SECRET_ITEM = "secret"
POOL_VOLUME_NAME = "elastic-kernel-pool"
POOL_MOUNT_DIR = "/var/run/elastic-kernels/pool"
POOL_SECRET_FILE = f"{POOL_MOUNT_DIR}/{POOL_SECRET_ITEM}"
ENV_POOL_PORT = "EK_POOL_PORT"
ENV_POOL_SECRET_FILE = "EK_POOL_SECRET_FILE"
ENV_POOL_IMPORTS = "EK_POOL_IMPORTS"
PROTOCOL = b"EKPOOL1"

#: On a pool pod: the greeting came, the imports are done; claims go to these pods.
ANNOTATION_READY = f"{R.GROUP}/pool-ready"
#: On a pool pod: the kernelspec's generation it was made from (a changed spec replaces it).
ANNOTATION_SPEC_GENERATION = f"{R.GROUP}/kernelspec-generation"
#: On a claimed pod: it came from the pool (for people reading ``kubectl get pod -o yaml``).
ANNOTATION_FROM_POOL = f"{R.GROUP}/from-pool"

#: The kernel-id stand-in pool pods are rendered with (never a kernel's; removed from the pod).
_PLACEHOLDER_ID = "00000000-0000-4000-8000-000000000000"
_PLACEHOLDER_USER = "warm-pool"
#: Env the cold render sets per kernel; a pool pod gets them at claim instead.
_PER_KERNEL_ENV = frozenset({ENV_KERNEL_ID, "KERNEL_ID", "KERNEL_USERNAME", "EK_KEY_FILE"})


class PoolClaimError(Exception):
    """A claim that did not go through (the start then goes cold); the text is not secret."""


# -- what can pool -----------------------------------------------------------------------------


def pooled_module(argv: tuple[str, ...] | list[str]) -> str:
    """The module of a kernel command ``PYTHON -m MODULE ...``, or "" for any other."""
    if len(argv) >= 3 and argv[1] == "-m" and argv[2]:
        return argv[2]
    return ""


def pool_refusal(spec: R.KernelSpecView, template: R.TemplateView | None) -> tuple[str, str]:
    """(reason, message) saying why ``spec`` cannot have a warm pool; ("", "") when it can."""
    if template is not None and template.user_volumes:
        names = ", ".join(v.name for v in template.user_volumes)
        return "PerUserVolumes", (
            f"cannot pool: its template {template.name} mounts per-user volumes ({names}), "
            "which can only be chosen once the user is known; pool pods start before that")
    if not pooled_module(spec.argv):
        return "NotAPythonModule", (
            "cannot pool: its argv is not PYTHON -m MODULE ...; only a kernel started as a "
            "Python module can be imported ahead and started at claim")
    return "", ""


# -- rendering (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedPool:
    pod: dict[str, Any]
    secret: dict[str, Any] = field(repr=False)


def pool_pod_name(spec_name: str, suffix: str) -> str:
    """``<spec>-pool-<suffix>``, within a DNS label's 63 characters."""
    head = spec_name.replace(".", "-")[: 63 - len("-pool-") - len(suffix)].rstrip("-")
    return f"{head}-pool-{suffix}"


def render_pool_pod(spec: R.KernelSpecView, template: R.TemplateView | None, namespace: str,
                    name: str, pool_secret: str) -> RenderedPool:
    """The pool pod (owned by the kernelspec) and its pool Secret (to be owned by the pod once
    it exists). The pod is the one a cold start of ``spec`` renders, with every per-kernel
    part taken out: no kernel id, no user, no key volume, no key file; the launcher runs
    pooled. Raises ValueError (RenderError) like ``render_kernel``."""
    rendered = render_kernel(RenderRequest(
        kernel_id=_PLACEHOLDER_ID, namespace=namespace, user=_PLACEHOLDER_USER, spec=spec,
        template=template, key=b"0" * 32))
    pod = rendered.pod
    secret_name = f"{name}-secret"
    labels = {
        R.LABEL_MANAGED_BY: R.MANAGED_BY,
        R.LABEL_COMPONENT: R.COMPONENT_POOL,
        R.LABEL_KERNELSPEC: R.sanitize_label_value(spec.name),
    }
    meta = pod["metadata"]
    meta["name"] = name
    meta["labels"] = {**{k: v for k, v in meta["labels"].items()
                         if k not in (R.LABEL_KERNEL_ID, R.LABEL_USER)}, **labels}
    meta["annotations"] = {
        **{k: v for k, v in meta["annotations"].items()
           if k not in (R.ANNOTATION_USER, R.ANNOTATION_RESTART_COUNT)},
        R.ANNOTATION_KERNELSPEC: spec.name,
        ANNOTATION_SPEC_GENERATION: str(spec.generation),
    }
    meta["ownerReferences"] = [{
        "apiVersion": R.API_VERSION, "kind": R.KERNELSPEC_KIND, "name": spec.name,
        "uid": spec.uid, "controller": True, "blockOwnerDeletion": False,
    }]
    pod_spec = pod["spec"]
    container = pod_spec["containers"][0]
    container["command"] = [LAUNCHER, "--pool", "--", *spec.argv]
    env = [e for e in container["env"] if e["name"] not in _PER_KERNEL_ENV]
    env += [
        {"name": ENV_POOL_PORT, "value": str(POOL_PORT)},
        {"name": ENV_POOL_SECRET_FILE, "value": POOL_SECRET_FILE},
        {"name": ENV_POOL_IMPORTS, "value": json.dumps(list(spec.warm_pool.imports))},
    ]
    container["env"] = env
    container["volumeMounts"] = [
        *(m for m in container["volumeMounts"] if m.get("name") != KEY_VOLUME_NAME),
        {"name": POOL_VOLUME_NAME, "mountPath": POOL_MOUNT_DIR, "readOnly": True},
    ]
    pod_spec["volumes"] = [
        *(v for v in pod_spec["volumes"] if v.get("name") != KEY_VOLUME_NAME),
        {"name": POOL_VOLUME_NAME, "secret": {
            "secretName": secret_name, "defaultMode": 0o400,
            "items": [{"key": POOL_SECRET_ITEM, "path": POOL_SECRET_ITEM}]}},
    ]
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name, "namespace": namespace, "labels": dict(labels),
                     "annotations": {R.ANNOTATION_KERNELSPEC: spec.name}},
        "type": "Opaque",
        "immutable": True,
        "data": {POOL_SECRET_ITEM: base64.b64encode(pool_secret.encode()).decode("ascii")},
    }
    return RenderedPool(pod=pod, secret=secret)


def owned_by_pod(secret: Mapping[str, Any], pod: Mapping[str, Any]) -> dict[str, Any]:
    """The pool Secret, owned by its (created) pod: it goes when the pod goes."""
    meta = pod["metadata"]
    result = json.loads(json.dumps(secret))
    result["metadata"]["ownerReferences"] = [{
        "apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"],
        "controller": True, "blockOwnerDeletion": False}]
    return result


def pool_secret_name(pod: Mapping[str, Any]) -> str:
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if volume.get("name") == POOL_VOLUME_NAME:
            return str((volume.get("secret") or {}).get("secretName") or "")
    return ""


# -- which pods ----------------------------------------------------------------------------------


def pool_spec_name(pod: Mapping[str, Any]) -> str:
    return str(((pod.get("metadata") or {}).get("annotations") or {})
               .get(R.ANNOTATION_KERNELSPEC) or "")


def is_ready(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    return (not meta.get("deletionTimestamp")
            and (meta.get("annotations") or {}).get(ANNOTATION_READY) == "true"
            and assess_pod(dict(pod)).progress is Progress.RUNNING
            and bool((pod.get("status") or {}).get("podIP")))


def ready_pods(pools: Informer, spec: R.KernelSpecView, namespace: str) -> list[JSON]:
    """The kernelspec's claimable pool pods, oldest first (the longest warm)."""
    found = [p for p in pools.items()
             if (p.get("metadata") or {}).get("namespace") == namespace
             and pool_spec_name(p) == spec.name and is_ready(p)
             and _annotation(p, ANNOTATION_SPEC_GENERATION) == str(spec.generation)]
    return sorted(found, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))


def _annotation(pod: Mapping[str, Any], name: str) -> str:
    return str(((pod.get("metadata") or {}).get("annotations") or {}).get(name) or "")


# -- the claim protocol --------------------------------------------------------------------------


def _keys(pool_secret: bytes) -> tuple[bytes, bytes]:
    return (hmac.new(pool_secret, b"elastic-kernels pool enc", hashlib.sha256).digest(),
            hmac.new(pool_secret, b"elastic-kernels pool mac", hashlib.sha256).digest())


def _keystream_xor(enc_key: bytes, nonce: bytes, data: bytes) -> bytes:
    out = bytearray(len(data))
    for block in range(0, len(data), 32):
        pad = hmac.new(enc_key, nonce + (block // 32).to_bytes(8, "big"), hashlib.sha256).digest()
        chunk = data[block:block + 32]
        out[block:block + len(chunk)] = bytes(a ^ b for a, b in zip(chunk, pad))
    return bytes(out)


def seal_claim(pool_secret: bytes, nonce: bytes, claim: Mapping[str, Any]) -> bytes:
    """The one line the gateway sends: the claim encrypted, then tagged (encrypt-then-MAC)."""
    enc_key, mac_key = _keys(pool_secret)
    ciphertext = _keystream_xor(enc_key, nonce, json.dumps(dict(claim)).encode())
    tag = hmac.new(mac_key, nonce + ciphertext, hashlib.sha256).hexdigest()
    return json.dumps({"ct": base64.b64encode(ciphertext).decode("ascii"),
                       "mac": tag}).encode() + b"\n"


async def _greeting(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    parts = line.strip().split(b" ")
    if len(parts) != 2 or parts[0] != PROTOCOL or len(parts[1]) != 64:
        raise PoolClaimError("the pool pod did not greet with the claim protocol")
    return bytes.fromhex(parts[1].decode("ascii"))


async def probe(ip: str, timeout: float) -> bool:
    """Whether the pool pod at ``ip`` greets within ``timeout`` (its imports are done); sends no
    claim. The container may run a moment before the launcher listens: a refused connection
    is tried again after a short, growing pause (there is no event for a port opening)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = 0.02
    while True:
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, POOL_PORT),
                                                    max(0.1, deadline - loop.time()))
            await asyncio.wait_for(_greeting(reader), max(0.1, deadline - loop.time()))
            return True
        except ConnectionRefusedError:
            pass
        except (OSError, asyncio.TimeoutError, PoolClaimError, ValueError):
            return False
        finally:
            if writer is not None:
                writer.close()
        if loop.time() + pause > deadline:
            return False
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


async def send_claim(ip: str, pool_secret: bytes, claim: Mapping[str, Any],
                     timeout: float = 30.0) -> None:
    """Hand the claim to the pool pod at ``ip``; PoolClaimError unless it answered OK."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, POOL_PORT), timeout)
        nonce = await asyncio.wait_for(_greeting(reader), timeout)
        writer.write(seal_claim(pool_secret, nonce, claim))
        await writer.drain()
        answer = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, asyncio.TimeoutError, ValueError) as e:
        raise PoolClaimError(f"the pool pod at {ip} could not be claimed: "
                             f"{type(e).__name__}") from None
    finally:
        if writer is not None:
            writer.close()
    if answer.strip() != b"OK":
        raise PoolClaimError(f"the pool pod at {ip} refused the claim")


# -- claiming, for the provisioner ----------------------------------------------------------------


class WarmPoolDoor(Protocol):
    """What a start tells the gateway's warm pools (``gateway/lifecycle/warmpool.py``)."""

    def claimed(self, kernelspec: str, outcome: str) -> None:
        """A claim ended: ``ok``, or why it did not (the start then went cold)."""


@dataclass(frozen=True)
class Claim:
    """What a claim binds late: everything per kernel a cold start puts in the pod's spec."""

    namespace: str
    spec: R.KernelSpecView
    kernel_id: str
    user: str
    key: str = field(repr=False)
    client_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    working_dir: str = ""
    restart_count: int = 0
    image: str = ""

    def message(self) -> dict[str, Any]:
        """What the pool pod receives (sealed): the env a cold start's pod spec would carry."""
        env = {**dict(self.client_env), "KERNEL_ID": self.kernel_id,
               "KERNEL_USERNAME": self.user, ENV_KERNEL_ID: self.kernel_id}
        return {"kernel_id": self.kernel_id, "key": self.key, "user": self.user, "env": env,
                "working_dir": self.working_dir}


def claim_patch(pod: Mapping[str, Any], claim: Claim, owner: Mapping[str, str]) -> JSON:
    """The conditional patch that makes a pool pod the kernel's pod (409 if it moved on)."""
    meta = pod["metadata"]
    return {"metadata": {
        "resourceVersion": meta["resourceVersion"],
        "labels": {R.LABEL_COMPONENT: R.COMPONENT_KERNEL, R.LABEL_KERNEL_ID: claim.kernel_id,
                   R.LABEL_USER: R.sanitize_label_value(claim.user)},
        "annotations": {R.ANNOTATION_USER: claim.user,
                        R.ANNOTATION_RESTART_COUNT: str(claim.restart_count),
                        ANNOTATION_FROM_POOL: "true", ANNOTATION_READY: None},
        "ownerReferences": [owner_reference(owner)],
    }}


async def claim_pool_pod(client: KubeClient, pools: Informer, claim: Claim,
                         owner: Mapping[str, str]) -> tuple[JSON | None, str]:
    """Claim a ready pool pod of the claim's kernelspec for this kernel: (the pod, relabelled
    and owned by the kernel's JupyterKernel, "ok"), or (None, why not); the start then goes
    cold. A pod this claim took but could not hand the key to is deleted (it is ours by then,
    and a pool pod that may have half a claim is never offered again)."""
    candidates = [p for p in ready_pods(pools, claim.spec, claim.namespace)
                  if not claim.image or _image(p) == claim.image]
    if not candidates:
        return None, "empty"
    for pod in candidates:
        name = pod["metadata"]["name"]
        secret_name = pool_secret_name(pod)
        try:
            secret_task = asyncio.ensure_future(client.get(SECRETS, secret_name, claim.namespace))
            try:
                taken = await client.patch(PODS, name, claim_patch(pod, claim, owner),
                                           claim.namespace)
            except BaseException:
                secret_task.cancel()
                raise
            secret = await secret_task
        except KubeError as e:
            if e.conflict or e.not_found:
                continue  # another start took it, or it went: the next one
            log.warning("Warm pool of %s: could not claim %s: %s", claim.spec.name, name, e)
            return None, "error"
        try:
            value = base64.b64decode(((secret.get("data") or {}).get(POOL_SECRET_ITEM)) or "")
            await send_claim(str((pod.get("status") or {}).get("podIP")), value,
                             claim.message())
        except (PoolClaimError, ValueError) as e:
            log.warning("Kernel %s: %s; deleting it and starting cold", claim.kernel_id, e)
            try:
                await client.delete(PODS, name, claim.namespace, grace_period_seconds=0)
            except KubeError:
                pass
            return None, "failed"
        return taken, "ok"
    return None, "raced"


def _image(pod: Mapping[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("image") or "")


def new_pool_secret() -> str:
    return secrets.token_hex(32)
