"""The load-test results format, shared by the load generator (writer) and analysis (reader).

A results directory holds:

``run.json``
    ``{"format": 1, "spec": <LoadTest spec>, "metadata": {...}, "stages": [<planned stage>...],
    "generator": <host facts>, "server": <server /info or null>, "shards": n, "workers": k,
    "started_at": unix s, "finished_at": unix s, "interrupted": bool}``; written by every
    shard (identical but for timing and host facts).
``shard-<i>-of-<n>.json``
    this shard's per-stage :class:`StageResult` list (``{"format": 1, "shard": i,
    "shards": n, "stages": [...]}``), written atomically (temp file + rename) so a
    reader never sees half a file.
``events-shard-<i>-of-<n>-w<k>.csv``
    optional raw event log, one per worker process (see :mod:`scalechat.eventlog`).
``summary.json``
    the end-of-run summary ``scalechat load`` prints (per-stage verdicts against the SLO);
    ``--summary-json`` writes the same elsewhere too.

Merging shard files (:func:`merge_stage_results`) sums counts and merges histograms
exactly, so n shards give the same numbers as one run that did all the work; a
stage's :class:`Timeline` (per-second bins from the start of its measurement
window) merges exactly too, bin by bin. Fields added after format 1 was first
written (``send_lag_max``, ``timeline``) are optional when reading.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalechat.histogram import HistogramConfig, LogHistogram

FORMAT = 1
COUNT_FIELDS = ("sent", "expected", "received", "duplicates", "out_of_order", "late",
                "connections", "connect_errors")


@dataclass
class Timeline:
    """A stage over time: bins of ``bin_seconds`` from the start of its measurement window.

    Bin ``k`` covers ``[start + k * bin_seconds, start + (k + 1) * bin_seconds)``: ``sent``
    counts measured sends scheduled in it, ``received`` and ``latency`` the receipts
    accounted in it (delivery latencies as sparse bucket counts of the default
    :class:`~scalechat.histogram.HistogramConfig`, so bins merge exactly), ``lag`` the
    furthest the generator's sends were behind their timetable. Bins past the window
    hold the drain (receipts only).
    """

    bin_seconds: float = 1.0
    sent: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    latency: list[dict[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sent)

    def grow(self, bins: int) -> None:
        while len(self.sent) < bins:
            self.sent.append(0)
            self.received.append(0)
            self.lag.append(0.0)
            self.latency.append({})

    def add(self, k: int, *, sent: int = 0, lag: float = 0.0, buckets: np.ndarray | None = None) -> None:
        """Add to bin ``k``: sends, a lag, and the delivery histogram's bucket counts gained."""
        self.grow(k + 1)
        self.sent[k] += sent
        self.lag[k] = max(self.lag[k], lag)
        if buckets is not None:
            nonzero = np.flatnonzero(buckets)
            into = self.latency[k]
            for i, n in zip(nonzero.tolist(), buckets[nonzero].tolist()):
                into[i] = into.get(i, 0) + n
            self.received[k] += int(buckets[nonzero].sum())

    def merge(self, other: Timeline) -> None:
        if other.bin_seconds != self.bin_seconds and len(other):
            if len(self):
                raise ValueError(f"cannot merge timelines of {other.bin_seconds} s and {self.bin_seconds} s bins")
            self.bin_seconds = other.bin_seconds
        self.grow(len(other))
        for k in range(len(other)):
            self.sent[k] += other.sent[k]
            self.received[k] += other.received[k]
            self.lag[k] = max(self.lag[k], other.lag[k])
            into = self.latency[k]
            for i, n in other.latency[k].items():
                into[i] = into.get(i, 0) + n

    def percentiles(self, qs: list[float]) -> np.ndarray:
        """Nearest-rank delivery latency percentiles (seconds) per bin: shape (bins, len(qs)); NaN if empty."""
        config = HistogramConfig()
        out = np.full((len(self), len(qs)), np.nan)
        for k, buckets in enumerate(self.latency):
            if not buckets:
                continue
            index = np.array(sorted(buckets), dtype=np.int64)
            cumulative = np.cumsum([buckets[i] for i in index.tolist()])
            ranks = np.clip(np.ceil(np.asarray(qs) / 100.0 * cumulative[-1]), 1, cumulative[-1])
            out[k] = config.bucket_value(index[np.searchsorted(cumulative, ranks, side="left")])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"bin_seconds": self.bin_seconds, "sent": self.sent, "received": self.received, "lag": self.lag,
                "latency": [{"index": sorted(b), "count": [b[i] for i in sorted(b)]} for b in self.latency]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timeline:
        latency = [dict(zip(map(int, b["index"]), map(int, b["count"]))) for b in data["latency"]]
        timeline = cls(float(data["bin_seconds"]), [int(x) for x in data["sent"]],
                       [int(x) for x in data["received"]], [float(x) for x in data["lag"]], latency)
        if not len(timeline.sent) == len(timeline.received) == len(timeline.lag) == len(latency):
            raise ValueError("timeline lists differ in length")
        return timeline


@dataclass
class StageResult:
    """One stage as measured by one shard (or merged over shards).

    ``echo`` holds latencies from a message's *scheduled* send time to its sender's
    echo; ``delivery`` from the scheduled send time to each receipt by any client
    in the same process (the echo included). Both in seconds.
    """

    index: int
    name: str
    started_at: float = 0.0  # unix seconds, measurement window (after warm-up)
    ended_at: float = 0.0
    sent: int = 0
    expected: int = 0  # each send times the room's members at that moment
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    late: int = 0  # arrived after the stage and its drain window
    connections: int = 0
    connect_errors: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by kind, e.g. "rate_limited", "close_1013"
    echo: LogHistogram = field(default_factory=LogHistogram)
    delivery: LogHistogram = field(default_factory=LogHistogram)
    send_lag_max: float = 0.0  # seconds: the furthest a measured send fell behind its timetable
    timeline: Timeline = field(default_factory=Timeline)

    @property
    def delivery_ratio(self) -> float:
        return self.received / self.expected if self.expected else 1.0

    def merge(self, other: StageResult) -> None:
        if other.index != self.index:
            raise ValueError(f"cannot merge stage {other.index} into stage {self.index}")
        for name in COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.update(other.errors)
        self.echo.merge(other.echo)
        self.delivery.merge(other.delivery)
        self.send_lag_max = max(self.send_lag_max, other.send_lag_max)
        self.timeline.merge(other.timeline)
        starts = [t for t in (self.started_at, other.started_at) if t]
        self.started_at = min(starts) if starts else 0.0
        self.ended_at = max(self.ended_at, other.ended_at)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "name": self.name,
                               "started_at": self.started_at, "ended_at": self.ended_at}
        out.update({name: getattr(self, name) for name in COUNT_FIELDS})
        out["errors"] = dict(self.errors)
        out["echo"] = self.echo.to_dict()
        out["delivery"] = self.delivery.to_dict()
        out["send_lag_max"] = self.send_lag_max
        out["timeline"] = self.timeline.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        return cls(index=int(data["index"]), name=str(data["name"]),
                   started_at=float(data["started_at"]), ended_at=float(data["ended_at"]),
                   **{name: int(data[name]) for name in COUNT_FIELDS},
                   errors=Counter(data.get("errors", {})),
                   echo=LogHistogram.from_dict(data["echo"]),
                   delivery=LogHistogram.from_dict(data["delivery"]),
                   send_lag_max=float(data.get("send_lag_max", 0.0)),
                   timeline=Timeline.from_dict(data["timeline"]) if data.get("timeline") else Timeline())


def shard_file_name(shard: int, shards: int) -> str:
    return f"shard-{shard}-of-{shards}.json"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_shard(out_dir: Path, shard: int, shards: int, stages: list[StageResult]) -> Path:
    path = Path(out_dir) / shard_file_name(shard, shards)
    write_json_atomic(path, {"format": FORMAT, "shard": shard, "shards": shards,
                             "stages": [s.to_dict() for s in stages]})
    return path


def read_shard(path: Path) -> tuple[int, int, list[StageResult]]:
    """Return (shard, shards, stages); ValueError naming the file if it is not a shard file."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"unsupported format {data.get('format')!r}")
        return int(data["shard"]), int(data["shards"]), [StageResult.from_dict(s) for s in data["stages"]]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable shard result file: {exc}") from None


def merge_stage_results(shards: list[list[StageResult]]) -> list[StageResult]:
    """Merge per-stage results of several shards (exact: counts add, histograms merge)."""
    merged: dict[int, StageResult] = {}
    for stages in shards:
        for stage in stages:
            if stage.index in merged:
                merged[stage.index].merge(stage)
            else:
                merged[stage.index] = StageResult.from_dict(stage.to_dict())  # a copy
    return [merged[i] for i in sorted(merged)]


def read_results_dir(directory: Path) -> tuple[dict[str, Any], list[StageResult]]:
    """``run.json`` and the merged stages of every shard file in ``directory``.

    Raises ValueError naming the directory when shards are missing or inconsistent.
    """
    directory = Path(directory)
    run_path = directory / "run.json"
    try:
        run = json.loads(run_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{run_path}: cannot read run description: {exc}") from None
    shard_files = sorted(directory.glob("shard-*-of-*.json"))
    if not shard_files:
        raise ValueError(f"{directory}: no shard-*-of-*.json result files")
    read = [read_shard(p) for p in shard_files]
    counts = {n for _, n, _ in read}
    indices = sorted(i for i, _, _ in read)
    if len(counts) != 1 or indices != list(range(counts.pop())):
        raise ValueError(f"{directory}: shard files are incomplete or mixed: {[p.name for p in shard_files]}")
    return run, merge_stage_results([stages for _, _, stages in read])
