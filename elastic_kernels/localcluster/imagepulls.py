"""Which images each simulated node holds, and the time a "pull" takes.

Nothing is downloaded here (``images.py``), but the time a first kernel waits for a multi-GB
image is what image pre-pulling exists for, so the kubelet can simulate it: with
``ImagePolicy.pull_seconds`` set, every node starts holding only ``ImagePolicy.preloaded``; the
first container that needs an image on a node waits ``pull_seconds`` (its pod shows
``ContainerCreating`` and a ``Pulling`` Event, as on a real node), after which the node holds
the image and later containers find it ``already present on machine``. Concurrent pulls of the
same image on the same node share one pull, as the kubelet's image manager serialises them.
With ``pull_seconds`` unset (the default) every image is present on every node, so nothing
else in the cluster behaves differently unless a caller asks for pulls.

Images are compared after Docker's normalisation (``python`` is
``docker.io/library/python:latest``), so two spellings of one image are one pull.
"""

from __future__ import annotations

import asyncio
import time

from .images import ImagePolicy, normalize_image


class NodeImages:
    """Per-node image sets and in-flight pulls, for one kubelet (all its nodes)."""

    def __init__(self, policy: ImagePolicy) -> None:
        self.policy = policy
        self._present: dict[str, set[str]] = {}
        self._pulling: dict[tuple[str, str], asyncio.Future[None]] = {}

    @property
    def simulated(self) -> bool:
        return self.policy.pull_seconds is not None

    def _node(self, node: str) -> set[str]:
        held = self._present.get(node)
        if held is None:
            held = self._present[node] = {normalize_image(i) for i in self.policy.preloaded}
        return held

    def present(self, node: str, image: str) -> bool:
        """Whether ``node`` holds ``image`` (always, when pulls are not simulated)."""
        if not self.simulated:
            return True
        return normalize_image(image) in self._node(node)

    def images(self, node: str) -> list[str]:
        """The images ``node`` holds, normalised and sorted (for tests and ``node.status``)."""
        return sorted(self._node(node))

    async def pull(self, node: str, image: str) -> float:
        """Make ``node`` hold ``image``; the seconds this caller waited (0 when present).

        A caller that arrives while another pull of the same image on the same node is under
        way waits for that one instead of starting a second.
        """
        ref = normalize_image(image)
        if self.present(node, ref):
            return 0.0
        started = time.monotonic()
        key = (node, ref)
        pending = self._pulling.get(key)
        if pending is None:
            pending = self._pulling[key] = asyncio.ensure_future(self._download(node, ref))
            pending.add_done_callback(lambda _f: self._pulling.pop(key, None))
        # Shielded: a pod deleted mid-pull stops waiting, but the node still gets the image.
        await asyncio.shield(pending)
        return time.monotonic() - started

    async def _download(self, node: str, ref: str) -> None:
        await asyncio.sleep(max(0.0, float(self.policy.pull_seconds or 0.0)))
        self._node(node).add(ref)

    def pulling(self, node: str) -> list[str]:
        """The images being pulled onto ``node`` right now, normalised and sorted."""
        return sorted(ref for (n, ref) in self._pulling if n == node)

    def close(self) -> None:
        """Abandon pulls under way (the kubelet is stopping; its pods are gone)."""
        for pending in list(self._pulling.values()):
            pending.cancel()
        self._pulling.clear()

    def forget_node(self, node: str) -> None:
        """A node that left the cluster takes its images with it."""
        self._present.pop(node, None)
