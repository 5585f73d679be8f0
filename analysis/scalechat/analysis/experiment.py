"""What a run is an experiment *about*: the dimension its stages step, and each stage's verdict.

Pure: a :class:`~scalechat.analysis.load.Run` in, an :class:`Axis` and
verdicts out. A run whose stages step exactly one of clients per room, rooms
or the per-client rate (the seed's 10, 20, ... 110 clients) is drawn against
that number; any other run against its stage names, in order.

Verdicts are :func:`scalechat.loadtest.slo.judge` against the run's ``spec.slo``, the
same call ``scalechat load`` makes, so the report and the console agree.
Event logs know no expected count: their runs get no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

from scalechat.analysis.load import Run
from scalechat.loadtest.slo import GENERATOR_BEHIND_SECONDS, Verdict, describe, judge

# spec key of a stage -> how the axis is labelled
DIMENSIONS = (("clientsPerRoom", "clients per room"), ("rooms", "rooms"), ("rate", "messages/s per client"))


@dataclass(frozen=True)
class Axis:
    """Where each stage of a run sits on the x axis."""

    label: str
    positions: tuple[float, ...]  # one per stage
    names: tuple[str, ...]  # the stage names
    numeric: bool  # False: stages are categories at 0, 1, 2, ...
    log: bool = False


def stepped_axis(run: Run) -> Axis:
    names = tuple(s.name for s in run.stages)
    planned = [s.planned for s in run.stages]
    categorical = Axis("stage", tuple(float(i) for i in range(len(names))), names, numeric=False)
    if len(planned) < 2 or not all(planned):
        return categorical
    varying = [(key, label) for key, label in DIMENSIONS if len({str(p.get(key)) for p in planned}) > 1]
    if len(varying) != 1:
        return categorical
    key, label = varying[0]
    try:
        values = [float(p[key]) for p in planned]
    except (KeyError, TypeError, ValueError):
        return categorical
    if len(set(values)) != len(values) or min(values) <= 0:
        return categorical
    if key == "clientsPerRoom":
        rooms = {p.get("rooms", 1) for p in planned}
        label = "clients (one room)" if rooms == {1} else f"clients per room ({rooms.pop()} rooms)"
    return Axis(label, tuple(values), names, numeric=True, log=max(values) / min(values) >= 30)


def verdicts(run: Run) -> list[Verdict | None]:
    """Each stage's verdict against the run's SLO (None: an event log, or no SLO recorded)."""
    if run.kind != "results" or not run.slo:
        return [None] * len(run.stages)
    return [judge(stage, run.slo, stage.lag_max or 0.0) for stage in run.stages]


def slo_text(run: Run) -> str | None:
    return describe(run.slo) if run.slo else None


def generator_behind(lag: float | None) -> bool:
    return lag is not None and lag > GENERATOR_BEHIND_SECONDS
