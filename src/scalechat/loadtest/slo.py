"""Service-level objectives: what a stage must achieve, and the verdict on one that ran.

Checked per stage, like k6's thresholds, by the load generator (the verdict it
prints, its exit status and a capacity search's stop), ``scalechat analyze``
(the check or cross in the report) and the operator (a LoadTest's
``SloPassed`` condition), so all three judge a stage alike.

An SLO is the manifest's ``spec.slo`` mapping (``{"p99Seconds": 0.05,
"deliveryRatio": 0.999}``), typed as :class:`Slo`, or the same written for a
command line by :func:`parse_expression`: ``p99<=50ms,delivery>=99.9%``. Each
key is one :class:`Threshold`. Latency thresholds bound a percentile (or the
maximum) of the *delivery* latency, from each message's scheduled send time to
every receipt; ``deliveryRatio`` bounds received / expected from below.

A stage *passes* when every threshold holds, it had latency samples and no
connection failed (a stage that did not connect every client did not get
the load it was meant to get). :func:`judge` also says whether the
generator fell behind its own schedule (:data:`GENERATOR_BEHIND_SECONDS`):
its delay is then inside the latencies, so a failure there may be the
generator's, not the server's. :func:`check_slo` is the same verdict as one
pass/fail and one line of reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from scalechat.results import StageResult

# Sends more than this late against their timetable: the generator could not keep up
# (the load generator's LAG_LIMIT, and its error "generator_overloaded").
GENERATOR_BEHIND_SECONDS = 0.1

# spec key -> (short name used on command lines and in tables, percentile or None for max/ratio)
LATENCY_KEYS: dict[str, tuple[str, float | None]] = {
    "p50Seconds": ("p50", 50.0),
    "p90Seconds": ("p90", 90.0),
    "p99Seconds": ("p99", 99.0),
    "p999Seconds": ("p99.9", 99.9),
    "maxSeconds": ("max", None),
}
RATIO_KEY = "deliveryRatio"
KEY_OF_NAME = {name: key for key, (name, _) in LATENCY_KEYS.items()} | {"delivery": RATIO_KEY}
EXPRESSION_HELP = ("comma-separated terms: p50|p90|p99|p99.9|max <= DURATION (us, ms or s; a bare "
                   "number is seconds) and delivery >= RATIO (0.999 or 99.9%%)")
_TERM = re.compile(r"^\s*([a-z0-9.]+)\s*(<=|<|>=|>)\s*([0-9.eE+-]+)\s*(us|ms|s|%)?\s*$")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}


class StageLike(Protocol):
    """What a verdict reads of a stage that ran (a :class:`~scalechat.results.StageResult`, analysis's Stage)."""

    delivery: Any  # a LogHistogram of seconds

    @property
    def connect_errors(self) -> int | None: ...

    @property
    def delivery_ratio(self) -> float | None: ...


@dataclass(frozen=True)
class Threshold:
    key: str  # the spec key, e.g. "p99Seconds"
    limit: float

    @property
    def name(self) -> str:
        return "delivery" if self.key == RATIO_KEY else LATENCY_KEYS[self.key][0]

    @property
    def op(self) -> str:
        return ">=" if self.key == RATIO_KEY else "<="

    def describe(self) -> str:
        """``p99 <= 50ms``, ``delivery >= 99.9%``."""
        return f"{self.name} {self.op} {format_value(self.key, self.limit)}"

    def measure(self, stage: StageLike) -> float | None:
        if self.key == RATIO_KEY:
            ratio = stage.delivery_ratio
            return None if ratio is None or math.isnan(ratio) else float(ratio)
        if not stage.delivery.count:
            return None
        q = LATENCY_KEYS[self.key][1]
        return float(stage.delivery.max if q is None else stage.delivery.percentile(q))

    def holds(self, value: float | None) -> bool:
        if value is None:
            return False
        return value >= self.limit if self.key == RATIO_KEY else value <= self.limit


@dataclass(frozen=True)
class Check:
    threshold: Threshold
    value: float | None  # None: nothing to measure (no samples, no expected count)
    passed: bool

    def describe(self) -> str:
        """``p99 12.3ms <= 50ms``, or ``p99 612ms > 50ms`` when it fails."""
        t = self.threshold
        if self.value is None:
            return f"{t.name}: not measured"
        op = t.op if self.passed else {"<=": ">", ">=": "<"}[t.op]
        return f"{t.name} {format_value(t.key, self.value)} {op} {format_value(t.key, t.limit)}"

    def to_dict(self) -> dict[str, Any]:
        t = self.threshold
        return {"name": t.name, "key": t.key, "op": t.op, "limit": t.limit, "value": self.value,
                "passed": self.passed}


@dataclass(frozen=True)
class Verdict:
    """One stage judged: every threshold's check, plus what can make it untrustworthy."""

    checks: tuple[Check, ...]
    samples: bool  # latency samples were measured
    connect_errors: int
    send_lag_max: float  # seconds the generator's sends fell behind their timetable, at most

    @property
    def generator_behind(self) -> bool:
        return self.send_lag_max > GENERATOR_BEHIND_SECONDS

    @property
    def passed(self) -> bool:
        return self.samples and not self.connect_errors and all(c.passed for c in self.checks)

    def failures(self) -> list[str]:
        """Why it failed, one phrase per reason (empty when it passed)."""
        reasons = [] if self.samples else ["no deliveries measured"]
        if self.connect_errors:
            reasons.append(f"{self.connect_errors} connection error(s)")
        return reasons + [c.describe() for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "generator_behind": self.generator_behind,
                "failures": self.failures(), "checks": [c.to_dict() for c in self.checks]}


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
    def from_spec(cls, slo: Mapping[str, Any]) -> Slo:
        def get(key: str) -> float | None:
            return float(slo[key]) if slo.get(key) is not None else None
        return cls(float(slo["p99Seconds"]), float(slo["deliveryRatio"]), p50_seconds=get("p50Seconds"),
                   p90_seconds=get("p90Seconds"), p999_seconds=get("p999Seconds"), max_seconds=get("maxSeconds"))


def thresholds(slo: Mapping[str, Any]) -> tuple[Threshold, ...]:
    """The thresholds of a ``spec.slo`` mapping, latencies first (p50 ... max), then delivery."""
    order = [*LATENCY_KEYS, RATIO_KEY]
    unknown = [k for k in slo if k not in order]
    if unknown:
        raise ValueError(f"unknown SLO key {unknown[0]!r}; known: {', '.join(order)}")
    return tuple(Threshold(key, float(slo[key])) for key in order if slo.get(key) is not None)


def judge(stage: StageLike, slo: Mapping[str, Any] | tuple[Threshold, ...],
          send_lag_max: float = 0.0) -> Verdict:
    """The verdict of one stage (a StageResult, or analysis's Stage) against ``slo``."""
    rules = slo if isinstance(slo, tuple) else thresholds(slo)
    checks = []
    for rule in rules:
        value = rule.measure(stage)
        checks.append(Check(rule, value, rule.holds(value)))
    return Verdict(tuple(checks), samples=bool(stage.delivery.count),
                   connect_errors=int(stage.connect_errors or 0), send_lag_max=float(send_lag_max))


def check_slo(result: StageResult, slo: Slo) -> tuple[bool, str]:
    """(holds, reason) for one stage's merged result: every threshold of ``slo``
    (:func:`judge`), latency samples, no connection error.

    The reason keeps the wording the operator's status messages have always had
    for p99 and the delivery ratio (``p99 0.977s > 0.1s``, ``delivery ratio
    0.9000 < 0.99``).
    """
    verdict = judge(result, slo.thresholds(), result.send_lag_max)
    if not verdict.samples:
        return False, "no deliveries measured"
    if verdict.connect_errors:
        return False, f"{verdict.connect_errors} connection error(s)"
    reasons = [_reason(c) for c in verdict.checks if not c.passed]
    if reasons:
        return False, "; ".join(reasons)
    return True, f"p99 {result.delivery.percentile(99):.3f}s, delivery ratio {result.delivery_ratio:.4f}"


def _reason(check: Check) -> str:
    t, value = check.threshold, check.value
    if t.key == "p99Seconds" and value is not None:
        return f"p99 {value:.3f}s > {t.limit:g}s"
    if t.key == "deliveryRatio" and value is not None:
        return f"delivery ratio {value:.4f} < {t.limit:g}"
    return check.describe()


def parse_expression(text: str) -> dict[str, float]:
    """``p99<=50ms,delivery>=99.9%`` -> ``{"p99Seconds": 0.05, "deliveryRatio": 0.999}``.

    Raises ValueError saying which term is wrong and what a term looks like.
    """
    out: dict[str, float] = {}
    terms = [t for t in text.split(",") if t.strip()]
    if not terms:
        raise ValueError(f"is empty; expected {EXPRESSION_HELP.replace('%%', '%')}")
    for term in terms:
        match = _TERM.match(term)
        if not match or match.group(1) not in KEY_OF_NAME:
            raise ValueError(f"cannot read {term.strip()!r}; expected {EXPRESSION_HELP.replace('%%', '%')}")
        name, op, number, unit = match.groups()
        key = KEY_OF_NAME[name]
        try:
            value = float(number)
        except ValueError:
            raise ValueError(f"{term.strip()!r}: {number!r} is not a number") from None
        if key == RATIO_KEY:
            if op not in (">=", ">") or unit not in (None, "%"):
                raise ValueError(f"{term.strip()!r}: delivery takes >= and a ratio (0.999) or a "
                                 "percentage (99.9%)")
            value = value / 100 if unit == "%" else value
            if not 0 <= value <= 1:
                raise ValueError(f"{term.strip()!r}: a delivery ratio is between 0 and 1 (0% and 100%)")
        else:
            if op not in ("<=", "<") or unit == "%":
                raise ValueError(f"{term.strip()!r}: {name} takes <= and a duration such as 50ms")
            value *= _UNITS[unit]
            if not value > 0:
                raise ValueError(f"{term.strip()!r}: the bound must be > 0")
        if key in out:
            raise ValueError(f"{name} is given twice")
        out[key] = value
    return out


def format_value(key: str, value: float) -> str:
    """A limit or a measured value as people write it: ``50ms``, ``1.2s``, ``99.9%``."""
    if key == RATIO_KEY:
        return f"{value * 100:.4g}%"
    if value < 1e-3:
        return f"{value * 1e6:.3g}us"
    if value < 1:
        return f"{value * 1e3:.3g}ms"
    return f"{value:.3g}s"


def describe(slo: Mapping[str, Any]) -> str:
    """``p99 <= 50ms, delivery >= 99.9%``."""
    return ", ".join(t.describe() for t in thresholds(slo))
