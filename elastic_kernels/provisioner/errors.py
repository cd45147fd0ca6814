"""Errors a kernel start can end in, each carrying what a user needs to act on it."""

from __future__ import annotations


class KernelLaunchError(RuntimeError):
    """A kernel could not start. ``reason`` is machine-readable; the message is for people.

    ``status_code`` tells an HTTP front end (our gateway) how to answer: 503 when the cluster
    cannot be reached, 504 when capacity never came, 400/404 for a bad request, 500 otherwise.
    The message always names the cause in the cluster's own words (the kubelet's or the
    scheduler's message) and never contains a secret.
    """

    def __init__(self, reason: str, message: str, status_code: int = 500) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status_code = status_code
