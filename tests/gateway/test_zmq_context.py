"""Stopping a gateway never hangs on its ZeroMQ context (see ``app.release_zmq_context``)."""

from __future__ import annotations

import logging
import types

import pytest
import zmq

from elastic_kernels.gateway.app import release_zmq_context


@pytest.mark.timeout(20)
async def test_a_socket_left_open_does_not_hang_the_context_release(
        caplog: pytest.LogCaptureFixture) -> None:
    context = zmq.Context()
    # Opened through another wrapper of the same context: pyzmq's destroy() does not know it,
    # and zmq_ctx_term would wait for it for ever (as jupyter_client's __del__ would).
    stray = zmq.Context.shadow(context.underlying).socket(zmq.PAIR)
    km = types.SimpleNamespace(context=context, _created_context=True)
    try:
        with caplog.at_level(logging.WARNING):
            await release_zmq_context(km, logging.getLogger("test"), wait=0.5)
        assert km._created_context is False  # jupyter_client's __del__ will leave it alone
        assert "still had open sockets" in caplog.text
    finally:
        stray.close(linger=0)  # the daemon thread's term() can now finish


@pytest.mark.timeout(20)
async def test_a_clean_context_is_destroyed() -> None:
    context = zmq.Context()
    context.socket(zmq.PAIR).close()
    km = types.SimpleNamespace(context=context, _created_context=True)
    await release_zmq_context(km, logging.getLogger("test"))
    assert context.closed and km._created_context is False


@pytest.mark.timeout(20)
async def test_a_socket_still_in_use_is_not_closed_from_under_its_owner() -> None:
    context = zmq.Context()
    busy = context.socket(zmq.PAIR)
    km = types.SimpleNamespace(context=context, _created_context=True)
    try:
        await release_zmq_context(km, logging.getLogger("test"))
        assert not busy.closed and km._created_context is False
    finally:
        busy.close(linger=0)
        context.term()
