"""The capacity model: the replicas, Redis shards and CPUs a load needs, from measured costs.

The costs come from the JSON bench/scaleout.py writes (its "costs" section),
by default the newest measured of the committed bench/results/scaleout-*.json.
The answer names the file, its date, host and commit: the costs hold for that
machine and that code. For C connections in rooms of n, each client sending r
messages/s (or D deliveries/s given instead):

  messages/s     M = C x r            (or M = D / n)
  deliveries/s   D = M x n            (every member gets every message, the sender's echo too)
  rooms          C / n

  replica CPU    M x (m + n x d)  +  (C / heartbeat) x 2d     (µs of CPU per second)
      m, d: replica CPU per message and per delivery with the Redis broker: the
      least-squares line through the measured room sizes whose frames were
      written one per delivery (a room that got so many messages that its frames
      were joined into fewer writes is left out: quieter rooms of its size would
      cost more). Each heartbeat, a ping written and a pong read, is counted as
      two deliveries: an estimate, not measured.
  replicas       max(ceil(replica CPU / target), ceil(C / connections per replica))
      A replica is one Python process and uses one core at most; each is planned
      to keep its core at most --cpu-target busy (0.7: 70%).
  Redis CPU      M x s, s = Redis CPU per message, net of its idle rate, from the busy
                 shard run (else the fixed run with the most messages/s); one core per
                 shard (redis-server runs commands on one thread)
  shards         max(ceil(Redis CPU / target), ceil(Redis memory / memory per shard))
  balancer CPU   D x g, g = nginx CPU per delivery (the largest measured), when it
                 proxies every frame as in scalechat cluster; CPUs = ceil(/ target)
  CPUs           the replicas' ceil(replica CPU / target) + shards + the balancer's

  memory         replicas x idle RSS + C x RSS per connection (replicas), and
                 rooms x history size x Redis memory per stored message (once
                 every room's history is full)

Not modelled: idle work per room (presence leases are renewed every 5 s) and
per connection beyond heartbeats; a busy room's batching, which only lowers
the cost; and how the measuring host differs from yours (the benchmark runs
over loopback, where the sender also pays for the receiver's network stack).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
PATTERN = "scaleout-*.json"
CONNECTIONS_PER_REPLICA = 10_000  # scalechat serve's default --max-connections
HEARTBEAT_SECONDS = 30.0  # scalechat serve's default --heartbeat-seconds
SHARD_MEMORY_BYTES = 8 * 2**30  # history one Redis shard is planned to hold (--shard-memory-gib)


class CostsError(Exception):
    """The measured-costs file is missing, unreadable or lacks a figure the model needs."""


# --- the measured costs ---------------------------------------------------------------


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float, str | None]:
    """``(m, d, note)`` with per-message cost m + n x d through ``(n, µs per delivery)`` points.

    Least squares on the cost per message (n x µs per delivery); both parts
    clamped at 0 (a noisy pair of points can tilt the line below it), with a note.
    """
    if not points:
        raise CostsError("no replica cost per delivery was measured with the Redis broker")
    sizes = {n for n, _ in points}
    if len(sizes) == 1:  # one room size: all of the cost per delivery (larger rooms over-counted)
        n = sizes.pop()
        return 0.0, sum(c for _, c in points) / len(points), (
            f"one room size measured ({n}): all of its cost counted per delivery")
    xs = [float(n) for n, _ in points]
    ys = [n * c for n, c in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    d = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    m = my - d * mx
    if d < 0:
        return my, 0.0, "per-delivery cost fitted below 0: the mean cost per message is used"
    if m < 0:
        return 0.0, sum(y / x for x, y in zip(xs, ys)) / len(xs), (
            "per-message cost fitted below 0: all of the cost counted per delivery")
    return m, d, None


@dataclass(frozen=True, slots=True)
class Costs:
    """Per-unit costs (µs of CPU, bytes) and where they were measured."""

    message_us: float  # replica CPU per message (m)
    delivery_us: float  # replica CPU per delivery (d)
    redis_message_us: float  # Redis CPU per published message (s)
    balancer_delivery_us: float | None  # nginx CPU per delivery (g)
    connection_bytes: float | None  # replica RSS per connection
    replica_idle_bytes: float | None
    redis_message_bytes: float | None  # Redis memory per message kept in a history
    history_size: int
    source: str
    date: str
    host: str
    commit: str
    replica_scenarios: tuple[str, ...] = ()  # the bench runs the replica line goes through
    redis_scenario: str = ""
    notes: tuple[str, ...] = ()

    @classmethod
    def from_document(cls, doc: dict, source: str) -> Costs:
        try:
            costs, host = doc["costs"], doc["host"]
            replica = costs["replica"]
            unbatched = [p for p in replica if not p["batched"]] or replica
            m, d, note = fit_line([(p["room_size"], p["cpu_us_per_delivery"]) for p in unbatched])
            redis_us = costs["redis_cpu_us_per_message"]["value"]
            redis_scenario = str(costs["redis_cpu_us_per_message"].get("scenario", ""))
            history_size = int(costs["history_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CostsError(f"{source} is not a bench/scaleout.py result with costs "
                             f"(missing {exc})") from None
        notes = [note] if note else []
        if len(unbatched) < len(replica):
            notes.append("not in the replica line, its frames joined into fewer writes: " + ", ".join(
                p["scenario"] for p in replica if p["batched"]))
        if costs.get("refused_unavailable"):
            notes.append(f"the measured Redis runs refused {costs['refused_unavailable']:,} "
                         "messages as unavailable: costs of a broker in trouble")
        code = host.get("code", {})
        dirty = code.get("dirty_paths") or []
        commit = (code.get("commit") or "unknown")[:12] + (f" + {len(dirty)} changed file(s)"
                                                          if dirty else "")

        def value(key: str) -> float | None:
            entry = costs.get(key)
            return None if entry is None else float(entry["value"] if isinstance(entry, dict)
                                                    else entry)

        return cls(m, d, float(redis_us), value("nginx_cpu_us_per_delivery"),
                   value("replica_rss_bytes_per_connection"), value("replica_rss_bytes_idle"),
                   value("redis_memory_bytes_per_stored_message"), history_size, source,
                   str(doc.get("date", "?")),
                   f"{host.get('cpu_model', '?')}, {host.get('cpu_count', '?')} cores",
                   commit, tuple(str(p.get("scenario", p["room_size"])) for p in unbatched),
                   redis_scenario, tuple(notes))


def newest_results(folder: Path = RESULTS) -> Path:
    """The most recently measured (by its recorded time) ``scaleout-*.json`` in ``folder``."""
    found = []
    for path in folder.glob(PATTERN):
        try:
            found.append((json.loads(path.read_text()).get("time", ""), path))
        except (OSError, ValueError):
            continue
    if not found:
        raise CostsError(f"no {PATTERN} in {folder}: run bench/scaleout.py and give its JSON")
    return max(found)[1]


def load_costs(path: Path) -> Costs:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise CostsError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CostsError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CostsError(f"{path} is not a bench/scaleout.py result")
    return Costs.from_document(doc, str(path))


# --- the model ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    connections: int
    room_size: int
    messages_per_s: float  # published, all rooms together

    @property
    def deliveries_per_s(self) -> float:
        return self.messages_per_s * self.room_size

    @property
    def rooms(self) -> float:
        return self.connections / self.room_size


def load_of(connections: int, room_size: int, *, rate_per_client: float | None = None,
            deliveries_per_s: float | None = None) -> Load:
    """The load from a rate per client or from total deliveries/s (exactly one of them)."""
    if (rate_per_client is None) == (deliveries_per_s is None):
        raise ValueError("give a rate per client or deliveries/s, not both or neither")
    if rate_per_client is not None:
        return Load(connections, room_size, connections * rate_per_client)
    return Load(connections, room_size, deliveries_per_s / room_size)


@dataclass(frozen=True, slots=True)
class Plan:
    load: Load
    costs: Costs
    cpu_target: float
    connections_per_replica: int
    heartbeat_seconds: float
    replica_cores: float  # CPU demand, cores
    redis_cores: float
    balancer_cores: float | None
    replicas: int
    replica_cpus: int
    shards: int
    balancer_cpus: int
    replica_memory_bytes: float | None
    redis_memory_bytes: float | None

    @property
    def cpus(self) -> int:
        return self.replica_cpus + self.shards + self.balancer_cpus

    @property
    def bound_by(self) -> str:
        """What sets the number of replicas."""
        return "CPU" if self.replicas == self.replica_cpus else "connections per replica"

    @property
    def shards_bound_by(self) -> str:
        """What sets the number of Redis shards."""
        return "CPU" if self.shards == max(1, math.ceil(self.redis_cores / self.cpu_target)) else "memory"


def plan(load: Load, costs: Costs, *, cpu_target: float = 0.7,
         connections_per_replica: int = CONNECTIONS_PER_REPLICA,
         heartbeat_seconds: float = HEARTBEAT_SECONDS,
         shard_memory_bytes: float = SHARD_MEMORY_BYTES) -> Plan:
    """The arithmetic of the module docstring."""
    if not 0 < cpu_target <= 1:
        raise ValueError(f"cpu_target must be in (0, 1], got {cpu_target}")
    pings = load.connections / heartbeat_seconds if heartbeat_seconds > 0 else 0.0
    replica_us = (load.messages_per_s * (costs.message_us + load.room_size * costs.delivery_us)
                  + pings * 2 * costs.delivery_us)
    replica_cores = replica_us / 1e6
    redis_cores = load.messages_per_s * costs.redis_message_us / 1e6
    balancer_cores = (None if costs.balancer_delivery_us is None
                      else load.deliveries_per_s * costs.balancer_delivery_us / 1e6)
    replica_cpus = max(1, math.ceil(replica_cores / cpu_target))
    replicas = max(replica_cpus, math.ceil(load.connections / connections_per_replica))
    replica_memory = (None if costs.connection_bytes is None else
                      replicas * (costs.replica_idle_bytes or 0)
                      + load.connections * costs.connection_bytes)
    redis_memory = (None if costs.redis_message_bytes is None else
                    load.rooms * costs.history_size * costs.redis_message_bytes)
    shards = max(1, math.ceil(redis_cores / cpu_target),
                 math.ceil((redis_memory or 0) / shard_memory_bytes))
    return Plan(load, costs, cpu_target, connections_per_replica, heartbeat_seconds,
                replica_cores, redis_cores, balancer_cores, replicas, replica_cpus, shards,
                0 if balancer_cores is None else max(1, math.ceil(balancer_cores / cpu_target)),
                replica_memory, redis_memory)


# --- output ---------------------------------------------------------------------------


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**30:,.1f} GiB"


def rows(p: Plan) -> list[tuple[str, str, str, str, str]]:
    """(component, CPU demand, instances, CPUs at the target, memory)."""
    out = [("replicas", f"{p.replica_cores:,.2f} cores", f"{p.replicas:,}", f"{p.replica_cpus:,}",
            _gib(p.replica_memory_bytes)),
           ("Redis shards", f"{p.redis_cores:,.2f} cores", f"{p.shards:,}", f"{p.shards:,}",
            _gib(p.redis_memory_bytes))]
    if p.balancer_cores is not None:
        out.append(("nginx (room hash)", f"{p.balancer_cores:,.2f} cores", "-",
                    f"{p.balancer_cpus:,}", "-"))
    out.append(("total", f"{p.replica_cores + p.redis_cores + (p.balancer_cores or 0):,.2f} cores",
                "", f"{p.cpus:,}", ""))
    return out


def describe(p: Plan) -> list[str]:
    c, load = p.costs, p.load
    lines = [f"load: {load.connections:,} connections in rooms of {load.room_size:,} "
             f"({load.rooms:,.0f} rooms), {load.messages_per_s:,.0f} messages/s, "
             f"{load.deliveries_per_s:,.0f} deliveries/s",
             f"costs: {c.source} (measured {c.date} on {c.host}, commit {c.commit})",
             f"  replica {c.message_us:.1f} µs per message + {c.delivery_us:.2f} µs per delivery "
             f"(from {', '.join(c.replica_scenarios)}), Redis {c.redis_message_us:.1f} µs per "
             f"message (from {c.redis_scenario or '?'})"
             + (f", nginx {c.balancer_delivery_us:.2f} µs per delivery"
                if c.balancer_delivery_us is not None else ""),
             f"planned at {p.cpu_target:.0%} CPU; replicas bound by {p.bound_by} "
             f"({p.connections_per_replica:,} connections per replica at most); shards bound by "
             f"{p.shards_bound_by}; Redis memory with every room's history full "
             f"({c.history_size:,} messages)"]
    return lines + [f"note: {note}" for note in c.notes]


def render_text(p: Plan) -> str:
    table = [("component", "CPU demand", "instances", "CPUs", "memory"), *rows(p)]
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    body = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(r, widths))) for r in table]
    return "\n".join([*describe(p), "", *body])


def render_markdown(p: Plan) -> str:
    """The description as a list, then the table (the README's capacity table)."""
    lines = [f"- {line.strip()}" for line in describe(p)]
    lines += ["", "| component | CPU demand | instances | CPUs | memory |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows(p)]
    return "\n".join(lines)


def to_json(p: Plan) -> dict:
    c = p.costs
    return {"load": {"connections": p.load.connections, "room_size": p.load.room_size,
                     "messages_per_s": p.load.messages_per_s,
                     "deliveries_per_s": p.load.deliveries_per_s},
            "costs": {"source": c.source, "date": c.date, "host": c.host, "commit": c.commit,
                      "message_us": c.message_us, "delivery_us": c.delivery_us,
                      "redis_message_us": c.redis_message_us,
                      "balancer_delivery_us": c.balancer_delivery_us, "notes": list(c.notes)},
            "cpu_target": p.cpu_target, "replica_cores": p.replica_cores,
            "redis_cores": p.redis_cores, "balancer_cores": p.balancer_cores,
            "replicas": p.replicas, "replica_cpus": p.replica_cpus, "shards": p.shards,
            "shards_bound_by": p.shards_bound_by,
            "balancer_cpus": p.balancer_cpus, "cpus": p.cpus, "bound_by": p.bound_by,
            "replica_memory_bytes": p.replica_memory_bytes,
            "redis_memory_bytes": p.redis_memory_bytes}
