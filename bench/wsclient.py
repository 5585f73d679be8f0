"""How many messages per second one client core can absorb: lean client vs aiohttp.

    python bench/wsclient.py [--connections 20] [--seconds 1.5] [--size 150]

A server subprocess (uvloop, pinned to the first CPU) pushes a pre-built
stream of ~150-byte JSON text frames to every connection as fast as the
socket takes them, so the client side is the bottleneck. Each client variant
runs in its own subprocess (uvloop, pinned to the second CPU), opens K
connections, warms up, then counts messages over a fixed window. The rate
per client core is messages / client CPU seconds; "cpu %" shows the client
was saturated (near 100 %) rather than starved by the server.

Runs whole interleaved rounds of all variants while ``--budget`` allows (the
total stays under a minute) and keeps each variant's best round.

Variants: this module's client with the batch callback (``on_messages``) and
the per-message callback (``on_message``), and aiohttp's ``ws_connect`` with
one ``receive()`` loop per connection; each only counting ("count") or also
parsing every payload with orjson ("orjson"), as the load generator will.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time

import orjson
import uvloop

WARMUP_SECONDS = 0.3
VARIANTS = ["lean-batch", "lean-callback", "aiohttp"]
WORKS = ["count", "orjson"]


# --------------------------------------------------------------------------- server


def build_stream(size: int, frames: int = 400) -> bytes:
    """``frames`` unmasked text frames of about ``size`` bytes of JSON each."""
    out = bytearray()
    for seq in range(frames):
        body = {"type": "message", "room": "bench", "from": "user-42", "seq": seq, "ts": 1732700000.123, "text": ""}
        pad = max(0, size - len(orjson.dumps(body)))
        body["text"] = "x" * pad
        payload = orjson.dumps(body)
        n = len(payload)
        out += bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + n.to_bytes(2, "big")
        out += payload
    return bytes(out)


class PushProtocol(asyncio.Protocol):
    """Answers the upgrade; once ``barrier`` holds K upgraded connections,
    writes ``stream`` to each of them whenever its socket has room.

    The barrier matters: a flooded client spends so long per loop iteration
    reading that its later handshakes would crawl.
    """

    def __init__(self, stream: bytes, barrier: list[PushProtocol], connections: int) -> None:
        self.stream = stream
        self.barrier = barrier
        self.connections = connections
        self.head = b""
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=512 * 1024)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            return  # client frames (a close at the end) are ignored
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        key = next(
            line.split(b":", 1)[1].strip()
            for line in self.head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        self.head = None  # type: ignore[assignment]
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.barrier.append(self)
        if len(self.barrier) >= self.connections:
            for protocol in self.barrier:
                protocol.push()
            self.barrier.clear()

    def push(self) -> None:
        transport = self.transport
        if self.paused or transport is None or transport.is_closing():
            return
        # A few writes, then yield to the loop: uvloop writes straight to the
        # socket, so a client that keeps up would never trigger pause_writing().
        for _ in range(4):
            transport.write(self.stream)
        if not self.paused:
            asyncio.get_running_loop().call_soon(self.push)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.push()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(size: int, connections: int) -> None:
    stream = build_stream(size)
    barrier: list[PushProtocol] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: PushProtocol(stream, barrier, connections), "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # run until the parent closes stdin


# --------------------------------------------------------------------------- clients


class Counter:
    def __init__(self, parse: bool) -> None:
        self.n = 0
        self.parse = parse

    def on_messages(self, payloads: list[bytes]) -> None:
        if self.parse:
            for payload in payloads:
                orjson.loads(payload)
        self.n += len(payloads)

    def on_message(self, payload: bytes) -> None:
        if self.parse:
            orjson.loads(payload)
        self.n += 1


async def run_lean(url: str, connections: int, counter: Counter, batch: bool) -> list[object]:
    from scalechat.loadgen.wsclient import connect

    kwargs = {"on_messages": counter.on_messages} if batch else {"on_message": counter.on_message}
    return [await connect(url, **kwargs) for _ in range(connections)]  # type: ignore[arg-type]


async def run_aiohttp(url: str, connections: int, counter: Counter) -> list[object]:
    import aiohttp

    session = aiohttp.ClientSession()
    parse = counter.parse

    async def reader(ws: aiohttp.ClientWebSocketResponse) -> None:
        receive = ws.receive
        while True:
            msg = await receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return
            if parse:
                orjson.loads(msg.data)
            counter.n += 1

    sockets = [await session.ws_connect(url, autoclose=False) for _ in range(connections)]
    return [session, *sockets, *[asyncio.create_task(reader(ws)) for ws in sockets]]


async def measure(variant: str, work: str, url: str, connections: int, seconds: float) -> None:
    """Print the count over the window, then exit without closing anything."""
    counter = Counter(parse=work == "orjson")
    if variant == "aiohttp":
        keep = await run_aiohttp(url, connections, counter)
    else:
        keep = await run_lean(url, connections, counter, batch=variant == "lean-batch")
    await asyncio.sleep(WARMUP_SECONDS)
    n0, wall0, cpu0 = counter.n, time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    n1, wall1, cpu1 = counter.n, time.perf_counter(), time.process_time()
    print(json.dumps({"messages": n1 - n0, "wall": wall1 - wall0, "cpu": cpu1 - cpu0}), flush=True)
    # Skip the orderly shutdown of K flooded sockets (not part of the
    # measurement, and the loop would keep reading while it runs).
    del keep
    os._exit(0)


# --------------------------------------------------------------------------- orchestration


def pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=20, help="WebSocket connections per client (K)")
    parser.add_argument("--seconds", type=float, default=1.5, help="measured window per variant")
    parser.add_argument("--size", type=int, default=150, help="approximate JSON payload bytes")
    parser.add_argument("--budget", type=float, default=50.0, help="start no round that would end past this (s)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, metavar=("VARIANT", "WORK", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    pin(args.cpu)
    if args.serve:
        return uvloop.run(serve(args.size, args.connections))
    if args.client:
        variant, work, url = args.client
        return uvloop.run(measure(variant, work, url, args.connections, args.seconds))

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    common = ["--connections", str(args.connections), "--seconds", str(args.seconds), "--size", str(args.size)]
    cpu_arg = lambda cpu: [] if cpu is None else ["--cpu", str(cpu)]  # noqa: E731
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", *common, *cpu_arg(server_cpu)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    started = time.perf_counter()
    try:
        url = f"ws://127.0.0.1:{server.stdout.readline().strip()}/"  # type: ignore[union-attr]
        # Interleaved rounds while the budget allows; keep each variant's best
        # round: noisy neighbours on a shared machine only ever slow a run down.
        results: dict[tuple[str, str], dict[str, float]] = {}
        rounds = 0
        while True:
            round_started = time.perf_counter()
            for work in WORKS:
                for variant in VARIANTS:
                    out = subprocess.run(
                        [sys.executable, __file__, "--client", variant, work, url, *common, *cpu_arg(client_cpu)],
                        capture_output=True,
                        text=True,
                        timeout=args.seconds + 15,
                        check=True,
                    )
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    best = results.get((variant, work))
                    if best is None or r["messages"] / r["cpu"] > best["messages"] / best["cpu"]:
                        results[variant, work] = r
            rounds += 1
            now = time.perf_counter()
            if now + (now - round_started) - started > args.budget:
                break
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=10)
    report(results, args, server_cpu, client_cpu, rounds)


def report(
    results: dict[tuple[str, str], dict[str, float]],
    args: argparse.Namespace,
    server_cpu: int | None,
    client_cpu: int | None,
    rounds: int,
) -> None:
    pinning = f"server on CPU {server_cpu}, client on CPU {client_cpu}" if client_cpu is not None else "unpinned"
    print(f"K={args.connections} connections, ~{args.size}-byte JSON text frames, {args.seconds:g} s window, {pinning}")
    print(f"best of {rounds} interleaved round(s); msgs/s/core = messages / client CPU seconds")
    header = ["variant".ljust(15), "work".ljust(8), "msgs/s/core".rjust(13), "msgs/s wall".rjust(13)]
    print("".join([*header, "window s".rjust(10), "cpu %".rjust(7), "vs aiohttp".rjust(12)]))
    for work in WORKS:
        base = results["aiohttp", work]
        base_rate = base["messages"] / base["cpu"]
        for variant in VARIANTS:
            r = results[variant, work]
            rate = r["messages"] / r["cpu"]
            print(
                f"{variant:<15}{work:<8}{rate:>13,.0f}{r['messages'] / r['wall']:>13,.0f}{r['wall']:>10.1f}"
                f"{100 * r['cpu'] / r['wall']:>7.0f}{rate / base_rate:>11.2f}x"
            )


if __name__ == "__main__":
    main()
