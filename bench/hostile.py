"""Hostile load against one scalechat process sized as a 512 MiB pod, with a normal client measured.

The server runs with default settings except the memory budget a 512 MiB pod
would derive (a quarter: 128 MiB; ``--pod-mib``), pinned to core 0. One attack
at a time runs for ``--seconds`` in its own process on core 1 (niced, so the
normal client sharing that core measures the server, not the attacker's
scheduling), within the server's own default limits:

  history-flood   200 connections, each in its own room, sending texts of 4,000
                  four-byte emoji at 20 msg/s (the server's message rate)
  since-joiners   a room filled to its caps, then 100 joiners with ?since=0
                  that never read
  silent-readers  50 clients that stop reading in a room where 20 members send
                  texts of 16 KB at 4 msg/s
  presence-flood  20 members; one client joins and leaves in a loop
  slowloris       2,000 connections sending a request head one byte every 5 s
                  (bench/slowloris.py's attacker, reconnecting)

Throughout, a normal client in a room of its own sends a 100-byte message every
100 ms and measures its echo (from the scheduled send time); the server's RSS
is sampled every 50 ms from /proc. Reported per attack: peak RSS against the
pod's size, whether the server stayed up, and the normal client's echo
p50/p99/max and its failures. Everything talks to 127.0.0.1 and stops by
itself; a run takes about ``6 x (--seconds + 3)`` seconds.

    .venv/bin/python bench/hostile.py [--seconds 10] [--pod-mib 512] [--json build/bench/hostile.json]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from document import Run  # noqa: E402  (sibling scripts, not a package)
from procs import cpu_seconds, samples, start_scalechat  # noqa: E402
from slowloris import Attacker  # noqa: E402

SERVER_CORE, CLIENT_CORE = 0, 1
EMOJI_TEXT = "\U0001F600" * 4000
ATTACKS = ("history-flood", "since-joiners", "silent-readers", "presence-flood", "slowloris")


@dataclass
class Result:
    attack: str
    seconds: float
    peak_rss_mib: float
    pod_mib: int
    budget_mib: float
    server_up: bool
    echo_p50_ms: float
    echo_p99_ms: float
    echo_max_ms: float
    echo_samples: int
    echo_failures: int
    history_mib: float
    history_dropped: int
    slow_consumers: int
    server_cpu: float  # share of its core over the attack
    attack_note: str


def start_server(budget: int) -> tuple[subprocess.Popen, int, int]:
    return start_scalechat(SERVER_CORE, "--memory-budget-bytes", str(budget), "--log-level", "warning")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def silent_socket(port: int, path: str) -> socket.socket:
    """Upgrades, then never reads (a small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


def message(text: str) -> str:
    return orjson.dumps({"type": "message", "text": text}).decode()


async def sender(http: aiohttp.ClientSession, port: int, room: str, text: str, rate: float,
                 until: float, read: bool = True) -> None:
    """Sends ``text`` at ``rate``/s until ``until``; reads (and drops) what comes back."""
    try:
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}/ws/{room}", max_msg_size=0)
    except (aiohttp.ClientError, OSError):
        return

    async def drain() -> None:
        async for _ in ws:
            pass

    reader = asyncio.create_task(drain()) if read else None
    frame, next_at = message(text), time.monotonic()
    try:
        while time.monotonic() < until and not ws.closed:
            await ws.send_str(frame)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    except (aiohttp.ClientError, ConnectionError, RuntimeError):
        pass
    finally:
        if reader:
            reader.cancel()
        await ws.close()


async def run_attack(name: str, port: int, seconds: float) -> str:
    until = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        if name == "history-flood":
            await asyncio.gather(*(sender(http, port, f"flood-{i}", EMOJI_TEXT, 20, until)
                                   for i in range(200)))
            return "200 rooms x 20 msg/s of 16 KB offered"
        if name == "since-joiners":
            fill_until = time.monotonic() + min(3.0, seconds / 3)
            await asyncio.gather(*(sender(http, port, "full", EMOJI_TEXT, 4, fill_until)
                                   for _ in range(64)))
            socks = [silent_socket(port, "/ws/full?since=0") for _ in range(100)]
            await asyncio.sleep(max(0.0, until - time.monotonic()))
            for sock in socks:
                sock.close()
            return "100 silent joiners of a full room"
        if name == "silent-readers":
            socks = [silent_socket(port, "/ws/busy") for _ in range(50)]
            await asyncio.gather(*(sender(http, port, "busy", EMOJI_TEXT, 4, until)
                                   for _ in range(20)))
            for sock in socks:
                sock.close()
            return "50 silent members, 20 x 4 msg/s of 16 KB"
        if name == "presence-flood":
            members = [await http.ws_connect(f"ws://127.0.0.1:{port}/ws/lobby") for _ in range(20)]
            drains = [asyncio.create_task(_drain(ws)) for ws in members]
            loops = 0
            while time.monotonic() < until:
                try:
                    ws = await http.ws_connect(f"ws://127.0.0.1:{port}/ws/lobby?name=flapper")
                    await ws.receive()
                    await ws.close()
                    loops += 1
                except (aiohttp.ClientError, OSError):
                    await asyncio.sleep(0.01)
            received = [d.cancel() or 0 for d in drains]
            for ws in members:
                await ws.close()
            del received
            return f"{loops / seconds:.0f} joins+leaves/s"
        if name == "slowloris":
            attacker = Attacker(port, 2000, 5.0, reconnect=True)
            task = asyncio.create_task(attacker.run())
            await asyncio.sleep(seconds)
            attacker.stop()
            task.cancel()
            return f"{attacker.connects} connections"
    raise ValueError(name)


async def _drain(ws) -> None:
    async for _ in ws:
        pass


def attack_process(name: str, port: int, seconds: float, out: multiprocessing.Queue) -> None:
    os.sched_setaffinity(0, {CLIENT_CORE})
    os.nice(10)  # the normal client shares this core: its latency must be the server's, not ours
    try:
        out.put(uvloop.run(run_attack(name, port, seconds)))
    except Exception as exc:
        out.put(f"attack failed: {exc!r}")


async def probe(port: int, stop: asyncio.Event, latencies: list[float], failures: list[str]) -> None:
    """A normal client: 100 bytes 10 times a second (within the default 20 msg/s); echo
    latency from the scheduled send time."""
    interval = 0.1
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                ws = await http.ws_connect(f"ws://127.0.0.1:{port}/ws/normal?name=normal")
                await ws.receive()
                sent: dict[str, float] = {}

                async def read(ws=ws, sent=sent) -> None:
                    async for msg in ws:
                        frame = orjson.loads(msg.data)
                        if frame.get("type") == "message" and frame.get("cid") in sent:
                            latencies.append(time.perf_counter() - sent.pop(frame["cid"]))

                reader = asyncio.create_task(read())
                n, due = 0, time.perf_counter()
                while not stop.is_set() and not ws.closed:
                    n += 1
                    sent[str(n)] = due
                    await ws.send_str(orjson.dumps({"type": "message", "text": "z" * 100,
                                                    "cid": str(n)}).decode())
                    due += interval
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                await asyncio.sleep(0.5)  # the last echoes
                failures.extend("lost" for _ in sent)
                reader.cancel()
                await ws.close()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failures.append(repr(exc))
                await asyncio.sleep(0.2)


async def measure(name: str, seconds: float, pod: int) -> Result:
    budget = pod // 4
    proc, port, metrics_port = start_server(budget)
    stop, latencies, failures = asyncio.Event(), [], []
    peak = rss_bytes(proc.pid)
    probe_task = asyncio.create_task(probe(port, stop, latencies, failures))
    await asyncio.sleep(1.0)
    latencies.clear()  # the probe's own warm-up
    out: multiprocessing.Queue = multiprocessing.Queue()
    attacker = multiprocessing.Process(target=attack_process, args=(name, port, seconds, out))
    attacker.start()
    started, cpu_before = time.monotonic(), cpu_seconds(proc.pid)
    while attacker.is_alive() and time.monotonic() - started < seconds + 30:
        if proc.poll() is not None:
            break
        peak = max(peak, rss_bytes(proc.pid))
        await asyncio.sleep(0.05)
    cpu = (cpu_seconds(proc.pid) - cpu_before) / (time.monotonic() - started) if proc.poll() is None else 0.0
    note = out.get(timeout=5) if not out.empty() or attacker.is_alive() is False else "timeout"
    attacker.join(5)
    stop.set()
    await probe_task
    up = proc.poll() is None
    m = samples(metrics_port) if up else {}
    proc.terminate()
    proc.wait(15)
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return Result(name, seconds, peak / 2**20, pod >> 20, budget / 2**20, up,
                  float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.max()),
                  len(latencies), len(failures), m.get("scalechat_history_bytes", 0) / 2**20,
                  int(m.get("scalechat_history_dropped_total", 0)),
                  int(m.get("scalechat_slow_consumer_disconnects_total", 0)), cpu, note)


def table(rows: list[Result]) -> str:
    head = (f"{'attack':15} {'peak RSS':>14} {'up':>3} {'echo p50/p99/max ms':>22} "
            f"{'lost':>5} {'dropped':>8} {'1013':>5} {'cpu':>4}  attack")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.attack:15} {r.peak_rss_mib:6.0f}/{r.pod_mib:4d} MiB {'yes' if r.server_up else 'NO':>3} "
                     f"{r.echo_p50_ms:6.1f}/{r.echo_p99_ms:6.1f}/{r.echo_max_ms:7.1f} "
                     f"{r.echo_failures:5d} {r.history_dropped:8d} {r.slow_consumers:5d} "
                     f"{r.server_cpu:4.0%}  {r.attack_note}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each attack")
    parser.add_argument("--pod-mib", type=int, default=512, help="the pod size the server is given")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--json", type=Path, default=Path("build/bench/hostile.json"))
    args = parser.parse_args()
    run = Run("hostile", __file__)  # host facts before this process is pinned
    if args.seconds <= 0 or args.pod_mib < 64:
        parser.error("--seconds must be > 0 and --pod-mib >= 64")
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs 2 cores: the server on one, the attack and the normal client on the other")
    os.sched_setaffinity(0, {CLIENT_CORE})
    rows = []
    for name in args.attacks:
        rows.append(uvloop.run(measure(name, args.seconds, args.pod_mib << 20)))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    run.write(args.json, {"seconds": args.seconds, "pod_mib": args.pod_mib, "attacks": args.attacks},
              {"results": [asdict(r) for r in rows]})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
