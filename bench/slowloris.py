"""Slowloris against one scalechat process, with a real client measured throughout.

The attacker keeps ``--sockets`` connections open, each sending a request head
that never ends, one byte every ``--byte-every`` seconds; when the server
closes one, it connects again at once. Meanwhile a probe, every 0.25 s,
upgrades a WebSocket, gets its message echoed, closes, and GETs ``/healthz``,
each on a new connection. Reported: the probe's latencies and failures, the
server's closures by reason, its peak pending handshakes and RSS.

The server runs with its default settings (plus ``--server-args``), pinned to
core 0; the attacker and the probe, in two processes, share core 1. Everything talks to 127.0.0.1 and stops by
itself after ``--seconds``.

    .venv/bin/python bench/slowloris.py [--sockets 2000] [--seconds 30]
    .venv/bin/python bench/slowloris.py --no-reconnect --seconds 15
    .venv/bin/python bench/slowloris.py --server-nofile 1024   # a server at a common ulimit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import subprocess
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
import uvloop
from procs import start_scalechat  # a sibling script, not a package

SERVER_CORE, CLIENT_CORE = 0, 1
PARTIAL_HEAD = b"GET /ws/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def start_server(extra: list[str], nofile: int | None) -> tuple[subprocess.Popen, int, int]:
    prefix = ("prlimit", f"--nofile={nofile}:{nofile}") if nofile else ()
    return start_scalechat(SERVER_CORE, *extra, prefix=prefix)


def metrics(port: int) -> dict[str, float]:
    """The server's samples by name; empty if the scrape fails (a server out of descriptors)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    return {name: float(value) for name, value in
            (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Attacker:
    """Keeps ``count`` half-open requests going, dripping a byte each ``every`` seconds."""

    def __init__(self, port: int, count: int, every: float, reconnect: bool) -> None:
        self.port, self.count, self.every, self.reconnect = port, count, every, reconnect
        self.open: set[asyncio.Transport] = set()
        self.connects = self.closed = 0
        self.stopping = False

    async def run(self) -> None:
        await asyncio.gather(*(self._socket() for _ in range(self.count)))

    async def _socket(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            lost = loop.create_future()
            try:
                transport, _ = await loop.create_connection(
                    lambda lost=lost: _Slow(lost), "127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            self.connects += 1
            self.open.add(transport)
            transport.write(PARTIAL_HEAD)
            while not lost.done() and not self.stopping:
                await asyncio.wait([lost], timeout=self.every)
                if not lost.done():
                    transport.write(b"a")
            self.open.discard(transport)
            if lost.done():
                self.closed += 1
            if not self.reconnect:
                return

    def stop(self) -> None:
        self.stopping = True
        for transport in list(self.open):
            transport.abort()


class _Slow(asyncio.Protocol):
    def __init__(self, lost: asyncio.Future) -> None:
        self.lost = lost

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def probe(port: int, samples: dict[str, list[float]], failures: list[str]) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(5):
                ws = await http.ws_connect(f"ws://127.0.0.1:{port}/ws/probe?name=probe")
                await ws.receive()  # history
                await ws.send_str(json.dumps({"type": "message", "text": "x", "cid": "p"}))
                while json.loads((await ws.receive()).data).get("cid") != "p":
                    pass
                samples["echo_ms"].append((time.perf_counter() - start) * 1000)
                await ws.close()
        except Exception as exc:
            failures.append(f"ws: {exc!r}")
        start = time.perf_counter()
        try:
            async with asyncio.timeout(5), http.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
                samples["healthz_ms"].append((time.perf_counter() - start) * 1000)
        except Exception as exc:
            failures.append(f"healthz: {exc!r}")


def attack(port: int, args: argparse.Namespace, results: multiprocessing.Queue) -> None:
    """The attacker's own process, so the probe's latencies are not its event loop's."""
    os.sched_setaffinity(0, {CLIENT_CORE})

    async def run() -> None:
        attacker = Attacker(port, args.sockets, args.byte_every, not args.no_reconnect)
        task = asyncio.create_task(attacker.run())
        await asyncio.sleep(args.seconds)
        attacker.stop()
        task.cancel()
        results.put(attacker.connects)

    uvloop.run(run())


async def main_async(args: argparse.Namespace) -> dict:
    proc, port, metrics_port = start_server(args.server_args.split(), args.server_nofile)
    results: multiprocessing.Queue = multiprocessing.Queue()
    attacker = multiprocessing.Process(target=attack, args=(port, args, results))
    try:
        attacker.start()
        samples: dict[str, list[float]] = {"echo_ms": [], "healthz_ms": []}
        failures: list[str] = []
        peak_pending = peak_rss = 0.0
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            await probe(port, samples, failures)
            m = await asyncio.to_thread(metrics, metrics_port)
            peak_pending = max(peak_pending, m.get("scalechat_pending_handshakes", 0))
            peak_rss = max(peak_rss, rss_mb(proc.pid))
            await asyncio.sleep(0.25)
        connects = await asyncio.to_thread(results.get, True, 30)
        m = await asyncio.to_thread(metrics, metrics_port)
    finally:
        attacker.join(30)
        if attacker.is_alive():
            attacker.kill()
        proc.terminate()
        proc.wait(20)

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)), 2) if values else float("nan")

    return {
        "sockets": args.sockets, "seconds": args.seconds, "byte_every_s": args.byte_every,
        "reconnect": not args.no_reconnect, "server_args": args.server_args,
        "server_nofile": args.server_nofile,
        "attacker_connects": connects,
        "closed_timeout": m.get('scalechat_handshakes_closed_total{reason="timeout"}', 0),
        "closed_overflow": m.get('scalechat_handshakes_closed_total{reason="overflow"}', 0),
        "peak_pending_handshakes": peak_pending, "peak_rss_mb": round(peak_rss, 1),
        "probes": len(samples["echo_ms"]) + sum(f.startswith("ws") for f in failures),
        "failures": failures[:10], "failure_count": len(failures),
        **{f"{k}_{name}": pct(v, q) for k, v in samples.items()
           for name, q in (("p50", 50), ("p99", 99), ("max", 100))},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--byte-every", type=float, default=5.0)
    parser.add_argument("--no-reconnect", action="store_true")
    parser.add_argument("--server-args", default="", help="extra `scalechat serve` flags")
    parser.add_argument("--server-nofile", type=int,
                        help="the server's open-file limit (soft and hard), e.g. 1024")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {CLIENT_CORE})
    print(json.dumps(uvloop.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
