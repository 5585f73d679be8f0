"""The processes bench/scaleout.py measures: replicas, Redis shards and nginx, each pinned.

Each one is started under ``taskset -c CORE`` on 127.0.0.1 with ports picked
here, logs into the run folder, and is stopped by its PID (SIGTERM, or SIGQUIT
for nginx; SIGKILL after a deadline); each also gets SIGKILL if the benchmark
itself dies (``PR_SET_PDEATHSIG``), so an interrupted run leaves nothing behind.
Nothing is read from inside them: CPU comes from ``/proc/<pid>/stat`` (nginx:
master and workers), a Redis shard's also from ``INFO cpu`` (getrusage, µs
resolution, fine enough for its idle rate), counters from a replica's
``/metrics``. A :class:`Stack` is one configuration of them, and its
:class:`Snap` everything a measured window is computed from.

Redis shards are throwaway ``redis-server`` processes owned by the benchmark (no
persistence, their own folder): nothing else pollutes their CPU figures, and
their keys are gone when they stop.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from procs import TICK, cpu_seconds, free_ports, process_tree, write_syscalls
from redis import Redis
from redis.exceptions import RedisError

from scalechat.cluster import nginx as cluster_nginx

HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # prctl(2)
_libc = ctypes.CDLL(None, use_errno=True)
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
# The replica's counters the benchmark reads; labelled series are written as in the exposition.
UNAVAILABLE = 'scalechat_messages_rejected_total{reason="unavailable"}'
SERIES = {
    "received": "scalechat_messages_received_total",  # accepted and published
    "delivered": "scalechat_messages_delivered_total",  # queued to local recipients
    "broker_received": "scalechat_broker_messages_received_total",
    "unavailable": UNAVAILABLE,
    "rate_limited": 'scalechat_messages_rejected_total{reason="rate_limited"}',
    "slow_consumers": "scalechat_slow_consumer_disconnects_total",
    "connections": "scalechat_connections",
    "rooms": "scalechat_rooms",
}


def find_program(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        raise SystemExit(f"{name} is not installed (apt-get install {name})")
    return path


def core_times(cores: tuple[int, ...]) -> dict[int, tuple[float, float]]:
    """(busy, steal) seconds of each core so far, whoever ran there (``/proc/stat``).

    Busy is user, nice, system, irq and softirq time: this machine is shared,
    and a replica's core may also run other processes; steal is time the
    hypervisor gave to other guests.
    """
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, ticks[:8])
            out[int(name[3:])] = ((user + nice + system + irq + softirq) / TICK, steal / TICK)
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Pinned:
    """One started process, pinned to ``core``."""

    name: str
    core: int
    proc: subprocess.Popen
    log: Path
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds of the process and its children (nginx's workers)."""
        return sum(cpu_seconds(p) for p in process_tree(self.pid))

    def alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise SystemExit(f"{self.name} exited with {self.proc.returncode}; "
                             f"{self.log}: {' | '.join(tail) or '(empty)'}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the benchmark dies, even by SIGKILL."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start_pinned(name: str, core: int, argv: list[str], log: Path,
                 env: dict[str, str] | None = None, stop_signal: int = signal.SIGTERM) -> Pinned:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(["taskset", "-c", str(core), *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent)
    return Pinned(name, core, proc, log, stop_signal)


def wait_for(what: Pinned, ready, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        what.alive()
        if time.monotonic() > deadline:
            raise SystemExit(f"{what.name} not ready after {timeout:g}s (log: {what.log})")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


# --- Redis ---------------------------------------------------------------------------


@dataclass
class RedisShard(Pinned):
    port: int = 0
    client: Redis | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def info_cpu(self) -> float:
        """CPU seconds (user + system, all threads) as Redis reports them."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def commands(self) -> int:
        return int(self.client.info("stats")["total_commands_processed"])

    def keys(self) -> int:
        return int(self.client.dbsize())

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        super().stop()


def start_redis(index: int, core: int, run_dir: Path) -> RedisShard:
    """A throwaway redis-server: no persistence, its own folder; the port is picked here."""
    port, = free_ports(1)
    folder = run_dir / f"redis-{index}"
    folder.mkdir(parents=True, exist_ok=True)
    # --port 0 would disable TCP rather than pick a port, hence the pick above.
    argv = [find_program("redis-server"), "--bind", HOST, "--port", str(port), "--dir", str(folder),
            "--daemonize", "no", "--save", "", "--appendonly", "no"]
    base = start_pinned(f"redis-{index}", core, argv, run_dir / "logs" / f"redis-{index}.log")
    shard = RedisShard(base.name, core, base.proc, base.log, port=port)
    shard.client = Redis(host=HOST, port=port, socket_timeout=5, socket_connect_timeout=1)

    def answers() -> bool:
        try:
            return bool(shard.client.ping())
        except (RedisError, OSError):
            return False

    try:
        wait_for(shard, answers)
    except BaseException:
        shard.stop()
        raise
    return shard


# --- replicas ------------------------------------------------------------------------


@dataclass
class Replica(Pinned):
    port: int = 0
    metrics_port: int = 0

    def scrape(self) -> dict[str, float]:
        """The counters in SERIES (by their short names) from the replica's /metrics."""
        text = urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics",
                                      timeout=5).read().decode()
        wanted = {series: key for key, series in SERIES.items()}
        found = {}
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series in wanted:
                found[wanted[series]] = float(value)
        missing = set(SERIES) - set(found)
        if missing:
            raise SystemExit(f"{self.name}'s /metrics lacks {', '.join(sorted(missing))}")
        return found

    def rss(self) -> int:
        return rss_bytes(self.pid)


def start_replica(index: int, core: int, run_dir: Path, broker: str, redis_urls: list[str],
                  prefix: str, extra: list[str] = ()) -> Replica:
    """``scalechat serve`` with this interpreter; ``redis_urls`` joined by commas (one per shard)."""
    port, metrics_port = free_ports(2)
    node = f"replica-{index}"
    argv = [sys.executable, "-m", "scalechat.cli", "serve", "--host", HOST, "--port", str(port),
            "--metrics-port", str(metrics_port), "--broker", broker, "--node-id", node,
            # No client may be refused for its rate: the generator sends exactly what it must.
            "--rate-limit", "1000000", "--rate-burst", "1000000", "--log-level", "warning", *extra]
    if broker == "redis":
        argv += ["--redis-url", ",".join(redis_urls), "--redis-prefix", prefix]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALECHAT_")}
    base = start_pinned(node, core, argv, run_dir / "logs" / f"{node}.log", env)
    replica = Replica(base.name, core, base.proc, base.log, port=port, metrics_port=metrics_port)
    try:
        wait_for(replica, lambda: http_ok(f"http://{HOST}:{port}/readyz"))
    except BaseException:
        replica.stop()
        raise
    return replica


# --- nginx ---------------------------------------------------------------------------


@dataclass
class Balancer(Pinned):
    port: int = 0


def start_nginx(core: int, run_dir: Path, backends: list[int],
                routing: str = cluster_nginx.Routing.ROOM_HASH) -> Balancer:
    """nginx with the cluster's own configuration over ``backends`` (room hash by default)."""
    binary = find_program("nginx")
    port, = free_ports(1)
    layout = cluster_nginx.NginxLayout(run_dir / "nginx", run_dir / "logs")
    cluster_nginx.write_config(layout, port, backends, cluster_nginx.Routing(routing))
    cluster_nginx.check_config(binary, layout)
    base = start_pinned("nginx", core, layout.argv(binary), layout.output,
                        stop_signal=signal.SIGQUIT)
    balancer = Balancer(base.name, core, base.proc, base.log, signal.SIGQUIT, port=port)
    try:
        wait_for(balancer, lambda: http_ok(f"http://{HOST}:{port}/healthz"))
    except BaseException:
        balancer.stop()
        raise
    return balancer


# --- one configuration ---------------------------------------------------------------


@dataclass
class Snap:
    at: float
    counters: list[dict[str, float]]  # per replica
    replica_cpu: list[float]
    replica_writes: list[int]
    redis_cpu: list[float]  # INFO cpu, per shard
    redis_commands: list[int]
    nginx_cpu: float
    own_cpu: float
    sent: int
    messages: int
    echoes: int
    sends: int  # len(gen.lag)
    cores: tuple[tuple[float, float], tuple[float, float]]  # (busy, steal) s: server, support core


@dataclass
class Stack:
    """Replicas on the server core; Redis shards and nginx on the generator's core."""

    cores: tuple[int, int] = (1, 0)  # (server, support)
    replicas: list[Replica] = field(default_factory=list)
    shards: list[RedisShard] = field(default_factory=list)
    balancer: Pinned | None = None

    @classmethod
    def start(cls, run_dir: Path, cores: tuple[int, int], broker: str, replicas: int,
              shards: int, balanced: bool, routing: str = "room-hash") -> Stack:
        """Start the processes; ``run_dir`` keeps this configuration's logs and Redis folders."""
        server, support = cores
        stack = cls(cores)
        try:
            stack.shards = [start_redis(i, support, run_dir) for i in range(shards)]
            prefix = f"scalechat-bench-{secrets.token_hex(4)}"
            stack.replicas = [start_replica(i, server, run_dir, broker,
                                            [s.url for s in stack.shards], prefix)
                              for i in range(replicas)]
            if balanced:
                stack.balancer = start_nginx(support, run_dir, [r.port for r in stack.replicas],
                                             routing)
        except BaseException:
            stack.stop()
            raise
        return stack

    @property
    def port(self) -> int:
        return self.balancer.port if self.balancer else self.replicas[0].port

    def snapshot(self, gen) -> Snap:
        """Every counter a window needs; ``gen`` is the clients (bench/scaleout.py's Clients)."""
        return Snap(time.perf_counter(), [r.scrape() for r in self.replicas],
                    [r.cpu() for r in self.replicas], [write_syscalls(r.pid) for r in self.replicas],
                    [s.info_cpu() for s in self.shards], [s.commands() for s in self.shards],
                    self.balancer.cpu() if self.balancer else 0.0, time.process_time(),
                    gen.sent, gen.messages, len(gen.echo), len(gen.lag), self.core_times())

    def core_times(self) -> tuple[tuple[float, float], tuple[float, float]]:
        times = core_times(self.cores)
        return times[self.cores[0]], times[self.cores[1]]

    async def idle_rate(self, seconds: float) -> float:
        """Redis CPU seconds per second with the clients connected and silent (all shards)."""
        if not self.shards:
            return 0.0
        before, t0 = sum(s.info_cpu() for s in self.shards), time.perf_counter()
        await asyncio.sleep(seconds)
        return (sum(s.info_cpu() for s in self.shards) - before) / (time.perf_counter() - t0)

    def stop(self) -> None:
        for proc in [*([self.balancer] if self.balancer else []), *self.replicas, *self.shards]:
            proc.stop()  # shards last: replicas leave while Redis still answers
