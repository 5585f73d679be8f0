"""scalechat's own per-message work, without sockets: what the server adds to the floor.

Drives the real ClientSocket, Node, MemoryBroker and Hub (frame parsing and
unmasking, UTF-8, rate limit, JSON parse and checks, seq, encode, history,
framing, the room's flush and one ``write_batch`` per member) with masked
client frames as the socket hands them over, for rooms of a given size.
Transports are stand-ins whose write does nothing, so the figure leaves out
exactly what bench/fanout.py's floor server measures (the kernel's loopback
cost and the least Python that moves the bytes). One message is handled per
loop tick, as at moderate load: a quiet room is flushed after each, a busy
one at its window.

    .venv/bin/python bench/hotpath.py [--rooms 100] [--members 4] [--messages 200000]

Reported in CPU µs per message and per delivery (one message reaches every
member of its room), pinned to one core when it can be.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import orjson
import uvloop

from scalechat.chat import native
from scalechat.chat.broker_memory import MemoryBroker
from scalechat.chat.client_socket import ClientSocket
from scalechat.chat.hub import Hub
from scalechat.chat.metrics import Metrics
from scalechat.chat.node import Node
from scalechat.chat.outbox import Outbox
from scalechat.chat.ratelimit import TokenBucket
from scalechat.chat.settings import Settings
from scalechat.hostinfo import host_facts
from scalechat.loadgen.wsprotocol import Opcode, encode_frame


class NullTransport:
    """A transport that accepts every write and keeps nothing: no syscall, no buffer."""

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, parts) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def run(rooms: int, members: int, messages: int) -> float:
    """CPU seconds per message over ``messages`` messages spread evenly over the sockets."""
    settings = Settings(rate_limit=1e9, rate_burst=10**9)
    metrics = Metrics(lambda: hub.connection_count, lambda: hub.room_count, host_facts())
    hub = Hub(asyncio.get_running_loop(), metrics.hot, settings.flush_interval_ms / 1000)
    node = Node(settings, MemoryBroker(settings), metrics, hub)
    await node.start()
    sockets = []
    for r in range(rooms):
        for m in range(members):
            sock = ClientSocket(node, None, settings.max_message_bytes)
            now = time.perf_counter()
            sock.conn = conn = Outbox(
                sock, f"bench-{r}", f"c{r}-{m}", 1 << 30, TokenBucket(1e9, 10**9, now),
                hub.schedule_flush, lambda conn: None, TokenBucket(1e12, 10**12, now))
            sock.connection_made(NullTransport())  # type: ignore[arg-type]
            hub.add(conn)
            await node.broker.subscribe(conn.room)
            sock.start()
            sockets.append(sock)
    frames = [encode_frame(Opcode.TEXT, orjson.dumps(
        {"type": "message", "text": f"c{i}:{time.time():.6f}:" + "x" * 60}))
        for i in range(len(sockets))]
    start = time.process_time()
    for i in range(messages):
        k = i % len(sockets)
        sockets[k].data_received(frames[k])
        await asyncio.sleep(0)  # one message per loop tick, as at moderate load: the flushes due run
    await asyncio.sleep(settings.flush_interval_ms / 1000 * 2)
    spent = time.process_time() - start
    await node.close()
    assert metrics.hot.delivered == messages * members, "every message reaches every member"
    return spent / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--members", type=int, default=4, help="sockets per room")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for name in ("rooms", "members", "messages", "repeat"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    if len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {0})
    compiled = native.compiled()
    print(f"per-message modules compiled: {len(compiled)} of {len(native.modules())}")
    for _ in range(args.repeat):
        per_message = uvloop.run(run(args.rooms, args.members, args.messages))
        print(f"{args.rooms} x {args.members}: {per_message * 1e6:.2f} µs per message, "
              f"{per_message * 1e6 / args.members:.2f} µs per delivery", flush=True)


if __name__ == "__main__":
    main()
