"""Per-stage statistics as flat rows: the summary CSV, the report's table, the plots' data.

Pure: runs in, rows and text out; no files, no printing. Latencies in seconds.
Column names are stable (:data:`COLUMNS`); a value a source does not know is
None (an empty CSV cell), as is every latency statistic of a stage without samples.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from scalechat.analysis.experiment import generator_behind, verdicts
from scalechat.analysis.load import Run, Stage
from scalechat.histogram import LogHistogram
from scalechat.loadtest.slo import Verdict

PERCENTILES = (10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9)
LATENCIES = ("delivery", "echo")  # delivery is the main one: every receipt


def percentile_name(q: float) -> str:
    """``p10``, ``p99``, ``p99_9``."""
    return "p" + f"{q:g}".replace(".", "_")


def latency_columns(kind: str) -> list[str]:
    return [f"{kind}_count", *(f"{kind}_{percentile_name(q)}_s" for q in PERCENTILES),
            f"{kind}_max_s", f"{kind}_mean_s", f"{kind}_std_s"]


COLUMNS: tuple[str, ...] = (
    "config", "source", "stage", "stage_name", "rooms", "clients_per_room", "rate", "started_at", "duration_s",
    "sent", "expected", "received", "delivery_ratio", "sent_per_s", "received_per_s",
    "duplicates", "out_of_order", "late", "connections", "connect_errors", "errors", "error_kinds",
    *latency_columns("delivery"), *latency_columns("echo"),
    "send_lag_p99_s", "send_lag_max_s", "generator_behind", "slo_passed", "slo_failures",
)


def latency_stats(kind: str, histogram: LogHistogram | None) -> dict[str, Any]:
    count = histogram.count if histogram is not None else 0
    row: dict[str, Any] = {f"{kind}_count": count}
    values = histogram.percentiles(PERCENTILES) if count else [None] * len(PERCENTILES)
    for q, value in zip(PERCENTILES, values):
        row[f"{kind}_{percentile_name(q)}_s"] = _number(value)
    for stat in ("max", "mean", "std"):
        row[f"{kind}_{stat}_s"] = _number(getattr(histogram, stat)) if count else None
    return row


def stage_row(run: Run, stage: Stage, verdict: Verdict | None = None) -> dict[str, Any]:
    """One stage's statistics; ``verdict`` (from :func:`experiment.verdicts`) fills the SLO columns."""
    duration = (stage.ended_at - stage.started_at
                if stage.started_at is not None and stage.ended_at is not None else None)
    per_second = (lambda n: n / duration) if duration else (lambda n: None)
    row: dict[str, Any] = {
        "config": run.label, "source": str(run.source), "stage": stage.index,
        "stage_name": stage.name, "rooms": stage.planned.get("rooms"),
        "clients_per_room": stage.planned.get("clientsPerRoom"), "rate": stage.planned.get("rate"),
        "started_at": stage.started_at, "duration_s": duration,
        "sent": stage.sent, "expected": stage.expected, "received": stage.received,
        "delivery_ratio": _number(stage.delivery_ratio), "sent_per_s": per_second(stage.sent),
        "received_per_s": per_second(stage.received), "duplicates": stage.duplicates,
        "out_of_order": stage.out_of_order, "late": stage.late, "connections": stage.connections,
        "connect_errors": stage.connect_errors, "errors": sum(stage.errors.values()),
        "error_kinds": " ".join(f"{k}={v}" for k, v in sorted(stage.errors.items())),
    }
    for kind in LATENCIES:
        row.update(latency_stats(kind, getattr(stage, kind)))
    lag = stage.send_lag
    has_lag = lag is not None and lag.count > 0
    row["send_lag_p99_s"] = _number(lag.percentile(99)) if has_lag else None
    row["send_lag_max_s"] = _number(stage.lag_max)
    row["generator_behind"] = generator_behind(stage.lag_max) if stage.lag_max is not None else None
    row["slo_passed"] = verdict.passed if verdict is not None else None
    row["slo_failures"] = "; ".join(verdict.failures()) if verdict is not None else None
    return row


def summary_rows(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """One row per stage per run, in :data:`COLUMNS` order."""
    return [{name: row[name] for name in COLUMNS}
            for run in runs
            for row in (stage_row(run, s, v) for s, v in zip(run.stages, verdicts(run)))]


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """CSV with a header; None and NaN as empty cells, floats to full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(name)) for name in columns])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


# -- server side (Prometheus series, per stage window) -----------------------

SERVER_METRICS = ("replicas", "cpu_cores", "memory_bytes", "received_per_s", "delivered_per_s",
                  "processing_p50_s", "processing_p99_s")
SERVER_COLUMNS: tuple[str, ...] = (
    "config", "stage", "stage_name", "started_at", "ended_at", "samples",
    *(f"{metric}_{stat}" for metric in SERVER_METRICS for stat in ("mean", "max")),
    "cpu_imbalance", "delivered_imbalance",
)
REPLICA_METRICS = ("cpu_cores", "memory_bytes", "received_per_s", "delivered_per_s")
REPLICA_COLUMNS: tuple[str, ...] = (
    "config", "stage", "stage_name", "replica", "samples",
    *(f"{metric}_{stat}" for metric in REPLICA_METRICS for stat in ("mean", "max")), "delivered_share",
)


def _window(times: np.ndarray, values: np.ndarray, start: float, end: float) -> np.ndarray:
    inside = values[(times >= start) & (times <= end)]
    return inside[np.isfinite(inside)]


def replica_rows(runs: Iterable[Run], replicas: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]
                 ) -> list[dict[str, Any]]:
    """Per stage and replica: mean and max of each per-replica series, and its share of the deliveries."""
    instances = sorted({i for by_instance in replicas.values() for i in by_instance})
    rows = []
    for run in runs:
        for stage in run.stages:
            if stage.started_at is None or stage.ended_at is None:
                continue
            stage_rows = []
            for instance in instances:
                row: dict[str, Any] = {"config": run.label, "stage": stage.index, "stage_name": stage.name,
                                       "replica": instance}
                samples = 0
                for metric in REPLICA_METRICS:
                    times, values = replicas.get(metric, {}).get(instance, (np.empty(0), np.empty(0)))
                    inside = _window(times, values, stage.started_at, stage.ended_at)
                    samples = max(samples, inside.size)
                    row[f"{metric}_mean"] = float(inside.mean()) if inside.size else None
                    row[f"{metric}_max"] = float(inside.max()) if inside.size else None
                row["samples"] = samples
                stage_rows.append(row)
            total = sum(r["delivered_per_s_mean"] or 0.0 for r in stage_rows)
            for row in stage_rows:
                row["delivered_share"] = (row["delivered_per_s_mean"] or 0.0) / total if total else None
                rows.append({name: row.get(name) for name in REPLICA_COLUMNS})
    return rows


def imbalance(values: Iterable[float | None]) -> float | None:
    """Busiest replica / the average replica: 1.0 is an even split, N is everything on one of N."""
    known = [v for v in values if v is not None]
    mean = sum(known) / len(known) if known else 0.0
    return max(known) / mean if len(known) > 1 and mean > 0 else None


def server_rows(runs: Iterable[Run], series: Mapping[str, tuple[np.ndarray, np.ndarray]],
                replicas: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Mean and max of each server series within each stage's window.

    ``series`` maps a name of :data:`SERVER_METRICS` to (unix times, values),
    already summed over replicas; ``replicas`` (from :func:`replica_rows`) give the
    imbalance columns. Stages without a window are left out.
    """
    runs = list(runs)
    by_stage: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in replicas:
        by_stage.setdefault((r["config"], r["stage"]), []).append(r)
    rows = []
    for run in runs:
        for stage in run.stages:
            if stage.started_at is None or stage.ended_at is None:
                continue
            row: dict[str, Any] = {"config": run.label, "stage": stage.index, "stage_name": stage.name,
                                   "started_at": stage.started_at, "ended_at": stage.ended_at}
            samples = 0
            for metric in SERVER_METRICS:
                times, values = series.get(metric, (np.empty(0), np.empty(0)))
                inside = values[(times >= stage.started_at) & (times <= stage.ended_at)]
                inside = inside[np.isfinite(inside)]
                samples = max(samples, inside.size)
                row[f"{metric}_mean"] = float(inside.mean()) if inside.size else None
                row[f"{metric}_max"] = float(inside.max()) if inside.size else None
            row["samples"] = samples
            mine = by_stage.get((run.label, stage.index), [])
            row["cpu_imbalance"] = imbalance(r["cpu_cores_mean"] for r in mine)
            row["delivered_imbalance"] = imbalance(r["delivered_per_s_mean"] for r in mine)
            rows.append({name: row.get(name) for name in SERVER_COLUMNS})
    return rows
