"""Where the stages come from: a fixed list, or a capacity search that grows one dimension.

The runner asks a *stage source* for the next stage after each one finishes,
passing the finished stage's merged result; ``None`` ends the run.

:class:`CapacitySearch` grows ``clients`` (clientsPerRoom), ``rooms`` or
``rate`` by ``step`` per stage, starting from the base stage, until a stage
breaks the SLO or ``max_steps`` stages have run. A stage *holds* when it had
deliveries, no connection errors and meets every threshold of the SLO
(:func:`scalechat.loadtest.slo.check_slo`). The reported capacity is
the value of the last stage that held (``None`` if the first one failed); when
no stage failed it is a lower bound (``"bounded": false``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

from scalechat.loadtest.slo import Slo, check_slo
from scalechat.loadtest.spec import StageSpec
from scalechat.results import StageResult


class StageSource(Protocol):
    def next_stage(self, last: StageResult | None) -> StageSpec | None: ...

    def report(self) -> dict[str, Any] | None: ...


class FixedStages:
    """The stages of the spec, in order."""

    def __init__(self, stages: tuple[StageSpec, ...]) -> None:
        self._stages = list(stages)
        self._next = 0

    def next_stage(self, last: StageResult | None) -> StageSpec | None:
        if self._next >= len(self._stages):
            return None
        self._next += 1
        return self._stages[self._next - 1]

    def report(self) -> None:
        return None

    def total(self) -> int:
        return len(self._stages)


class CapacitySearch:
    """Grow one dimension of ``base`` step by step until the SLO breaks."""

    FIELDS = {"clients": "clients_per_room", "rooms": "rooms", "rate": "rate"}

    def __init__(self, base: StageSpec, dimension: str, step: float, max_steps: int, slo: Slo) -> None:
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

    def next_stage(self, last: StageResult | None) -> StageSpec | None:
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
