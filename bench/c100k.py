"""C100k: one server process holding 100,000 WebSocket connections.

For each layout (``--layouts``: every connection in one room, and rooms of 4),
a fresh ``scalechat serve`` (memory broker, pinned to one core, open-file limit
raised) gets ``--connections`` clients from this process (the lean client of
the load generator, pinned to the other core), spread over loopback source
addresses 127.0.0.1, .2, ... (``--per-address`` each: one address has about
28,000 ephemeral ports). It measures:

* the connect rate (upgrades completed per second, ``--concurrency`` at once)
  and connections that failed;
* the server's RSS per connection: its RSS with everyone connected and idle,
  minus its RSS before the first connection, over the connections;
* one broadcast: in one room, one message to every connection; in rooms of 4,
  one message in every room; the time from the first send until every client
  holds its message (each client counts message frames);
* ``/healthz`` throughout: a probe on a separate connection every 50 ms, its
  latency and failures.

Everything talks to 127.0.0.1 only (source addresses 127.0.0.x) and stops by
itself: each phase has a deadline (``--deadline``). Raising the open-file
limit past the hard limit needs root (CI runs as root); otherwise the run
stops and says so.

    .venv/bin/python bench/c100k.py [--connections 100000] [--json build/bench/c100k.json]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import components  # noqa: E402  (sibling scripts, not a package)
from document import Run  # noqa: E402
from procs import cpu_seconds, free_ports  # noqa: E402

from scalechat.loadgen.wsclient import WSClient, connect  # noqa: E402

SERVER_CORE, CLIENT_CORE = 1, 0
MESSAGE = b'"type":"message"'
LAYOUTS = {"one-room": 0, "rooms-of-4": 4}  # members per room; 0: everyone in one room


@dataclass
class Result:
    layout: str
    connections: int
    rooms: int
    source_addresses: int
    connected: int
    failed: int
    connect_seconds: float
    connects_per_s: float
    server_rss_idle_mib: float
    server_rss_connected_mib: float
    rss_bytes_per_connection: float
    broadcast_messages: int
    broadcast_deliveries: int
    broadcast_seconds: float | None
    delivered: int
    healthz_probes: int
    healthz_failures: int
    healthz_p50_ms: float
    healthz_p99_ms: float
    healthz_max_ms: float
    server_cpu_percent_connect: float
    notes: list[str] = field(default_factory=list)


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        raise SystemExit(f"bench/c100k.py: needs {wanted:,} open files; the limit is {soft:,} "
                         f"(hard {hard:,}) and raising it needs root") from None


def start_server(connections: int, run_dir: Path) -> tuple[components.Pinned, int]:
    """A fresh server pinned to its core, answering /healthz; its log in ``run_dir``."""
    port, metrics_port = free_ports(2)
    argv = [sys.executable, "-m", "scalechat.cli", "serve", "--port", str(port),
            "--metrics-port", str(metrics_port), "--max-connections", str(connections + 100),
            "--joins-per-address", "0", "--rate-limit", "1000000", "--rate-burst", "1000000",
            "--log-level", "warning"]
    # The open-file limit raised in this process is inherited by the server.
    server = components.start_pinned("server", SERVER_CORE, argv, run_dir / "server.log")
    try:
        components.wait_for(server, lambda: components.http_ok(f"http://127.0.0.1:{port}/healthz"))
    except BaseException:
        server.stop()
        raise
    return server, port


class Probe:
    """GET /healthz every ``every`` seconds on a new connection; latencies and failures."""

    def __init__(self, port: int, every: float = 0.05) -> None:
        self.port, self.every = port, every
        self.latencies: list[float] = []
        self.failures = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        while True:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(5):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(request)
                    head = await reader.readline()
                    writer.close()
                if b" 200 " not in head:
                    raise OSError(head.decode(errors="replace").strip())
                self.latencies.append(time.perf_counter() - started)
            except (OSError, TimeoutError):
                self.failures += 1
            await asyncio.sleep(self.every)


async def measure(layout: str, args: argparse.Namespace) -> Result:
    n, per_room = args.connections, LAYOUTS[layout]
    rooms = 1 if not per_room else math.ceil(n / per_room)
    addresses = math.ceil(n / args.per_address)
    server, port = start_server(n, args.run_dir / layout)
    notes: list[str] = []
    clients: list[WSClient | None] = [None] * n
    received = [0]
    everyone = asyncio.get_running_loop().create_future()

    def on_messages(messages: list[bytes]) -> None:
        got = sum(1 for m in messages if MESSAGE in m[:40])
        if got:
            received[0] += got
            if received[0] >= target[0] and not everyone.done():
                everyone.set_result(time.perf_counter())

    target = [n + 1]  # set before the broadcast
    probe = Probe(port)
    try:
        await asyncio.sleep(0.5)
        rss_idle = components.rss_bytes(server.pid)
        probe.start()
        failed = 0
        next_index = 0
        cpu0, started = cpu_seconds(server.pid), time.perf_counter()

        async def opener() -> None:
            nonlocal next_index, failed
            while next_index < n:
                i = next_index
                next_index += 1
                room = "all" if not per_room else f"r{i // per_room}"
                try:
                    clients[i] = await connect(f"ws://127.0.0.1:{port}/ws/{room}?name=c{i}",
                                               on_messages=on_messages, timeout=30,
                                               local_addr=(f"127.0.0.{1 + i // args.per_address}", 0))
                except Exception as exc:  # any failure is counted; the first three are kept
                    failed += 1
                    if failed <= 3:
                        notes.append(f"connection {i} failed: {exc!r}")

        async with asyncio.timeout(args.deadline):
            await asyncio.gather(*(opener() for _ in range(args.concurrency)))
        connect_seconds = time.perf_counter() - started
        connect_cpu = cpu_seconds(server.pid) - cpu0
        connected = sum(1 for c in clients if c is not None)
        # Presence settles (rate-limited per room), then the idle footprint.
        await asyncio.sleep(args.settle)
        rss_connected = components.rss_bytes(server.pid)
        # One broadcast: one sender per room.
        senders = ([next(c for c in clients if c is not None)] if not per_room else
                   [c for c in clients[::per_room] if c is not None])
        members = connected if not per_room else sum(
            sum(1 for c in clients[r * per_room:(r + 1) * per_room] if c is not None)
            for r in range(rooms) if clients[r * per_room] is not None)
        received[0] = 0
        target[0] = members
        sent_at = time.perf_counter()
        for i, client in enumerate(senders):
            client.send_text(b'{"type":"message","text":"c100k","cid":"b%d"}' % i)
        broadcast_seconds = None
        try:
            async with asyncio.timeout(args.deadline):
                broadcast_seconds = await everyone - sent_at
        except TimeoutError:
            notes.append(f"broadcast: {received[0]:,} of {members:,} deliveries within "
                         f"{args.deadline:g} s")
        await asyncio.sleep(0.5)
    finally:
        await probe.stop()
        for client in clients:
            if client is not None and client._transport is not None:
                client._transport.abort()
        server.stop()
    latencies = np.array(probe.latencies) * 1000 if probe.latencies else np.array([0.0])
    return Result(
        layout=layout, connections=n, rooms=rooms, source_addresses=addresses,
        connected=connected, failed=failed, connect_seconds=round(connect_seconds, 2),
        connects_per_s=round(connected / connect_seconds), server_rss_idle_mib=round(rss_idle / 2**20, 1),
        server_rss_connected_mib=round(rss_connected / 2**20, 1),
        rss_bytes_per_connection=round((rss_connected - rss_idle) / max(connected, 1)),
        broadcast_messages=len(senders), broadcast_deliveries=members,
        broadcast_seconds=None if broadcast_seconds is None else round(broadcast_seconds, 3),
        delivered=received[0], healthz_probes=len(probe.latencies) + probe.failures,
        healthz_failures=probe.failures,
        healthz_p50_ms=round(float(np.percentile(latencies, 50)), 2),
        healthz_p99_ms=round(float(np.percentile(latencies, 99)), 2),
        healthz_max_ms=round(float(latencies.max()), 2),
        server_cpu_percent_connect=round(100 * connect_cpu / connect_seconds, 1), notes=notes)


def table(rows: list[Result]) -> str:
    head = (f"{'layout':11} {'conns':>7} {'failed':>6} {'conn/s':>7} {'RSS MiB':>8} {'B/conn':>7} "
            f"{'broadcast':>10} {'healthz p50/p99/max ms':>23} {'fail':>4}")
    lines = [head, "-" * len(head)]
    for r in rows:
        broadcast = "-" if r.broadcast_seconds is None else f"{r.broadcast_seconds * 1000:,.0f} ms"
        lines.append(f"{r.layout:11} {r.connected:>7,} {r.failed:>6} {r.connects_per_s:>7,.0f} "
                     f"{r.server_rss_connected_mib:>8.0f} {r.rss_bytes_per_connection:>7,.0f} "
                     f"{broadcast:>10} {r.healthz_p50_ms:>7.1f}/{r.healthz_p99_ms:.1f}/{r.healthz_max_ms:.1f}"
                     f" {r.healthz_failures:>4}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--per-address", type=int, default=25_000,
                        help="connections per loopback source address (127.0.0.1, .2, ...)")
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between the last connection and the RSS reading")
    parser.add_argument("--deadline", type=float, default=180.0,
                        help="seconds each of connecting and the broadcast may take")
    parser.add_argument("--json", type=Path, default=Path("build/bench/c100k.json"))
    parser.add_argument("--run-dir", type=Path, default=Path("build/bench/c100k-run"),
                        help="the server's log of each layout")
    args = parser.parse_args()
    if not 1 <= args.connections <= 200_000:
        parser.error("--connections must be between 1 and 200000")
    if not 1 <= args.per_address <= 28_000:
        parser.error("--per-address must be between 1 and 28000 (the ephemeral ports of one address)")
    if not 1 <= args.concurrency <= 900:
        parser.error("--concurrency must be between 1 and 900 (the server's pending-handshake cap is 1000)")
    if args.settle < 0 or args.deadline <= 0:
        parser.error("--settle must be >= 0 and --deadline > 0")
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs 2 cores: the server on one, the clients on the other")
    run = Run("c100k", __file__)
    raise_nofile(args.connections + 512)  # the sockets, the probe, the interpreter's own files
    os.sched_setaffinity(0, {CLIENT_CORE})
    rows = []
    for layout in args.layouts:
        rows.append(uvloop.run(measure(layout, args)))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        for note in rows[-1].notes:
            print(f"  {note}", flush=True)
    print("\n" + table(rows))
    run.host["placement"] = {"server": f"core {SERVER_CORE}", "clients": f"core {CLIENT_CORE}"}
    run.write(args.json, {"connections": args.connections, "layouts": args.layouts,
                          "per_address": args.per_address, "concurrency": args.concurrency,
                          "settle": args.settle}, {"results": [asdict(r) for r in rows]})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
