"""Shard results and progress in Redis, for load generator pods that share no disk.

``scalechat load --results-redis URL --results-key KEY`` stores what its shard
measured here, and the LoadTest operator reads every shard back, merges them
exactly (:func:`scalechat.results.merge_stage_results`) and writes the status.

One run is one Redis hash ``KEY``:

``shard-<i>-of-<n>``
    shard ``i``'s per-stage :class:`~scalechat.results.StageResult` list, as JSON in
    the shard file format of :mod:`scalechat.results` (``{"format": 1, "shard": i,
    "shards": n, "stages": [...]}``).
``progress-<i>``
    the stage shard ``i`` is running now: ``{"stage": index, "name": name, "at": unix s}``.

Guarantees: a field is written with one ``HSET`` in a ``MULTI`` transaction that
also refreshes the hash's expiry, so a reader sees a shard's whole result or
none of it, and the hash lives ``ttl`` seconds after its last write. Writing a
shard again (a retried pod) replaces its result. :meth:`Snapshot.merged` is
``None`` until every shard ``0..n-1`` of one ``n`` is present; results of two
different shard counts under one key are an error, never silently merged.

Functions open a connection per call and close it: they are for a handful of
calls per run (a shard's end, a stage change, an operator poll), not a hot path.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from scalechat.results import FORMAT, StageResult, merge_stage_results, shard_file_name

DEFAULT_TTL = 7 * 24 * 3600
"""Seconds a run's hash outlives its last write: long enough for an operator outage."""

_SHARD_FIELD = re.compile(r"^shard-(\d+)-of-(\d+)$")
_PROGRESS_FIELD = re.compile(r"^progress-(\d+)$")


def shard_field(shard: int, shards: int) -> str:
    """Hash field of one shard's results (the shard file's name without ``.json``)."""
    return shard_file_name(shard, shards).removesuffix(".json")


def progress_field(shard: int) -> str:
    return f"progress-{shard}"


@dataclass(frozen=True)
class ShardProgress:
    """The stage one shard is running (or ran last)."""

    stage_index: int
    stage_name: str
    updated_at: float


@dataclass(frozen=True)
class Snapshot:
    """Everything stored under one key, read at one instant (one ``HGETALL``).

    ``shards`` is the shard count the stored results name (0 before any shard
    finished); ``results`` maps shard index to its stages, ``progress`` shard
    index to its current stage.
    """

    shards: int = 0
    results: dict[int, list[StageResult]] = field(default_factory=dict)
    progress: dict[int, ShardProgress] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.shards > 0 and sorted(self.results) == list(range(self.shards))

    def merged(self) -> list[StageResult] | None:
        """Every shard's stages merged exactly; ``None`` until every shard is present."""
        if not self.complete:
            return None
        return merge_stage_results([self.results[i] for i in range(self.shards)])


def parse_hash(key: str, raw: dict[Any, Any]) -> Snapshot:
    """Build a :class:`Snapshot` from a hash's fields (bytes or str); ValueError names the key."""
    counts: set[int] = set()
    results: dict[int, list[StageResult]] = {}
    progress: dict[int, ShardProgress] = {}
    for name, value in raw.items():
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            data = json.loads(value)
            if m := _SHARD_FIELD.match(name):
                shard, shards = int(m[1]), int(m[2])
                if data.get("format") != FORMAT or (data.get("shard"), data.get("shards")) != (shard, shards):
                    raise ValueError(f"format {data.get('format')!r}, shard {data.get('shard')!r}/"
                                     f"{data.get('shards')!r} do not match the field")
                counts.add(shards)
                results[shard] = [StageResult.from_dict(s) for s in data["stages"]]
            elif m := _PROGRESS_FIELD.match(name):
                progress[int(m[1])] = ShardProgress(int(data["stage"]), str(data["name"]), float(data["at"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{key} field {name}: not a readable shard record: {exc}") from None
    if len(counts) > 1:
        raise ValueError(f"{key}: shard results of different shard counts {sorted(counts)}; "
                         "one key must hold one run")
    return Snapshot(shards=counts.pop() if counts else 0, results=results, progress=progress)


def _client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)


def _write(redis_url: str, key: str, name: str, value: dict[str, Any], ttl: int) -> None:
    if ttl <= 0:
        raise ValueError(f"ttl must be > 0 seconds, got {ttl}")
    with _client(redis_url) as client, client.pipeline(transaction=True) as pipe:
        pipe.hset(key, name, json.dumps(value, separators=(",", ":")))
        pipe.expire(key, ttl)
        pipe.execute()


def store_shard(redis_url: str, key: str, shard: int, shards: int, stages: list[StageResult],
                ttl: int = DEFAULT_TTL) -> None:
    """Store shard ``shard`` of ``shards``'s stages under ``key`` (replacing an earlier write)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0..{shards - 1}, got {shard}")
    _write(redis_url, key, shard_field(shard, shards),
           {"format": FORMAT, "shard": shard, "shards": shards, "stages": [s.to_dict() for s in stages]}, ttl)


def set_progress(redis_url: str, key: str, shard: int, stage_index: int, stage_name: str,
                 ttl: int = DEFAULT_TTL) -> None:
    """Record that shard ``shard`` now runs stage ``stage_index`` (``stage_name``)."""
    _write(redis_url, key, progress_field(shard),
           {"stage": stage_index, "name": stage_name, "at": time.time()}, ttl)


def snapshot(redis_url: str, key: str) -> Snapshot:
    """Results and progress of every shard under ``key`` (empty when nothing is stored)."""
    with _client(redis_url) as client:
        return parse_hash(key, client.hgetall(key))


def load_shards(redis_url: str, key: str) -> tuple[int, dict[int, list[StageResult]]]:
    """(shards expected, {shard index: stages}); (0, {}) before any shard stored its results."""
    snap = snapshot(redis_url, key)
    return snap.shards, snap.results


def load_progress(redis_url: str, key: str) -> dict[int, ShardProgress]:
    return snapshot(redis_url, key).progress


def merged(redis_url: str, key: str) -> list[StageResult] | None:
    """Every shard's stages merged exactly; ``None`` until every shard is present."""
    return snapshot(redis_url, key).merged()


def delete(redis_url: str, key: str) -> None:
    """Forget a run (its results are gone for every reader)."""
    with _client(redis_url) as client:
        client.delete(key)
