"""A local cluster of real components: replicas, Redis (one or sharded), nginx, Prometheus.

The same object serves ``scalechat cluster up|down|status`` and tests::

    cluster = Cluster.up(tmp_path / "cluster", replicas=2, port=0)   # 0: any free port
    try:
        url = cluster.status()["balancer"].format(room="lobby")
        cluster.kill_replica(0)        # SIGKILL, as a crash
        cluster.restart_replica(0)     # same ports, waits for /readyz
    finally:
        cluster.down()

``up`` starts every process detached (its own session) and returns once every
replica's ``/readyz``, nginx and Prometheus's ``/-/ready`` answer 200; if
anything fails it stops what it started. A run folder holds one cluster at a
time: ``up`` refuses while the processes of an earlier ``up`` still run, and a
lock file serialises commands on the same folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from scalechat.cluster import nginx, prometheus, redis_server
from scalechat.cluster.errors import ClusterError, UsageError
from scalechat.cluster.processes import (HOST, ProcessRecord, check_port_free, find_program,
                                         free_port, http_status, is_running, kill,
                                         require_running, spawn, stop, wait_until)
from scalechat.cluster.state import ClusterState, Replica, load, remove, state_path

DEFAULT_RUN_DIR = Path("build/cluster")
DEFAULT_PORT = 8080
MAX_REPLICAS = 64
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0  # replicas close their sockets within grace_seconds (10 s by default)
# Flags of `scalechat serve` the cluster sets itself for every replica.
OWN_SERVE_FLAGS = ("--host", "--port", "--metrics-port", "--broker", "--redis-url",
                   "--redis-prefix", "--node-id")


@dataclass(frozen=True, slots=True)
class Programs:
    nginx: str
    prometheus: str | None
    promtool: str | None
    redis_server: str | None


def find_programs(*, nginx_bin: str | None = None, prometheus_bin: str | None = None,
                  with_prometheus: bool = True, own_redis: bool = False) -> Programs:
    """Locate the Debian programs; one error naming the packages to install."""
    wanted = [("nginx", "nginx", nginx_bin, True),
              ("prometheus", "prometheus", prometheus_bin, with_prometheus),
              ("redis-server", "redis-server", None, own_redis)]
    found, missing = {}, []
    for program, package, override, needed in wanted:
        found[program] = find_program(program, override) if needed else None
        if needed and found[program] is None:
            missing.append((program, package, override))
    if missing:
        where = ", ".join(f"{prog} (looked for {override})" if override
                          else f"{prog} (looked on PATH and in /usr/sbin)"
                          for prog, _, override in missing)
        packages = " ".join(package for _, package, _ in missing)
        raise ClusterError(f"not installed: {where}; install with: apt-get install {packages}")
    promtool = find_program("promtool") if with_prometheus else None
    return Programs(found["nginx"], found["prometheus"], promtool, found["redis-server"])


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Hold ``<run dir>/.lock`` so two commands never work on one folder at once."""
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClusterError(f"another scalechat cluster command is working on {run_dir}; "
                               "wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _validate(replicas: int, port: int, prometheus_port: int, timeout: float,
              serve_args: Sequence[str], routing: str) -> nginx.Routing:
    if not 1 <= replicas <= MAX_REPLICAS:
        raise UsageError(f"replicas must be between 1 and {MAX_REPLICAS}, got {replicas}")
    for name, value in (("port", port), ("prometheus port", prometheus_port)):
        if not 0 <= value <= 65535:
            raise UsageError(f"{name} must be between 1 and 65535 (0: any free port), got {value}")
    if not timeout > 0:
        raise UsageError(f"timeout must be positive, got {timeout:g}")
    for arg in serve_args:
        if arg.split("=", 1)[0] in OWN_SERVE_FLAGS:
            raise UsageError(f"serve argument {arg.split('=', 1)[0]} is set by the cluster itself "
                             f"(it sets {', '.join(OWN_SERVE_FLAGS)})")
    try:
        return nginx.Routing(routing)
    except ValueError:
        raise UsageError(f"routing must be one of {', '.join(r.value for r in nginx.Routing)}, "
                         f"got {routing!r}") from None


def _distinct_free_ports(count: int, taken: set[int]) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in taken and port not in ports:
            ports.append(port)
    return ports


def _wait_ready(checks: dict[str, tuple[ProcessRecord, str]], timeout: float,
                deadline: float | None = None) -> None:
    """Poll each URL until it answers 200 (by ``deadline``, else ``timeout`` from now);
    fail at once if its process exits."""
    pending = dict(checks)
    last: dict[str, int | None] = {}
    deadline = time.monotonic() + timeout if deadline is None else deadline
    while pending:
        for name, (proc, url) in list(pending.items()):
            require_running(proc)
            last[name] = http_status(url, timeout=0.5)
            if last[name] == 200:
                del pending[name]
        if not pending:
            return
        if time.monotonic() >= deadline:
            waiting = ", ".join(f"{name} ({url}: {last.get(name) or 'no answer'})"
                                for name, (_, url) in pending.items())
            raise ClusterError(f"timed out after {timeout:g}s waiting for {waiting}")
        time.sleep(0.05)


class Cluster:
    """A running (or stopped) cluster, backed by the state file in its run folder."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state

    @property
    def state(self) -> ClusterState:
        return self._state

    @property
    def run_dir(self) -> Path:
        return self._state.run_dir

    @property
    def replicas(self) -> tuple[Replica, ...]:
        return self._state.replicas

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # --- up -------------------------------------------------------------------------

    @classmethod
    def up(cls, run_dir: str | Path = DEFAULT_RUN_DIR, replicas: int = 2,
           port: int = DEFAULT_PORT, *, redis_url: str | None = None,
           own_redis: bool = False, redis_shards: int | None = None,
           redis_prefix: str | None = None,
           with_prometheus: bool = True, prometheus_port: int = 0,
           serve_args: Sequence[str] = (), timeout: float = START_TIMEOUT,
           nginx_bin: str | None = None, prometheus_bin: str | None = None,
           routing: str = nginx.Routing.ROOM_HASH) -> Cluster:
        """Start a cluster and wait until it answers; see the module docstring.

        ``port`` and ``prometheus_port`` 0 pick free ports. Without ``own_redis`` the
        Redis at ``redis_url`` (default: 127.0.0.1:6379; a comma-separated list is
        one Redis per shard) is shared, under ``redis_prefix`` (default: a fresh
        ``scalechat-cluster-<hex>``, whose keys ``down`` deletes). ``own_redis``
        starts throwaway redis-servers instead (``redis_url`` is then ignored):
        ``redis_shards`` of them, and ``redis_shards`` > 1 without ``redis_url``
        implies it (see :func:`redis_server.plan`). ``routing`` ``"random"``
        spreads a room's members over replicas, for comparison with the default
        ``"room-hash"`` (see :mod:`scalechat.cluster.nginx`).
        """
        routing = _validate(replicas, port, prometheus_port, timeout, serve_args, routing)
        redis = redis_server.plan(redis_url, own_redis, redis_shards)
        programs = find_programs(nginx_bin=nginx_bin, prometheus_bin=prometheus_bin,
                                 with_prometheus=with_prometheus, own_redis=redis.own > 0)
        run_dir = Path(run_dir).resolve()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ClusterError(f"cannot create run folder {run_dir}: {exc.strerror}") from None
        with _locked(run_dir):
            cls._refuse_if_running(run_dir)
            port = port or free_port()
            check_port_free(port, "balancer")
            if with_prometheus:
                prometheus_port = prometheus_port or free_port()
                check_port_free(prometheus_port, "Prometheus")
            for shard, url in enumerate(redis.shared):
                if not redis_server.ping(url):
                    which = f" (shard {shard} of {redis.shards})" if redis.shards > 1 else ""
                    raise ClusterError(f"no Redis answers at {url}{which}: start one, give another "
                                       "with --redis-url, or use --own-redis")
            cluster = cls(ClusterState(
                run_dir, port, ",".join(redis.shared),
                redis_prefix or f"scalechat-cluster-{secrets.token_hex(4)}",
                prometheus_port if with_prometheus else None, drop_keys=redis_prefix is None,
                routing=routing))
            try:
                cluster._start(programs, replicas, redis.own, serve_args, timeout)
            except BaseException:
                cluster._stop(STOP_TIMEOUT)
                raise
            return cluster

    @staticmethod
    def _refuse_if_running(run_dir: Path) -> None:
        old = load(run_dir)
        if old is None:
            return
        alive = old.running()
        if alive:
            names = ", ".join(f"{p.name} pid {p.pid}" for p in alive)
            raise ClusterError(f"a cluster from {run_dir} is already running ({names}); stop it "
                               f"first: scalechat cluster down --run-dir {run_dir}")
        remove(run_dir)  # left by a cluster whose processes are all gone

    def _save(self, state: ClusterState) -> None:
        self._state = state
        state.save()

    def _start(self, programs: Programs, count: int, own_redis: int,
               serve_args: Sequence[str], timeout: float) -> None:
        """Start ``own_redis`` redis-servers (0: share the state's URLs), replicas, nginx,
        Prometheus."""
        state, logs = self._state, self._state.run_dir / "logs"
        self._save(state)
        taken = {state.port, state.prometheus_port or 0}
        if own_redis:
            self._start_redis(programs, own_redis, taken, logs, timeout)
        ports = _distinct_free_ports(2 * count, taken)
        for index in range(count):
            node, http_port, metrics_port = f"replica-{index}", ports[2 * index], ports[2 * index + 1]
            argv = [sys.executable, "-m", "scalechat.cli", "serve", "--host", HOST,
                    "--port", str(http_port), "--metrics-port", str(metrics_port),
                    "--broker", "redis", "--redis-url", self._state.redis_url,
                    "--redis-prefix", self._state.redis_prefix, "--node-id", node, *serve_args]
            proc = spawn(node, argv, logs / f"{node}.log")
            self._save(self._state.with_replica(Replica(index, node, http_port, metrics_port, proc)))
        deadline = time.monotonic() + timeout
        # Replicas first: nginx would mark a replica that refuses its first
        # connection as failed for fail_timeout, and a room would start elsewhere.
        _wait_ready({r.node: (r.process, f"{r.http}/readyz") for r in self._state.replicas},
                    timeout, deadline)
        checks = {"nginx": (self._start_nginx(programs, logs), f"{self._state.http}/healthz")}
        if self._state.prometheus_port is not None:
            checks["prometheus"] = (self._start_prometheus(programs, logs),
                                    f"{self._state.prometheus_url}/-/ready")
        _wait_ready(checks, timeout, max(deadline, time.monotonic() + 1.0))
        self._save(replace(self._state, ready=True))

    def _start_redis(self, programs: Programs, shards: int, taken: set[int], logs: Path,
                     timeout: float) -> None:
        """One throwaway redis-server per shard; the state's URL list follows their order."""
        ports = _distinct_free_ports(shards, taken)
        taken.update(ports)
        urls: list[str] = []
        for shard, port in enumerate(ports):
            name = f"redis-{shard}"
            proc = redis_server.start(programs.redis_server, port, self._state.run_dir / name,
                                      logs / f"{name}.log", name=name)
            urls.append(redis_server.url_for(port))
            self._save(replace(self._state, redis_url=",".join(urls),
                               redis_servers=(*self._state.redis_servers, proc)))

        def all_answer() -> bool:
            for proc in self._state.redis_servers:
                require_running(proc)
            return all(redis_server.ping(url, 0.5) for url in urls)

        wait_until(all_answer, timeout, f"the cluster's redis-server(s) at {', '.join(urls)}")

    def _start_nginx(self, programs: Programs, logs: Path) -> ProcessRecord:
        layout = nginx.NginxLayout(self._state.run_dir / "nginx", logs)
        nginx.write_config(layout, self._state.port, [r.port for r in self._state.replicas],
                           self._state.routing)
        proc = nginx.start(programs.nginx, layout)
        self._save(replace(self._state, nginx=proc))
        return proc

    def _start_prometheus(self, programs: Programs, logs: Path) -> ProcessRecord:
        layout = prometheus.PrometheusLayout(self._state.run_dir / "prometheus", logs)
        prometheus.write_config(layout, [(r.node, r.metrics_port) for r in self._state.replicas])
        proc = prometheus.start(programs.prometheus, programs.promtool, layout,
                                self._state.prometheus_port)
        self._save(replace(self._state, prometheus=proc))
        return proc

    # --- the running cluster ----------------------------------------------------------

    @classmethod
    def load(cls, run_dir: str | Path = DEFAULT_RUN_DIR) -> Cluster:
        run_dir = Path(run_dir).resolve()
        state = load(run_dir) if run_dir.is_dir() else None
        if state is None:
            raise ClusterError(f"no cluster in {run_dir} (no {state_path(run_dir).name}): "
                               "nothing was started there, or it is already down")
        return cls(state)

    def _replica(self, index: int) -> Replica:
        if not 0 <= index < len(self._state.replicas):
            raise UsageError(f"no replica {index}: the cluster has {len(self._state.replicas)}")
        return self._state.replicas[index]

    def kill_replica(self, index: int) -> None:
        """SIGKILL replica ``index`` (a crash: no close frames, no leave) and wait until it is gone."""
        kill(self._replica(index).process)

    def restart_replica(self, index: int, timeout: float = START_TIMEOUT) -> Replica:
        """Start replica ``index`` again on its ports (stopping it first if it runs)."""
        old = self._replica(index)
        with _locked(self.run_dir):
            stop([(old.process, signal.SIGTERM)], STOP_TIMEOUT)
            proc = spawn(old.node, old.process.argv, Path(old.process.log))
            replica = replace(old, process=proc)
            self._save(self._state.with_replica(replica))
        _wait_ready({replica.node: (proc, f"{replica.http}/readyz")}, timeout)
        return replica

    def status(self) -> dict:
        """URLs and process liveness, as ``scalechat cluster status --json`` prints them."""
        s = self._state

        def proc(p: ProcessRecord | None) -> dict | None:
            return None if p is None else {"pid": p.pid, "running": is_running(p), "log": p.log}

        own = s.redis_servers  # one per URL: the state saves each with its URL

        return {
            "run_dir": str(s.run_dir),
            "balancer": s.balancer,
            "routing": s.routing.value,
            "http": s.http,
            "replicas": [{"node": r.node, "url": r.url, "http": r.http,
                          "metrics_url": r.metrics_url, "pid": r.process.pid,
                          "running": is_running(r.process), "log": r.process.log}
                         for r in s.replicas],
            "prometheus": s.prometheus_url,
            "redis": s.redis_url,  # what every replica got as --redis-url
            "redis_shards": [{"shard": shard, "url": url,
                              "process": proc(own[shard]) if own else None}
                             for shard, url in enumerate(s.redis_urls)],
            "redis_prefix": s.redis_prefix,
            "processes": {"nginx": proc(s.nginx), "prometheus": proc(s.prometheus),
                          **{p.name: proc(p) for p in s.redis_servers}},
            "ready": s.ready,
        }

    # --- down -------------------------------------------------------------------------

    def down(self, timeout: float = STOP_TIMEOUT) -> list[ProcessRecord]:
        """Stop every process, wait, remove the state file; return those that needed SIGKILL."""
        with _locked(self.run_dir):
            return self._stop(timeout)

    def _stop(self, timeout: float) -> list[ProcessRecord]:
        s = self._state
        first = [(r.process, signal.SIGTERM) for r in s.replicas]
        if s.nginx is not None:
            first.append((s.nginx, signal.SIGQUIT))  # graceful: finish requests, then exit
        if s.prometheus is not None:
            first.append((s.prometheus, signal.SIGTERM))
        killed = stop(first, timeout)
        if s.redis_servers:  # last: replicas exit cleanly while Redis still answers
            killed += stop([(p, signal.SIGTERM) for p in s.redis_servers], timeout)
        elif s.drop_keys:
            for url in s.redis_urls:
                redis_server.delete_prefix(url, s.redis_prefix)
        remove(s.run_dir)
        return killed
