"""What a running cluster is made of, as written to ``<run dir>/cluster.json``.

The state file is the only memory between commands: ``up`` writes it (after
every process it starts, so an interrupted ``up`` can still be taken ``down``),
``status`` and ``down`` read it, and ``down`` removes it last. Processes are
identified by PID and start time (see :mod:`scalechat.cluster.processes`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from scalechat.cluster.errors import ClusterError
from scalechat.cluster.nginx import Routing
from scalechat.cluster.processes import HOST, ProcessRecord, is_running

STATE_FILE = "cluster.json"
VERSION = 1


@dataclass(frozen=True, slots=True)
class Replica:
    index: int
    node: str
    port: int
    metrics_port: int
    process: ProcessRecord

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws/{{room}}"

    @property
    def http(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    def to_dict(self) -> dict:
        return {"index": self.index, "node": self.node, "port": self.port,
                "metrics_port": self.metrics_port, "process": self.process.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> Replica:
        return cls(int(data["index"]), data["node"], int(data["port"]), int(data["metrics_port"]),
                   ProcessRecord.from_dict(data["process"]))


@dataclass(frozen=True, slots=True)
class ClusterState:
    run_dir: Path
    port: int  # the balancer's
    redis_url: str  # every replica's --redis-url: one URL per shard, comma-separated, in order
    redis_prefix: str
    prometheus_port: int | None  # None: started without Prometheus
    replicas: tuple[Replica, ...] = ()
    nginx: ProcessRecord | None = None
    prometheus: ProcessRecord | None = None
    redis_servers: tuple[ProcessRecord, ...] = ()  # only when the cluster owns its Redis; by shard
    ready: bool = False  # false while ``up`` is still starting things
    drop_keys: bool = False  # ``down`` deletes the prefix's keys (a prefix ``up`` made up)
    routing: Routing = Routing.ROOM_HASH  # how nginx places a new WebSocket

    @property
    def balancer(self) -> str:
        return f"ws://{HOST}:{self.port}/ws/{{room}}"

    @property
    def http(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def prometheus_url(self) -> str | None:
        return None if self.prometheus_port is None else f"http://{HOST}:{self.prometheus_port}"

    @property
    def redis_urls(self) -> tuple[str, ...]:
        """The Redis of each shard, shard 0 first."""
        return tuple(url for url in self.redis_url.split(",") if url)  # none before own ones start

    @property
    def redis(self) -> ProcessRecord | None:
        """The cluster's own redis-server of shard 0 (its only one unless sharded), or None."""
        return self.redis_servers[0] if self.redis_servers else None

    @property
    def processes(self) -> list[ProcessRecord]:
        """Every process started, in start order (Redis first)."""
        others = [*self.redis_servers, *(r.process for r in self.replicas), self.nginx,
                  self.prometheus]
        return [p for p in others if p is not None]

    def running(self) -> list[ProcessRecord]:
        return [p for p in self.processes if is_running(p)]

    def with_replica(self, replica: Replica) -> ClusterState:
        replicas = list(self.replicas)
        if replica.index < len(replicas):
            replicas[replica.index] = replica
        else:
            replicas.append(replica)
        return replace(self, replicas=tuple(replicas))

    # --- the file -----------------------------------------------------------------

    def to_dict(self) -> dict:
        def proc(p: ProcessRecord | None) -> dict | None:
            return None if p is None else p.to_dict()
        return {
            "version": VERSION, "ready": self.ready, "run_dir": str(self.run_dir),
            "port": self.port, "redis_url": self.redis_url, "redis_prefix": self.redis_prefix,
            "prometheus_port": self.prometheus_port,
            "replicas": [r.to_dict() for r in self.replicas],
            "nginx": proc(self.nginx), "prometheus": proc(self.prometheus),
            "redis_servers": [p.to_dict() for p in self.redis_servers],
            "drop_keys": self.drop_keys,
            "routing": self.routing.value,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ClusterState:
        def proc(d: dict | None) -> ProcessRecord | None:
            return None if d is None else ProcessRecord.from_dict(d)
        if "redis_servers" in data:
            redis_servers = tuple(ProcessRecord.from_dict(p) for p in data["redis_servers"])
        else:  # written before sharding: at most one own redis-server, under "redis"
            redis_servers = tuple(p for p in [proc(data["redis"])] if p is not None)
        return cls(Path(data["run_dir"]), int(data["port"]), data["redis_url"],
                   data["redis_prefix"], data["prometheus_port"],
                   tuple(Replica.from_dict(r) for r in data["replicas"]),
                   proc(data["nginx"]), proc(data["prometheus"]), redis_servers,
                   bool(data["ready"]), bool(data["drop_keys"]),
                   # A cluster started before routing was recorded is room-hashed.
                   Routing(data.get("routing", Routing.ROOM_HASH)))

    def save(self) -> None:
        path = self.run_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)  # atomic: a reader sees the old or the new state


def state_path(run_dir: Path) -> Path:
    return run_dir / STATE_FILE


def load(run_dir: Path) -> ClusterState | None:
    """The state in ``run_dir``, or None when there is none."""
    path = state_path(run_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}; remove it if no cluster runs") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ClusterError(f"{path} is not a state file of this version; remove it if no "
                           "cluster runs")
    try:
        return ClusterState.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ClusterError(f"{path} is damaged ({exc!r}); remove it if no cluster runs") from None


def remove(run_dir: Path) -> None:
    state_path(run_dir).unlink(missing_ok=True)
