"""The chat protocol, sans I/O: validate client input, build server frames.

Nothing here touches a socket or an event loop. Frames are JSON text; every
server frame is encoded once (``bytes``) so a broadcast can be framed once and
written to many sockets.

client -> server
    ``{"type": "message", "text": str, "cid": str?}``
server -> client
    ``message``  ``{type, room, seq, id, from, text, ts, cid}``; seq is per room,
                 starts at 1 and has no gaps; ``ts`` is server time in ms.
    ``history``  ``{type, room, epoch, last_seq, name, node, continuity_lost, messages: [message...]}``
    ``presence`` ``{type, room, event: join|leave, name, count}``
    ``error``    ``{type, code, reason, cid?}``
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence

import orjson

from scalechat.chat.errors import ProtocolError

ROOM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_NAME_CHARS = 32
MAX_CID_CHARS = 64
MAX_SINCE_DIGITS = 18
SINCE_PATTERN = re.compile(rf"[0-9]{{1,{MAX_SINCE_DIGITS}}}")


class ClientType(enum.StrEnum):
    MESSAGE = "message"


class ServerType(enum.StrEnum):
    MESSAGE = "message"
    HISTORY = "history"
    PRESENCE = "presence"
    ERROR = "error"


class ErrorCode(enum.StrEnum):
    """Machine-readable ``code`` of an ``error`` frame."""

    BAD_JSON = "bad_json"
    BAD_FRAME = "bad_frame"
    UNKNOWN_TYPE = "unknown_type"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    DUPLICATE = "duplicate"  # a resent cid whose stored frame has left the history


class RefusalReason(enum.StrEnum):
    """Why an upgrade was refused before the WebSocket opened (a metrics label)."""

    BAD_HANDSHAKE = "bad_handshake"
    BAD_ROOM = "bad_room"
    BAD_QUERY = "bad_query"
    DRAINING = "draining"
    CAPACITY = "capacity"
    ORIGIN = "origin"
    AUTH = "auth"
    JOIN_RATE = "join_rate"  # joins_per_address exceeded (HTTP 429)


# The message type as a plain str for the per-message code: reading an enum member is
# an attribute lookup on its class, and orjson converts one to write it (about 0.1 and
# 0.4 µs a message).
_MESSAGE = ClientType.MESSAGE.value
assert _MESSAGE == ServerType.MESSAGE.value


class CloseCode(enum.IntEnum):
    """WebSocket close codes we send (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    PROTOCOL_ERROR = 1002  # a frame breaking RFC 6455 (unmasked, bad close code, ...)
    UNSUPPORTED_DATA = 1003  # binary frame
    INVALID_TEXT = 1007  # not UTF-8
    POLICY_VIOLATION = 1008  # rate limit exceeded persistently
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # slow consumer


class SendMessage:
    """A client's request to broadcast ``text`` to its room.

    A plain class, not a dataclass: built once per message, and mypyc compiles
    an ``__init__`` written out but not one that ``dataclasses`` generates.
    """

    __slots__ = ("text", "cid")

    def __init__(self, text: str, cid: str | None = None) -> None:
        self.text, self.cid = text, cid


# --- validation of the connection request -------------------------------------------


def validate_room(room: str) -> str:
    """Return ``room`` or raise ValueError with a reason fit for an HTTP 400."""
    if not ROOM_PATTERN.fullmatch(room):
        raise ValueError(
            "room must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63} (1-64 letters, digits, _ . -)")
    return room


def validate_name(name: str) -> str:
    """Return ``name`` (1-32 printable characters) or raise ValueError."""
    if not 1 <= len(name) <= MAX_NAME_CHARS or not name.isprintable() or name.strip() != name:
        raise ValueError(
            f"name must be 1-{MAX_NAME_CHARS} printable characters without leading or "
            "trailing spaces")
    return name


def parse_since(since: str | None) -> int | None:
    """The ``since`` sequence number: 1-18 ASCII digits (below 2**63, Redis's integer range).

    ``str.isdigit`` would also take other scripts' digits ("٣") and
    superscripts, which ``int`` reads or rejects with its own message.
    """
    if since is None or since == "":
        return None
    if not SINCE_PATTERN.fullmatch(since):
        raise ValueError(f"since must be a sequence number: 1-{MAX_SINCE_DIGITS} digits 0-9")
    return int(since)


# --- client frames -------------------------------------------------------------------


def parse_client_frame(text: str, max_text_chars: int) -> SendMessage:
    """Parse one text frame; raise ProtocolError for anything but a valid message."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is not valid JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame must be a JSON object")
    kind = frame.get("type")
    if kind != _MESSAGE:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind!r}; expected 'message'")
    cid = frame.get("cid")
    if cid is not None and (not isinstance(cid, str) or len(cid) > MAX_CID_CHARS):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"cid must be a string of at most {MAX_CID_CHARS} characters")
    body = frame.get("text")
    if not isinstance(body, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "text must be a string")
    if not body.strip():
        raise ProtocolError(ErrorCode.EMPTY_TEXT, "text is empty")
    if len(body) > max_text_chars:
        raise ProtocolError(ErrorCode.TEXT_TOO_LONG, f"text has {len(body)} characters; the limit is {max_text_chars}")
    return SendMessage(body, cid)


# --- server frames (encoded once) ----------------------------------------------------


def encode_message(room: str, seq: int, epoch: str, sender: str, text: str, ts_ms: int,
                   cid: str | None) -> bytes:
    """One ``message`` frame's JSON, in a buffer of its own size (histories keep it).

    orjson returns its working buffer (4 KiB for a 200-byte message), so the
    frame is copied out of it: docs/design/history-storage.md.
    """
    return memoryview(orjson.dumps({
        "type": _MESSAGE, "room": room, "seq": seq, "id": f"{epoch}-{seq}",
        "from": sender, "text": text, "ts": ts_ms, "cid": cid,
    })).tobytes()


def encode_history_parts(room: str, epoch: str, last_seq: int, name: str, node: str,
                         continuity_lost: bool, messages: Sequence[bytes]) -> list[bytes]:
    """The history frame's JSON as parts that reuse the stored ``messages`` (no copy of them).

    Joined, the parts are byte-for-byte :func:`encode_history`; written with
    ``writelines`` they cost each joiner a list of references, not the bytes.
    """
    head = orjson.dumps({
        "type": ServerType.HISTORY, "room": room, "epoch": epoch, "last_seq": last_seq,
        "name": name, "node": node, "continuity_lost": continuity_lost,
    })
    parts = [head[:-1] + b',"messages":[']
    for i, message in enumerate(messages):
        if i:
            parts.append(b",")
        parts.append(message)
    parts.append(b"]}")
    return parts


def encode_history(room: str, epoch: str, last_seq: int, name: str, node: str,
                   continuity_lost: bool, messages: Iterable[bytes]) -> bytes:
    """Join already-encoded messages into a history frame without re-encoding them.

    ``last_seq`` is the room's latest seq: the ``since`` to resume from, even
    when ``messages`` is empty.
    """
    head = orjson.dumps({
        "type": ServerType.HISTORY, "room": room, "epoch": epoch, "last_seq": last_seq,
        "name": name, "node": node, "continuity_lost": continuity_lost,
    })
    return head[:-1] + b',"messages":[' + b",".join(messages) + b"]}"


def encode_presence(room: str, event: str, name: str, count: int) -> bytes:
    return orjson.dumps({"type": ServerType.PRESENCE, "room": room, "event": event,
                         "name": name, "count": count})


def encode_error(code: ErrorCode, reason: str, cid: str | None = None) -> bytes:
    frame = {"type": ServerType.ERROR, "code": code, "reason": reason}
    if cid is not None:
        frame["cid"] = cid
    return orjson.dumps(frame)


def extract_cid(text: str) -> str | None:
    """Best-effort cid of a frame we reject, so the client can match the error."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    cid = frame.get("cid") if isinstance(frame, dict) else None
    return cid if isinstance(cid, str) and len(cid) <= MAX_CID_CHARS else None
