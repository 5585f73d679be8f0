"""The LoadTest manifest: one schema, a validator that names field paths, typed models.

A manifest is the file ``scalechat load -f`` reads and, once an operator
exists, ``kubectl apply`` takes::

    apiVersion: scalechat.io/v1alpha1
    kind: LoadTest
    metadata: {name: seed-experiment}
    spec:
      target: {url: "ws://127.0.0.1:8080/ws/{room}"}
      stages:
        - {name: c10, rooms: 1, clientsPerRoom: 10, rate: 1, size: 150, durationSeconds: 30}

:data:`SPEC_SCHEMA` is the single declaration of ``spec``: field names, types,
defaults, enums, minimums and help, in the OpenAPI v3 subset Kubernetes CRDs
use. :func:`validate` walks it and raises :class:`ConfigError` whose message
starts with the field path (``spec.stages[1].rate: must be > 0, got -3``);
:func:`openapi_schema` returns it in the structural form a CRD's
``openAPIV3Schema`` needs. The command line builds the same ``spec`` dict
from flags and goes through the same validator, so flags and manifests
cannot drift apart.

Guarantees: a :class:`LoadTest` returned by :func:`load_manifest` or
:func:`parse_spec` satisfies every constraint of the schema plus the
cross-field rules listed in :func:`_check_semantics`; its models are frozen.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scalechat.slo import Threshold, thresholds

API_VERSION = "scalechat.io/v1alpha1"
KIND = "LoadTest"
ROOM_PLACEHOLDER = "{room}"


class ConfigError(ValueError):
    """A manifest or flag value is invalid; ``str()`` is one line naming the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# --------------------------------------------------------------------------- the schema


def _num(description: str, *, default: float | None = None, minimum: float | None = None,
         exclusive: bool = False, maximum: float | None = None, integer: bool = False) -> dict:
    node: dict[str, Any] = {"type": "integer" if integer else "number", "description": description}
    if default is not None:
        node["default"] = default
    if minimum is not None:
        node["minimum"] = minimum
        if exclusive:
            node["exclusiveMinimum"] = True
    if maximum is not None:
        node["maximum"] = maximum
    return node


SIZE_OBJECT = {
    "type": "object",
    "description": "A message size distribution (bytes of message text).",
    "required": ["distribution"],
    "additionalProperties": False,
    "properties": {
        "distribution": {"type": "string", "enum": ["fixed", "uniform", "lognormal"],
                         "description": "fixed: always `bytes`; uniform: min..max inclusive; "
                                        "lognormal: median x exp(sigma x N(0,1)), clamped to min..max."},
        "bytes": _num("Size for distribution=fixed.", minimum=1, integer=True),
        "min": _num("Smallest size (uniform: required; lognormal: default 1).", minimum=1, integer=True),
        "max": _num("Largest size (uniform: required; lognormal: default 65536).", minimum=1, integer=True),
        "median": _num("Median size for distribution=lognormal.", minimum=1),
        "sigma": _num("Spread (standard deviation of ln size) for distribution=lognormal.", minimum=0),
    },
}

STAGE_SCHEMA = {
    "type": "object",
    "description": "One load level: connect, warm up, measure, drain, close.",
    "required": ["clientsPerRoom", "rate", "durationSeconds"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 63,
                 "description": "Label in results; default stage-<index>."},
        "rooms": _num("Rooms in this stage.", default=1, minimum=1, integer=True),
        "clientsPerRoom": _num("Clients per room on average (total clients = rooms x clientsPerRoom; "
                               "with zipf rooms the total is split by Zipf weights, >= 1 per room).",
                               minimum=1, integer=True),
        "rate": _num("Messages per second each client sends.", minimum=0, exclusive=True),
        "size": {
            "description": "Message text size in bytes: an integer, or {distribution: fixed|uniform|"
                           "lognormal, ...}. The text is at least the ~30-byte measurement header.",
            "default": 100,
            "oneOf": [_num("Fixed size in bytes.", minimum=1, integer=True), SIZE_OBJECT],
        },
        "durationSeconds": _num("Measurement window.", minimum=0, exclusive=True),
        "warmupSeconds": _num("Sending before the measurement window; not counted.", default=1.0, minimum=0),
        "roomDistribution": {
            "type": "object",
            "description": "How clients spread over rooms.",
            "additionalProperties": False,
            "default": {"type": "uniform"},
            "properties": {
                "type": {"type": "string", "enum": ["uniform", "zipf"], "default": "uniform",
                         "description": "uniform: clientsPerRoom each; zipf: room k (1-based) gets "
                                        "a share proportional to k^-exponent (hot rooms)."},
                "exponent": _num("Zipf exponent.", default=1.0, minimum=0, exclusive=True),
            },
        },
        "arrival": {"type": "string", "enum": ["constant", "poisson"], "default": "constant",
                    "description": "Send times: evenly spaced at 1/rate, or a Poisson process of that rate."},
    },
}

SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A load test against a scalechat server.",
    "required": ["target", "stages"],
    "additionalProperties": False,
    "properties": {
        "target": {
            "type": "object",
            "required": ["url"],
            "additionalProperties": False,
            "description": "What to load.",
            "properties": {
                "url": {"type": "string",
                        "description": "WebSocket URL template with a {room} placeholder, "
                                       "e.g. ws://chat:8080/ws/{room}."},
            },
        },
        "stages": {"type": "array", "minItems": 1, "items": STAGE_SCHEMA,
                   "description": "Load levels, run in order."},
        "workers": _num("Worker processes per shard; 0 means one per usable core.",
                        default=0, minimum=0, integer=True),
        "parallelism": _num("Shards (generator processes or pods) sharing the rooms.",
                            default=1, minimum=1, integer=True),
        "connectRate": _num("New connections per second per shard during ramp-up.",
                            default=500.0, minimum=0, exclusive=True),
        "drainSeconds": _num("After a stage, wait up to this long for in-flight deliveries; "
                             "later ones count as late.", default=2.0, minimum=0),
        "slo": {
            "type": "object",
            "additionalProperties": False,
            "description": "What every stage must achieve to pass, checked per stage like k6 thresholds "
                           "(scalechat load exits 3 when one fails; a capacity search stops at the first "
                           "failure). Latencies are delivery latencies, from each message's scheduled "
                           "send time to every receipt.",
            "default": {},
            "properties": {
                "p50Seconds": _num("Largest acceptable median delivery latency.", minimum=0, exclusive=True),
                "p90Seconds": _num("Largest acceptable p90 delivery latency.", minimum=0, exclusive=True),
                "p99Seconds": _num("Largest acceptable p99 delivery latency.", default=0.5,
                                   minimum=0, exclusive=True),
                "p999Seconds": _num("Largest acceptable p99.9 delivery latency.", minimum=0, exclusive=True),
                "maxSeconds": _num("Largest acceptable delivery latency of any message.", minimum=0,
                                   exclusive=True),
                "deliveryRatio": _num("Smallest acceptable received/expected.", default=0.999,
                                      minimum=0, maximum=1),
            },
        },
        "events": {"type": "string", "enum": ["none", "csv"], "default": "none",
                   "description": "Raw per-message event log: none, or one CSV per worker."},
        "findCapacity": {
            "type": "object",
            "required": ["dimension"],
            "additionalProperties": False,
            "description": "Grow the single stage step by step until the SLO breaks.",
            "properties": {
                "dimension": {"type": "string", "enum": ["clients", "rooms", "rate"],
                              "description": "clients: clientsPerRoom; rooms; rate: per client."},
                "step": _num("Added to the dimension at each step (default: its first value).",
                             minimum=0, exclusive=True),
                "maxSteps": _num("Stages at most.", default=10, minimum=1, integer=True),
            },
        },
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def openapi_schema() -> dict[str, Any]:
    """The spec's OpenAPI v3 schema in Kubernetes *structural* form (a fresh copy).

    Structural schemas forbid types inside ``oneOf``, so the int-or-object
    ``size`` becomes ``x-kubernetes-preserve-unknown-fields`` (the loader
    still validates it fully); ``exclusiveMinimum`` is the boolean OpenAPI
    3.0 form. Everything else is :data:`SPEC_SCHEMA` as declared.
    """

    def convert(node: Any) -> Any:
        if isinstance(node, dict):
            if "oneOf" in node:
                out = {k: convert(v) for k, v in node.items() if k not in ("oneOf", "default")}
                out["x-kubernetes-preserve-unknown-fields"] = True
                return out
            return {k: convert(v) for k, v in node.items()}
        if isinstance(node, list):
            return [convert(v) for v in node]
        return copy.deepcopy(node)

    return convert(SPEC_SCHEMA)


def validate(value: Any, schema: dict[str, Any], path: str) -> Any:
    """Check ``value`` against ``schema``; return it with defaults filled (a new object).

    Raises ConfigError naming ``path`` (extended with ``.field`` and ``[i]``)
    at the first problem. Unknown fields are errors, with a suggestion.
    """
    if "oneOf" in schema:
        return validate(value, _pick_branch(value, schema, path), path)
    kind = schema.get("type")
    if kind in ("integer", "number"):
        return _check_number(value, schema, path)
    if kind in _TYPES and (not isinstance(value, _TYPES[kind]) or (kind != "boolean" and isinstance(value, bool))):
        raise ConfigError(path, f"must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {_show(value)}")
    if kind == "string":
        if "enum" in schema and value not in schema["enum"]:
            raise ConfigError(path, f"must be one of {', '.join(schema['enum'])}, got {value!r}")
        if len(value) < schema.get("minLength", 0):
            raise ConfigError(path, "must not be empty")
        if len(value) > schema.get("maxLength", math.inf):
            raise ConfigError(path, f"must be at most {schema['maxLength']} characters")
        return value
    if kind == "array":
        if len(value) < schema.get("minItems", 0):
            raise ConfigError(path, f"must have at least {schema['minItems']} item(s)")
        return [validate(item, schema["items"], f"{path}[{i}]") for i, item in enumerate(value)]
    if kind == "object":
        properties = schema.get("properties", {})
        for key in value:
            if key not in properties:
                close = difflib.get_close_matches(str(key), properties, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(properties)}"
                raise ConfigError(f"{path}.{key}", f"unknown field{hint}")
        for key in schema.get("required", ()):
            if key not in value or value[key] is None:
                raise ConfigError(f"{path}.{key}", "is required")
        out = {}
        for key, sub in properties.items():
            if key in value and value[key] is not None:
                out[key] = validate(value[key], sub, f"{path}.{key}")
            elif "default" in sub:
                out[key] = validate(copy.deepcopy(sub["default"]), sub, f"{path}.{key}")
        return out
    return value


def _pick_branch(value: Any, schema: dict[str, Any], path: str) -> dict[str, Any]:
    for branch in schema["oneOf"]:
        kind = branch.get("type")
        if kind in ("integer", "number") and isinstance(value, (int, float)) and not isinstance(value, bool):
            return branch
        if kind in _TYPES and isinstance(value, _TYPES[kind]):
            return branch
    kinds = " or ".join(str(b.get("type")) for b in schema["oneOf"])
    raise ConfigError(path, f"must be {kinds}, got {_show(value)}")


def _check_number(value: Any, schema: dict[str, Any], path: str) -> int | float:
    integer = schema["type"] == "integer"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"must be {'an integer' if integer else 'a number'}, got {_show(value)}")
    if not math.isfinite(value):
        raise ConfigError(path, f"must be finite, got {value}")
    if integer and value != int(value):
        raise ConfigError(path, f"must be an integer, got {value}")
    value = int(value) if integer else value
    minimum = schema.get("minimum")
    if minimum is not None:
        if schema.get("exclusiveMinimum") and value <= minimum:
            raise ConfigError(path, f"must be > {_fmt(minimum)}, got {_fmt(value)}")
        if value < minimum:
            raise ConfigError(path, f"must be >= {_fmt(minimum)}, got {_fmt(value)}")
    if "maximum" in schema and value > schema["maximum"]:
        raise ConfigError(path, f"must be <= {_fmt(schema['maximum'])}, got {_fmt(value)}")
    return value


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _show(value: Any) -> str:
    name = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    kind = name.get(type(value), type(value).__name__)
    return f"{kind} {value!r}" if isinstance(value, (str, bool, int, float)) else kind


def field_schema(dotted: str) -> dict[str, Any]:
    """The schema node of ``stages.rate``-style paths (``stages`` means one stage)."""
    node = SPEC_SCHEMA
    for part in dotted.split("."):
        node = node["properties"][part]
        if node.get("type") == "array":
            node = node["items"]
    return node


# --------------------------------------------------------------------------- typed models


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
class Stage:
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
class Slo:
    """``spec.slo``; the thresholds other than p99 and delivery are checked only when given."""

    p99_seconds: float = 0.5
    delivery_ratio: float = 0.999
    p50_seconds: float | None = None
    p90_seconds: float | None = None
    p999_seconds: float | None = None
    max_seconds: float | None = None

    def to_spec(self) -> dict[str, float]:
        spec = {"p50Seconds": self.p50_seconds, "p90Seconds": self.p90_seconds, "p99Seconds": self.p99_seconds,
                "p999Seconds": self.p999_seconds, "maxSeconds": self.max_seconds,
                "deliveryRatio": self.delivery_ratio}
        return {k: v for k, v in spec.items() if v is not None}

    def thresholds(self) -> tuple[Threshold, ...]:
        return thresholds(self.to_spec())

    @classmethod
    def from_spec(cls, slo: dict[str, Any]) -> Slo:
        def get(key: str) -> float | None:
            return float(slo[key]) if slo.get(key) is not None else None
        return cls(float(slo["p99Seconds"]), float(slo["deliveryRatio"]), p50_seconds=get("p50Seconds"),
                   p90_seconds=get("p90Seconds"), p999_seconds=get("p999Seconds"), max_seconds=get("maxSeconds"))


@dataclass(frozen=True)
class CapacitySearch:
    dimension: str  # clients | rooms | rate
    step: float
    max_steps: int


@dataclass(frozen=True)
class LoadTest:
    """A validated LoadTest: ``spec`` as typed fields plus the manifest's metadata."""

    name: str
    url: str
    stages: tuple[Stage, ...]
    workers: int
    parallelism: int
    connect_rate: float
    drain_seconds: float
    slo: Slo
    events: str
    find_capacity: CapacitySearch | None = None
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
        search = CapacitySearch(fc["dimension"], float(fc.get("step", base)), fc["maxSteps"])
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


def _stage(st: dict[str, Any], index: int) -> Stage:
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
    return Stage(name=st.get("name") or f"stage-{index}", rooms=st["rooms"], clients_per_room=st["clientsPerRoom"],
                 rate=float(st["rate"]), size=size, duration_seconds=float(st["durationSeconds"]),
                 warmup_seconds=float(st["warmupSeconds"]),
                 room_distribution=RoomDistribution(rd["type"], float(rd["exponent"])), arrival=st["arrival"])


def read_manifest(path: str | Path) -> Any:
    """The parsed YAML (or JSON) document of a manifest file; ConfigError names the file."""
    name = str(path)
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(name, f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(name, f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def load_manifest(path: str | Path, doc: Any = None) -> LoadTest:
    """Read and validate a LoadTest manifest; ConfigError names the file and the field.

    ``doc`` (from :func:`read_manifest`, possibly with overrides applied)
    skips reading the file again.
    """
    if doc is None:
        doc = read_manifest(path)
    try:
        return parse_manifest(doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.path}", exc.problem) from None


def parse_manifest(doc: Any) -> LoadTest:
    """Validate a whole manifest document (apiVersion, kind, metadata, spec)."""
    if not isinstance(doc, dict):
        raise ConfigError("(document)", f"must be a mapping with apiVersion, kind, metadata, spec; got {_show(doc)}")
    for key in doc:
        if key not in ("apiVersion", "kind", "metadata", "spec", "status"):
            raise ConfigError(str(key), "unknown top-level field; expected apiVersion, kind, metadata, spec")
    if doc.get("apiVersion") != API_VERSION:
        raise ConfigError("apiVersion", f"must be {API_VERSION}, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != KIND:
        raise ConfigError("kind", f"must be {KIND}, got {doc.get('kind')!r}")
    metadata = doc.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ConfigError("metadata", f"must be an object, got {_show(metadata)}")
    if "spec" not in doc:
        raise ConfigError("spec", "is required")
    return parse_spec(doc["spec"], "spec", metadata)
