"""The messages that make a kernel save or restore its namespace, and the replies' reading.

The call is an ordinary ``execute_request`` on the shell channel, so the gateway needs no
comm target, no extension and no code installed in the kernel image (which has only ipykernel
and cloudpickle): its content has empty ``code``, ``silent=True`` and ``store_history=False``
(no execution count, no history, no output), and one ``user_expressions`` entry,
:data:`RESULT_KEY`. That expression ``exec``s the source of ``collect.py`` into a fresh module
(``elastic_kernels_snapshot_kernel`` in ``sys.modules``; no name lands in the user's
namespace) and calls ``kernel_save`` or ``kernel_restore`` on
the kernel's shell; it evaluates to a JSON string, which comes back in the ``execute_reply``'s
``user_expressions`` as its ``text/plain`` repr, read here with ``ast.literal_eval`` (never
``eval``).

The gateway streams the payload in bounded pieces (``collect``'s "chunked transfer"): a
first request (:func:`save_begin_request`) collects the namespace and keeps the payload in the
kernel, then :func:`send_request` asks for one piece at a time, which the kernel sends raw as
the binary buffer of a message on the stdin channel, to the asking client only (or, with a
kernel that cannot, :func:`read_request`: base64 in the reply, 4/3 of a piece), and
:func:`transfer_end_request` drops it. A restore sends :func:`restore_begin_request`, then
each piece as the raw binary buffer of a :func:`write_request` (no base64: ipykernel keeps a
request's buffers on the parent message), then :func:`restore_commit_request`, which takes
only a :class:`~.format.VerifiedTransfer`. Only the first request of each carries
``collect.py``'s source; the others call into the module it left in ``sys.modules``.

The single-message forms (:func:`save_request`, :func:`restore_request`: payload inline as
base64, or through a ``path`` on a volume both mount) remain for small snapshots and tools.
Either way the kernel only ever handles the unsigned payload: the gateway seals what it gets
(``format.seal``, ``format.SealStream``) and gives the kernel only verified bytes.

The single-message forms with a jupyter_client ``AsyncKernelClient`` (the gateway streams
instead: ``gateway/lifecycle/suspension.py``)::

    content = save_request(max_bytes=..., timeout=...)
    reply = await execute(client, content, timeout=timeout + 30)
    saved = read_save_reply(reply, max_bytes=...)
    store.put(kernel_id, seal(saved.payload, key=key, kernel_id=kernel_id, owner=user))
    ...
    snapshot = verify_and_load(store.get(kernel_id), key=key, kernel_id=kernel_id, owner=user)
    reply = await execute(new_client, restore_request(snapshot), timeout=...)
    print(read_restore_reply(reply).report)
"""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .collect import SnapshotError, SnapshotTimeout, SnapshotTooLarge
from .format import VerifiedSnapshot, VerifiedTransfer

RESULT_KEY = "elastic_kernels_snapshot"
_MODULE_NAME = "elastic_kernels_snapshot_kernel"
_FILENAME = "<elastic-kernels snapshot>"


def kernel_source() -> str:
    """The source of the kernel side (collect.py), as sent to the kernel."""
    return (resources.files("elastic_kernels.snapshot") / "collect.py").read_text(
        encoding="utf-8")


def _expression(call: str) -> str:
    """An expression that runs collect.py as a fresh module and evaluates ``call`` in it.

    The module is put in ``sys.modules`` (dataclasses look their module up there), replacing
    the one of an earlier call: each call runs the gateway's current source. Nothing lands in
    the user's namespace.
    """
    return (
        "(lambda m: (__import__('sys').modules.__setitem__(m.__name__, m), "
        f"exec(compile({kernel_source()!r}, {_FILENAME!r}, 'exec'), m.__dict__), "
        f"eval({call!r}, m.__dict__))[2])(__import__('types').ModuleType({_MODULE_NAME!r}))"
    )


def _content(expression: str) -> dict[str, Any]:
    return {
        "code": "",
        "silent": True,
        "store_history": False,
        "user_expressions": {RESULT_KEY: expression},
        "allow_stdin": False,
        "stop_on_error": False,
    }


def save_request(*, max_bytes: int, timeout: float, path: str | None = None) -> dict[str, Any]:
    """The ``execute_request`` content that makes the kernel collect its namespace.

    With ``path`` the kernel writes the payload to that file (on a volume the gateway reads)
    instead of returning it inline.
    """
    call = (f"kernel_save(__import__('IPython').get_ipython(), {int(max_bytes)!r}, "
            f"{float(timeout)!r}, {path!r})")
    return _content(_expression(call))


def restore_request(snapshot: VerifiedSnapshot, *, path: str | None = None) -> dict[str, Any]:
    """The ``execute_request`` content that restores a VERIFIED snapshot into a kernel.

    Only a :class:`VerifiedSnapshot` is accepted, so the payload reaches a kernel only after
    the gateway checked its signature, kernel id and owner. With ``path`` the caller has
    written ``snapshot.payload`` to that file (readable by the kernel) and the request carries
    only the path.
    """
    if not isinstance(snapshot, VerifiedSnapshot):
        raise TypeError("restore_request takes a VerifiedSnapshot (format.verify_and_load)")
    shell = "__import__('IPython').get_ipython()"
    if path is None:
        encoded = base64.b64encode(snapshot.payload).decode("ascii")
        call = f"kernel_restore({shell}, payload_b64={encoded!r})"
    else:
        call = f"kernel_restore({shell}, path={path!r})"
    return _content(_expression(call))


def _module_call(call: str) -> str:
    """An expression calling into the module an earlier request of the transfer left."""
    return f"__import__('sys').modules[{_MODULE_NAME!r}].{call}"


def save_begin_request(*, max_bytes: int, timeout: float) -> dict[str, Any]:
    """Collect the namespace and keep the payload in the kernel, for :func:`read_request`."""
    return _content(_expression(
        f"kernel_save_begin(__import__('IPython').get_ipython(), {int(max_bytes)!r}, "
        f"{float(timeout)!r})"))


def read_request(token: str, offset: int, length: int) -> dict[str, Any]:
    """One piece of the kept payload (read it with :func:`read_piece_reply`)."""
    return _content(_module_call(f"kernel_read({str(token)!r}, {int(offset)!r}, "
                                 f"{int(length)!r})"))


def send_request(token: str, offset: int, length: int) -> dict[str, Any]:
    """One piece of the kept payload, sent raw on the stdin channel (``collect.kernel_send``;
    the request allows stdin). Its reply says how many bytes were sent
    (:func:`read_count_reply`)."""
    content = _content(_module_call(
        f"kernel_send(__import__('IPython').get_ipython(), {str(token)!r}, {int(offset)!r}, "
        f"{int(length)!r})"))
    content["allow_stdin"] = True
    return content


def transfer_end_request(token: str) -> dict[str, Any]:
    """Drop the kernel's side of a transfer (stored, refused or failed)."""
    return _content(_module_call(f"kernel_transfer_end({str(token)!r})"))


def restore_begin_request(size: int) -> dict[str, Any]:
    """Start a restore of ``size`` bytes: loads collect.py; the reply holds the token
    (:func:`read_token_reply`)."""
    return _content(_expression(f"kernel_restore_begin({int(size)!r})"))


def write_request(token: str) -> dict[str, Any]:
    """The content of a request whose binary buffers are the next piece of the payload."""
    return _content(_module_call(
        f"kernel_write(__import__('IPython').get_ipython(), {str(token)!r})"))


def restore_commit_request(verified: VerifiedTransfer, token: str) -> dict[str, Any]:
    """Unpickle what was sent: only for a transfer whose signature checked over exactly the
    bytes sent (``format.RestoreStream.finish``)."""
    if not isinstance(verified, VerifiedTransfer):
        raise TypeError("restore_commit_request takes a VerifiedTransfer "
                        "(format.RestoreStream.finish)")
    return _content(_module_call(
        f"kernel_restore_commit(__import__('IPython').get_ipython(), {str(token)!r})"))


def _value(reply_content: dict[str, Any]) -> str:
    """The ``text/plain`` of the one user expression, or SnapshotError."""
    if reply_content.get("status") != "ok":
        raise SnapshotError(f"the kernel refused the snapshot request: "
                            f"{reply_content.get('ename', '')} {reply_content.get('evalue', '')}"
                            .strip())
    value = (reply_content.get("user_expressions") or {}).get(RESULT_KEY)
    if not isinstance(value, dict):
        raise SnapshotError("the kernel's reply has no snapshot result")
    if value.get("status") != "ok":
        raise SnapshotError(f"the snapshot code failed in the kernel: "
                            f"{value.get('ename', '')}: {value.get('evalue', '')}")
    text = (value.get("data") or {}).get("text/plain")
    if not isinstance(text, str):
        raise SnapshotError("the kernel's snapshot result is unreadable")
    return text


def read_piece_reply(reply_content: dict[str, Any], length: int) -> bytes:
    """The bytes of a :func:`read_request`'s reply: exactly ``length`` of them, or
    SnapshotError. The repr of an ASCII string is the string between quotes; anything else is
    refused rather than evaluated."""
    text = _value(reply_content)
    if len(text) < 2 or text[0] != "'" or text[-1] != "'":
        raise SnapshotError("the kernel's snapshot piece is unreadable")
    try:
        piece = base64.b64decode(text[1:-1], validate=True)
    except ValueError:
        raise SnapshotError("the kernel's snapshot piece is not valid base64") from None
    if len(piece) != length:
        raise SnapshotError(f"the kernel sent {len(piece)} snapshot bytes for {length} asked")
    return piece


def read_token_reply(reply_content: dict[str, Any]) -> str:
    """The token of a :func:`restore_begin_request`'s reply."""
    try:
        token = ast.literal_eval(_value(reply_content))
    except (ValueError, SyntaxError):
        token = None
    if not isinstance(token, str) or not token.isalnum():
        raise SnapshotError("the kernel's snapshot transfer has no token")
    return token


def read_count_reply(reply_content: dict[str, Any]) -> int:
    """The count a :func:`write_request` (bytes held) or :func:`send_request` (bytes sent)
    replies."""
    try:
        count = ast.literal_eval(_value(reply_content))
    except (ValueError, SyntaxError):
        count = None
    if not isinstance(count, int):
        raise SnapshotError("the kernel's snapshot transfer reply is unreadable")
    return count


@dataclass(frozen=True)
class SaveBegun:
    """A payload the kernel collected and keeps for reading: its size, digest, contents."""

    token: str
    size: int
    sha256: str
    variables: list[str]
    skipped: list[dict[str, str]]
    #: Whether the kernel can send pieces raw (:func:`send_request`), else base64 reads.
    binary: bool = False


def read_save_begin_reply(reply_content: dict[str, Any], *, max_bytes: int) -> SaveBegun:
    """Read a :func:`save_begin_request`'s reply; SnapshotError (SnapshotTooLarge past
    ``max_bytes``) says why there is no snapshot."""
    result = _result(reply_content)
    token, size, digest = result.get("token"), result.get("size"), result.get("sha256")
    if not isinstance(token, str) or not token.isalnum() or not isinstance(size, int) \
            or size < 0 or not isinstance(digest, str):
        raise SnapshotError("the kernel's snapshot reply is malformed")
    if size > max_bytes:
        raise SnapshotTooLarge(f"the snapshot would exceed maxBytes ({max_bytes} bytes)")
    return SaveBegun(token=token, size=size, sha256=digest,
                     variables=[str(v) for v in result.get("variables", [])],
                     skipped=[s for s in result.get("skipped", []) if isinstance(s, dict)],
                     binary=result.get("binary") is True)


def _result(reply_content: dict[str, Any]) -> dict[str, Any]:
    """The JSON the kernel-side function returned, from an ``execute_reply``'s content."""
    text = _value(reply_content)
    try:
        literal = ast.literal_eval(text) if isinstance(text, str) else None
        result = json.loads(literal) if isinstance(literal, str) else None
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        result = None
    if not isinstance(result, dict):
        raise SnapshotError("the kernel's snapshot result is unreadable")
    if not result.get("ok"):
        error = {"SnapshotTooLarge": SnapshotTooLarge, "SnapshotTimeout": SnapshotTimeout}.get(
            str(result.get("kind")), SnapshotError)
        raise error(str(result.get("error") or "the kernel could not take the snapshot"))
    return result


@dataclass(frozen=True)
class SaveResult:
    """What the kernel saved: the payload (inline) or where it wrote it, and what it holds."""

    payload: bytes | None
    path: str | None
    size: int
    sha256: str
    variables: list[str]
    skipped: list[dict[str, str]]


@dataclass(frozen=True)
class RestoreResult:
    """What the kernel restored, and its one-line report for the user."""

    report: str
    restored: list[str]
    not_restored: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)


def read_save_reply(reply_content: dict[str, Any], *, max_bytes: int) -> SaveResult:
    """Read a save's ``execute_reply`` content; SnapshotError (SnapshotTooLarge past
    ``max_bytes``: the kernel's word is not taken for it) says why there is no snapshot."""
    result = _result(reply_content)
    payload: bytes | None = None
    if "payload_b64" in result:
        encoded = result["payload_b64"]
        if not isinstance(encoded, str) or len(encoded) > (max_bytes + 2) // 3 * 4:
            raise SnapshotTooLarge(f"the snapshot would exceed maxBytes ({max_bytes} bytes)")
        try:
            payload = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise SnapshotError("the kernel's snapshot is not valid base64") from None
        if hashlib.sha256(payload).hexdigest() != result.get("sha256"):
            raise SnapshotError("the kernel's snapshot does not match its digest")
    elif not isinstance(result.get("path"), str):
        raise SnapshotError("the kernel's reply has neither a payload nor a path")
    size = int(result.get("size", -1))
    if size > max_bytes or (payload is not None and len(payload) > max_bytes):
        raise SnapshotTooLarge(f"the snapshot would exceed maxBytes ({max_bytes} bytes)")
    return SaveResult(payload=payload, path=result.get("path"), size=size,
                      sha256=str(result.get("sha256", "")),
                      variables=[str(v) for v in result.get("variables", [])],
                      skipped=list(result.get("skipped", [])))


def read_restore_reply(reply_content: dict[str, Any]) -> RestoreResult:
    """Read a restore's ``execute_reply`` content; SnapshotError if the kernel could not."""
    result = _result(reply_content)
    return RestoreResult(report=str(result.get("report", "")),
                         restored=[str(v) for v in result.get("restored", [])],
                         not_restored=list(result.get("not_restored", [])),
                         notes=[str(n) for n in result.get("notes", [])])


async def execute(client: Any, content: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Send ``content`` as an execute_request with a jupyter_client ``AsyncKernelClient`` and
    return its ``execute_reply`` content (other replies on the shell channel are skipped).
    Raises TimeoutError past ``timeout`` seconds."""
    msg_id = client.execute(**content)

    async def reply() -> dict[str, Any]:
        while True:
            msg = await client.get_shell_msg()
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return dict(msg["content"])

    return await asyncio.wait_for(reply(), timeout)
