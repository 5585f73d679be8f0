"""The LoadTest ``spec`` schema: one declaration, a validator that names field paths.

A LoadTest is the document ``scalechat load -f`` reads and ``kubectl apply``
gives the operator::

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
``openAPIV3Schema`` needs (``tools/gen_loadtest_crd.py`` writes the CRD from
it). The load generator's flags build the same ``spec`` mapping and go through
the same validator, so flags, manifests and the CRD cannot drift apart.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any

API_VERSION = "scalechat.io/v1alpha1"
KIND = "LoadTest"


class ConfigError(ValueError):
    """A manifest or flag value is invalid; ``str()`` is one line naming the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _num(description: str, *, default: float | None = None, minimum: float | None = None,
         exclusive: bool = False, maximum: float | None = None, integer: bool = False) -> dict[str, Any]:
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

    converted: dict[str, Any] = convert(SPEC_SCHEMA)
    return converted


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
        raise ConfigError(path, f"must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {describe_value(value)}")
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
            return dict(branch)
        if kind in _TYPES and isinstance(value, _TYPES[kind]):
            return dict(branch)
    kinds = " or ".join(str(b.get("type")) for b in schema["oneOf"])
    raise ConfigError(path, f"must be {kinds}, got {describe_value(value)}")


def _check_number(value: Any, schema: dict[str, Any], path: str) -> int | float:
    integer = schema["type"] == "integer"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"must be {'an integer' if integer else 'a number'}, got {describe_value(value)}")
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
    number: int | float = value
    return number


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def describe_value(value: Any) -> str:
    """How an error names a value it did not expect: ``a string 'fast'``, ``a list``, ``null``."""
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
