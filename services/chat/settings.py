"""One typed settings object for the chat server.

Every field has a default, a ``SCALECHAT_*`` environment variable, a command
line flag and help text, all declared in one place (``field(...)`` metadata).
The same declarations drive ``scalechat serve --help``, the README's settings
table and the chart's ``env:`` block. Precedence: flag > environment > default.
An invalid value raises :class:`SettingsError` naming the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scalechat.chat.errors import SettingsError
from scalechat.chat.redis_link import RedisAddress

ENV_PREFIX = "SCALECHAT_"
BROKERS = ("memory", "redis")


def _setting(default: Any, help: str, *, minimum: float | None = None,
             choices: Sequence[str] | None = None, secret: bool = False) -> Any:
    return field(default=default, metadata={
        "help": help, "minimum": minimum, "choices": choices, "secret": secret})


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    """The chat server's settings; see the module docstring for precedence."""

    host: str = _setting("127.0.0.1", "Address the WebSocket and HTTP server binds to.")
    port: int = _setting(8080, "Port of the WebSocket and HTTP server.", minimum=0)
    metrics_port: int = _setting(
        9000, "Port of the Prometheus metrics server (served from its own thread). 0 disables it.",
        minimum=0)
    node_id: str = _setting(
        "", "Name of this replica, reported in /info and the X-Scalechat-Node header. "
            "Default: hostname:port.")
    broker: str = _setting(
        "memory", "Message broker: 'memory' (single process only) or 'redis' (replicas share rooms).",
        choices=BROKERS)
    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0", "Redis URL, used when broker=redis; a comma-separated list "
        "shards rooms over several Redis instances (every replica needs the same list, in the "
        "same order).")
    redis_prefix: str = _setting("scalechat", "Prefix of every Redis key and channel.")
    history_size: int = _setting(
        1000, "Messages kept per room; older ones are dropped. Memory per room is bounded by "
              "history_size x max_message_bytes.", minimum=0)
    history_on_join: int = _setting(
        50, "Messages sent in the history frame on join without ?since=.", minimum=0)
    history_room_bytes: int = _setting(
        4 << 20, "Bytes of stored messages kept per room besides history_size (the oldest beyond "
                 "it are dropped).", minimum=1024)
    memory_budget_bytes: int = _setting(
        0, "Bytes of history and outgoing buffers this process may hold; beyond it the oldest "
           "history of the least recently active rooms is dropped, and the clients holding the "
           "most queued bytes are closed as slow consumers. 0: a quarter of the cgroup memory "
           "limit when there is one, else 256 MiB.", minimum=0)
    max_rooms: int = _setting(
        10000, "Rooms kept in memory with no members; beyond it the least recently used idle "
               "room is forgotten. With history_size this bounds history memory.", minimum=1)
    room_idle_seconds: float = _setting(
        3600.0, "An empty room is forgotten (history included) after this many idle seconds.",
        minimum=0)
    max_message_bytes: int = _setting(
        65536, "Largest WebSocket frame accepted from a client; larger closes with 1009.",
        minimum=64)
    max_text_chars: int = _setting(
        4000, "Longest message text; longer gets an error frame 'text_too_long'.", minimum=1)
    rate_limit: float = _setting(
        20.0, "Messages per second a connection may send (token bucket refill rate).",
        minimum=0.001)
    rate_burst: int = _setting(
        40, "Token bucket size: messages a connection may send at once. Dropped messages get an "
            "error 'rate_limited'; a burst of drops this long closes the socket with 1008.",
        minimum=1)
    rate_limit_bytes: float = _setting(
        65536.0, "Bytes per second of message frames a connection may send (a token bucket "
                 "holding 4 s of it, and at least one largest frame); over it the server reads "
                 "the connection later instead of dropping, so TCP slows the sender down.",
        minimum=1)
    joins_per_address: float = _setting(
        0.0, "WebSocket upgrades per second from one client address (a token bucket holding 10 s "
             "of it); more get HTTP 429. 0: no limit. Behind a proxy or a load generator every "
             "client shares the proxy's address: set it on replicas that see clients directly.",
        minimum=0)
    max_connections: int = _setting(
        10000, "WebSocket connections per process; beyond it upgrades get HTTP 503.", minimum=1)
    handshake_seconds: float = _setting(
        10.0, "A connection not upgraded to a WebSocket within this many seconds of being "
              "accepted is closed: a slow request head or body, or an idle keep-alive connection "
              "(slowloris). Plain HTTP connections live no longer either.", minimum=0.1)
    max_pending_handshakes: int = _setting(
        1000, "Connections accepted and not yet upgraded (plain HTTP included); one more closes "
              "the oldest, so half-open clients cannot lock out new ones.", minimum=1)
    max_handshake_bytes: int = _setting(
        32768, "Bytes a connection may send before its WebSocket upgrade (request heads and "
               "bodies); one that sends more is closed. With max_pending_handshakes it bounds the "
               "memory half-open clients hold.", minimum=4096)
    send_buffer_bytes: int = _setting(
        1048576, "Outgoing bytes buffered per connection; a client that lets more pile up is "
                 "closed with 1013 'slow consumer'.", minimum=1024)
    flush_interval_ms: float = _setting(
        10.0, "Batching window: a room expected to get two or more messages within it (a busy "
              "room) is written to its members at most once per window, in fewer, larger writes: "
              "less CPU per delivery for at most this much more latency. Other rooms, and every "
              "room with 0, are written at the end of the loop tick.", minimum=0)
    allowed_origins: tuple[str, ...] = _setting(
        (), "Comma-separated Origins allowed besides the server's own origin (the request's "
            "scheme, the Host header's host and port); '*' allows any. Requests without an Origin "
            "header (non-browser clients) are allowed.")
    trust_forwarded_proto: bool = _setting(
        False, "Take the scheme of the server's own origin from X-Forwarded-Proto. Enable only "
               "behind a proxy that sets it (one terminating TLS); otherwise the scheme is the "
               "connection's own (http).")
    heartbeat_seconds: float = _setting(
        30.0, "Ping interval; a client that does not answer a ping within half of it is closed.",
        minimum=0.1)
    grace_seconds: float = _setting(
        10.0, "On SIGTERM/SIGINT: time allowed to close every socket with 1001 and exit.",
        minimum=0)
    auth_secret: str = _setting(
        "", "HS256 secret; when set, connections need ?token=<JWT> whose 'name' (or 'sub') claim "
            "sets the display name. Empty: no auth.", secret=True)
    auth_require_exp: bool = _setting(
        False, "With auth_secret: refuse tokens without an 'exp' (expiry) claim, which would "
               "otherwise be valid forever.")
    compression: bool = _setting(
        False, "Per-message deflate. Off by default: it costs a zlib stream per connection and "
               "defeats framing each broadcast once.")
    debug_endpoints: bool = _setting(
        False, "Enable POST /debug/stall?seconds=S, which blocks the event loop (for tests of "
               "stall visibility). Never enable in production.")
    log_level: str = _setting(
        "info", "Logging level.", choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            minimum = f.metadata["minimum"]
            if minimum is not None and value < minimum:
                raise SettingsError(f.name, f"must be >= {minimum}, got {value!r}")
            choices = f.metadata["choices"]
            if choices is not None and value not in choices:
                raise SettingsError(f.name, f"must be one of {', '.join(choices)}, got {value!r}")
        if self.port > 65535 or self.metrics_port > 65535:
            name = "port" if self.port > 65535 else "metrics_port"
            raise SettingsError(name, "must be <= 65535")
        if self.history_on_join > self.history_size:
            raise SettingsError("history_on_join", "must be <= history_size")
        redis_addresses(self.redis_url)

    @property
    def node_name(self) -> str:
        return self.node_id or f"{os.uname().nodename}:{self.port}"

    # --- construction -------------------------------------------------------------

    @classmethod
    def from_sources(cls, args: argparse.Namespace | None = None,
                     environ: Mapping[str, str] | None = None) -> "Settings":
        """Build from parsed flags and the environment; flags win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            flag_value = getattr(args, f.name, None) if args is not None else None
            env_name = env_var(f.name)
            if flag_value is not None:
                raw, source = flag_value, f"--{flag(f.name)}"
            elif env_name in environ:
                raw, source = environ[env_name], env_name
            else:
                continue
            values[f.name] = _convert(f, raw, source)
        return cls(**values)

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
    return ENV_PREFIX + name.upper()


def flag(name: str) -> str:
    return name.replace("_", "-")


def _convert(f: dataclasses.Field, raw: Any, source: str) -> Any:
    kind = type(f.default)
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is tuple:
            return _split_list(raw)
        return kind(raw)
    except ValueError:
        raise SettingsError(f.name, f"{source}: expected {kind.__name__}, got {raw!r}") from None


def _shown_default(f: dataclasses.Field) -> str:
    default = f.default
    shown = ",".join(default) if isinstance(default, tuple) else str(default)
    return "(empty)" if f.metadata["secret"] or shown == "" else shown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults stay None so the environment can apply."""
    for f in dataclasses.fields(Settings):
        default = f.default
        help_text = f"{f.metadata['help']} [env {env_var(f.name)}; default: {_shown_default(f)}]"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif not f.metadata["choices"]:  # with choices, argparse shows them: {memory,redis}
            kwargs["metavar"] = type(default).__name__.upper() if not isinstance(default, tuple) else "LIST"
        parser.add_argument(f"--{flag(f.name)}", **kwargs)


def settings_table() -> str:
    """The README's settings table, generated from the declarations."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Settings):
        rows.append(f"| `--{flag(f.name)}` | `{env_var(f.name)}` | `{_shown_default(f)}` | "
                    f"{f.metadata['help']} |")
    return "\n".join(rows)


def _update_readme(path: str) -> None:
    import re
    from pathlib import Path
    readme = Path(path)
    text = readme.read_text()
    new = re.sub(r"(<!-- settings-table.*?-->\n).*?(<!-- end settings-table -->)",
                 lambda m: m.group(1) + settings_table() + "\n" + m.group(2), text, flags=re.S)
    readme.write_text(new)


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] == ["--readme"]:
        _update_readme(sys.argv[2] if len(sys.argv) > 2 else "README.md")
    else:
        print(settings_table())
