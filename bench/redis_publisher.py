"""Drives one Redis through the replica's own broker code, without WebSockets.

``bench/scaleout.py`` runs this pinned to the replicas' core to find what a
Redis shard costs per message when Redis, not a replica, is the busy part: a
:class:`scalechat.chat.broker_redis.RedisBroker` (the replica's batching, Lua
script and pub/sub reader) subscribes to every room, then publishes ``--rate``
messages/s (0: as fast as ``--in-flight`` unanswered publishes allow) spread
over ``--rooms`` rooms for ``--seconds``. It prints one JSON line: messages
published, refused, and fanned back to it. Stops by itself; 127.0.0.1 only.

    .venv/bin/python bench/redis_publisher.py --redis-url redis://127.0.0.1:PORT --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import uvloop

from scalechat.chat.broker import Draft
from scalechat.chat.broker_redis import RedisBroker
from scalechat.chat.errors import BrokerUnavailable
from scalechat.chat.settings import Settings

TEXT = "x" * 100  # the benchmark's message size


async def drive(args: argparse.Namespace) -> dict:
    settings = Settings(broker="redis", redis_url=args.redis_url, redis_prefix=args.prefix)
    broker = RedisBroker(settings)
    fanned = [0]

    def deliver(room: str, seq: int, frame: bytes, received_at: float) -> None:
        fanned[0] += 1

    await broker.start(deliver, lambda room, payload: None)
    rooms = [f"r{i}" for i in range(args.rooms)]
    for room in rooms:
        await broker.subscribe(room)
    published = refused = 0
    in_flight: set[asyncio.Task] = set()
    room_of = random.Random(1).choice

    async def one(n: int) -> None:
        nonlocal published, refused
        try:
            await broker.publish(Draft(room_of(rooms), "bench", TEXT, f"c{n}", time.perf_counter()))
            published += 1
        except BrokerUnavailable:
            refused += 1

    start = time.perf_counter()
    end, n = start + args.seconds, 0
    while (now := time.perf_counter()) < end:
        due = n + 256 if not args.rate else min(n + 256, int((now - start) * args.rate))
        while n < due and len(in_flight) < args.in_flight:
            task = asyncio.ensure_future(one(n))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            n += 1
        if args.rate and n >= due:
            await asyncio.sleep(0.0005)
        else:
            await asyncio.sleep(0)
    if in_flight:
        await asyncio.wait(in_flight, timeout=10)
    seconds = time.perf_counter() - start
    deadline = time.perf_counter() + 5
    while fanned[0] < published and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    await broker.close()
    return {"published": published, "refused": refused, "fanned_out": fanned[0],
            "seconds": round(seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="scalechat-bench")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s; 0 as fast as it goes")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--in-flight", type=int, default=2000)
    args = parser.parse_args()
    if not 0 < args.seconds <= 30:
        parser.error("--seconds must be in (0, 30]")
    print(json.dumps(uvloop.run(drive(args))), flush=True)


if __name__ == "__main__":
    main()
