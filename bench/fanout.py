"""Fan-out benchmark: scalechat against the naive aiohttp broadcast (and a floor), same run, same cores.

For each scenario (rooms x clients, 100-byte messages) and each server:
  * at a fixed offered load both servers hold: server CPU seconds per delivered
    message (from /proc/<pid>/stat) and its kernel share, write syscalls per
    delivered message (from /proc/<pid>/io), delivered/s, echo latency p50/p99
    measured from the *scheduled* send time, and where its tail comes from:
    the round trip's p99 from the moment the generator actually wrote the
    message (the difference is the generator's own lateness), scalechat's own
    processing time p99 from its /metrics histogram (from handling a message
    to its write to the last member, as a bucket bound; not the wait before
    its loop reads the socket), and the CPU time the hypervisor stole from
    the machine meanwhile (/proc/stat);
  * at saturation (an offered load far above what either holds): delivered/s.

The server runs pinned to core 0, the generator (this process) to core 1.
Everything talks to 127.0.0.1 and stops by itself. This machine is noisy: with
``--repeat N`` each ratio is taken within one round and reported as the median
(min-max) over the rounds.

    .venv/bin/python bench/fanout.py [--seconds 8] [--json build/bench/fanout.json]
    .venv/bin/python bench/fanout.py --repeat 3 --saturation-factor 0      # the fixed loads, 3 rounds
    .venv/bin/python bench/fanout.py --scenarios 1x100 --load 1x100=80000  # a higher fixed load

A third server, the floor (``bench/floor_server.py``), writes each delivery on
its own and does nothing else: its CPU per delivery is the least a Python
server that makes one write per delivery can spend on this machine (mostly
kernel time, which any server pays for those writes), the bound for
scenarios (100 x 4) where no window short enough for the latency holds two
frames for a socket.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import uvloop

from scalechat.loadgen.worker import Timer
from scalechat.loadgen.wsclient import connect

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from document import Run  # noqa: E402  (a sibling script, not a package)
from procs import (cpu_split, machine_ticks, samples, start_scalechat, start_server,  # noqa: E402
                   write_syscalls)

SERVER_CORE, GENERATOR_CORE = 0, 1


@dataclass
class Measurement:
    server: str
    scenario: str
    offered_deliveries_per_s: float
    delivered_per_s: float
    cpu_us_per_delivery: float
    server_cpu_percent: float
    server_system_share: float  # kernel time / all CPU time of the server
    server_writes_per_delivery: float  # write syscalls of the server / deliveries
    echo_p50_ms: float
    echo_p99_ms: float
    generator_cpu_percent: float
    lost: int
    round_trip_p99_ms: float = float("nan")  # from the actual write, not the schedule
    server_processing_p99_ms: float = float("nan")  # scalechat only: its histogram's bucket bound
    steal_percent: float = float("nan")  # of the machine's CPU time, during the window


SCALECHAT_FLAGS: list[str] = []


def start_kind(kind: str) -> tuple[subprocess.Popen, int, int | None]:
    """The ``kind`` of server (naive, scalechat, floor) pinned to its core: the process, its
    port and (scalechat only) its metrics port."""
    if kind == "scalechat":
        return start_scalechat(
            SERVER_CORE, "--rate-limit", "100000", "--rate-burst", "100000", "--log-level",
            "warning", *SCALECHAT_FLAGS)
    proc, port = start_server(SERVER_CORE, lambda port: [
        sys.executable, str(HERE / f"{kind}_server.py"), str(port)], f"the {kind} server")
    return proc, port, None


PROCESSING = "scalechat_message_processing_seconds_bucket"


def processing_buckets(metrics_port: int) -> dict[float, float]:
    """scalechat's processing-time histogram: upper bound (s) -> cumulative count."""
    return {float(series.split('le="', 1)[1].split('"', 1)[0]): count
            for series, count in samples(metrics_port).items() if series.startswith(PROCESSING + "{")}


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The smallest bucket bound (s) under which ``q`` of the observations between the two
    scrapes fall (inf if only the top bucket holds them; nan if there were none)."""
    counts = sorted((bound, after[bound] - before.get(bound, 0.0)) for bound in after)
    if not counts or counts[-1][1] <= 0:
        return float("nan")
    total = counts[-1][1]
    return next(bound for bound, cumulative in counts if cumulative >= q * total)


class Sleeper:
    """``sleep_until`` with ns precision and no spinning.

    uvloop turns sleeps under 0.5 ms into 0, so a sender whose sends are ~0.2 ms
    apart spins its core; a timerfd (scalechat.loadgen's C timer) sleeps
    exactly. Falls back to asyncio.sleep without the C extension.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.timer = Timer() if Timer is not None else None
        self.waiter: asyncio.Future | None = None
        if self.timer is not None:
            self.loop.add_reader(self.timer.fileno(), self._fire)

    def _fire(self) -> None:
        self.timer.read()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def until(self, when: float) -> None:
        """Sleep until ``when`` on the time.perf_counter() clock (CLOCK_MONOTONIC on Linux)."""
        delay = when - time.perf_counter()
        if self.timer is None or delay <= 0:
            await asyncio.sleep(max(0.0, delay))
            return
        self.waiter = self.loop.create_future()
        self.timer.set(time.monotonic_ns() + int(delay * 1e9))
        await self.waiter

    def close(self) -> None:
        if self.timer is not None:
            self.loop.remove_reader(self.timer.fileno())
            self.timer.close()


class Generator:
    """Open-loop senders: each client sends at its own constant rate with a random phase."""

    def __init__(self, port: int, rooms: int, per_room: int) -> None:
        self.port, self.rooms, self.per_room = port, rooms, per_room
        self.clients: list = []
        self.delivered = 0
        self.sent = 0
        self.echo: list[float] = []
        self.round_trip: list[float] = []
        self.measuring = False

    async def open(self) -> None:
        for r in range(self.rooms):
            for c in range(self.per_room):
                me = f"c{r}-{c}"
                client = await connect(f"ws://127.0.0.1:{self.port}/ws/bench-{r}?name={me}",
                                       on_messages=self._receiver(me.encode()))
                self.clients.append(client)
        # Wait for every history frame to arrive (counted as deliveries below).
        deadline = time.monotonic() + 10
        while self.delivered < len(self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _receiver(self, me: bytes):
        marker = b'"text":"' + me + b":"

        def on_messages(payloads: list[bytes]) -> None:
            self.delivered += len(payloads)
            if not self.measuring:
                return
            now = time.perf_counter()
            for payload in payloads:
                start = payload.find(marker)
                if start >= 0:  # our own echo: latency from the scheduled and the actual send
                    start += len(marker)
                    middle = payload.index(b":", start)
                    scheduled = float(payload[start:middle])
                    sent = float(payload[middle + 1:payload.index(b":", middle + 1)])
                    self.echo.append(now - scheduled)
                    self.round_trip.append(now - sent)
        return on_messages

    async def run(self, rate_per_client: float, seconds: float) -> tuple[int, int]:
        """Send for ``seconds``; return (sent, delivered during the window plus a drain)."""
        period = 1.0 / rate_per_client
        start = time.perf_counter() + 0.05
        # A heap of (due time, client): each wake-up sends exactly what is due.
        due = [(start + random.random() * period, i) for i in range(len(self.clients))]
        heapq.heapify(due)
        names = [f"c{i // self.per_room}-{i % self.per_room}" for i in range(len(self.clients))]
        pad = "x" * 42  # the text is ~100 bytes: name, two times, pad
        end = start + seconds
        sent0, delivered0 = self.sent, self.delivered
        self.measuring = True
        sleeper = Sleeper()
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            while due[0][0] <= now:  # catch up: latency is measured from the due time
                when, i = due[0]
                text = f"{names[i]}:{when:.6f}:{time.perf_counter():.6f}:{pad}"
                self.clients[i].send_text(orjson.dumps({"type": "message", "text": text}))
                self.sent += 1
                heapq.heapreplace(due, (when + period, i))
            await sleeper.until(due[0][0])
        sleeper.close()
        await asyncio.sleep(0.5)  # drain
        self.measuring = False
        return self.sent - sent0, self.delivered - delivered0

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


async def measure(kind: str, scenario: str, rooms: int, per_room: int,
                  deliveries_per_s: float, seconds: float) -> Measurement:
    proc, port, metrics_port = start_kind(kind)
    try:
        gen = Generator(port, rooms, per_room)
        await gen.open()
        rate = deliveries_per_s / (rooms * per_room * per_room)
        await gen.run(rate, 1.0)  # warm-up
        gen.echo.clear()
        gen.round_trip.clear()
        buckets0 = processing_buckets(metrics_port) if metrics_port else {}
        writes0, (stolen0, ticks0) = write_syscalls(proc.pid), machine_ticks()
        (user0, sys0), own0, t0 = cpu_split(proc.pid), time.process_time(), time.perf_counter()
        sent, delivered = await gen.run(rate, seconds)
        (user1, sys1), own1, t1 = cpu_split(proc.pid), time.process_time(), time.perf_counter()
        writes1, (stolen1, ticks1) = write_syscalls(proc.pid), machine_ticks()
        processing = (bucket_quantile(buckets0, processing_buckets(metrics_port), 0.99) * 1000
                      if metrics_port else float("nan"))
        cpu0, cpu1 = user0 + sys0, user1 + sys1
        await gen.close()
        echo = np.array(gen.echo) * 1000 if gen.echo else np.array([np.nan])
        round_trip = np.array(gen.round_trip) * 1000 if gen.round_trip else np.array([np.nan])
        return Measurement(
            server=kind, scenario=scenario, offered_deliveries_per_s=deliveries_per_s,
            delivered_per_s=delivered / seconds,
            cpu_us_per_delivery=(cpu1 - cpu0) / max(delivered, 1) * 1e6,
            server_cpu_percent=(cpu1 - cpu0) / (t1 - t0) * 100,
            server_system_share=(sys1 - sys0) / max(cpu1 - cpu0, 1e-9),
            server_writes_per_delivery=(writes1 - writes0) / max(delivered, 1),
            echo_p50_ms=float(np.percentile(echo, 50)), echo_p99_ms=float(np.percentile(echo, 99)),
            generator_cpu_percent=(own1 - own0) / (t1 - t0) * 100,
            lost=sent * per_room - delivered,
            round_trip_p99_ms=float(np.percentile(round_trip, 99)),
            server_processing_p99_ms=processing,
            steal_percent=(stolen1 - stolen0) / max(ticks1 - ticks0, 1) * 100)
    finally:
        proc.terminate()
        proc.wait(15)


SCENARIOS = {  # name: (rooms, clients per room, fixed deliveries/s both hold)
    "1x100": (1, 100, 50_000),
    "100x4": (100, 4, 20_000),
}


def table(rows: list[Measurement]) -> str:
    head = (f"{'scenario':8} {'server':9} {'offered/s':>10} {'delivered/s':>11} {'cpu us/dlv':>10} "
            f"{'cpu %':>6} {'sys':>4} {'w/dlv':>5} {'p50 ms':>7} {'p99 ms':>8} {'rt p99':>7} "
            f"{'srv p99':>7} {'steal':>5} {'gen cpu %':>9}")
    lines = [head, "-" * len(head)]
    for m in rows:
        lines.append(f"{m.scenario:8} {m.server:9} {m.offered_deliveries_per_s:>10.0f} "
                     f"{m.delivered_per_s:>11.0f} {m.cpu_us_per_delivery:>10.2f} "
                     f"{m.server_cpu_percent:>6.0f} {m.server_system_share:>4.0%} "
                     f"{m.server_writes_per_delivery:>5.2f} {m.echo_p50_ms:>7.2f} {m.echo_p99_ms:>8.2f} "
                     f"{m.round_trip_p99_ms:>7.2f} {_bound(m.server_processing_p99_ms):>7} "
                     f"{m.steal_percent:>4.1f}% {m.generator_cpu_percent:>9.0f}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[list[Measurement]]:
    """``args.repeat`` rounds; in each, every scenario and load, the servers one after the other."""
    rounds = []
    for _ in range(args.repeat):
        rows = []
        for scenario in args.scenarios:
            rooms, per_room, fixed = SCENARIOS[scenario]
            loads = [(fixed, scenario)]
            if args.saturation_factor > 0:
                loads.append((fixed * args.saturation_factor, f"{scenario}*"))
            for load, label in loads:
                for kind in args.servers:
                    m = await measure(kind, label, rooms, per_room, load, args.seconds)
                    print(table([m]).splitlines()[-1], flush=True)
                    rows.append(m)
        rounds.append(rows)
    return rounds


def _bound(ms: float) -> str:
    """A histogram bucket bound in ms, or '-' where the server has no histogram."""
    return "-" if ms != ms else f"<={ms:g}"


def spread(values: list[float]) -> str:
    """``median (min-max)`` of ratios, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{float(np.median(values)):.2f}x ({min(values):.2f}-{max(values):.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window per run")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--saturation-factor", type=float, default=4.0,
                        help="saturation runs offer this multiple of the fixed load (rows marked *); 0 skips them")
    parser.add_argument("--load", action="append", default=[], metavar="SCENARIO=N",
                        help="fixed load (deliveries/s) for a scenario instead of its default, e.g. 1x100=80000")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every run; ratios are then given as median (min-max) over rounds")
    parser.add_argument("--servers", nargs="+", default=["naive", "scalechat", "floor"],
                        choices=["naive", "scalechat", "floor"],
                        help="floor (bench/floor_server.py): one write per delivery and no other work, "
                             "the least a Python server that writes each delivery on its own can spend")
    parser.add_argument("--json", type=Path, default=Path("build/bench/fanout.json"))
    parser.add_argument("--scalechat-flag", action="append", default=[], metavar="FLAG",
                        help="extra flag for `scalechat serve` (repeat), e.g. --scalechat-flag=--flush-interval-ms=5")
    args = parser.parse_args()
    run = Run("fanout", __file__)  # host facts before this process is pinned
    SCALECHAT_FLAGS.extend(args.scalechat_flag)
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("bench/fanout.py needs 2 cores: server on core 0, generator on core 1")
    os.sched_setaffinity(0, {GENERATOR_CORE})
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    for item in args.load:
        name, _, value = item.partition("=")
        if name not in SCENARIOS or not value.isdigit() or int(value) <= 0:
            raise SystemExit(f"--load {item!r}: expected SCENARIO=N with SCENARIO in {sorted(SCENARIOS)}")
        rooms, per_room, _ = SCENARIOS[name]
        SCENARIOS[name] = (rooms, per_room, int(value))
    print(table([]))
    rounds = uvloop.run(main_async(args))
    print("\n" + table([m for rows in rounds for m in rows]))
    run.host["placement"] = {"server": f"core {SERVER_CORE}", "generator": f"core {GENERATOR_CORE}"}
    run.write(args.json, {"seconds": args.seconds, "scenarios": args.scenarios, "repeat": args.repeat,
                          "saturation_factor": args.saturation_factor, "servers": args.servers,
                          "loads": {name: SCENARIOS[name][2] for name in args.scenarios},
                          "scalechat_flags": args.scalechat_flag},
              {"rounds": [[asdict(m) for m in rows] for rows in rounds]})
    if not {"naive", "scalechat"} <= set(args.servers):
        return
    print(f"\nscalechat / naive (each ratio within one round; {args.repeat} round(s)):")
    for scenario in args.scenarios:
        print(ratio_line(rounds, scenario))


def ratio_line(rounds: list[list[Measurement]], scenario: str) -> str:
    """scalechat against naive in ``scenario``, and the floor against naive when it ran."""
    cpu, floor, p99s, round_trips, sat = [], [], [], [], []
    for rows in rounds:
        by = {(m.scenario, m.server): m for m in rows}
        ours, naive = by[(scenario, "scalechat")], by[(scenario, "naive")]
        cpu.append(ours.cpu_us_per_delivery / naive.cpu_us_per_delivery)
        p99s.append(f"{ours.echo_p99_ms:.1f} vs {naive.echo_p99_ms:.1f}")
        round_trips.append(f"{ours.round_trip_p99_ms:.1f} vs {naive.round_trip_p99_ms:.1f}")
        if (scenario, "floor") in by:
            floor.append(by[(scenario, "floor")].cpu_us_per_delivery / naive.cpu_us_per_delivery)
        if (scenario + "*", "scalechat") in by:
            sat.append(by[(scenario + "*", "scalechat")].delivered_per_s
                       / by[(scenario + "*", "naive")].delivered_per_s)
    line = (f"  {scenario}: CPU per delivery {spread(cpu)}; p99 ms {', '.join(p99s)}"
            f"; from the actual send {', '.join(round_trips)}")
    if sat:
        line += f"; saturation deliveries/s {spread(sat)}"
    if floor:
        line += f"\n  {scenario}: floor (one write per delivery, no other work) CPU per delivery {spread(floor)}"
    return line


if __name__ == "__main__":
    main()
