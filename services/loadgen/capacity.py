"""Where the stages come from: a fixed list, or a capacity search that grows one dimension.

The runner asks a *stage source* for the next stage after each one finishes,
passing the finished stage's merged result; ``None`` ends the run.

:class:`CapacitySearch` grows ``clients`` (clientsPerRoom), ``rooms`` or
``rate`` by ``step`` per stage, starting from the base stage, until a stage
breaks the SLO or ``max_steps`` stages have run. A stage *holds* when it had
deliveries, no connection errors and meets every threshold of the SLO
(:mod:`scalechat.slo`). The reported capacity is
the value of the last stage that held (``None`` if the first one failed); when
no stage failed it is a lower bound (``"bounded": false``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

from scalechat.loadgen.config import Slo, Stage
from scalechat.results import StageResult
from scalechat.slo import Check, judge


class StageSource(Protocol):
    def next_stage(self, last: StageResult | None) -> Stage | None: ...

    def report(self) -> dict[str, Any] | None: ...


class FixedStages:
    """The stages of the spec, in order."""

    def __init__(self, stages: tuple[Stage, ...]) -> None:
        self._stages = list(stages)
        self._next = 0

    def next_stage(self, last: StageResult | None) -> Stage | None:
        if self._next >= len(self._stages):
            return None
        self._next += 1
        return self._stages[self._next - 1]

    def report(self) -> None:
        return None

    def total(self) -> int:
        return len(self._stages)


def check_slo(result: StageResult, slo: Slo) -> tuple[bool, str]:
    """(holds, reason) for one stage's merged result: every threshold of ``slo``
    (:func:`scalechat.slo.judge`), latency samples, no connection error.

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


class CapacitySearch:
    """Grow one dimension of ``base`` step by step until the SLO breaks."""

    FIELDS = {"clients": "clients_per_room", "rooms": "rooms", "rate": "rate"}

    def __init__(self, base: Stage, dimension: str, step: float, max_steps: int, slo: Slo) -> None:
        if dimension not in self.FIELDS:
            raise ValueError(f"unknown capacity dimension {dimension!r}")
        self.base, self.dimension, self.step, self.max_steps, self.slo = base, dimension, step, max_steps, slo
        self.steps: list[dict[str, Any]] = []
        self._last_value: float | None = None
        self._last_name = ""
        self._done = False

    def value(self, k: int) -> float | int:
        start = getattr(self.base, self.FIELDS[self.dimension])
        value = start + k * self.step
        return value if self.dimension == "rate" else int(math.floor(value))

    def next_stage(self, last: StageResult | None) -> Stage | None:
        if last is not None:
            holds, reason = check_slo(last, self.slo)
            self.steps.append({"stage": self._last_name, "value": self._last_value, "holds": holds,
                               "reason": reason})
            if not holds:
                self._done = True
        k = len(self.steps)
        if self._done or k >= self.max_steps:
            return None
        value = self.value(k)
        self._last_value = value
        label = f"{value:g}" if isinstance(value, float) else str(value)
        self._last_name = f"{self.dimension}-{label}"
        return dataclasses.replace(self.base, name=self._last_name, **{self.FIELDS[self.dimension]: value})

    def report(self) -> dict[str, Any]:
        held = [s for s in self.steps if s["holds"]]
        failed = [s for s in self.steps if not s["holds"]]
        last = held[-1] if held and (not failed or self.steps.index(held[-1]) < self.steps.index(failed[0])) else None
        return {"dimension": self.dimension, "value": last["value"] if last else None,
                "stage": last["stage"] if last else None, "bounded": bool(failed),
                "slo": self.slo.to_spec(),
                "steps": self.steps}
