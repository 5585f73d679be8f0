"""The end-of-run summary: per stage what was offered, what came back, and the SLO verdict.

Pure: :func:`build` turns the merged stage results into one JSON-safe dict
(what ``--summary-json`` writes and ``summary.json`` holds); :func:`render`
turns that dict into the console text. Nothing here prints or writes files.

Verdicts come from :func:`scalechat.loadtest.slo.judge`, the same function
``scalechat analyze`` uses. :func:`exit_code` maps them to the exit status:
:data:`EXIT_SLO_FAILED` when a stage the generator kept up with missed the
SLO, :data:`EXIT_SLO_UNSURE` when only stages where the generator fell
behind its own timetable missed it (its delay is inside their latencies).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

from scalechat.loadtest.slo import GENERATOR_BEHIND_SECONDS, Threshold, describe, judge
from scalechat.loadtest.spec import StageSpec
from scalechat.results import StageResult

FORMAT = 1
EXIT_SLO_FAILED = 3
EXIT_SLO_UNSURE = 4
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def stage_summary(result: StageResult, planned: StageSpec | None, slo: tuple[Threshold, ...]) -> dict[str, Any]:
    d = result.delivery
    window = result.ended_at - result.started_at if result.ended_at > result.started_at else None
    latency = {name: (float(v) if d.count else None)
               for (name, _), v in zip(PERCENTILES, d.percentiles([q for _, q in PERCENTILES]))}
    latency["max"] = float(d.max) if d.count else None
    latency["mean"] = float(d.mean) if d.count else None
    verdict = judge(result, slo, result.send_lag_max)
    out: dict[str, Any] = {"index": result.index, "name": result.name}
    if planned is not None:
        out |= {"rooms": planned.rooms, "clients_per_room": planned.clients_per_room,
                "clients": planned.total_clients, "rate": planned.rate,
                "duration_s": planned.duration_seconds}
    out |= {
        "connections": result.connections, "connect_errors": result.connect_errors,
        "sent": result.sent, "expected": result.expected, "received": result.received,
        "delivery_ratio": result.delivery_ratio,
        "sent_per_s": result.sent / window if window else None,
        "delivered_per_s": result.received / window if window else None,
        "latency_s": latency,
        "echo_p99_s": float(result.echo.percentile(99)) if result.echo.count else None,
        "late": result.late, "duplicates": result.duplicates, "out_of_order": result.out_of_order,
        "errors": dict(sorted(result.errors.items())),
        "send_lag_max_s": result.send_lag_max,
        "generator_behind": verdict.generator_behind,
        "slo": verdict.to_dict(),
    }
    return out


def build(results: Sequence[StageResult], planned: Sequence[StageSpec], slo: dict[str, Any], *,
          run_id: str, name: str, url: str, out_dir: str, shard: tuple[int, int], interrupted: bool,
          notes: Sequence[str] = (), capacity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a run (this shard's stages, merged over its workers)."""
    from scalechat.loadtest.slo import thresholds

    rules = thresholds(slo)
    stages = [stage_summary(r, planned[r.index] if r.index < len(planned) else None, rules) for r in results]
    failed = [s["name"] for s in stages if not s["slo"]["passed"]]
    return {"format": FORMAT, "name": name, "run_id": run_id, "url": url, "results": out_dir,
            "shard": list(shard), "interrupted": interrupted, "notes": list(notes),
            "slo": dict(slo), "slo_text": describe(slo),
            "passed": not failed and bool(stages), "failed_stages": failed,
            "generator_behind_stages": [s["name"] for s in stages if s["generator_behind"]],
            "capacity": capacity, "stages": stages}


def exit_code(summary: dict[str, Any]) -> int:
    """0, :data:`EXIT_SLO_FAILED` or :data:`EXIT_SLO_UNSURE` (a capacity search is meant to fail its last step)."""
    if summary["capacity"] is not None or summary["passed"]:
        return 0
    trusted = [s for s in summary["stages"] if not s["slo"]["passed"] and not s["generator_behind"]]
    return EXIT_SLO_FAILED if trusted or not summary["stages"] else EXIT_SLO_UNSURE


# --------------------------------------------------------------------------- console


def fmt_seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f}us"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    return f"{value:.2f}s"


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:.0f}"


def marks(stream: Any = None) -> tuple[str, str, str]:
    """(pass, fail, warning) marks: ✓ ✗ ⚠ where the stream can encode them, ASCII otherwise."""
    encoding = getattr(stream or sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗⚠".encode(encoding)
        return "✓", "✗", "⚠"
    except (UnicodeEncodeError, LookupError):
        return "ok", "FAIL", "!"


def render(summary: dict[str, Any], stream: Any = None) -> str:
    """The table (one row per stage, its verdict last) and the verdict lines under it."""
    ok, bad, warn = marks(stream)
    head = ("stage", "conns", "sent", "expected", "received", "ratio", "sent/s", "p50", "p90", "p99",
            "p99.9", "max", "errors", "SLO")
    rows = [head]
    for s in summary["stages"]:
        lat = s["latency_s"]
        errors = ", ".join(f"{k}={v}" for k, v in s["errors"].items()) or "0"
        verdict = ok if s["slo"]["passed"] else bad
        if s["generator_behind"]:
            verdict += f" {warn} generator behind {fmt_seconds(s['send_lag_max_s'])}"
        rows.append((s["name"], str(s["connections"]), str(s["sent"]), str(s["expected"]), str(s["received"]),
                     f"{s['delivery_ratio']:.4f}", fmt_rate(s["sent_per_s"]), fmt_seconds(lat["p50"]),
                     fmt_seconds(lat["p90"]), fmt_seconds(lat["p99"]), fmt_seconds(lat["p99.9"]),
                     fmt_seconds(lat["max"]), errors, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    text_columns = (0, len(head) - 2, len(head) - 1)
    lines = ["  ".join(c.ljust(w) if i in text_columns else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.append("")
    if summary.get("server"):
        lines.append(summary["server"])
    lines.extend(f"note: {note}" for note in summary["notes"])
    stages = summary["stages"]
    failed = [s for s in stages if not s["slo"]["passed"]]
    if not stages:
        lines.append(f"SLO ({summary['slo_text']}): {bad} no stage finished")
    elif not failed:
        lines.append(f"SLO ({summary['slo_text']}): {ok} all {len(stages)} stage(s) passed")
    else:
        lines.append(f"SLO ({summary['slo_text']}): {bad} {len(failed)} of {len(stages)} stage(s) failed")
        for s in failed:
            behind = (f" {warn} the generator fell behind by {fmt_seconds(s['send_lag_max_s'])}: its own "
                      "delay is in these latencies" if s["generator_behind"] else "")
            lines.append(f"  {bad} {s['name']}: {'; '.join(s['slo']['failures'])}{behind}")
    behind_passed = [s["name"] for s in stages if s["generator_behind"] and s["slo"]["passed"]]
    if behind_passed:
        lines.append(f"{warn} the generator fell more than {GENERATOR_BEHIND_SECONDS * 1000:.0f}ms behind its "
                     f"timetable in {', '.join(behind_passed)}: give it more cores (--workers) or shards")
    return "\n".join(lines)
