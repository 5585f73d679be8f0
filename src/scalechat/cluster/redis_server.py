"""The cluster's Redis: existing ones shared under a unique key prefix, or throwaway ones.

Rooms may be sharded over N independent Redis instances: every replica gets the
same comma-separated URL list (``--redis-url``), shard i being the i-th URL, and
the broker picks a room's shard by a hash of the room. :func:`plan` turns the
command line into either URLs to share or a number of servers to start.

A throwaway ``redis-server`` keeps nothing (``--save ''``, no AOF): after a
crash and restart its data is gone, which the brokers report as a new epoch.
(Named ``redis_server`` so that it can never shadow the ``redis`` package.)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from scalechat.cluster.errors import UsageError
from scalechat.cluster.processes import HOST, ProcessRecord, spawn

DEFAULT_URL = "redis://127.0.0.1:6379/0"
MAX_SHARDS = 16
SCHEMES = ("redis://", "rediss://", "unix://")  # what redis-py's from_url accepts


@dataclass(frozen=True, slots=True)
class RedisPlan:
    """Where the shards come from: ``shared`` URLs (shard order), or ``own`` servers to start."""

    shared: tuple[str, ...] = ()
    own: int = 0

    @property
    def shards(self) -> int:
        return self.own or len(self.shared)


def split_urls(value: str) -> tuple[str, ...]:
    """The URLs of a comma-separated ``--redis-url``, in shard order; UsageError on a bad list."""
    urls = tuple(part.strip() for part in value.split(","))
    for shard, url in enumerate(urls):
        if not url:
            raise UsageError(f"--redis-url has an empty entry (shard {shard}) in {value!r}")
        if not url.startswith(SCHEMES):
            raise UsageError(f"--redis-url entry {url!r} is not a redis://, rediss:// or "
                             "unix:// URL")
    doubles = sorted({url for url in urls if urls.count(url) > 1})
    if doubles:
        raise UsageError(f"--redis-url lists {', '.join(doubles)} more than once: "
                         "each shard needs a Redis of its own")
    if len(urls) > MAX_SHARDS:
        raise UsageError(f"--redis-url lists {len(urls)} URLs; at most {MAX_SHARDS} shards")
    return urls


def plan(url: str | None, own: bool, shards: int | None) -> RedisPlan:
    """Decide between shared and own Redis servers.

    ``url`` None means the default shared Redis. ``own`` starts ``shards`` (default
    1) servers and ignores ``url``. Without ``own``: one shard shares ``url``;
    ``shards`` N > 1 with no ``url`` starts N servers; with a ``url`` list,
    ``shards`` (when given) must match its length.
    """
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        raise UsageError(f"--redis-shards must be between 1 and {MAX_SHARDS}, got {shards}")
    if own:
        return RedisPlan(own=shards or 1)
    if url is None and shards is not None and shards > 1:
        return RedisPlan(own=shards)
    urls = split_urls(DEFAULT_URL if url is None else url)
    if shards is not None and shards != len(urls):
        raise UsageError(f"--redis-shards {shards} does not match the {len(urls)} URL(s) of "
                         f"--redis-url: give one URL per shard, or drop --redis-url to start "
                         f"{shards} redis-servers of the cluster's own")
    return RedisPlan(shared=urls)


def url_for(port: int) -> str:
    return f"redis://{HOST}:{port}/0"


def ping(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis at ``url`` answers PING."""
    try:
        client = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    except ValueError:
        return False
    try:
        return bool(client.ping())
    except (RedisError, OSError):
        return False
    finally:
        client.close()


def delete_prefix(url: str, prefix: str, timeout: float = 2.0) -> None:
    """Best effort: delete the cluster's keys from a shared Redis (they would expire anyway)."""
    with contextlib.suppress(RedisError, OSError, ValueError):
        client = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            batch = []
            for key in client.scan_iter(match=f"{prefix}:*", count=500):
                batch.append(key)
                if len(batch) >= 500:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)
        finally:
            client.close()


def argv(binary: str, port: int, directory: Path) -> list[str]:
    # --port 0 would disable TCP rather than pick a port: the caller picks one.
    # No --logfile: redis-server logs to stdout, which spawn() sends to the log.
    return [binary, "--bind", HOST, "--port", str(port), "--dir", str(directory),
            "--daemonize", "no", "--save", "", "--appendonly", "no"]


def start(binary: str, port: int, directory: Path, log: Path, name: str = "redis") -> ProcessRecord:
    """Start a throwaway redis-server on ``port`` (kept in ``directory``), logging to ``log``."""
    directory.mkdir(parents=True, exist_ok=True)
    return spawn(name, argv(binary, port, directory), log)
