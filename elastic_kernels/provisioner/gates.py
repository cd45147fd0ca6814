"""Scheduling gates the provisioner may put on a kernel pod (Pod scheduling readiness)."""

from ..kube.resources import GROUP

#: Held by a GPU kernel pod queued behind others; the gateway's GPU queue removes it in turn.
GPU_QUEUE_GATE = f"{GROUP}/gpu-queue"
