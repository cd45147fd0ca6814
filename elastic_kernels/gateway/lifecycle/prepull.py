"""The gateway's image pre-pull controller: keeps the pre-pull DaemonSets in step with the
installed kernelspecs and templates (what they are and why: :mod:`elastic_kernels.provisioner.
prepull`).

* **Off unless configured** (``c.ImagePrepuller.enabled = True``; the shipped manifests and the
  Helm chart turn it on). A gateway that is not allowed to write DaemonSets, or whose cluster
  pre-pulls some other way, then makes no request for them.
* **One writer.** Only the replica that holds the GPU queue's Lease (the queue board's leader,
  ``queueboard.py``) writes, as for warm pools; without a board (one gateway) this one does. A
  replica that becomes leader looks at once.
* **Driven by the watches**, never by polling: the shared kernelspec and template watches (the
  ones the kernelspec manager and the provisioner read) and one watch of the pre-pull
  DaemonSets (label-selected) wake it; a burst of changes (``kubectl apply -k``) becomes one
  pass, because a pass reads the caches as they are when it runs. A DaemonSet someone edits or
  deletes by hand is put back on the next pass that its own watch event causes.
* **Failures** (the API unreachable, RBAC refusing) are logged and retried after a back-off
  (5 s doubling to 5 min), and at once on the next change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from traitlets import Bool, Float, List, Unicode, default
from traitlets.config import LoggingConfigurable

from elastic_kernels.kube import resources as R
from elastic_kernels.kube.client import DAEMONSETS
from elastic_kernels.kube.connection import ClusterConnection
from elastic_kernels.kube.informer import Informer
from elastic_kernels.provisioner import prepull
from elastic_kernels.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class ImagePrepuller(LoggingConfigurable):
    """Keeps ``provisioner.prepull.render_prepull``'s DaemonSets applied (module docstring)."""

    enabled = Bool(
        False, config=True,
        help="Keep image pre-pull DaemonSets for the installed kernelspecs (needs get, list, "
        "watch, create, patch and delete on apps daemonsets in the pre-pull namespace).")
    namespace = Unicode(
        "", config=True,
        help="Namespace of the pre-pull DaemonSets. Empty: the kernels' namespace. Their pods "
        "need the templates' imagePullSecrets in this namespace.")
    pause_image = Unicode(
        prepull.DEFAULT_PAUSE_IMAGE, config=True,
        help="The image of the container that keeps each pre-pull pod running once its init "
        "containers have pulled the kernel images (a mirror of it, in an air-gapped cluster).")
    extra_images = List(
        Unicode(), config=True,
        help="Images to pre-pull wherever kernels run, besides the kernelspecs' own (for "
        "example images users may choose with clientOverrides.image).")
    name_prefix = Unicode(
        prepull.DEFAULT_NAME_PREFIX, config=True,
        help="Start of the DaemonSets' names (<prefix>-<template>-<hash>).")
    command = List(
        Unicode(), default_value=["true"], config=True,
        help="The no-op each pre-pull init container runs in its image; every kernel image "
        "has 'true'. Set it for an image that lacks it (e.g. ['python', '-c', '']).")
    retry_seconds = Float(
        5.0, config=True,
        help="First delay before retrying a failed pass (doubles up to 5 minutes); any change "
        "retries at once.")

    @default("log")
    def _log_default(self) -> logging.Logger:
        return log

    def __init__(self, *, leading: Callable[[], bool], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.leading = leading
        self.kernel_namespace = ""
        self._specs: Informer | None = None
        self._templates: Informer | None = None
        self._daemonsets: Informer | None = None
        self._unlisten: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._delay = 0.0
        self._stopped = False
        #: What the last pass did (``created daemonset/...``), and its error, for tests and logs.
        self.last_actions: list[str] = []
        self.last_error = ""

    def settings(self) -> prepull.PrepullSettings:
        """The traits as render settings; raises PrepullError naming a bad one."""
        return prepull.PrepullSettings(
            namespace=self.namespace or self.kernel_namespace,
            pause_image=self.pause_image, extra_images=tuple(self.extra_images),
            name_prefix=self.name_prefix, command=tuple(self.command))

    async def start(self, kernel_namespace: str) -> None:
        if not self.enabled:
            return
        self.kernel_namespace = kernel_namespace
        settings = self.settings()  # bad settings fail the gateway's start, with the reason
        conn = ClusterConnection.instance()
        informers = await asyncio.gather(
            conn.informer(R.KERNELSPECS, kernel_namespace),
            conn.informer(R.TEMPLATES, kernel_namespace),
            conn.informer(DAEMONSETS, settings.namespace,
                          label_selector=prepull.PREPULL_SELECTOR),
        )
        self._specs, self._templates, self._daemonsets = informers
        self._unlisten = [i.add_listener(lambda *_: self.changed()) for i in informers]
        self.changed()

    async def stop(self) -> None:
        self._stopped = True
        for unlisten in self._unlisten:
            unlisten()
        self._unlisten = []
        if self._timer is not None:
            self._timer.cancel()
        await cancel_and_wait(self._task)
        self._task = None

    def follow_leadership(self, board: Any) -> None:
        """Look again when this replica becomes the queue board's leader."""
        leader = getattr(board, "leader", None)
        if leader is not None:
            leader.also_on_lead(self.changed)

    def changed(self) -> None:
        if self._stopped or self._specs is None:
            return
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self._wake.is_set():
            self._wake.clear()
            try:
                await self.reconcile()
                self._delay = 0.0
            except Exception as e:  # noqa: BLE001 - logged, retried; the gateway serves on
                self.last_error = str(e)
                self._delay = min(300.0, (self._delay * 2) or self.retry_seconds)
                self.log.warning("Image pre-pull: %s; retrying in %.0fs", e, self._delay)
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = asyncio.get_running_loop().call_later(self._delay, self.changed)

    def rendered(self) -> prepull.Rendered:
        """What the DaemonSets should be, from the watch caches."""
        assert self._specs is not None and self._templates is not None
        specs = []
        for obj in self._specs.items():
            try:
                specs.append(R.KernelSpecView.from_object(obj))
            except ValueError:
                continue  # the kernelspec manager reports it; it cannot start kernels either
        templates: dict[str, R.TemplateView | None] = {}
        for obj in self._templates.items():
            name = str((obj.get("metadata") or {}).get("name") or "")
            try:
                templates[name] = R.TemplateView.from_object(obj)
            except ValueError:
                templates[name] = None
        return prepull.render_prepull(specs, templates, self.settings())

    async def reconcile(self) -> None:
        if self._daemonsets is None or not self.leading():
            return
        rendered = self.rendered()
        settings = self.settings()
        actions = await prepull.apply_prepull(
            ClusterConnection.instance().client, settings.namespace, rendered.daemonsets,
            self._daemonsets.items())
        for action in actions:
            self.log.info("Image pre-pull: %s", action)
        if actions:
            for reason in rendered.skipped:
                self.log.info("Image pre-pull: left out %s", reason)
        self.last_actions = actions
        self.last_error = ""
