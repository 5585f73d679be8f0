"""Scale-out benchmark: what the Redis broker costs, and what a second replica and shard buy.

One run measures, each figure against a baseline from the same run:

1. **fixed**: replica CPU per delivery with the Redis broker against the memory
   broker, one replica, at a fixed load (``--load``, 20,000 deliveries/s) in
   each scenario (``--scenarios``, rooms x clients per room: 100x4 and 1x100
   for the targets, 100x10 as a second room size whose frames are written one
   per delivery, for ``scalechat capacity``). The Redis runs also give Redis CPU
   per message it published, net of its idle rate measured with every client
   connected and silent just before the load.
2. **saturation** (``--saturation-scenario``): one replica of each broker under
   a load that starts at ``--saturation-start`` and grows by ``--step-factor``
   per step until the replica falls behind (delivers under 95% of the offer) or
   the generator's core is full: the most deliveries/s reached, the replica's
   CPU there, and the ``unavailable`` refusals counted on its metrics port.
3. **scale-out** (``--scaleout-scenario`` at ``--scaleout-load``): 1 replica +
   1 Redis shard against 2 replicas + 2 shards, both behind nginx with the
   cluster's room-hash configuration: deliveries/s per CPU-second of everything
   that serves them (replicas, Redis, nginx). The replicas get the shards as a
   comma-separated ``--redis-url``; ``sharded`` records whether every shard got
   traffic (a broker that takes one URL leaves the second one empty).
   ``--random-routing`` adds 2 + 2 behind nginx's random balancing, where a
   room's members spread over the replicas and each of them takes the room's
   messages from Redis (``broker_messages_per_published``).
4. **busy shard** (``--busy-seconds``): Redis CPU per message when Redis is the
   busy part, as a shard planned near its capacity runs. ``bench/redis_publisher.py``,
   the replica's own broker code without WebSockets, pinned to the replicas'
   core, publishes to 100 rooms as fast as it can for that long. Beside it, the
   host's cost of one Redis wake-up: Redis CPU per ``PING`` sent 1,000 times a
   second. A lightly loaded Redis sleeps between calls, and on a virtual machine
   each sleep and wake-up costs tens of microseconds that a busy Redis does not
   pay: the fixed runs' "Redis us/msg" holds that cost, the busy figure does not.

Placement, pinned with ``taskset``: the replicas on one core, and the generator
(this process), Redis and nginx on the other. Each component's CPU is read on
its own from /proc (Redis: ``INFO cpu``), and each core's busy time whoever ran
there: this machine is shared, and ``server_core_busy_percent`` above the
replica's own share is someone else's. Every Redis is a throwaway redis-server
owned by the run. Each configuration ends by waiting until the clients hold
exactly what the replicas counted: ``exact`` when messages sent = accepted +
refused and every member of a room received every accepted message once.

Everything listens on 127.0.0.1 and every process is stopped (every Redis, and
its keys, with it) when the run ends or fails; processes are killed if the run
itself is. The default run takes about two minutes; logs of the last run stay
in ``--run-dir``.

    .venv/bin/python bench/scaleout.py [--seconds 5] [--json build/bench/scaleout.json]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import components  # noqa: E402  (sibling scripts, not a package)
from components import Stack  # noqa: E402
from document import Run, git_facts  # noqa: E402
from fanout import Generator, Sleeper  # noqa: E402
from scaleout_report import FIXED_HEAD, costs, fixed_row, report, summarize, window  # noqa: E402

from scalechat.chat.settings import Settings  # noqa: E402

REPO = HERE.parent
MESSAGE, ERROR = b'{"type":"message"', b'{"type":"error"'
UNAVAILABLE = b'"code":"unavailable"'
FELL_BEHIND = 0.95  # a saturation step that delivers less than this share of its offer ends the ladder
LATE_MS = 5.0  # ... as does a generator whose median send ran this late: it could not offer more
FULL_CORE = 90.0  # percent of a core: full (a replica this busy falls behind)
MAX_SECONDS, MAX_STEPS = 30.0, 12


# --- the clients ----------------------------------------------------------------------


class Clients(Generator):
    """bench/fanout.py's open-loop senders, with receipts counted by frame type."""

    def __init__(self, port: int, rooms: int, per_room: int) -> None:
        super().__init__(port, rooms, per_room)
        self.messages = 0  # message frames received
        self.refused = 0  # error frames with code unavailable
        self.errors = 0  # every error frame
        self.lag: list[float] = []  # per send: seconds after its due time (the generator's lateness)

    def _receiver(self, me: bytes):
        marker = b'"text":"' + me + b":"

        def on_messages(payloads: list[bytes]) -> None:
            self.delivered += len(payloads)  # every frame: open() waits for the histories
            now = time.perf_counter()
            for payload in payloads:
                if payload.startswith(MESSAGE):
                    self.messages += 1
                    if self.measuring and (start := payload.find(marker)) >= 0:
                        start += len(marker)  # our own echo: latency from the scheduled send
                        self.echo.append(now - float(payload[start:payload.index(b":", start)]))
                elif payload.startswith(ERROR):
                    self.errors += 1
                    self.refused += UNAVAILABLE in payload
        return on_messages

    async def run(self, rate_per_client: float, seconds: float) -> None:
        """Send for ``seconds`` at ``rate_per_client`` each, with random phases.

        No drain: a window ends when its sends end, with about as much work in
        flight as when it began; ``settle`` waits for the rest at the end.
        """
        period = 1.0 / rate_per_client
        start = time.perf_counter() + 0.02
        due = [(start + random.random() * period, i) for i in range(len(self.clients))]
        heapq.heapify(due)
        names = [f"c{i // self.per_room}-{i % self.per_room}" for i in range(len(self.clients))]
        pad, end, sleeper = "x" * 60, start + seconds, Sleeper()
        self.measuring = True
        try:
            while (now := time.perf_counter()) < end:
                while due[0][0] <= now:  # catch up: latency counts from the due time
                    when, i = due[0]
                    self.clients[i].send_text(orjson.dumps(
                        {"type": "message", "text": f"{names[i]}:{when:.6f}:{pad}"}))
                    self.sent += 1
                    self.lag.append(now - when)
                    heapq.heapreplace(due, (when + period, i))
                await sleeper.until(min(due[0][0], end))
        finally:
            sleeper.close()


# --- one configuration's end -----------------------------------------------------------


async def settle(stack: Stack, gen: Clients, per_room: int, timeout: float) -> dict:
    """Wait until the clients hold exactly what the replicas accepted; the totals since start."""
    deadline = time.monotonic() + timeout
    while True:
        totals = {key: round(sum(r.scrape()[key] for r in stack.replicas))
                  for key in ("received", "delivered", "unavailable", "rate_limited")}
        expected = totals["received"] * per_room
        exact = (gen.sent == totals["received"] + totals["unavailable"] + totals["rate_limited"]
                 and gen.messages == expected == totals["delivered"]
                 and gen.refused == totals["unavailable"])
        if exact or time.monotonic() > deadline:
            return {"exact": exact, "sent": gen.sent, "accepted": totals["received"],
                    "refused_unavailable": totals["unavailable"],
                    # Refused as unavailable, and yet stored and delivered (a resend duplicates it).
                    "refused_yet_delivered": max(0, gen.messages - expected) // per_room,
                    "rate_limited": totals["rate_limited"], "expected_deliveries": expected,
                    "replica_deliveries": totals["delivered"], "client_messages": gen.messages,
                    "client_error_frames": gen.errors}
        await asyncio.sleep(0.05)


def rate_per_client(deliveries_per_s: float, rooms: int, per_room: int) -> float:
    """Each message reaches its whole room, the sender's echo included."""
    return deliveries_per_s / (rooms * per_room * per_room)


# --- the three measurements -------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    run_dir: Path
    cores: tuple[int, int]  # (server core, generator core)
    seconds: float
    warm_up: float
    idle_seconds: float
    load: float
    saturation_start: float
    step_seconds: float
    steps: int
    step_factor: float
    scaleout_load: float
    settle_timeout: float = 15.0


async def fixed_run(opt: Options, scenario: tuple[int, int], broker: str) -> dict:
    rooms, per_room = scenario
    rate = rate_per_client(opt.load, rooms, per_room)
    stack = Stack.start(opt.run_dir / f"fixed-{rooms}x{per_room}-{broker}", opt.cores, broker, 1,
                        int(broker == "redis"), False)
    gen = Clients(stack.port, rooms, per_room)
    try:
        replica, rss0 = stack.replicas[0], stack.replicas[0].rss()
        await gen.open()
        rss1 = replica.rss()
        redis_memory0 = stack.shards[0].used_memory() if stack.shards else 0
        await asyncio.sleep(0.2)  # the joins' presence events
        idle = await stack.idle_rate(opt.idle_seconds)
        await gen.run(rate, opt.warm_up)
        before = stack.snapshot(gen)
        await gen.run(rate, opt.seconds)
        result = window(before, stack.snapshot(gen), gen.echo, gen.lag, idle)
        check = await settle(stack, gen, per_room, opt.settle_timeout)
        redis_memory = stack.shards[0].used_memory() - redis_memory0 if stack.shards else None
    finally:
        await gen.close()
        stack.stop()
    return {"scenario": f"{rooms}x{per_room}", "rooms": rooms, "clients_per_room": per_room,
            "broker": broker, "offered_deliveries_per_s": opt.load,
            "messages_per_room_per_s": round(opt.load / per_room / rooms, 2),
            **result, "check": check,
            "replica_rss_bytes_idle": rss0,
            "replica_rss_bytes_per_connection": round((rss1 - rss0) / (rooms * per_room)),
            # Everything stored since the clients joined (streams, seqs, presence), per message.
            "redis_memory_bytes_per_accepted": (round(redis_memory / max(check["accepted"], 1))
                                                if redis_memory is not None else None)}


async def saturation_run(opt: Options, scenario: tuple[int, int], broker: str) -> dict:
    rooms, per_room = scenario
    stack = Stack.start(opt.run_dir / f"saturation-{rooms}x{per_room}-{broker}", opt.cores, broker,
                        1, int(broker == "redis"), False)
    gen = Clients(stack.port, rooms, per_room)
    steps, load = [], opt.saturation_start
    try:
        await gen.open()
        await gen.run(rate_per_client(load, rooms, per_room), opt.warm_up)
        for _ in range(opt.steps):  # a replica that collapsed under overload stays down: stop there
            before = stack.snapshot(gen)
            await gen.run(rate_per_client(load, rooms, per_room), opt.step_seconds)
            step = {"offered_deliveries_per_s": round(load),
                    **window(before, stack.snapshot(gen), gen.echo, gen.lag)}
            steps.append(step)
            print(f"  saturation {broker:6} offered {load:>9,.0f}/s: delivered "
                  f"{step['delivered_per_s']:>9,.0f}/s; replica {step['replica_cpu_percent']:.0f}% "
                  f"(others {step['server_core_others_percent']:.0f}% of its core), generator late "
                  f"{step['generator_send_lag_p50_ms']:.1f} ms p50 (others "
                  f"{step['support_core_others_percent']:.0f}% of its core)", flush=True)
            if (step["delivered_per_s"] < FELL_BEHIND * load
                    or step["generator_send_lag_p50_ms"] > LATE_MS):
                break
            load *= opt.step_factor
        check = await settle(stack, gen, per_room, opt.settle_timeout)
    finally:
        await gen.close()
        stack.stop()
    top, last = max(steps, key=lambda s: s["delivered_per_s"]), steps[-1]
    limited_by = ("the replica's CPU" if last["replica_cpu_percent"] >= FULL_CORE else
                  "the generator, late" if last["generator_send_lag_p50_ms"] > LATE_MS else
                  "the replica's core, shared with other processes"
                  if last["server_core_busy_percent"] >= FULL_CORE else
                  "the number of steps" if len(steps) == opt.steps
                  and last["delivered_per_s"] >= FELL_BEHIND * last["offered_deliveries_per_s"] else
                  "the replica, with CPU to spare")
    return {"scenario": f"{rooms}x{per_room}", "broker": broker, "steps": steps,
            "saturation_deliveries_per_s": top["delivered_per_s"],
            "replica_cpu_percent_at_saturation": top["replica_cpu_percent"],
            "limited_by": limited_by,
            # What one full replica core would deliver at the top step's cost per delivery.
            "deliveries_per_replica_cpu_s": round(top["delivered_per_s"]
                                                  / max(top["replica_cpu_percent"] / 100, 1e-9)),
            "refused_unavailable": sum(s["refused_unavailable"] for s in steps),
            # ... in the steps the replica kept up with: loads its CPU could carry.
            "refused_unavailable_sustained": sum(
                s["refused_unavailable"] for s in steps
                if s["delivered_per_s"] >= FELL_BEHIND * s["offered_deliveries_per_s"]),
            "check": check}


async def busy_shard_run(opt: Options, seconds: float) -> dict:
    """Redis CPU per message with Redis busy (see the module docstring, 4)."""
    server, support = opt.cores
    shard = components.start_redis(0, support, opt.run_dir / "busy-shard")
    try:
        await asyncio.sleep(0.2)
        cpu0, t0 = shard.info_cpu(), time.perf_counter()
        await asyncio.sleep(opt.idle_seconds)
        idle = (shard.info_cpu() - cpu0) / (time.perf_counter() - t0)
        cpu0, t0 = shard.info_cpu(), time.perf_counter()
        pings = 0
        while pings < 1000 * opt.idle_seconds:  # ~1,000 PINGs/s: one wake-up each
            shard.client.ping()
            pings += 1
            await asyncio.sleep(0.001)
        ping_s = time.perf_counter() - t0
        wake_us = ((shard.info_cpu() - cpu0) - idle * ping_s) / pings * 1e6
        argv = ["taskset", "-c", str(server), sys.executable, str(HERE / "redis_publisher.py"),
                "--redis-url", shard.url, "--seconds", str(seconds)]
        cpu0, t0 = shard.info_cpu(), time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
        elapsed = time.perf_counter() - t0
        redis_s = shard.info_cpu() - cpu0
        if proc.returncode:
            raise RuntimeError(f"bench/redis_publisher.py exited with {proc.returncode}")
        run = json.loads(out)
    finally:
        shard.stop()
    published = max(run["published"], 1)
    return {"rooms": 100, "seconds": run["seconds"], "published": run["published"],
            "refused_unavailable": run["refused"], "fanned_out": run["fanned_out"],
            "messages_per_s": round(run["published"] / run["seconds"]),
            "redis_cpu_percent": round(100 * redis_s / elapsed, 1),
            "redis_net_cpu_us_per_message": round((redis_s - idle * elapsed) / published * 1e6, 2),
            "redis_idle_cpu_percent": round(100 * idle, 2),
            "redis_cpu_us_per_wake_up": round(wake_us, 1)}


async def scaleout_run(opt: Options, scenario: tuple[int, int], count: int,
                       routing: str = "room-hash") -> dict:
    rooms, per_room = scenario
    rate = rate_per_client(opt.scaleout_load, rooms, per_room)
    stack = Stack.start(opt.run_dir / f"scaleout-{count}x{count}-{routing}", opt.cores, "redis",
                        count, count, True, routing)
    gen = Clients(stack.port, rooms, per_room)
    try:
        await gen.open()
        await asyncio.sleep(0.2)
        idle = await stack.idle_rate(opt.idle_seconds)
        await gen.run(rate, opt.warm_up)
        before = stack.snapshot(gen)
        await gen.run(rate, opt.seconds)
        after = stack.snapshot(gen)
        result = window(before, after, gen.echo, gen.lag, idle)
        check = await settle(stack, gen, per_room, opt.settle_timeout)
        keys = [s.keys() for s in stack.shards]
    finally:
        await gen.close()
        stack.stop()
    cpu = sum(result["replica_cpu_s"]) + result["redis_cpu_s"] + result["nginx_cpu_s"]
    config = f"{count} replica{'s' * (count > 1)} + {count} shard{'s' * (count > 1)}"
    return {"config": config + ("" if routing == "room-hash" else f", {routing} routing"),
            "replicas": count, "shards": count, "routing": routing, "scenario": f"{rooms}x{per_room}",
            "offered_deliveries_per_s": opt.scaleout_load, **result, "check": check,
            "connections_per_replica": [round(c["connections"]) for c in after.counters],
            "rooms_per_replica": [round(c["rooms"]) for c in after.counters],
            "keys_per_shard": keys,
            # Random routing: a room's members on several replicas, each taking the room's messages.
            "broker_messages_per_published": round(result["redis_messages"]
                                                   / max(result["published"], 1), 3),
            # A broker that takes one URL puts every room on the first shard.
            "sharded": all(k > 0 for k in keys) and all(c > 0 for c in result["redis_commands"]),
            "cpu_s": round(cpu, 3), "deliveries_per_cpu_s": round(result["delivered"] / cpu)}


# --- the run ---------------------------------------------------------------------------


def versions() -> dict:
    redis = subprocess.run([components.find_program("redis-server"), "--version"],
                           capture_output=True, text=True).stdout.split()
    nginx = subprocess.run([components.find_program("nginx"), "-v"], capture_output=True, text=True)
    return {"redis_server": next((w[2:] for w in redis if w.startswith("v=")), None),
            "nginx": nginx.stderr.strip().rpartition("/")[2] or None,
            "python": sys.version.split()[0]}


def scenario(text: str) -> tuple[int, int]:
    rooms, sep, per_room = text.partition("x")
    if not (sep and rooms.isdigit() and per_room.isdigit() and int(rooms) > 0 and int(per_room) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROOMSxCLIENTS, e.g. 100x4")
    return int(rooms), int(per_room)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--seconds", type=float, default=5.0, help="measured window of each fixed and scale-out "
        f"run, at most {MAX_SECONDS:g} (default 5)")
    add("--warm-up", type=float, default=1.0, help="load before each measured window (default 1)")
    add("--idle-seconds", type=float, default=1.0,
        help="Redis idle rate probe, clients connected and silent (default 1)")
    add("--load", type=float, default=20_000, help="fixed load in deliveries/s (default 20000)")
    add("--scenarios", type=scenario, nargs="*", default=[(100, 4), (1, 100), (100, 10)],
        metavar="RxC", help="fixed-load scenarios, rooms x clients (default 100x4 1x100 100x10)")
    add("--saturation-scenario", type=scenario, default=(100, 4), metavar="RxC")
    add("--saturation-start", type=float, default=5_000,
        help="deliveries/s of the first saturation step (default 5000)")
    add("--steps", type=int, default=11, help=f"saturation steps at most, <= {MAX_STEPS}; 0 skips "
        "(default 11: from 5,000 to 288,000 deliveries/s by 1.5x)")
    add("--step-seconds", type=float, default=2.0)
    add("--step-factor", type=float, default=1.5, help="load multiplier between saturation steps")
    add("--scaleout-scenario", type=scenario, default=(100, 4), metavar="RxC")
    add("--scaleout-load", type=float, default=10_000,
        help="deliveries/s offered to both scale-out configurations (default 10000); 0 skips")
    add("--random-routing", action="store_true",
        help="also 2 replicas + 2 shards behind nginx's random balancing: a room's members spread "
             "over the replicas, and each replica with a member takes the room's messages")
    add("--busy-seconds", type=float, default=4.0,
        help="busy-shard run: Redis CPU per message with Redis busy; 0 skips (default 4)")
    add("--json", type=Path, default=REPO / "build" / "bench" / "scaleout.json")
    add("--run-dir", type=Path, default=REPO / "build" / "bench" / "scaleout-run",
        help="logs and Redis folders of the run")
    args = parser.parse_args(argv)
    for name in ("seconds", "warm_up", "step_seconds"):
        if not 0 < getattr(args, name) <= MAX_SECONDS:
            parser.error(f"--{name.replace('_', '-')} must be in (0, {MAX_SECONDS:g}]")
    if not 0 <= args.steps <= MAX_STEPS:
        parser.error(f"--steps must be between 0 and {MAX_STEPS}")
    for name in ("load", "saturation_start", "idle_seconds"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if not 0 <= args.busy_seconds <= MAX_SECONDS:
        parser.error(f"--busy-seconds must be between 0 and {MAX_SECONDS:g} (0 skips it)")
    if args.scaleout_load < 0:
        parser.error("--scaleout-load must be >= 0 (0 skips the scale-out runs)")
    if not args.step_factor > 1:
        parser.error("--step-factor must be > 1")
    return args


def budget(args: argparse.Namespace) -> float:
    """An upper bound of the run's duration: it stops itself after this."""
    per_run = 25 + args.warm_up + args.idle_seconds + args.seconds + 15  # start, settle, stop
    return (2 * len(args.scenarios) * per_run + 2 * (per_run + args.steps * args.step_seconds)
            + 3 * per_run + args.busy_seconds + 2 * args.idle_seconds + 60)


async def measure(args: argparse.Namespace, opt: Options) -> dict:
    fixed, saturation, scaleout = [], [], []
    for rooms_clients in args.scenarios:
        for broker in ("memory", "redis"):
            fixed.append(await fixed_run(opt, rooms_clients, broker))
            print(("" if len(fixed) > 1 else FIXED_HEAD + "\n") + fixed_row(fixed[-1]), flush=True)
    if args.steps:
        for broker in ("memory", "redis"):
            saturation.append(await saturation_run(opt, args.saturation_scenario, broker))
    if args.scaleout_load:
        for count, routing in ((1, "room-hash"), (2, "room-hash"),
                               *([(2, "random")] if args.random_routing else [])):
            scaleout.append(await scaleout_run(opt, args.scaleout_scenario, count, routing))
            print(f"  scale-out {scaleout[-1]['config']}: {scaleout[-1]['deliveries_per_cpu_s']:,} "
                  "deliveries per CPU-second", flush=True)
    busy = None
    if args.busy_seconds:
        busy = await busy_shard_run(opt, args.busy_seconds)
        print(f"  busy shard: {busy['messages_per_s']:,} messages/s at {busy['redis_cpu_percent']}% "
              f"of Redis' core, {busy['redis_net_cpu_us_per_message']} us each; one wake-up "
              f"{busy['redis_cpu_us_per_wake_up']} us", flush=True)
    return {"fixed": fixed, "saturation": saturation, "scaleout": scaleout, "busy_shard": busy}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    available = sorted(os.sched_getaffinity(0))
    run = Run("scaleout", __file__, argv)  # host facts before this process is pinned to one core
    if len(available) < 2:
        raise SystemExit("bench/scaleout.py needs 2 cores: replicas on one, the rest on the other")
    support, server = available[0], available[1]  # the generator on the first, replicas on the second
    os.sched_setaffinity(0, {support})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: every process is stopped
    history_size = Settings().history_size
    host = run.host
    host.update(versions(), bench_commit=git_facts(REPO)["commit"],
                placement={"replicas": f"core {server}, alone",
                           "generator, redis, nginx": f"core {support}"})
    changed = host["code"]["dirty_paths"]
    print(f"command: {run.command}\nhost: {host['cpu_model']}, {host['cpu_usable']} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in host['loadavg_start'])}; code {host['code']['commit']}"
          + (f" with changes in {len(changed)} file(s)" if changed else "")
          + f"; replicas on core {server}, generator, Redis and nginx on core {support}", flush=True)
    shutil.rmtree(args.run_dir, ignore_errors=True)  # the logs of this run only
    args.run_dir.mkdir(parents=True)
    opt = Options(args.run_dir, (server, support), args.seconds, args.warm_up, args.idle_seconds,
                  args.load, args.saturation_start, args.step_seconds, args.steps,
                  args.step_factor, args.scaleout_load)
    limit = budget(args)
    try:
        result = uvloop.run(asyncio.wait_for(measure(args, opt), limit))
    except TimeoutError:
        raise SystemExit(f"the run exceeded its {limit:.0f} s budget; logs in {args.run_dir}") from None
    result["summary"] = summarize(result["fixed"], result["saturation"], result["scaleout"],
                                  result["busy_shard"])
    result["costs"] = costs(result["fixed"], result["scaleout"], history_size, result["busy_shard"])
    print(report(result))
    run.write(args.json, {"seconds": args.seconds, "warm_up": args.warm_up,
                          "idle_seconds": args.idle_seconds, "load": args.load,
                          "saturation_scenario": "x".join(map(str, args.saturation_scenario)),
                          "saturation_start": args.saturation_start,
                          "steps": args.steps, "step_seconds": args.step_seconds,
                          "step_factor": args.step_factor,
                          "scaleout_scenario": "x".join(map(str, args.scaleout_scenario)),
                          "scaleout_load": args.scaleout_load,
                          "random_routing": args.random_routing,
                          "busy_seconds": args.busy_seconds}, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
