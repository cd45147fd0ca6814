"""The JSON websocket frame spliced from a kernel message's own parts (gateway/transport/wsjson.py).

Each case compares with what jupyter_server's own path makes of the same message, or checks
that the splice declines (returns None) so that upstream's path handles the message.
"""

from __future__ import annotations

import json
import typing as t
from datetime import datetime

import pytest
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session

from elastic_kernels.gateway.transport.wsjson import json_frame

KEY = b"k" * 64


def kernel_session() -> Session:
    return Session(key=KEY, username="kernel")


def gateway_session() -> Session:
    return Session(key=KEY, username="gateway")


def wire(msg_type: str = "stream", content: t.Any = None, **kw: t.Any) -> list[bytes]:
    """A message as it arrives from the kernel: identities, delimiter, signature, parts."""
    session = kernel_session()
    parent = session.msg("execute_request", {"code": "print(1)"})
    msg = session.msg(msg_type, content if content is not None else
                      {"name": "stdout", "text": "hello\n"}, parent=parent)
    return [b"stream-ident", *session.serialize(msg, **kw)]


def resign(parts: list[bytes], index: int, value: bytes) -> list[bytes]:
    """``parts`` with one message part replaced and the signature made valid again."""
    parts = list(parts)
    delim = parts.index(b"<IDS|MSG>")
    parts[delim + 1 + index] = value
    parts[delim] = b"<IDS|MSG>"
    parts[delim + 1] = kernel_session().sign(parts[delim + 2:delim + 6])
    return parts


def upstream(parts: list[bytes], channel: str | None) -> dict[str, t.Any]:
    """jupyter_server's frame for the same message (ZMQChannelsWebsocketConnection)."""
    session = gateway_session()
    _, fed = session.feed_identities(parts)
    msg = session.deserialize(fed)
    if channel:
        msg["channel"] = channel
    return t.cast("dict[str, t.Any]", json.loads(json.dumps(msg, default=json_default)))


def normalise_dates(msg: dict[str, t.Any]) -> dict[str, t.Any]:
    """Dates as instants: upstream re-formats them, the splice keeps the kernel's spelling."""
    for key in ("header", "parent_header"):
        date = msg[key].get("date")
        if isinstance(date, str):
            msg[key]["date"] = datetime.fromisoformat(date.replace("Z", "+00:00"))
    return msg


@pytest.mark.parametrize("channel", ["iopub", "shell", None])
def test_frame_is_upstreams_frame(channel: str | None) -> None:
    parts = wire(content={"name": "stdout", "text": "héllo ✓ \u2028 \"quoted\"\n"})
    built = json_frame(gateway_session(), parts, channel)
    assert built is not None
    frame, header = built
    assert header["msg_type"] == "stream"
    spliced = json.loads(frame.decode("utf-8"))  # a valid UTF-8 text frame
    assert normalise_dates(spliced) == normalise_dates(upstream(parts, channel))
    assert ("channel" in spliced) == bool(channel)


def test_a_signature_is_accepted_once_like_upstream() -> None:
    session = gateway_session()
    parts = wire()
    assert json_frame(session, parts, "iopub") is not None
    assert json_frame(session, parts, "iopub") is None  # replayed
    _, fed = session.feed_identities(parts)
    with pytest.raises(ValueError, match="Duplicate Signature"):
        session.deserialize(fed)  # upstream's path refuses it as well


def test_unsigned_sessions_splice_without_checking() -> None:
    parts = [b"<IDS|MSG>", b"", *Session(key=b"").serialize(
        Session(key=b"").msg("status", {"execution_state": "idle"}))[2:]]
    built = json_frame(Session(key=b""), parts, "iopub")
    assert built is not None and json.loads(built[0])["content"] == {"execution_state": "idle"}


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda p: [*p[:-1], p[-1].replace(b"hello", b"HELLO")], id="bad-signature"),
        pytest.param(lambda p: [x for x in p if x != b"<IDS|MSG>"], id="no-delimiter"),
        pytest.param(lambda p: p[:5], id="too-few-parts"),
        pytest.param(lambda p: resign(p, 4, b"\xff\xfe not utf-8"), id="content-not-utf8"),
        pytest.param(lambda p: resign(p, 4, b"\"\\ud800\""), id="content-not-object"),
        pytest.param(lambda p: resign(p, 4, b"{\"a\": "), id="content-not-json"),
        pytest.param(lambda p: resign(p, 1, json.dumps(
            {"msg_id": "x", "msg_type": "stream", "version": "4.1", "date": "2026-01-01T00:00:00Z",
             "session": "s", "username": "u"}).encode()), id="protocol-4"),
        pytest.param(lambda p: resign(p, 1, json.dumps(
            {"msg_id": "x", "msg_type": "stream", "version": "5.3", "session": "s",
             "username": "u"}).encode()), id="no-date"),
        pytest.param(lambda p: resign(p, 1, json.dumps(
            {"msg_type": "stream", "version": "5.3", "date": "2026-01-01T00:00:00Z"}).encode()),
            id="no-msg-id"),
    ],
)
def test_unusual_messages_go_to_upstreams_path(tamper: t.Callable[[list[bytes]], list[bytes]]
                                               ) -> None:
    assert json_frame(gateway_session(), tamper(wire()), "iopub") is None


def test_messages_with_buffers_go_to_upstreams_path() -> None:
    session = kernel_session()
    msg = session.msg("comm_msg", {"data": {}})
    parts = [*session.serialize(msg), b"\x00binary\x01"]
    assert json_frame(gateway_session(), parts, "iopub") is None


def test_lone_surrogates_never_reach_a_text_frame() -> None:
    # The kernel's packer writes them with surrogateescape; upstream replaces them with U+FFFD.
    bad = b'{"name": "stdout", "text": "\xed\xa0\x80"}'
    assert json_frame(gateway_session(), resign(wire(), 4, bad), "iopub") is None
