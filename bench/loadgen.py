"""Does one generator core absorb at least twice what one server core pushes?

    python bench/loadgen.py [--clients 200] [--rate 60] [--small-rate 250] [--seconds 3] [--size 100]

A load test must measure the server, never the generator. This compares, in
one run on one machine (server pinned to CPU 0, generator to CPU 1):

(a) server push capacity: ``scalechat serve`` with ``--clients`` raw
    connections that send on a timetable and only count received bytes (an
    intentionally trivial receiver, so the server is the bottleneck), once
    as one room of all of them (fan-out = clients) and once as rooms of 5.
    Deliveries/s come from the server's ``scalechat_messages_delivered_total``
    over the window; "server cpu" near 100 % (loopback softirq work is partly
    billed elsewhere: ~70 % already means saturated) shows saturation.
(b) generator absorb capacity: a real load-generator worker process
    (:mod:`scalechat.loadgen.worker`: frame parsing, header extraction,
    ordering, histograms) fed by a tiny uvloop pusher that writes
    server-format message frames as fast as the sockets take them, so the
    worker is the bottleneck: messages taken in per worker CPU-second.
(c) the server of (a), one room, loaded by ``scalechat load`` itself: the
    server's deliveries/s with the real generator receiving, and whether the
    generator flagged itself ``generator_overloaded``.

The verdict compares (b) with each (a): at least 2x means one generator core
per server core suffices for that room shape; below, it prints how many
generator cores (workers or shards) per server core a test needs. Runs in
about a minute; numbers vary with whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import cpu_seconds, free_port, process_tree, write_syscalls

SERVER_CPU, GENERATOR_CPU = 0, 1
WARMUP = 0.5
PY = sys.executable


def pinned(cpu: int):
    return lambda: os.sched_setaffinity(0, {cpu})


# --------------------------------------------------------------------------- the real server


class Server:
    def __init__(self) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.cmd = ["taskset", "-c", str(SERVER_CPU), PY, "-m", "scalechat.cli", "serve", "--port", str(self.port),
                    "--metrics-port", str(self.metrics_port), "--rate-limit", "1000000", "--rate-burst", "1000000",
                    "--send-buffer-bytes", str(64 * 2**20), "--log-level", "warning"]
        self.proc = subprocess.Popen(self.cmd[3:], preexec_fn=pinned(SERVER_CPU), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("server did not start")

    def delivered(self) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return next(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith("scalechat_messages_delivered_total "))

    def connections(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/info", timeout=5) as response:
            return json.loads(response.read())["connections"]

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def window(server: Server, seconds: float) -> tuple[float, float, float]:
    """(deliveries/s, server CPU share, deliveries per write syscall) over ``seconds`` from now."""
    pid = server.proc.pid
    d0, c0, w0, t0 = server.delivered(), server.cpu(), write_syscalls(pid), time.monotonic()
    time.sleep(seconds)
    d1, c1, w1, t1 = server.delivered(), server.cpu(), write_syscalls(pid), time.monotonic()
    return (d1 - d0) / (t1 - t0), (c1 - c0) / (t1 - t0), (d1 - d0) / max(1, w1 - w0)


# --------------------------------------------------------------------------- (a) trivial receiver


class RawClient(asyncio.Protocol):
    """The trivial receiver: a hand-made upgrade, then received bytes are only counted."""

    def __init__(self, path: str, port: int, counter: list[int]) -> None:
        self.request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.counter, self.transport = counter, None
        self.upgraded = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.upgraded.set_result(None)  # the 101 head (and maybe the history frame): not counted
            return
        self.counter[0] += len(data)


async def trivial(url: str, clients: int, room_size: int, rate: float, seconds: float) -> None:
    """K raw clients in rooms of ``room_size``, each sending at ``rate``; reading is only a recv."""
    from urllib.parse import urlsplit

    loop = asyncio.get_running_loop()
    counter = [0]
    clients_ = []
    for k in range(clients):
        parts = urlsplit(url.format(room=f"bench-trivial-{k // room_size}"))
        _, proto = await loop.create_connection(lambda parts=parts, k=k: RawClient(f"{parts.path}?name=t{k}", parts.port, counter),
                                                parts.hostname, parts.port)
        await proto.upgraded
        clients_.append(proto)
    text = b'{"type":"message","text":"0 0 0 ' + b"x" * 90 + b'"}'
    frame = bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text  # masked with a zero key: RFC-valid
    # One timer for all: every TICK each client writes the frames it owes so far in one
    # write, so sending stays cheap next to what the server does with them.
    tick_s, owed, start = 0.01, [0.0] * clients, time.monotonic()

    def tick() -> None:
        elapsed = time.monotonic() - start
        for k, proto in enumerate(clients_):
            due = int(elapsed * rate + k / clients) - owed[k]
            if due > 0:
                proto.transport.write(frame * int(due))
                owed[k] += due
        loop.call_later(tick_s, tick)

    tick()
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    await asyncio.sleep(seconds + 1.0)  # the parent measures now
    print(json.dumps({"bytes": counter[0]}), flush=True)
    os._exit(0)


def run_trivial_child(url: str, clients: int, room_size: int, rate: float, seconds: float) -> None:
    import uvloop
    uvloop.run(trivial(url, clients, room_size, rate, seconds))


# --------------------------------------------------------------------------- (b) pusher + worker


class Pusher(asyncio.Protocol):
    """Fake chat server: history frame, then server-format message frames as fast as the socket takes them."""

    conns: list[Pusher] = []

    def __init__(self, shared: dict) -> None:
        self.shared, self.head, self.paused, self.transport = shared, b"", False, None
        self.next_round = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=256 * 1024)

    def data_received(self, data: bytes) -> None:
        if self.head is None:  # the client's close frame: answer and hang up
            self.transport.write(b"\x88\x02\x03\xe8")
            self.transport.close()
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        key = next(line.split(b":", 1)[1].strip() for line in self.head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        self.head = None
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        history = b'{"type":"history","room":"r","epoch":"e","name":"n","node":"b","continuity_lost":false,"messages":[]}'
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + bytes([0x81, 126]) +
                             len(history).to_bytes(2, "big") + history)
        self.conns.append(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def connection_lost(self, exc) -> None:
        self.transport = None


def build_round(shared: dict, n: int) -> bytes:
    """Round ``n``: ``frames`` messages, round-robin over senders 0..K-1 with consecutive msgnos, stamped now."""
    k, frames = shared["clients"], shared["frames"]
    now = time.monotonic_ns()
    pad = "x" * max(0, shared["size"] - 30)
    out = bytearray()
    for j in range(frames):
        seq = n * frames + j
        sender, msgno = seq % k, seq // k
        body = (f'{{"type":"message","room":"lt-bench-s0-r0","seq":{seq},"id":"e-{seq}","from":"c{sender}",'
                f'"text":"{sender} {msgno} {now} {pad}","ts":1732700000000,"cid":null}}').encode()
        out += bytes([0x81, 126]) + len(body).to_bytes(2, "big") + body
    return bytes(out)


def pump(shared: dict) -> None:
    """Write each connection its next round (no connection ever skips one: no false losses)."""
    live = [c for c in Pusher.conns if c.transport is not None]
    if not live or time.monotonic_ns() >= shared["until"]:
        return
    rounds = shared["rounds"]
    for c in live:
        if not c.paused:
            n = c.next_round
            if n not in rounds:
                rounds[n] = build_round(shared, n)
            c.transport.write(rounds[n])
            c.next_round = n + 1
    oldest = min(c.next_round for c in live)
    for n in [n for n in rounds if n < oldest]:
        del rounds[n]
    asyncio.get_running_loop().call_soon(pump, shared)


def run_pusher_child(commands, replies, clients: int, size: int, frames: int) -> None:
    """Serve handshakes; push from t0 to t_end (monotonic ns, received on ``commands``)."""
    import uvloop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        shared = {"clients": clients, "frames": frames, "rounds": {}, "size": size, "until": 0}
        server = await loop.create_server(lambda: Pusher(shared), "127.0.0.1", 0, backlog=1024)
        replies.put(server.sockets[0].getsockname()[1])
        t0, shared["until"] = await loop.run_in_executor(None, commands.get)
        await asyncio.sleep(max(0.0, (t0 - time.monotonic_ns()) / 1e9))
        pump(shared)
        await asyncio.sleep(3600)

    uvloop.run(serve())


def absorb(clients: int, size: int, seconds: float, frames: int) -> tuple[float, float]:
    """(b): messages one real worker process (pinned to the generator CPU) takes in per CPU second.

    Returns (rate, busy share of the wall time from go to done).
    """
    from scalechat.loadtest.spec import RoomDistribution, SizeSpec, StageSpec
    from scalechat.loadgen.plan import plan_stage
    from scalechat.loadgen.worker import worker_main

    ctx = multiprocessing.get_context("spawn")
    to_pusher, from_pusher = ctx.Queue(), ctx.Queue()
    pusher = ctx.Process(target=run_pusher_child, args=(to_pusher, from_pusher, clients, size, frames), daemon=True)
    pusher.start()
    os.sched_setaffinity(pusher.pid, {SERVER_CPU})
    port = from_pusher.get(timeout=20)
    parent, child = ctx.Pipe()
    worker = ctx.Process(target=worker_main, args=(child, 0, None), daemon=True)
    worker.start()
    os.sched_setaffinity(worker.pid, {GENERATOR_CPU})
    # A rate so low that nobody sends: the worker only receives.
    stage = StageSpec("absorb", 1, clients, 1e-4, SizeSpec(), seconds, WARMUP, RoomDistribution(), "constant")
    rooms = plan_stage("bench", 0, stage, 1).rooms
    try:
        parent.send(("connect", 0, stage, list(rooms), f"ws://127.0.0.1:{port}/ws/{{room}}", 1000.0, 0.0))
        expect(parent, "connected")
        t0 = time.monotonic_ns() + int(0.3e9)
        to_pusher.put((t0, t0 + int((WARMUP + seconds) * 1e9)))
        c0, w0 = cpu_seconds(worker.pid), time.monotonic()
        parent.send(("go", 0, t0))
        _, _, result, live = expect(parent, "done", timeout=60)
        cpu, wall = cpu_seconds(worker.pid) - c0, time.monotonic() - w0
        parent.send(("exit",))
        worker.join(10)
        # Every message taken in was parsed and accounted (counted, ordered, its latency
        # binned or classed as warm-up/late), so this is the receive path's cost.
        return live["received"] / cpu, cpu / wall
    finally:
        for p in (worker, pusher):
            if p.is_alive():
                p.terminate()


def expect(conn, kind: str, timeout: float = 30) -> tuple:
    """Read worker messages (snapshots included, so its pipe never fills) until ``kind``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.poll(0.2):
            message = conn.recv()
            if message[0] == kind:
                return message
    raise SystemExit(f"worker did not report {kind!r}")


# --------------------------------------------------------------------------- orchestration


def push_capacity(k: int, room_size: int, rate: float, secs: float,
                  commands: list[str]) -> tuple[float, float, float]:
    """(a): the server's deliveries/s, CPU share and deliveries per write with trivial receivers
    in rooms of ``room_size``."""
    server = Server()
    commands.append(" ".join(server.cmd))
    url = f"ws://127.0.0.1:{server.port}/ws/{{room}}"
    cmd = [PY, __file__, "--child", "trivial", "--url", url, "--clients", str(k), "--room-size", str(room_size),
           "--rate", f"{rate:g}", "--seconds", str(secs)]
    commands.append("taskset -c 1 " + " ".join(cmd))
    child = subprocess.Popen(cmd, preexec_fn=pinned(GENERATOR_CPU), stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()  # "ready": every client connected and sending
        return window(server, secs)
    finally:
        child.communicate(timeout=30)
        server.stop()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants alive now (the load CLI and its worker)."""
    total = 0.0
    for p in process_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(p)
    return total


def real_run(k: int, rate: float, size: int, secs: float, commands: list[str]) -> tuple[float, float, float, bool]:
    """(c): the server's deliveries/s with ``scalechat load`` (one worker) receiving in one room of ``k``.

    Returns (deliveries/s, server CPU share, generator CPU share, overloaded)."""
    server = Server()
    commands.append(" ".join(server.cmd))
    out = Path(tempfile.mkdtemp(prefix="bench-loadgen-"))
    cmd = [PY, "-m", "scalechat.loadgen.load_cli", "--url", f"ws://127.0.0.1:{server.port}/ws/{{room}}",
           "--clients-per-room", str(k), "--rate", f"{rate:g}", "--duration", f"{secs + 1:g}", "--warmup", "1",
           "--drain", "0", "--workers", "1", "--size", str(size), "--out", str(out)]
    commands.append("taskset -c 1 " + " ".join(cmd))
    load = subprocess.Popen(cmd, preexec_fn=pinned(GENERATOR_CPU), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while server.connections() < k and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0 + 0.3)  # warm-up, then into the measurement window
        g0, t0 = tree_cpu_seconds(load.pid), time.monotonic()
        rate_, cpu, _ = window(server, secs)
        generator_cpu = (tree_cpu_seconds(load.pid) - g0) / (time.monotonic() - t0)
        load.wait(60)
        stage = json.loads((out / "shard-0-of-1.json").read_text())["stages"][0]
        return rate_, cpu, generator_cpu, "generator_overloaded" in stage["errors"]
    finally:
        if load.poll() is None:
            load.kill()
        server.stop()
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=200, help="connections (one room of all, then rooms of 5)")
    parser.add_argument("--rate", type=float, default=60, help="msg/s per client in the one room")
    parser.add_argument("--small-rate", type=float, default=250, help="msg/s per client in the rooms of 5")
    parser.add_argument("--seconds", type=float, default=3.0, help="measurement window")
    parser.add_argument("--size", type=int, default=100, help="message text bytes")
    parser.add_argument("--child", choices=["trivial"], help=argparse.SUPPRESS)
    parser.add_argument("--room-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "trivial":
        return run_trivial_child(args.url, args.clients, args.room_size, args.rate, args.seconds)
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two CPUs (server on CPU 0, generator on CPU 1)")
    k, secs = args.clients, args.seconds
    commands: list[str] = []
    big, big_cpu, big_batch = push_capacity(k, k, args.rate, secs, commands)
    small, small_cpu, small_batch = push_capacity(k, 5, args.small_rate, secs, commands)
    # The generator's cost per message depends on how many arrive per read, so it is measured
    # with the pusher writing as many frames per write as the server just did for each shape.
    absorbs = {batch: absorb(k, args.size, secs, batch) for batch in (max(1, round(big_batch)),
                                                                     max(1, round(small_batch)), 1024)}
    commands.append(f"(in-process) the fast pusher pinned to CPU {SERVER_CPU}; a scalechat.loadgen.worker "
                    f"process pinned to CPU {GENERATOR_CPU}, {k} connections")
    real, real_cpu, real_generator_cpu, overloaded = real_run(k, args.rate, args.size, secs, commands)

    print(f"server on CPU {SERVER_CPU}, generator on CPU {GENERATOR_CPU}; {k} connections, {args.size}-byte texts")
    print(f"{'measurement':<58}{'deliveries/s':>14}  note")
    rows = [
        (f"(a) server push, 1 room of {k}, trivial receiver", big,
         f"offered {k * k * args.rate:,.0f}/s, server cpu {big_cpu:.0%}, {big_batch:.1f} frames per write"),
        ("(a) server push, rooms of 5, trivial receiver", small,
         f"offered {k * 5 * args.small_rate:,.0f}/s, server cpu {small_cpu:.0%}, {small_batch:.1f} frames per write"),
    ]
    for batch, (rate_, busy) in absorbs.items():
        rows.append((f"(b) generator absorb, {batch} frames per write", rate_,
                     f"per worker CPU-second (worker busy {busy:.0%} of the wall time)"))
    rows.append((f"(c) server push, 1 room of {k}, scalechat load receiving", real,
                 f"server cpu {real_cpu:.0%}, generator cpu {real_generator_cpu:.0%} (also sending "
                 f"{k * args.rate:,.0f}/s); generator_overloaded: {'yes' if overloaded else 'no'}"))
    for name, value, note in rows:
        print(f"{name:<58}{value:>14,.0f}  {note}")
    for label, push, batch in ((f"1 room of {k}", big, big_batch), ("rooms of 5", small, small_batch)):
        absorb_rate = absorbs[max(1, round(batch))][0]
        ratio = absorb_rate / push if push else float("inf")
        verdict = "OK" if ratio >= 2 else f"TOO LOW: give the test >= {2 / ratio:.1f} generator cores per server core"
        print(f"absorb / push, {label}: {ratio:.2f} -> {verdict}")
    if real_generator_cpu > 0:
        print(f"(c) the generator took in {real / real_generator_cpu:,.0f}/s per CPU-second while receiving and "
              f"sending; the server pushed {real / max(real_cpu, 1e-9):,.0f}/s per CPU-second: "
              f"{real_cpu / real_generator_cpu:.2f}x")
    print("commands:")
    for command in commands:
        print("  " + command)


if __name__ == "__main__":
    main()
