"""Client websocket frames, checked before they reach a kernel.

A kernel websocket carries whatever the client sends, and jupyter_server's decoders trust it:

* a ``v1.kernel.websocket.jupyter.org`` frame starts with a 64-bit part count that upstream
  turns into ``range(count)``: eight bytes can make the gateway loop for ever;
* a legacy binary frame starts with a 32-bit buffer count that becomes a ``struct`` format
  string of that many characters (gigabytes);
* a legacy JSON message without a channel, or with an unknown one, is logged *whole* (up to
  ``websocket_max_message_size``, 32 MiB, per message).

So every frame is checked here, with bounds derived from its real length, and a frame that does
not pass is dropped with a short reason (never its payload). Valid frames are sent exactly as
jupyter_server would: a legacy JSON message is parsed once, checked, and handed to the Session
(which signs it with the kernel's key: clients never sign); a v1 frame is sent raw. Messages may
go to the shell, control and stdin channels; iopub is the kernel's, and unknown message types are
the kernel's business (it ignores what it does not know) unless the kernel manager's
``allowed_message_types`` says otherwise.
"""

from __future__ import annotations

import json
import struct
import typing as t

from jupyter_client.jsonutil import extract_dates

__all__ = ["FrameError", "SENDABLE_CHANNELS", "deliver", "parse_legacy_binary", "parse_v1"]

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
SENDABLE_CHANNELS = ("shell", "control", "stdin")
MAX_PARTS = 4096
"""More buffers than any real message carries; bounds the work a frame can ask for."""
_MESSAGE_KEYS = ("header", "parent_header", "metadata", "content")


class FrameError(ValueError):
    """A client frame that cannot be delivered; the text says why, without the payload."""


def _check_channel(channel: object, available: t.Container[str]) -> str:
    if not isinstance(channel, str):
        raise FrameError(f"'channel' must be a string, not {type(channel).__name__}")
    if channel not in SENDABLE_CHANNELS:
        shown = channel if len(channel) <= 40 else channel[:37] + "..."
        raise FrameError(f"cannot send on channel {shown!r} (one of: "
                         f"{', '.join(SENDABLE_CHANNELS)})")
    if channel not in available:
        raise FrameError(f"channel {channel!r} is not open")
    return channel


def _check_header(header: object) -> dict[str, t.Any]:
    if not isinstance(header, dict):
        raise FrameError(f"'header' must be an object, not {type(header).__name__}")
    msg_type = header.get("msg_type")
    if not isinstance(msg_type, str) or not msg_type:
        raise FrameError("'header.msg_type' must be a non-empty string")
    if len(msg_type) > 100:
        raise FrameError("'header.msg_type' is longer than 100 characters")
    return header


def parse_legacy_text(frame: str | bytes, available: t.Container[str]) -> tuple[str, dict]:
    """A legacy (JSON) message: its channel and the message dict for ``Session.send``."""
    try:
        msg = json.loads(frame)
    except (ValueError, RecursionError) as e:
        raise FrameError(f"not a JSON message ({type(e).__name__})") from None
    return _checked_message(msg, available)


def _checked_message(msg: object, available: t.Container[str]) -> tuple[str, dict]:
    if not isinstance(msg, dict):
        raise FrameError(f"a message must be a JSON object, not {type(msg).__name__}")
    channel = msg.pop("channel", None)
    channel = _check_channel("shell" if channel is None else channel, available)
    _check_header(msg.get("header"))
    for key in ("parent_header", "metadata"):
        value = msg.setdefault(key, {})
        if not isinstance(value, dict):
            raise FrameError(f"'{key}' must be an object, not {type(value).__name__}")
    content = msg.setdefault("content", {})
    if not isinstance(content, dict):
        raise FrameError(f"'content' must be an object, not {type(content).__name__}")
    buffers = msg.get("buffers", [])
    if not isinstance(buffers, list) or not all(
            isinstance(b, (bytes, bytearray, memoryview)) for b in buffers):
        raise FrameError("'buffers' cannot be sent in a JSON message")
    return channel, msg


def parse_legacy_binary(frame: bytes, available: t.Container[str]) -> tuple[str, dict]:
    """A legacy binary message: 32-bit part count, offsets, JSON, buffers."""
    size = len(frame)
    if size < 8:
        raise FrameError("binary message shorter than its header")
    (nbufs,) = struct.unpack("!i", frame[:4])
    if not 1 <= nbufs <= MAX_PARTS or 4 * (nbufs + 1) > size:
        raise FrameError(f"binary message declares {nbufs} parts in {size} bytes")
    offsets = list(struct.unpack("!" + "I" * nbufs, frame[4: 4 * (nbufs + 1)]))
    _check_offsets(offsets, 4 * (nbufs + 1), size)
    offsets.append(size)
    parts = [frame[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    try:
        msg = json.loads(parts[0].decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise FrameError(f"binary message's JSON part is invalid ({type(e).__name__})") from None
    if not isinstance(msg, dict):
        raise FrameError("binary message's JSON part must be an object")
    channel, msg = _checked_message(msg, available)
    msg["header"] = extract_dates(msg["header"])
    msg["parent_header"] = extract_dates(msg["parent_header"])
    msg["buffers"] = parts[1:]
    return channel, msg


def parse_v1(frame: bytes | str, available: t.Container[str]) -> tuple[str, list[bytes]]:
    """A ``v1.kernel.websocket.jupyter.org`` frame: its channel and the raw message parts."""
    if not isinstance(frame, (bytes, bytearray)):
        raise FrameError("the v1 kernel protocol takes binary frames, not text")
    size = len(frame)
    if size < 8:
        raise FrameError("frame shorter than its header")
    count = int.from_bytes(frame[:8], "little")
    # channel + header, parent_header, metadata, content (+ buffers) + the end offset.
    if not 6 <= count <= MAX_PARTS + 6 or 8 * (count + 1) > size:
        raise FrameError(f"frame declares {count} offsets in {size} bytes")
    offsets = [int.from_bytes(frame[8 * (i + 1): 8 * (i + 2)], "little") for i in range(count)]
    _check_offsets(offsets, 8 * (count + 1), size)
    try:
        channel = frame[offsets[0]: offsets[1]].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("the channel name is not UTF-8") from None
    channel = _check_channel(channel, available)
    parts = [bytes(frame[offsets[i]: offsets[i + 1]]) for i in range(1, count - 1)]
    try:
        header = json.loads(parts[0])
    except (ValueError, RecursionError) as e:
        raise FrameError(f"the header is not JSON ({type(e).__name__})") from None
    _check_header(header)
    for name, part in zip(_MESSAGE_KEYS[1:], parts[1:4]):
        if name != "content" and not part.lstrip().startswith(b"{"):
            raise FrameError(f"'{name}' must be a JSON object")
    return channel, parts


def _check_offsets(offsets: list[int], start: int, size: int) -> None:
    if offsets[0] < start:
        raise FrameError("part offsets overlap the frame's header")
    for a, b in zip(offsets, offsets[1:]):
        if b < a:
            raise FrameError("part offsets are not in order")
    if offsets[-1] > size:
        raise FrameError("part offsets point past the end of the frame")


def deliver(connection: t.Any, frame: str | bytes) -> None:
    """Check one client frame and send it to the kernel; raises FrameError if it is refused.

    ``connection`` is jupyter_server's ``ZMQChannelsWebsocketConnection`` (or ours).
    """
    channels = connection.channels
    if not channels:
        return  # closing: drop silently, as upstream
    allowed = connection.multi_kernel_manager.allowed_message_types
    session = connection.session
    if connection.subprotocol == V1_PROTOCOL:
        channel, parts = parse_v1(frame, channels)
        if allowed:
            msg_type = json.loads(parts[0])["msg_type"]
            if msg_type not in allowed:
                raise FrameError(f"message type {msg_type[:100]!r} is not allowed")
        session.send_raw(channels[channel], parts)
        return
    if isinstance(frame, (bytes, bytearray)):
        channel, msg = parse_legacy_binary(bytes(frame), channels)
    else:
        channel, msg = parse_legacy_text(frame, channels)
    if allowed and msg["header"]["msg_type"] not in allowed:
        raise FrameError(f"message type {msg['header']['msg_type'][:100]!r} is not allowed")
    session.send(channels[channel], msg)
