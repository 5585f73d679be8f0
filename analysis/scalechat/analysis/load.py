"""Reading what load tests left: results directories and raw event logs.

Every input becomes a :class:`Run`: a labelled list of :class:`Stage` with counts
and latency histograms. A results directory is merged over its shard files
(:func:`scalechat.results.read_results_dir`, exact). Event logs are streamed
(:func:`scalechat.eventlog.read_event_log`); the logs of one run's shards and
workers (``events-shard-<i>-of-<n>[-w<k>].csv`` in one directory) are merged.
Event log times are the generator's monotonic clock: they give no stage window
for Prometheus (the results directory's stages do).
An event log knows no ``expected`` count (room membership is not in it), and
its duplicates are a lower bound (see ``read_event_log``).

Anything unreadable raises :class:`InputError` naming the path.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalechat.eventlog import EventLogError, SenderEcho, read_event_log
from scalechat.histogram import LogHistogram
from scalechat.results import Timeline, read_results_dir

EVENT_SHARD = re.compile(r"^events-shard-\d+-of-\d+(-w\d+)?\.csv$")  # as the load generator names them
EPOCH_2001_NS = 10**18  # earlier "times" are a monotonic clock, not a date: no window


class InputError(ValueError):
    """A path that is not a readable results directory or event log."""


@dataclass(frozen=True, eq=False)
class Stage:
    """One stage of one run. Counts a source does not know are None."""

    index: int
    name: str
    started_at: float | None  # unix seconds
    ended_at: float | None
    sent: int
    expected: int | None
    received: int
    duplicates: int
    delivery: LogHistogram  # seconds, scheduled send -> each receipt
    echo: LogHistogram  # seconds, scheduled send -> the sender's own copy
    out_of_order: int | None = None
    late: int | None = None
    connections: int | None = None
    connect_errors: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    send_lag: LogHistogram | None = None  # event logs: sent - scheduled
    senders: SenderEcho | None = None  # event logs: echo latency per sender
    send_lag_max: float | None = None  # results: seconds the generator's sends fell behind, at most
    timeline: Timeline | None = None  # results: the stage over time
    planned: dict[str, Any] = field(default_factory=dict)  # run.json's stage spec (rooms, clientsPerRoom, rate)

    @property
    def lag_max(self) -> float | None:
        """The generator's worst delay behind its timetable, from whichever source knows it."""
        if self.send_lag_max is not None:
            return self.send_lag_max
        return float(self.send_lag.max) if self.send_lag is not None and self.send_lag.count else None

    @property
    def delivery_ratio(self) -> float | None:
        if self.expected is None:
            return None
        return self.received / self.expected if self.expected else math.nan


@dataclass(frozen=True, eq=False)
class Run:
    label: str
    source: Path
    kind: str  # "results" or "events"
    stages: tuple[Stage, ...]
    info: dict[str, Any] = field(default_factory=dict)  # run.json of a results directory
    files: tuple[Path, ...] = ()

    @property
    def interrupted(self) -> bool:
        return bool(self.info.get("interrupted"))

    @property
    def slo(self) -> dict[str, Any]:
        """The run's ``spec.slo`` ({} when run.json has none: an event log alone)."""
        spec = self.info.get("spec")
        slo = spec.get("slo") if isinstance(spec, dict) else None
        return dict(slo) if isinstance(slo, dict) else {}


def load(paths: Sequence[str | Path]) -> list[Run]:
    """Runs for the given results directories and event log files, in order given."""
    runs: list[Run] = []
    logs: dict[Path, list[Path]] = {}  # shard logs, grouped by directory
    order: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            order.append(("results", path))
        elif path.is_file():
            if EVENT_SHARD.search(path.name):
                if path.parent not in logs:
                    order.append(("shards", path.parent))
                logs.setdefault(path.parent, []).append(path)
            else:
                order.append(("events", path))
        else:
            raise InputError(f"{path}: no such results directory or event log")
    for kind, path in order:
        if kind == "results":
            runs.append(load_results_dir(path))
        elif kind == "shards":
            metadata = _run_json(path).get("metadata")
            name = metadata.get("name") if isinstance(metadata, dict) else None
            runs.append(load_event_logs(sorted(logs[path]), label=f"{name or path.resolve().name} (events)",
                                        source=path))
        else:
            runs.append(load_event_logs([path], label=path.stem, source=path))
    return _unique_labels(runs)


def load_results_dir(path: Path) -> Run:
    try:
        info, results = read_results_dir(path)
    except ValueError as exc:
        raise InputError(_naming(path, exc)) from None
    if not isinstance(info, dict):
        raise InputError(f"{path / 'run.json'}: not a run description (a JSON object)")
    stages = tuple(
        Stage(index=s.index, name=s.name or f"stage {s.index}", started_at=s.started_at or None,
              ended_at=s.ended_at or None, sent=s.sent, expected=s.expected, received=s.received,
              duplicates=s.duplicates, delivery=s.delivery, echo=s.echo, out_of_order=s.out_of_order,
              late=s.late, connections=s.connections, connect_errors=s.connect_errors,
              errors=dict(s.errors), send_lag_max=s.send_lag_max,
              timeline=s.timeline if len(s.timeline) else None, planned=_planned(info, s.index))
        for s in results)
    name = (info.get("metadata") or {}).get("name") if isinstance(info.get("metadata"), dict) else None
    return Run(label=str(name or path.resolve().name), source=path, kind="results", stages=stages,
               info=info, files=tuple(sorted(path.glob("*.json"))))


def load_event_logs(paths: Iterable[Path], *, label: str, source: Path) -> Run:
    """One run from the event logs of its shards (each streamed, then merged)."""
    merged: dict[int, dict[str, Any]] = {}
    paths = list(paths)
    for path in paths:
        try:
            summary = read_event_log(path)
        except (EventLogError, OSError) as exc:
            raise InputError(_naming(path, exc)) from None
        for index, s in summary.stages.items():
            into = merged.setdefault(index, {"sent": 0, "received": 0, "duplicates": 0, "first": [],
                                             "last": [], "delivery": [], "echo": [], "send_lag": [],
                                             "senders": []})
            into["sent"] += s.sends
            into["received"] += s.receipts
            into["duplicates"] += s.duplicates
            into["first"].append(s.first_ns)
            into["last"].append(s.last_ns)
            for name in ("delivery", "echo", "send_lag", "senders"):
                into[name].append(getattr(s, name))
    info = _run_json(source if source.is_dir() else source.parent)
    names = _planned_stage_names(info)
    stages = tuple(
        Stage(index=i, name=names.get(i, f"stage {i}"), started_at=_seconds(min(m["first"])),
              ended_at=_seconds(max(m["last"])), sent=m["sent"], expected=None,
              received=m["received"], duplicates=m["duplicates"],
              delivery=LogHistogram.merged(m["delivery"]), echo=LogHistogram.merged(m["echo"]),
              send_lag=LogHistogram.merged(m["send_lag"]), senders=_merge_senders(m["senders"]),
              planned=_planned(info, i))
        for i, m in sorted(merged.items()))
    return Run(label=label, source=source, kind="events", stages=stages, info=info, files=tuple(paths))


def _naming(path: Path, exc: BaseException) -> str:
    text = str(exc)
    return text if str(path) in text else f"{path}: {text}"


def _seconds(ns: int) -> float | None:
    return ns / 1e9 if ns >= EPOCH_2001_NS else None


def _run_json(directory: Path) -> dict[str, Any]:
    """run.json beside event logs, if there is a readable one ({} otherwise)."""
    try:
        info = json.loads((directory / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _planned(info: dict[str, Any], index: int) -> dict[str, Any]:
    planned = info.get("stages")
    if isinstance(planned, list) and index < len(planned) and isinstance(planned[index], dict):
        return dict(planned[index])
    return {}


def _planned_stage_names(info: dict[str, Any]) -> dict[int, str]:
    planned = info.get("stages")
    if not isinstance(planned, list):
        return {}
    return {i: str(stage["name"]) for i, stage in enumerate(planned)
            if isinstance(stage, dict) and stage.get("name")}


def _merge_senders(parts: list[SenderEcho]) -> SenderEcho:
    if len(parts) == 1:
        return parts[0]
    ids = np.concatenate([p.sender for p in parts])
    count = np.concatenate([p.count for p in parts])
    total = np.concatenate([p.mean * p.count for p in parts])
    high = np.concatenate([p.max for p in parts])
    unique, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse, weights=count, minlength=unique.size).astype(np.int64)
    maxima = np.full(unique.size, -np.inf)
    np.maximum.at(maxima, inverse, high)
    totals = np.bincount(inverse, weights=total, minlength=unique.size)
    return SenderEcho(unique, counts, totals / np.maximum(counts, 1), maxima)


def _unique_labels(runs: list[Run]) -> list[Run]:
    seen = Counter(run.label for run in runs)
    out = []
    for run in runs:
        if seen[run.label] > 1:
            run = Run(label=f"{run.label} ({run.source})", source=run.source, kind=run.kind,
                      stages=run.stages, info=run.info, files=run.files)
        out.append(run)
    return out
