"""The LoadTest models: a validated ``spec`` as frozen, typed dataclasses.

:func:`parse_manifest` takes a whole document (``apiVersion``, ``kind``,
``metadata``, ``spec``), :func:`parse_spec` the ``spec`` mapping alone (what
the operator reads from a LoadTest object). Both validate against
:data:`~scalechat.loadtest.schema.SPEC_SCHEMA` and raise
:class:`~scalechat.loadtest.schema.ConfigError` naming the field.

Guarantees: a :class:`LoadTest` they return satisfies every constraint of the
schema plus the cross-field rules listed in :func:`_check_semantics`; its
models are frozen, and :meth:`LoadTest.to_spec` gives back the normalized
``spec`` (defaults filled), which parses to an equal LoadTest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scalechat.loadtest.schema import API_VERSION, KIND, SPEC_SCHEMA, ConfigError, describe_value, validate
from scalechat.loadtest.slo import Slo

ROOM_PLACEHOLDER = "{room}"


@dataclass(frozen=True)
class SizeSpec:
    """Message text size distribution; ``bytes`` for fixed, ``lo..hi`` bounds otherwise."""

    distribution: str = "fixed"
    bytes: int = 100
    lo: int = 1
    hi: int = 65536
    median: float = 0.0
    sigma: float = 0.0

    def to_spec(self) -> int | dict[str, Any]:
        if self.distribution == "fixed":
            return self.bytes
        if self.distribution == "uniform":
            return {"distribution": "uniform", "min": self.lo, "max": self.hi}
        return {"distribution": "lognormal", "median": self.median, "sigma": self.sigma,
                "min": self.lo, "max": self.hi}


@dataclass(frozen=True)
class RoomDistribution:
    type: str = "uniform"
    exponent: float = 1.0


@dataclass(frozen=True)
class StageSpec:
    """One entry of ``spec.stages``: the load to apply (what a stage measured is a StageResult)."""

    name: str
    rooms: int
    clients_per_room: int
    rate: float
    size: SizeSpec
    duration_seconds: float
    warmup_seconds: float
    room_distribution: RoomDistribution
    arrival: str

    @property
    def total_clients(self) -> int:
        return self.rooms * self.clients_per_room

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "rooms": self.rooms, "clientsPerRoom": self.clients_per_room,
                "rate": self.rate, "size": self.size.to_spec(), "durationSeconds": self.duration_seconds,
                "warmupSeconds": self.warmup_seconds,
                "roomDistribution": {"type": self.room_distribution.type,
                                     "exponent": self.room_distribution.exponent},
                "arrival": self.arrival}


@dataclass(frozen=True)
class CapacitySearchSpec:
    """``spec.findCapacity``: what the load generator's capacity search grows, by how much, how often."""

    dimension: str  # clients | rooms | rate
    step: float
    max_steps: int


@dataclass(frozen=True)
class LoadTest:
    """A validated LoadTest: ``spec`` as typed fields plus the manifest's metadata."""

    name: str
    url: str
    stages: tuple[StageSpec, ...]
    workers: int
    parallelism: int
    connect_rate: float
    drain_seconds: float
    slo: Slo
    events: str
    find_capacity: CapacitySearchSpec | None = None
    metadata: tuple[tuple[str, Any], ...] = ()

    def to_spec(self) -> dict[str, Any]:
        """The normalized ``spec`` (defaults filled, camelCase), as recorded in run.json."""
        spec: dict[str, Any] = {
            "target": {"url": self.url}, "stages": [s.to_spec() for s in self.stages],
            "workers": self.workers, "parallelism": self.parallelism, "connectRate": self.connect_rate,
            "drainSeconds": self.drain_seconds,
            "slo": self.slo.to_spec(),
            "events": self.events}
        if self.find_capacity is not None:
            fc = self.find_capacity
            spec["findCapacity"] = {"dimension": fc.dimension, "step": fc.step, "maxSteps": fc.max_steps}
        return spec


def parse_spec(spec: Any, path: str = "spec", metadata: dict[str, Any] | None = None) -> LoadTest:
    """Validate a ``spec`` mapping and build the LoadTest; ConfigError names the field."""
    s = validate(spec, SPEC_SCHEMA, path)
    _check_semantics(s, path)
    stages = tuple(_stage(st, i) for i, st in enumerate(s["stages"]))
    fc = s.get("findCapacity")
    search = None
    if fc is not None:
        first = stages[0]
        base = {"clients": first.clients_per_room, "rooms": first.rooms, "rate": first.rate}[fc["dimension"]]
        search = CapacitySearchSpec(fc["dimension"], float(fc.get("step", base)), fc["maxSteps"])
    metadata = dict(metadata or {})
    return LoadTest(
        name=str(metadata.get("name", "loadtest")), url=s["target"]["url"], stages=stages,
        workers=s["workers"], parallelism=s["parallelism"], connect_rate=float(s["connectRate"]),
        drain_seconds=float(s["drainSeconds"]),
        slo=Slo.from_spec(s["slo"]),
        events=s["events"], find_capacity=search, metadata=tuple(sorted(metadata.items())))


def _check_semantics(s: dict[str, Any], path: str) -> None:
    """Rules a schema cannot say: placeholder, size bounds, unique names, one stage to search."""
    url = s["target"]["url"]
    if not url.startswith("ws://"):
        raise ConfigError(f"{path}.target.url", f"must start with ws:// (wss:// is not supported), got {url!r}")
    if ROOM_PLACEHOLDER not in url:
        raise ConfigError(f"{path}.target.url", f"must contain the {ROOM_PLACEHOLDER} placeholder, got {url!r}")
    names: dict[str, int] = {}
    for i, stage in enumerate(s["stages"]):
        size, where = stage["size"], f"{path}.stages[{i}].size"
        if isinstance(size, dict):
            _check_size(size, where)
        name = stage.get("name") or f"stage-{i}"
        if name in names:
            raise ConfigError(f"{path}.stages[{i}].name", f"duplicates stages[{names[name]}].name {name!r}")
        names[name] = i
    if "findCapacity" in s and len(s["stages"]) != 1:
        raise ConfigError(f"{path}.findCapacity", f"needs exactly one stage to grow, got {len(s['stages'])}")
    if "findCapacity" in s and s["parallelism"] != 1:
        raise ConfigError(f"{path}.findCapacity", "needs parallelism 1: shards cannot agree on when to stop")


def _check_size(size: dict[str, Any], where: str) -> None:
    dist = size["distribution"]
    needs = {"fixed": ("bytes",), "uniform": ("min", "max"), "lognormal": ("median", "sigma")}[dist]
    for key in needs:
        if key not in size:
            raise ConfigError(f"{where}.{key}", f"is required for distribution={dist}")
    extra = set(size) - set(needs) - {"distribution"} - ({"min", "max"} if dist == "lognormal" else set())
    if extra:
        raise ConfigError(f"{where}.{sorted(extra)[0]}", f"does not apply to distribution={dist}")
    if size.get("min", 1) > size.get("max", 65536):
        raise ConfigError(f"{where}.max", f"must be >= min ({size['min']}), got {size['max']}")


def _stage(st: dict[str, Any], index: int) -> StageSpec:
    raw = st["size"]
    if isinstance(raw, int):
        size = SizeSpec("fixed", raw)
    elif raw["distribution"] == "fixed":
        size = SizeSpec("fixed", raw["bytes"])
    elif raw["distribution"] == "uniform":
        size = SizeSpec("uniform", lo=raw["min"], hi=raw["max"])
    else:
        size = SizeSpec("lognormal", lo=raw.get("min", 1), hi=raw.get("max", 65536),
                        median=float(raw["median"]), sigma=float(raw["sigma"]))
    rd = st["roomDistribution"]
    return StageSpec(name=st.get("name") or f"stage-{index}", rooms=st["rooms"], clients_per_room=st["clientsPerRoom"],
                 rate=float(st["rate"]), size=size, duration_seconds=float(st["durationSeconds"]),
                 warmup_seconds=float(st["warmupSeconds"]),
                 room_distribution=RoomDistribution(rd["type"], float(rd["exponent"])), arrival=st["arrival"])


def parse_manifest(doc: Any) -> LoadTest:
    """Validate a whole manifest document (apiVersion, kind, metadata, spec)."""
    if not isinstance(doc, dict):
        raise ConfigError("(document)", f"must be a mapping with apiVersion, kind, metadata, spec; got {describe_value(doc)}")
    for key in doc:
        if key not in ("apiVersion", "kind", "metadata", "spec", "status"):
            raise ConfigError(str(key), "unknown top-level field; expected apiVersion, kind, metadata, spec")
    if doc.get("apiVersion") != API_VERSION:
        raise ConfigError("apiVersion", f"must be {API_VERSION}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != KIND:
        raise ConfigError("kind", f"must be {KIND}, got {doc.get('kind')!r}")
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ConfigError("metadata", f"must be an object, got {describe_value(metadata)}")
    if "spec" not in doc:
        raise ConfigError("spec", "is required")
    return parse_spec(doc["spec"], "spec", metadata)
