"""Where an idle connection's memory goes: Python allocations per connection, by package.

Starts ``scalechat serve``'s own ``serve()`` in this process (memory broker),
snapshots tracemalloc, connects ``--connections`` lean clients (rooms of 4) from a
child process, snapshots again and prints the difference per connection,
grouped into aiohttp, scalechat, asyncio/uvloop and the rest, then the largest
allocation sites. Kernel socket buffers are not Python allocations and are not
counted. 127.0.0.1 only; stops by itself.

    .venv/bin/python bench/connection_memory.py [--connections 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tracemalloc
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import free_ports  # a sibling script, not a package

from scalechat.chat.server import serve
from scalechat.chat.settings import Settings

CLIENTS = r"""
import asyncio, sys, uvloop
from scalechat.loadgen.wsclient import connect
async def main(port, n):
    clients = [await connect(f"ws://127.0.0.1:{port}/ws/r{i // 4}?name=c{i}", on_messages=lambda m: None)
               for i in range(n)]
    print(len(clients), flush=True)
    await asyncio.sleep(120)
uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def group(filename: str) -> str:
    if "aiohttp" in filename:
        return "aiohttp"
    if "/scalechat/" in filename:
        return "scalechat"
    if "asyncio" in filename or "uvloop" in filename:
        return "asyncio/uvloop"
    return "other"


async def measure(n: int, top: int) -> None:
    port, metrics_port = free_ports(2)
    settings = Settings(port=port, metrics_port=metrics_port, joins_per_address=0,
                        max_connections=n + 10, log_level="warning")
    stop = asyncio.Event()
    server = asyncio.ensure_future(serve(settings, stop))
    await asyncio.sleep(1)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    clients = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENTS, str(port), str(n),
                                                   stdout=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(120):
            connected = int(await clients.stdout.readline())
        await asyncio.sleep(2)  # presence settles
        gc.collect()
        stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
    finally:
        clients.kill()
        await clients.wait()
        stop.set()
        await server
    groups: dict[str, int] = {}
    for stat in stats:
        key = group(stat.traceback[0].filename)
        groups[key] = groups.get(key, 0) + stat.size_diff
    print(f"{connected:,} connections: {sum(groups.values()) / connected:,.0f} bytes of Python "
          "allocations each")
    for key, size in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {key:15} {size / connected:8,.0f} B")
    print("largest sites:")
    for stat in stats[:top]:
        frame = stat.traceback[0]
        where = frame.filename.split("site-packages/")[-1]
        print(f"  {stat.size_diff / connected:8,.0f} B  {where}:{frame.lineno}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--top", type=int, default=10, help="allocation sites to list")
    args = parser.parse_args()
    if not 1 <= args.connections <= 15_000:
        parser.error("--connections must be between 1 and 15000")
    uvloop.run(measure(args.connections, args.top))


if __name__ == "__main__":
    main()
