"""One typed settings object for the chat server.

Every field has a default, a ``SCALECHAT_*`` environment variable, a command
line flag and help text, all declared in one place (:func:`scalechat.settings.setting`).
The same declarations drive ``scalechat serve --help``, the README's settings
table and the chart's ``env:`` block. Precedence: flag > environment > default.
An invalid value raises :class:`SettingsError` naming the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from scalechat.chat.errors import SettingsError
from scalechat.chat.redis_link import RedisAddress
from scalechat.settings import DeclaredSettings, setting, update_readme

BROKERS = ("memory", "redis")


@dataclass(frozen=True, slots=True)
class Settings(DeclaredSettings):
    """The chat server's settings; see the module docstring for precedence."""

    ENV_PREFIX = "SCALECHAT_"
    ERROR = SettingsError

    host: str = setting("127.0.0.1", "Address the WebSocket and HTTP server binds to.")
    port: int = setting(8080, "Port of the WebSocket and HTTP server.", minimum=0)
    metrics_port: int = setting(
        9000, "Port of the Prometheus metrics server (served from its own thread). 0 disables it.",
        minimum=0)
    node_id: str = setting(
        "", "Name of this replica, reported in /info and the X-Scalechat-Node header. "
            "Default: hostname:port.")
    broker: str = setting(
        "memory", "Message broker: 'memory' (single process only) or 'redis' (replicas share rooms).",
        choices=BROKERS)
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0", "Redis URL, used when broker=redis; a comma-separated list "
        "shards rooms over several Redis instances (every replica needs the same list, in the "
        "same order).")
    redis_prefix: str = setting("scalechat", "Prefix of every Redis key and channel.")
    redis_batch_ms: float = setting(
        1.0, "Publishes accepted within this window reach Redis in one script call: fewer, "
             "larger batches cost Redis and the replica less CPU per message, for at most this "
             "much more latency. 0: at the end of each loop tick.", minimum=0)
    history_size: int = setting(
        1000, "Messages kept per room; older ones are dropped. Memory per room is bounded by "
              "history_size x max_message_bytes.", minimum=0)
    history_on_join: int = setting(
        50, "Messages sent in the history frame on join without ?since=.", minimum=0)
    history_room_bytes: int = setting(
        4 << 20, "Bytes of stored messages kept per room besides history_size (the oldest beyond "
                 "it are dropped).", minimum=1024)
    memory_budget_bytes: int = setting(
        0, "Bytes of history and outgoing buffers this process may hold; beyond it the oldest "
           "history of the least recently active rooms is dropped, and the clients holding the "
           "most queued bytes are closed as slow consumers. 0: a quarter of the cgroup memory "
           "limit when there is one, else 256 MiB.", minimum=0)
    max_rooms: int = setting(
        10000, "Rooms kept in memory with no members; beyond it the least recently used idle "
               "room is forgotten. With history_size this bounds history memory.", minimum=1)
    room_idle_seconds: float = setting(
        3600.0, "An empty room is forgotten (history included) after this many idle seconds.",
        minimum=0)
    max_message_bytes: int = setting(
        65536, "Largest WebSocket frame accepted from a client; larger closes with 1009.",
        minimum=64)
    max_text_chars: int = setting(
        4000, "Longest message text; longer gets an error frame 'text_too_long'.", minimum=1)
    rate_limit: float = setting(
        20.0, "Messages per second a connection may send (token bucket refill rate).",
        minimum=0.001)
    rate_burst: int = setting(
        40, "Token bucket size: messages a connection may send at once. Dropped messages get an "
            "error 'rate_limited'; a burst of drops this long closes the socket with 1008.",
        minimum=1)
    rate_limit_bytes: float = setting(
        65536.0, "Bytes per second of message frames a connection may send (a token bucket "
                 "holding 4 s of it, and at least one largest frame); over it the server reads "
                 "the connection later instead of dropping, so TCP slows the sender down.",
        minimum=1)
    joins_per_address: float = setting(
        0.0, "WebSocket upgrades per second from one client address (a token bucket holding 10 s "
             "of it); more get HTTP 429. 0: no limit. Behind a proxy or a load generator every "
             "client shares the proxy's address: set it on replicas that see clients directly.",
        minimum=0)
    max_connections: int = setting(
        10000, "WebSocket connections per process; beyond it upgrades get HTTP 503.", minimum=1)
    handshake_seconds: float = setting(
        10.0, "A connection not upgraded to a WebSocket within this many seconds of being "
              "accepted is closed: a slow request head or body, or an idle keep-alive connection "
              "(slowloris). Plain HTTP connections live no longer either.", minimum=0.1)
    max_pending_handshakes: int = setting(
        1000, "Connections accepted and not yet upgraded (plain HTTP included); one more closes "
              "the oldest, so half-open clients cannot lock out new ones.", minimum=1)
    max_handshake_bytes: int = setting(
        32768, "Bytes a connection may send before its WebSocket upgrade (request heads and "
               "bodies); one that sends more is closed. With max_pending_handshakes it bounds the "
               "memory half-open clients hold.", minimum=4096)
    send_buffer_bytes: int = setting(
        1048576, "Outgoing bytes buffered per connection; a client that lets more pile up is "
                 "closed with 1013 'slow consumer'.", minimum=1024)
    flush_interval_ms: float = setting(
        10.0, "Batching window: a room expected to get two or more messages within it (a busy "
              "room) is written to its members at most once per window, in fewer, larger writes: "
              "less CPU per delivery for at most this much more latency. Other rooms, and every "
              "room with 0, are written at the end of the loop tick.", minimum=0)
    allowed_origins: tuple[str, ...] = setting(
        (), "Comma-separated Origins allowed besides the server's own origin (the request's "
            "scheme, the Host header's host and port); '*' allows any. Requests without an Origin "
            "header (non-browser clients) are allowed.")
    trust_forwarded_proto: bool = setting(
        False, "Take the scheme of the server's own origin from X-Forwarded-Proto. Enable only "
               "behind a proxy that sets it (one terminating TLS); otherwise the scheme is the "
               "connection's own (http).")
    heartbeat_seconds: float = setting(
        30.0, "A client silent for this long is pinged, and dropped if it sends nothing within half of it more.",
        minimum=0.1)
    grace_seconds: float = setting(
        10.0, "On SIGTERM/SIGINT: time allowed to close every socket with 1001 and exit.",
        minimum=0)
    auth_secret: str = setting(
        "", "HS256 secret; when set, connections need ?token=<JWT> whose 'name' (or 'sub') claim "
            "sets the display name. Empty: no auth.", secret=True)
    auth_require_exp: bool = setting(
        False, "With auth_secret: refuse tokens without an 'exp' (expiry) claim, which would "
               "otherwise be valid forever.")
    compression: bool = setting(
        False, "Per-message deflate. Off by default: it costs a zlib stream per connection and "
               "defeats framing each broadcast once.")
    debug_endpoints: bool = setting(
        False, "Enable POST /debug/stall?seconds=S, which blocks the event loop (for tests of "
               "stall visibility). Never enable in production.")
    log_level: str = setting(
        "info", "Logging level.", choices=("debug", "info", "warning", "error"))

    def check(self) -> None:
        if self.port > 65535 or self.metrics_port > 65535:
            name = "port" if self.port > 65535 else "metrics_port"
            raise SettingsError(name, "must be <= 65535")
        if self.history_on_join > self.history_size:
            raise SettingsError("history_on_join", "must be <= history_size")
        redis_addresses(self.redis_url)

    @property
    def node_name(self) -> str:
        return self.node_id or f"{os.uname().nodename}:{self.port}"

    def public_dict(self) -> dict[str, Any]:
        """Settings as JSON-safe values, secrets masked."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"]:
                value = "***" if value else ""
            elif f.name == "redis_url":
                value = ",".join(str(a) for a in redis_addresses(value))  # no passwords
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def redis_addresses(redis_url: str) -> list[RedisAddress]:
    """The shards listed in ``redis_url`` (comma-separated), in order; SettingsError if malformed."""
    urls = [u.strip() for u in redis_url.split(",")]
    if not all(urls):
        raise SettingsError("redis_url", f"an empty entry in {redis_url!r}")
    try:
        addresses = [RedisAddress.parse(u) for u in urls]
    except ValueError as exc:
        raise SettingsError("redis_url", str(exc)) from None
    if len(set(addresses)) != len(addresses):
        raise SettingsError("redis_url", "a Redis instance is listed twice")
    return addresses


def env_var(name: str) -> str:
    return Settings.env_var(name)


def flag(name: str) -> str:
    return Settings.flag(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults stay None so the environment can apply."""
    Settings.add_arguments(parser)


def settings_table() -> str:
    """The README's settings table, generated from the declarations."""
    return Settings.table()


def _update_readme(path: str) -> None:
    update_readme(path, "settings-table", settings_table())


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] == ["--readme"]:
        _update_readme(sys.argv[2] if len(sys.argv) > 2 else "README.md")
    else:
        print(settings_table())
