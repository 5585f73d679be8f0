"""The cluster's Redis: an existing one shared under a unique key prefix, or a throwaway one.

A throwaway ``redis-server`` keeps nothing (``--save ''``, no AOF): after a
crash and restart its data is gone, which the brokers report as a new epoch.
(Named ``redis_server`` so that it can never shadow the ``redis`` package.)
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from scalechat.cluster.processes import HOST, ProcessRecord, spawn

DEFAULT_URL = "redis://127.0.0.1:6379/0"


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


def start(binary: str, port: int, directory: Path, log: Path) -> ProcessRecord:
    """Start a throwaway redis-server on ``port`` (kept in ``directory``), logging to ``log``."""
    directory.mkdir(parents=True, exist_ok=True)
    return spawn("redis", argv(binary, port, directory), log)
