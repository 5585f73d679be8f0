"""Who connects where and when: rooms, Zipf allocation, shard/worker partition, timetables.

Everything here is pure and deterministic: the same run id, stage and shard
count give the same rooms, client counts and shard assignment on every
machine, which is what lets independent shards of one run divide the rooms
without talking to each other.

Guarantees:

* :func:`client_counts` returns ``stage.rooms`` positive counts summing to
  ``stage.total_clients`` (uniform: all equal; zipf: room k gets
  ``total * k**-s / H`` rounded by largest remainder, at least 1 each).
* Partitioning is by room: a room and all of its clients belong to exactly
  one shard and, within it, one worker, so per-process expected and received
  counts are exact. Rooms go to the least-loaded bin (by clients) in order of
  decreasing size (LPT), ties to the lower index.
* Timetables are open-loop: send times depend only on the seed, the rate and
  the start time, never on when earlier sends completed. With constant
  arrival and ``rate * durationSeconds`` an integer, each client schedules
  exactly that many sends inside the measurement window.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from scalechat.loadtest.spec import SizeSpec, StageSpec

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,23}")


def room_name(run_id: str, stage_index: int, room_index: int) -> str:
    """Unique per run and stage, valid for the server's ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``."""
    return f"lt-{run_id}-s{stage_index}-r{room_index}"


def zipf_weights(rooms: int, exponent: float) -> list[float]:
    """Normalized weights ``k**-exponent / H`` for rooms k = 1..rooms."""
    raw = [k ** -exponent for k in range(1, rooms + 1)]
    total = math.fsum(raw)
    return [w / total for w in raw]


def apportion(total: int, weights: list[float], minimum: int = 1) -> list[int]:
    """Split ``total`` into ``len(weights)`` integers >= ``minimum`` following ``weights``.

    Largest-remainder rounding, then raising any count below ``minimum`` by
    taking from the counts furthest above their ideal share. Deterministic:
    ties go to the lower index.
    """
    n = len(weights)
    if total < minimum * n:
        raise ValueError(f"cannot give {n} rooms {minimum} client(s) each from {total}")
    ideal = [total * w for w in weights]
    counts = [int(math.floor(x)) for x in ideal]
    short = total - sum(counts)
    for i in sorted(range(n), key=lambda i: (-(ideal[i] - counts[i]), i))[:short]:
        counts[i] += 1
    for i in range(n):
        while counts[i] < minimum:
            donor = max((j for j in range(n) if counts[j] > minimum), key=lambda j: (counts[j] - ideal[j], -j))
            counts[donor] -= 1
            counts[i] += 1
    return counts


def client_counts(stage: StageSpec) -> list[int]:
    """Clients of each room of ``stage`` (room 0 is the hottest under zipf)."""
    if stage.room_distribution.type == "uniform":
        return [stage.clients_per_room] * stage.rooms
    return apportion(stage.total_clients, zipf_weights(stage.rooms, stage.room_distribution.exponent))


def balance(sizes: list[int], bins: int) -> list[int]:
    """Bin index for each item: largest first to the least-loaded bin (LPT), deterministic."""
    heap = [(0, b) for b in range(bins)]
    out = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, b = heapq.heappop(heap)
        out[i] = b
        heapq.heappush(heap, (load + sizes[i], b))
    return out


@dataclass(frozen=True)
class RoomPlan:
    index: int
    name: str
    clients: int
    shard: int
    seed: int  # seeds this room's timetables and message sizes
    first_client: int = 0  # run-wide id of the room's client 0 (ids are unique per stage)


@dataclass(frozen=True)
class StagePlan:
    """One stage's rooms for the whole run (every shard computes the same one)."""

    index: int
    stage: StageSpec
    rooms: tuple[RoomPlan, ...]

    def for_shard(self, shard: int) -> list[RoomPlan]:
        return [r for r in self.rooms if r.shard == shard]

    def summary(self) -> dict[str, object]:
        """Compact JSON form for run.json: counts and shard per room index."""
        return {"index": self.index, "name": self.stage.name, "room_prefix": self.rooms[0].name.rsplit("-r", 1)[0] + "-r",
                "clients": [r.clients for r in self.rooms], "shard": [r.shard for r in self.rooms]}


def _seed(*parts: object) -> int:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def plan_stage(run_id: str, index: int, stage: StageSpec, shards: int) -> StagePlan:
    counts = client_counts(stage)
    owner = balance(counts, shards)
    firsts = [0]
    for count in counts[:-1]:
        firsts.append(firsts[-1] + count)
    rooms = tuple(RoomPlan(j, room_name(run_id, index, j), counts[j], owner[j], _seed(run_id, index, j), firsts[j])
                  for j in range(stage.rooms))
    return StagePlan(index, stage, rooms)


def assign_workers(rooms: list[RoomPlan], workers: int) -> list[list[RoomPlan]]:
    """Split one shard's rooms over ``workers`` processes, balancing clients."""
    owner = balance([r.clients for r in rooms], workers)
    out: list[list[RoomPlan]] = [[] for _ in range(workers)]
    for room, w in zip(rooms, owner):
        out[w].append(room)
    return out


# --------------------------------------------------------------------------- timetables


class Timetable:
    """Send times of one client, in seconds after the stage's go time.

    ``constant``: ``phase + k / rate`` with a random phase in ``[0, 1/rate)``
    (so clients do not send in lockstep); ``poisson``: exponential gaps.
    """

    __slots__ = ("rate", "poisson", "phase", "k", "t", "rng")

    def __init__(self, rate: float, arrival: str, rng: random.Random) -> None:
        self.rate = rate
        self.poisson = arrival == "poisson"
        self.rng = rng
        self.k = 0
        self.phase = rng.random() / rate
        self.t = rng.expovariate(rate) if self.poisson else self.phase

    def advance(self) -> float:
        """Move to the next send time and return it."""
        if self.poisson:
            self.t += self.rng.expovariate(self.rate)
        else:
            self.k += 1
            self.t = self.phase + self.k / self.rate
        return self.t


def size_sampler(size: SizeSpec, rng: random.Random) -> Callable[[], int]:
    """A function drawing message text sizes (bytes) from ``size``."""
    if size.distribution == "fixed":
        fixed = size.bytes
        return lambda: fixed
    lo, hi = size.lo, size.hi
    if size.distribution == "uniform":
        return lambda: rng.randint(lo, hi)
    mu, sigma = math.log(size.median), size.sigma
    return lambda: min(hi, max(lo, int(round(rng.lognormvariate(mu, sigma)))))


def max_size(size: SizeSpec) -> int:
    return size.bytes if size.distribution == "fixed" else size.hi
