"""Redis broker: replicas share rooms through Redis, sharded over one or more instances.

``Settings.redis_url`` lists the shards, comma-separated; a room lives on
shard ``jump_hash(room, N)`` (Lamping and Veach's jump consistent hash over a
64-bit BLAKE2b of the name), so every replica given the same list in the same
order agrees on it, and growing the list from N to N+1 shards moves about
1/(N+1) of the rooms. Each shard is an independent Redis (standalone, or a
primary with its replicas): its rooms' seq, history, dedupe window, presence
and pub/sub live there and nowhere else (:mod:`scalechat.chat.redis_shard`).

Guarantee: a message ``publish`` stored in Redis is delivered to every replica
subscribed to its room in seq order, with no gap and at most once. A shard
that is down fails its own rooms' calls with :class:`BrokerUnavailable` within
``OP_DEADLINE`` and recovers by itself; rooms on other shards are unaffected.
``ready`` is true while at least one shard is reachable (taking every replica
out of service would not help the rooms on the others); ``shards_up`` tells
which. A retried publish with the same ``cid`` is acknowledged with the
original seq, never stored twice (within the last ``history_size`` seqs).

Redis Cluster is not supported: a batch script names keys of many rooms,
which Cluster refuses across hash slots (CROSSSLOT), and a Cluster node
answers keys of slots it does not own with MOVED. The ``{room}`` hash tag
keeps each room's own keys in one slot, but the batch is what makes the
Redis path cheap. ``start`` detects a Cluster node and refuses it, naming the
setting; shard over standalone instances instead (the client-side sharding
Centrifugo uses).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from functools import lru_cache

from scalechat.chat.broker import Deliver, DeliverEvent, Done, Draft, History, Published
from scalechat.chat.errors import SettingsError
from scalechat.chat.redis_link import RedisAddress, RedisLink, ReplyError
from scalechat.chat.redis_shard import CONNECT_TIMEOUT, RedisShard
from scalechat.chat.settings import Settings, redis_addresses

log = logging.getLogger(__name__)


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014)."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


@lru_cache(maxsize=65536)
def shard_of(room: str, shards: int) -> int:
    """The shard index of ``room`` among ``shards``: stable across processes and restarts."""
    if shards == 1:
        return 0
    key = int.from_bytes(hashlib.blake2b(room.encode(), digest_size=8).digest(), "little")
    return jump_hash(key, shards)


class RedisBroker:
    """Rooms shared by replicas through Redis shards (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._addresses = redis_addresses(settings.redis_url)
        self._shards: list[RedisShard] = []

    @property
    def ready(self) -> bool:
        return any(shard.ready for shard in self._shards)

    @property
    def shards_up(self) -> list[bool]:
        return [shard.ready for shard in self._shards]

    def shard(self, room: str) -> RedisShard:
        shards = self._shards
        return shards[shard_of(room, len(shards))]

    async def start(self, deliver: Deliver, deliver_event: DeliverEvent) -> None:
        """Refuse Redis Cluster nodes; start every shard (a shard that is down is retried)."""
        await asyncio.gather(*(_refuse_cluster(a) for a in self._addresses))
        self._shards = [RedisShard(i, address, self._settings, deliver, deliver_event)
                        for i, address in enumerate(self._addresses)]
        await asyncio.gather(*(shard.start() for shard in self._shards))

    async def close(self) -> None:
        await asyncio.gather(*(shard.close() for shard in self._shards))

    async def subscribe(self, room: str) -> None:
        await self.shard(room).subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        await self.shard(room).unsubscribe(room)

    async def publish(self, draft: Draft) -> Published:
        return await self.shard(draft.room).publish(draft)

    def submit(self, draft: Draft, done: Done) -> None:
        """Queued for the room's shard's next batch (see :meth:`Broker.submit`)."""
        self.shard(draft.room).submit(draft, done)

    async def publish_event(self, room: str, payload: bytes) -> None:
        await self.shard(room).publish_event(room, payload)

    async def presence(self, room: str, delta: int) -> int:
        return await self.shard(room).presence(room, delta)

    async def history(self, room: str, since: int | None, epoch: str | None,
                      limit: int) -> History:
        return await self.shard(room).history(room, since, epoch, limit)


async def _refuse_cluster(address: RedisAddress) -> None:
    """Raise SettingsError if ``address`` is a Redis Cluster node; an unreachable one passes."""
    try:
        link = await RedisLink.open(address, name="scalechat:probe", timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ReplyError):
        return  # down now: the shard's own connection retries and reports it
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            info = await link.call("INFO", "cluster")
    except (OSError, TimeoutError, ReplyError):
        return
    finally:
        link.close()
    if b"cluster_enabled:1" in info:
        raise SettingsError("redis_url", f"{address} is a Redis Cluster node, which the broker "
                            "does not support; list standalone Redis instances, one URL per "
                            "shard, comma-separated")
