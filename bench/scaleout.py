"""Scale-out benchmark: what Redis and the replicas pay per message, by routing.

One fixed load (50 rooms x 4 clients, each client 2 msg/s, ~100-byte frames)
goes through the cluster's nginx (``scalechat.cluster``) in three configurations:
1 replica; 2 replicas with room-hash routing; 2 replicas with random routing.
Over a fixed window it measures, summed over the replicas:

  * published messages (``scalechat_messages_received_total``) and messages the
    replicas took from Redis pub/sub (``scalechat_broker_messages_received_total``):
    with room-hash a message reaches the one replica of its room; with random
    routing it reaches every replica a member of the room landed on;
  * deliveries (``scalechat_messages_delivered_total``, checked against what the
    clients received) and replica CPU seconds (``/proc/<pid>/stat``);
  * Redis CPU (``INFO cpu``). By default the Redis at 127.0.0.1:6379 is shared
    with everything else on the machine: its idle rate is measured just before
    each load, and the figure net of it is the one to read. ``--own-redis`` gives
    each configuration a throwaway redis-server of its own instead (pinned with
    the cluster), which nothing else uses.

The cluster (replicas, nginx, its own Redis) runs pinned to one core and the
generator (this process) to the other when there are 2. Each configuration has
its own run folder under build/bench/scaleout-* and its own Redis key prefix
(deleted afterwards). Rates are per second of sending; CPU shares are over the
window, which adds a 0.5 s drain. Everything stays on 127.0.0.1; a run takes
about 90 s.

    .venv/bin/python bench/scaleout.py [--seconds 20] [--own-redis] \
        [--json build/bench/scaleout.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import uvloop
from redis import Redis

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from fanout import Generator, cpu_seconds, process_tree  # noqa: E402  (a sibling script, not a package)

from scalechat.cluster import Cluster, redis_server  # noqa: E402
from scalechat.cluster.state import STATE_FILE  # noqa: E402

REDIS_URL = redis_server.DEFAULT_URL
ROOMS, PER_ROOM, RATE = 50, 4, 2.0  # rooms, clients per room, messages/s per client
WARM_UP, IDLE_PROBE = 3.0, 2.0  # seconds
MAX_SECONDS = 40.0  # keeps a run under 3 minutes
CONFIGS = (("1-replica", 1, "room-hash"), ("2-room-hash", 2, "room-hash"),
           ("2-random", 2, "random"))
COUNTERS = {"published": "scalechat_messages_received_total",
            "broker": "scalechat_broker_messages_received_total",
            "delivered": "scalechat_messages_delivered_total"}
GAUGES = {"connections": "scalechat_connections", "rooms": "scalechat_rooms"}


@dataclass
class Result:
    config: str
    replicas: int
    routing: str
    redis: str  # "shared" or "own"
    send_seconds: float
    seconds: float  # the window: sending plus the drain
    published: int
    broker_received: int
    delivered: int
    client_received: int
    connections_per_replica: list[int]
    rooms_per_replica: list[int]  # rooms with a local member, i.e. subscribed in Redis
    replica_cpu_s: float
    nginx_cpu_s: float
    generator_cpu_s: float
    redis_cpu_s: float
    redis_idle_cpu_per_s: float  # before the load: other users of the shared Redis, pings
    broker_per_published: float
    replica_cpu_us_per_delivery: float
    redis_cpu_us_per_published: float
    redis_net_cpu_us_per_published: float  # minus the idle rate over the window


# --- probes ---------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """The unlabelled samples of one replica's /metrics."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    wanted = set(COUNTERS.values()) | set(GAUGES.values())
    samples = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            samples[name] = float(value)
    missing = wanted - set(samples)
    if missing:
        raise SystemExit(f"{url} lacks {', '.join(sorted(missing))}: is the server up to date?")
    return samples


def redis_cpu(client: Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def pin(pids: list[int], cores: set[int]) -> None:
    """Every thread of ``pids`` onto ``cores`` (threads started later inherit it)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), cores)
            except ProcessLookupError:
                pass


@dataclass
class Snapshot:
    at: float
    counters: dict[str, int]
    replicas: list[dict[str, float]]
    replica_cpu: float
    nginx_cpu: float
    redis_cpu: float
    own_cpu: float
    client_received: int


def snapshot(cluster: Cluster, nginx_pids: list[int], redis: Redis, gen: Generator) -> Snapshot:
    replicas = [scrape(r.metrics_url) for r in cluster.replicas]
    return Snapshot(
        at=time.perf_counter(),
        counters={key: int(sum(r[name] for r in replicas)) for key, name in COUNTERS.items()},
        replicas=replicas,
        replica_cpu=sum(cpu_seconds(r.process.pid) for r in cluster.replicas),
        nginx_cpu=sum(cpu_seconds(pid) for pid in nginx_pids),
        redis_cpu=redis_cpu(redis), own_cpu=time.process_time(),
        client_received=gen.delivered)


# --- one configuration ------------------------------------------------------------------


def run_dir_of(config: str) -> Path:
    return REPO / "build" / "bench" / f"scaleout-{config}"


def start_cluster(config: str, replicas: int, routing: str, prefix: str,
                  own_redis: bool) -> Cluster:
    run_dir = run_dir_of(config)
    if (run_dir / STATE_FILE).exists():  # left by an interrupted earlier run of this bench
        Cluster.load(run_dir).down()
    return Cluster.up(run_dir, replicas=replicas, port=0, redis_url=REDIS_URL,
                      own_redis=own_redis, redis_prefix=prefix, with_prometheus=False,
                      routing=routing, serve_args=["--log-level=warning"], timeout=20)


async def wait_connected(cluster: Cluster, clients: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        samples = [scrape(r.metrics_url) for r in cluster.replicas]
        if sum(s[GAUGES["connections"]] for s in samples) >= clients:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {sum(s[GAUGES['connections']] for s in samples):.0f} of "
                             f"{clients} clients connected after {timeout:g}s")
        await asyncio.sleep(0.05)


async def measure(config: str, replicas: int, routing: str, cluster: Cluster,
                  cores: tuple[set[int], set[int]] | None, seconds: float) -> Result:
    state = cluster.state
    nginx_pids = process_tree(state.nginx.pid)
    if cores is not None:
        own = [state.redis.pid] if state.redis is not None else []
        pin([p for r in cluster.replicas for p in process_tree(r.process.pid)] + nginx_pids + own,
            cores[0])
    redis = Redis.from_url(state.redis_url, socket_timeout=5)
    gen = Generator(cluster.state.port, ROOMS, PER_ROOM)
    try:
        idle0 = redis_cpu(redis)
        await asyncio.sleep(IDLE_PROBE)
        idle_rate = (redis_cpu(redis) - idle0) / IDLE_PROBE
        await gen.open()
        await wait_connected(cluster, ROOMS * PER_ROOM)
        await gen.run(RATE, WARM_UP)
        before = snapshot(cluster, nginx_pids, redis, gen)
        _, client_received = await gen.run(RATE, seconds)  # includes a 0.5 s drain
        after = snapshot(cluster, nginx_pids, redis, gen)
    finally:
        await gen.close()
        redis.close()
    delta = {key: after.counters[key] - before.counters[key] for key in COUNTERS}
    window = after.at - before.at
    replica_cpu = after.replica_cpu - before.replica_cpu
    redis_cpu_s = after.redis_cpu - before.redis_cpu
    published = max(delta["published"], 1)
    return Result(
        config=config, replicas=replicas, routing=routing,
        redis="own" if state.redis is not None else "shared", send_seconds=seconds,
        seconds=round(window, 3),
        published=delta["published"], broker_received=delta["broker"],
        delivered=delta["delivered"], client_received=client_received,
        connections_per_replica=[int(r[GAUGES["connections"]]) for r in after.replicas],
        rooms_per_replica=[int(r[GAUGES["rooms"]]) for r in after.replicas],
        replica_cpu_s=round(replica_cpu, 3),
        nginx_cpu_s=round(after.nginx_cpu - before.nginx_cpu, 3),
        generator_cpu_s=round(after.own_cpu - before.own_cpu, 3),
        redis_cpu_s=round(redis_cpu_s, 4), redis_idle_cpu_per_s=round(idle_rate, 5),
        broker_per_published=round(delta["broker"] / published, 4),
        replica_cpu_us_per_delivery=round(replica_cpu / max(delta["delivered"], 1) * 1e6, 2),
        redis_cpu_us_per_published=round(redis_cpu_s / published * 1e6, 2),
        redis_net_cpu_us_per_published=round(
            (redis_cpu_s - idle_rate * window) / published * 1e6, 2))


def run_config(config: str, replicas: int, routing: str,
               cores: tuple[set[int], set[int]] | None, seconds: float,
               own_redis: bool) -> Result:
    prefix = f"scalechat-bench-scaleout-{config}-{secrets.token_hex(4)}"
    cluster = start_cluster(config, replicas, routing, prefix, own_redis)
    try:
        return uvloop.run(asyncio.wait_for(
            measure(config, replicas, routing, cluster, cores, seconds), seconds + 40))
    finally:
        cluster.down()  # stops an own Redis, and with it its keys
        if not own_redis:
            redis_server.delete_prefix(REDIS_URL, prefix)


# --- report -----------------------------------------------------------------------------


def table(rows: list[Result]) -> str:
    head = (f"{'config':12} {'pub/s':>6} {'dlv/s':>6} {'broker/pub':>10} {'rooms/replica':>13} "
            f"{'replica cpu us/dlv':>18} {'replica cpu %':>13} {'redis cpu us/pub':>16} "
            f"{'(net)':>6} {'clients-dlv':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        # Clients' count minus the servers': ~0; a busy generator core reads a few
        # deliveries of the warm-up late (positive) or leaves some for after (negative).
        check = r.client_received - r.delivered
        lines.append(
            f"{r.config:12} {r.published / r.send_seconds:>6.0f} "
            f"{r.delivered / r.send_seconds:>6.0f} "
            f"{r.broker_per_published:>10.3f} {'/'.join(map(str, r.rooms_per_replica)):>13} "
            f"{r.replica_cpu_us_per_delivery:>18.1f} {r.replica_cpu_s / r.seconds * 100:>13.1f} "
            f"{r.redis_cpu_us_per_published:>16.1f} {r.redis_net_cpu_us_per_published:>6.1f} "
            f"{check:>11}")
    return "\n".join(lines)


RATIO_FIELDS = ("broker_per_published", "replica_cpu_us_per_delivery",
                "redis_cpu_us_per_published", "redis_net_cpu_us_per_published")


def ratios(rows: list[Result]) -> dict[str, dict[str, float]]:
    by = {r.config: r for r in rows}
    pairs = {"random/room-hash": ("2-random", "2-room-hash"),
             "2-room-hash/1-replica": ("2-room-hash", "1-replica")}
    out = {}
    for name, (top, bottom) in pairs.items():
        if top in by and bottom in by:
            out[name] = {f: round(getattr(by[top], f) / getattr(by[bottom], f), 3)
                         if getattr(by[bottom], f) > 0 else float("nan") for f in RATIO_FIELDS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0,
                        help=f"measurement window per configuration, at most {MAX_SECONDS:g} "
                             "(default: 20)")
    parser.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS],
                        choices=[c[0] for c in CONFIGS])
    parser.add_argument("--own-redis", action="store_true",
                        help="a throwaway redis-server per configuration (pinned with the "
                             f"cluster) instead of the shared one at {REDIS_URL}")
    parser.add_argument("--json", type=Path, default=REPO / "build" / "bench" / "scaleout.json")
    args = parser.parse_args()
    if not 1 <= args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be between 1 and {MAX_SECONDS:g}")
    if not args.own_redis and not redis_server.ping(REDIS_URL):
        raise SystemExit(f"no Redis answers at {REDIS_URL} (or use --own-redis)")
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: (cd {shlex.quote(os.getcwd())} && {command})")
    available = sorted(os.sched_getaffinity(0))
    cores = None
    if len(available) >= 2:
        cores = ({available[0]}, {available[1]})  # (cluster, generator)
        os.sched_setaffinity(0, cores[1])
    load_start = os.getloadavg()
    print(f"load: {ROOMS} rooms x {PER_ROOM} clients, {RATE:g} msg/s each, window "
          f"{args.seconds:g}s; Redis {'own' if args.own_redis else 'shared ' + REDIS_URL}; "
          f"cpus {len(available)}, "
          + (f"cluster on core {available[0]}, generator on core {available[1]}" if cores
             else "not pinned (fewer than 2 cores)")
          + f"; load average {' '.join(f'{x:.2f}' for x in load_start)}", flush=True)
    rows = []
    for config, replicas, routing in CONFIGS:
        if config in args.configs:
            rows.append(run_config(config, replicas, routing, cores, args.seconds,
                                   args.own_redis))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    load_end = os.getloadavg()
    print("\n" + table(rows))
    found = ratios(rows)
    for name, values in found.items():
        print(f"{name}: " + ", ".join(f"{f} {v:.2f}x" for f, v in values.items()))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in load_end)}; "
          + ("Redis: a throwaway one per configuration" if args.own_redis else
             "Redis is shared with the machine's other users ('net' subtracts its idle rate)"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": command, "cwd": os.getcwd(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load": {"rooms": ROOMS, "clients_per_room": PER_ROOM, "msg_per_s_per_client": RATE,
                 "window_s": args.seconds},
        "redis": "own" if args.own_redis else REDIS_URL,
        "machine": {"cpus": len(available), "pinned": cores is not None,
                    "loadavg_start": load_start, "loadavg_end": load_end},
        "results": [asdict(r) for r in rows], "ratios": found}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
