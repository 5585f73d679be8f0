"""The aiohttp transport: HTTP routes and WebSocket plumbing around the Node.

Every refusal happens before the upgrade with an HTTP status and a reason in
the body; after the upgrade, errors are ``error`` frames or close codes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import orjson
from aiohttp import HttpVersion11, web
from aiohttp.http_websocket import WSHandshakeError, ws_ext_gen, ws_ext_parse

from scalechat.chat.broker import create_broker
from scalechat.chat.budget import MemoryBudget, default_limit
from scalechat.chat.client_socket import ClientSocket, Heartbeat
from scalechat.chat.deflate import Deflate
from scalechat.chat.errors import BrokerUnavailable
from scalechat.chat.hub import Hub
from scalechat.chat.listener import take_over
from scalechat.chat.metrics import Metrics
from scalechat.chat.node import Node
from scalechat.chat.outbox import Outbox
from scalechat.chat.protocol import (CloseCode, RefusalReason, parse_since, validate_name,
                                     validate_room)
from scalechat.chat.ratelimit import TokenBucket
from scalechat.chat.settings import Settings
from scalechat.hostinfo import host_facts
from scalechat.wsframes import accept_key

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
NODE_HEADER = "X-Scalechat-Node"

settings_key = web.AppKey("settings", Settings)
node_key = web.AppKey("node", Node)
metrics_key = web.AppKey("metrics", Metrics)
state_key = web.AppKey("state", dict)
heartbeat_key = web.AppKey("heartbeat", Heartbeat)


class Refused(Exception):
    """An upgrade refused with an HTTP status and a plain-text reason."""

    def __init__(self, status: int, reason: str, label: RefusalReason) -> None:
        super().__init__(reason)
        self.status, self.reason, self.label = status, reason, label

    def response(self) -> web.Response:
        return web.Response(status=self.status, text=self.reason + "\n")


def create_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[settings_key] = settings
    app[state_key] = {"draining": False, "facts": host_facts()}
    app.add_routes([
        web.get("/", index),
        web.get("/ws/{room:.*}", websocket),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/info", info),
        web.static("/static", STATIC),
    ])
    if settings.debug_endpoints:
        app.router.add_post("/debug/stall", debug_stall)
    app.on_response_prepare.append(_tag_node)
    app.cleanup_ctx.append(_node_ctx)
    return app


async def _node_ctx(app: web.Application):
    settings = app[settings_key]
    # The gauges read the hub at scrape time; the exporter starts after it exists.
    metrics = Metrics(lambda: hub.connection_count, lambda: hub.room_count, app[state_key]["facts"])
    hub = Hub(asyncio.get_running_loop(), metrics.hot,
              settings.flush_interval_ms / 1000)
    budget = MemoryBudget(settings.memory_budget_bytes or default_limit())
    metrics.watch_budget(budget)
    node = Node(settings, create_broker(settings, budget), metrics, hub, budget)
    app[metrics_key], app[node_key] = metrics, node
    app[heartbeat_key] = heartbeat = Heartbeat(asyncio.get_running_loop(), settings.heartbeat_seconds)
    if settings.metrics_port:
        metrics.serve(settings.host, settings.metrics_port)
    await node.start()
    yield
    await node.close_all(CloseCode.GOING_AWAY, "going away", settings.grace_seconds)
    await node.close()
    heartbeat.stop()
    metrics.stop()


async def _tag_node(request: web.Request, response: web.StreamResponse) -> None:
    if node_key in request.app:
        response.headers[NODE_HEADER] = request.app[node_key].name


# --- plain HTTP -----------------------------------------------------------------------


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state, node = request.app[state_key], request.app[node_key]
    if state["draining"]:
        return web.json_response({"ready": False, "reason": "shutting down"}, status=503)
    # With Redis shards: ready while any shard is up (the others' rooms get 'unavailable';
    # taking every replica out of service would not help them); "shards_up" says which.
    shards = getattr(node.broker, "shards_up", None)
    detail = {} if shards is None else {"shards_up": shards}
    if not node.broker.ready:
        return web.json_response({"ready": False, "reason": "broker unavailable", **detail},
                                 status=503)
    return web.json_response({"ready": True, **detail})


async def info(request: web.Request) -> web.Response:
    node, settings = request.app[node_key], request.app[settings_key]
    body = {
        "node": node.name,
        "host": request.app[state_key]["facts"],
        "connections": node.hub.connection_count,
        "rooms": node.hub.room_count,
        "settings": settings.public_dict(),
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def debug_stall(request: web.Request) -> web.Response:
    """Block the event loop on purpose (only with debug_endpoints): a stand-in for saturation."""
    try:
        seconds = float(request.query.get("seconds", "1"))
    except ValueError:
        return web.Response(status=400, text="seconds must be a number\n")
    if not 0 <= seconds <= 30:
        return web.Response(status=400, text="seconds must be between 0 and 30\n")
    time.sleep(seconds)  # noqa: ASYNC251  (blocking the loop is what this endpoint is for)
    return web.json_response({"stalled_seconds": seconds})


# --- the WebSocket endpoint -----------------------------------------------------------


def _admit(request: web.Request) -> tuple[str, str, int | None, str | None]:
    """Check everything before the upgrade; return (room, name, since, epoch) or raise Refused."""
    settings, node = request.app[settings_key], request.app[node_key]
    if request.version < HttpVersion11:
        # aiohttp would answer 101 on HTTP/1.0; RFC 6455 section 4.1 requires 1.1 or later.
        raise Refused(400, "a WebSocket upgrade needs HTTP/1.1 or later", RefusalReason.BAD_HANDSHAKE)
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise Refused(400, "not a WebSocket handshake: it needs 'Upgrade: websocket', "
                           "'Connection: Upgrade', 'Sec-WebSocket-Version: 13' and a "
                           "Sec-WebSocket-Key of 16 bytes in base64 (RFC 6455 section 4.1)",
                      RefusalReason.BAD_HANDSHAKE)
    try:
        room = validate_room(request.match_info["room"])
    except ValueError as exc:
        raise Refused(400, str(exc), RefusalReason.BAD_ROOM) from None
    if request.app[state_key]["draining"]:
        raise Refused(503, "server is shutting down", RefusalReason.DRAINING)
    if node.hub.connection_count >= settings.max_connections:
        raise Refused(503, f"connection limit of {settings.max_connections} reached", RefusalReason.CAPACITY)
    if not node.admit_join(request.remote):
        raise Refused(429, "too many new connections from this address; retry later",
                      RefusalReason.JOIN_RATE)
    if not _origin_allowed(request, settings):
        raise Refused(403, f"origin {request.headers['Origin']!r} is not allowed", RefusalReason.ORIGIN)
    query = request.query
    if settings.auth_secret:
        name = _authenticate(query.get("token"), settings.auth_secret, settings.auth_require_exp)
    else:
        name = query.get("name") or f"guest-{secrets.token_hex(2)}"
    try:
        name = validate_name(name)
        since = parse_since(query.get("since"))
    except ValueError as exc:
        raise Refused(400, str(exc), RefusalReason.BAD_QUERY) from None
    return room, name, since, query.get("epoch") or None


def _origin_allowed(request: web.Request, settings: Settings) -> bool:
    """The Origin rule: absent (not a browser), listed, or the server's own origin.

    Origins are compared as (scheme, host, port), the port filled in from the
    scheme. The server's own origin is the scheme the request arrived with
    (X-Forwarded-Proto's, with trust_forwarded_proto) and the Host header's
    host and port.
    """
    origin = request.headers.get("Origin")
    allowed = settings.allowed_origins
    if origin is None or "*" in allowed or origin in allowed:
        return True
    key = origin_key(origin)
    if key is None:
        return False
    if key in (origin_key(entry) for entry in allowed):
        return True
    scheme = request.scheme
    if settings.trust_forwarded_proto:
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if forwarded in DEFAULT_PORTS:
            scheme = forwarded
    return key == origin_key(f"{scheme}://{request.host}")


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin; None for anything else ('null' included)."""
    try:
        parts = urlsplit(origin)
        scheme, host = parts.scheme.lower(), parts.hostname
        if (scheme not in DEFAULT_PORTS or not host or "@" in parts.netloc
                or parts.path not in ("", "/")):
            return None
        return scheme, host, parts.port or DEFAULT_PORTS[scheme]
    except ValueError:  # a port that is not a number or out of range
        return None


def _authenticate(token: str | None, secret: str, require_exp: bool) -> str:
    if not token:
        raise Refused(401, "missing ?token=: this server requires a signed token", RefusalReason.AUTH)
    options = {"require": ["exp"]} if require_exp else {}
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options=options)
    except jwt.InvalidTokenError as exc:
        raise Refused(401, _token_problem(exc), RefusalReason.AUTH) from None
    name = claims.get("name") or claims.get("sub")
    if not isinstance(name, str):
        raise Refused(401, "token has no 'name' or 'sub' claim", RefusalReason.AUTH)
    return name


def _token_problem(exc: jwt.InvalidTokenError) -> str:
    """Our words for a rejected token (PyJWT's messages are its internals')."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"invalid token: it has no '{exc.claim}' claim, which this server requires"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "invalid token: not valid yet ('nbf' or 'iat' in the future)"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "invalid token: the signature does not match"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "invalid token: only HS256 is accepted"
    if isinstance(exc, jwt.DecodeError):
        return "invalid token: not a JWT"
    return "invalid token: a claim is invalid"


async def websocket(request: web.Request) -> web.StreamResponse:
    """Check the upgrade, answer 101, hand the socket to a ClientSocket, then join the room.

    The 101 is written here, not by aiohttp's WebSocketResponse: after it the
    socket belongs to scalechat's own protocol (see ``client_socket``).
    """
    settings, node = request.app[settings_key], request.app[node_key]
    try:
        room, name, since, epoch = _admit(request)
    except Refused as refusal:
        node.metrics.connections_refused.labels(reason=refusal.label).inc()
        return refusal.response()
    deflate, extension = _negotiate_deflate(request, settings)
    sock = ClientSocket(node, request.app[heartbeat_key], settings.max_message_bytes, deflate)
    now = time.perf_counter()
    conn = sock.conn = Outbox(
        sock, room, name, settings.send_buffer_bytes,
        TokenBucket(settings.rate_limit, settings.rate_burst, now),
        node.hub.schedule_flush, node.condemn_slow,
        TokenBucket(settings.rate_limit_bytes,  # 4 s of it, at least one frame
                    max(4 * settings.rate_limit_bytes, settings.max_message_bytes), now))
    take_over(request.protocol, sock, _switching_protocols(request, node.name, extension))
    try:
        await node.join(conn, since, epoch)
    except Exception as exc:
        if isinstance(exc, BrokerUnavailable):
            node.close_soon(conn, CloseCode.TRY_AGAIN_LATER, "broker unavailable, retry")
        else:
            log.exception("joining room %s failed", room)
            node.close_soon(conn, CloseCode.INTERNAL_ERROR, "internal error")
        sock.abandon()
        await node.leave(conn)
    else:
        if not sock.start():  # lost while joining
            await node.leave(conn)
    # Never written: the socket is no longer aiohttp's (see listener.take_over).
    return web.StreamResponse(status=101)


def _switching_protocols(request: web.Request, node: str, extension: str | None) -> bytes:
    """The 101 response (RFC 6455 section 4.2.2)."""
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {accept_key(request.headers['Sec-WebSocket-Key'])}",
             f"{NODE_HEADER}: {node}"]
    if extension:
        lines.append(f"Sec-WebSocket-Extensions: {extension}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _negotiate_deflate(request: web.Request, settings: Settings) -> tuple[Deflate | None, str | None]:
    """permessage-deflate, if enabled and offered: (the codec, the response's extension header)."""
    if not settings.compression:
        return None, None
    try:
        window_bits, no_takeover = ws_ext_parse(request.headers.get("Sec-WebSocket-Extensions"),
                                                isserver=True)
    except WSHandshakeError:
        return None, None  # an offer we cannot accept: no compression (section 9.1)
    if not window_bits:
        return None, None
    return (Deflate(window_bits, not no_takeover),
            ws_ext_gen(compress=window_bits, isserver=True, server_notakeover=no_takeover))
