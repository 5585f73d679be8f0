"""The report's figures as PNG bytes (matplotlib's Agg, no pyplot and no global state).

One set of figures per run (an experiment), drawn against the dimension its
stages step (:func:`scalechat.analysis.experiment.stepped_axis`):

* :func:`latency_by_stage`: delivery latency p50, p90, p99, p99.9 and max per stage, with
  the SLO's latency thresholds drawn as lines and each stage's verdict above it;
* :func:`throughput_by_stage`: sends, expected and actual deliveries per second per stage;
* :func:`over_time`: latency and throughput second by second within each stage;
* :func:`server_side`: CPU, memory and deliveries per replica and summed, from Prometheus.

Stages where the generator fell behind its own timetable are hatched on every
figure and labelled: their latencies include the generator's delay.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from scalechat.analysis.experiment import Axis, generator_behind
from scalechat.analysis.load import Run, Stage
from scalechat.analysis.prometheus import ServerSide
from scalechat.loadtest.slo import LATENCY_KEYS, RATIO_KEY, Verdict, format_value

DPI = 100
SIZE = (10.0, 5.5)  # inches: 1000 x 550 pixels
TIMELINE_SIZE = (10.0, 7.0)
SERVER_SIZE = (10.0, 7.0)
# percentile (None: max) -> (label, colour, line style)
SERIES = ((50.0, "p50", "#1f77b4", "-"), (90.0, "p90", "#2ca02c", "-"), (99.0, "p99", "#d62728", "-"),
          (99.9, "p99.9", "#9467bd", "-"), (None, "max", "#7f7f7f", ":"))
COLOR_OF = {label: color for _, label, color, _ in SERIES}
BEHIND = "#ff7f0e"
MAX_TICK_LABELS = 20


def _png(figure: Figure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _number(v: float, _=None) -> str:
    """Tick labels as people write them: 0.5, 2, 100, 1,000, 12,000."""
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _ms(ax) -> None:
    """Latency axes in milliseconds, log scale."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(_number))


def _x_axis(ax, axis: Axis) -> None:
    if axis.numeric:
        if axis.log:
            ax.set_xscale("log")
        ax.set_xticks(axis.positions if len(axis.positions) <= MAX_TICK_LABELS else ax.get_xticks())
        ax.xaxis.set_major_formatter(FuncFormatter(_number))
        ax.set_xlabel(axis.label)
        return
    n = len(axis.names)
    every = max(1, -(-n // MAX_TICK_LABELS))
    shown = list(range(0, n, every))
    labels = [_short(axis.names[i]) for i in shown]
    rotate = n > 6 or max((len(label) for label in labels), default=0) > 12
    ax.set_xticks([axis.positions[i] for i in shown], labels, rotation=30 if rotate else 0,
                  ha="right" if rotate else "center", fontsize="small")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("stage" + (f" (every {every}th labelled)" if every > 1 else ""))


def _short(name: str, limit: int = 22) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _half_widths(axis: Axis) -> list[tuple[float, float]]:
    """(left, right) edges of each stage's band on the x axis."""
    x = np.asarray(axis.positions, dtype=float)
    if not axis.numeric or len(x) < 2:
        return [(p - 0.4, p + 0.4) for p in x]
    t = np.log(x) if axis.log else x
    gaps = np.diff(t)
    left = np.concatenate([[gaps[0]], gaps]) * 0.4
    right = np.concatenate([gaps, [gaps[-1]]]) * 0.4
    edges = [(t[i] - left[i], t[i] + right[i]) for i in range(len(t))]
    return [(float(np.exp(a)), float(np.exp(b))) if axis.log else (a, b) for a, b in edges]


def _mark_behind(ax, axis: Axis, stages: Sequence[Stage], label_y: float = 0.03) -> int:
    """Hatch the stages where the generator fell behind; how many there were."""
    count = 0
    for (left, right), stage, x in zip(_half_widths(axis), stages, axis.positions):
        if not generator_behind(stage.lag_max):
            continue
        ax.axvspan(left, right, facecolor=BEHIND, alpha=0.12, hatch="//", edgecolor=BEHIND, linewidth=0)
        ax.annotate(f"generator behind {stage.lag_max * 1000:,.0f} ms", (x, label_y),
                    xycoords=("data", "axes fraction"), rotation=90, ha="center", va="bottom",
                    fontsize="x-small", color="#b35900",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        count += 1
    return count


def _verdict_strip(ax, axis: Axis, verdicts: Sequence[Verdict | None]) -> None:
    """A check or a cross above each stage (axes coordinates on y)."""
    for x, verdict in zip(axis.positions, verdicts):
        if verdict is None:
            continue
        ax.annotate("✓" if verdict.passed else "✗", (x, 1.005), xycoords=("data", "axes fraction"),
                    ha="center", va="bottom", fontsize="medium", fontweight="bold",
                    color="#2a7d2a" if verdict.passed else "#c62828", annotation_clip=False)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555")


def latency_by_stage(run: Run, axis: Axis, verdicts: Sequence[Verdict | None]) -> bytes:
    """Delivery latency p50 ... max against the stepped dimension, SLO thresholds drawn."""
    figure = Figure(figsize=SIZE, layout="constrained")
    ax = figure.add_subplot()
    x = np.asarray(axis.positions, dtype=float)
    has = np.array([s.delivery.count > 0 for s in run.stages], dtype=bool)
    if has.any():
        for q, label, color, style in SERIES:
            values = np.array([(s.delivery.max if q is None else s.delivery.percentile(q)) * 1000
                               if s.delivery.count else np.nan for s in run.stages])
            ax.plot(x[has], values[has], style, marker="o", markersize=4, color=color, label=label,
                    linewidth=1.6 if label == "p99" else 1.1)
        _ms(ax)
        values = [s.delivery.max * 1000 for s in run.stages if s.delivery.count]
        values += [run.slo[k] * 1000 for k in LATENCY_KEYS if run.slo.get(k) is not None]
        low = min(s.delivery.percentile(50) * 1000 for s in run.stages if s.delivery.count)
        ax.set_ylim(low / 1.5, max(values) * 2.5)  # room above the highest line for the SLO labels and legend
        for key, (name, _) in LATENCY_KEYS.items():
            limit = run.slo.get(key)
            if limit is None:
                continue
            ax.axhline(limit * 1000, color=COLOR_OF[name], linestyle="--", linewidth=1.2, alpha=0.9)
            ax.annotate(f"SLO {name} ≤ {format_value(key, limit)}", (1.0, limit * 1000),
                        xycoords=("axes fraction", "data"), xytext=(-4, 3), textcoords="offset points",
                        ha="right", va="bottom", fontsize="small", color=COLOR_OF[name])
        ax.legend(loc="upper left", fontsize="small", frameon=True, framealpha=0.85, ncols=5)
    else:
        _no_data(ax, "no latency samples")
    _x_axis(ax, axis)
    behind = _mark_behind(ax, axis, run.stages)
    _verdict_strip(ax, axis, verdicts)
    ax.set_ylabel("delivery latency (ms, log scale)")
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.1)
    note = " · hatched: generator behind (its delay is in these latencies)" if behind else ""
    ax.set_title(f"{run.label}: delivery latency by {axis.label}{note}", fontsize="medium", pad=18)
    return _png(figure)


def throughput_by_stage(run: Run, axis: Axis, verdicts: Sequence[Verdict | None]) -> bytes:
    """Messages sent, deliveries expected and deliveries made, per second of each stage."""
    figure = Figure(figsize=SIZE, layout="constrained")
    ax = figure.add_subplot()
    x = np.asarray(axis.positions, dtype=float)

    def per_second(stage: Stage, n: int | None) -> float:
        if n is None or stage.started_at is None or stage.ended_at is None or stage.ended_at <= stage.started_at:
            return np.nan
        return n / (stage.ended_at - stage.started_at)

    sent = np.array([per_second(s, s.sent) for s in run.stages])
    expected = np.array([per_second(s, s.expected) for s in run.stages])
    received = np.array([per_second(s, s.received) for s in run.stages])
    if np.isfinite(received).any():
        ax.plot(x, expected, "--", color="#7f7f7f", marker="o", markersize=3, label="deliveries expected/s")
        ax.plot(x, received, "-", color="#2ca02c", marker="o", markersize=4, linewidth=1.8,
                label="deliveries made/s")
        ax.plot(x, sent, "-", color="#1f77b4", marker="s", markersize=3, label="messages sent/s")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(_number))
        ratio_slo = run.slo.get(RATIO_KEY)
        for xi, stage, got in zip(x, run.stages, received):
            ratio = stage.delivery_ratio
            if ratio is not None and np.isfinite(ratio) and ratio < 1.0:
                bad = ratio_slo is not None and ratio < ratio_slo
                ax.annotate(f"{ratio:.2%}", (xi, got), xytext=(0, -12), textcoords="offset points",
                            ha="center", fontsize="x-small", color="#c62828" if bad else "#333")
        ax.legend(loc="upper left", fontsize="small", framealpha=0.85)
    else:
        _no_data(ax, "no stage has a time window")
    _x_axis(ax, axis)
    behind = _mark_behind(ax, axis, run.stages)
    _verdict_strip(ax, axis, verdicts)
    ax.set_ylabel("per second (log scale)")
    ax.grid(True, which="major", alpha=0.35)
    note = " · hatched: generator behind" if behind else ""
    ratio_text = f"; SLO delivery ≥ {format_value(RATIO_KEY, run.slo[RATIO_KEY])}" if RATIO_KEY in run.slo else ""
    ax.set_title(f"{run.label}: throughput by {axis.label} (below a point: delivered/expected "
                 f"when under 100%{ratio_text}){note}", fontsize="medium", pad=18)
    return _png(figure)


def over_time(run: Run) -> bytes | None:
    """Latency (p50, p99) and throughput second by second within each stage; None without timelines."""
    stages = [s for s in run.stages if s.timeline is not None and len(s.timeline) and s.started_at is not None]
    if not stages:
        return None
    figure = Figure(figsize=TIMELINE_SIZE, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    t0 = stages[0].started_at
    legend_done = False
    for stage in stages:
        tl = stage.timeline
        start = stage.started_at - t0
        x = start + (np.arange(len(tl)) + 0.5) * tl.bin_seconds
        ms = tl.percentiles([50.0, 99.0]) * 1000
        top.plot(x, ms[:, 0], "-", color=COLOR_OF["p50"], linewidth=1.0, label=None if legend_done else "p50")
        top.plot(x, ms[:, 1], "-", color=COLOR_OF["p99"], linewidth=1.3, label=None if legend_done else "p99")
        # Throughput inside the window only: the drain's bins end early and hold stragglers.
        rate = 1.0 / tl.bin_seconds
        window = min(len(tl), max(1, int(round((stage.ended_at - stage.started_at) / tl.bin_seconds)))
                     if stage.ended_at else len(tl))
        bottom.plot(x[:window], np.array(tl.sent[:window]) * rate, "-", color="#1f77b4", linewidth=1.0,
                    marker="." if window < 4 else None, label=None if legend_done else "messages sent/s")
        received = np.array(tl.received[:window], dtype=float) * rate
        received[received == 0] = np.nan  # a log axis has no zero
        bottom.plot(x[:window], received, "-", color="#2ca02c", linewidth=1.3,
                    marker="." if window < 4 else None, label=None if legend_done else "deliveries/s")
        legend_done = True
        for k, lag in enumerate(tl.lag):
            if generator_behind(lag):
                for ax in (top, bottom):
                    ax.axvspan(start + k * tl.bin_seconds, start + (k + 1) * tl.bin_seconds, facecolor=BEHIND,
                               alpha=0.25, hatch="//", edgecolor=BEHIND, linewidth=0)
    _stage_bands(top, run.stages, t0, labels=True)
    _stage_bands(bottom, run.stages, t0, labels=False)
    _ms(top)
    p99 = run.slo.get("p99Seconds")
    if p99 is not None:
        top.axhline(p99 * 1000, color=COLOR_OF["p99"], linestyle="--", linewidth=1.1)
        top.annotate(f"SLO p99 ≤ {format_value('p99Seconds', p99)}", (1.0, p99 * 1000),
                     xycoords=("axes fraction", "data"), xytext=(-4, 3), textcoords="offset points",
                     ha="right", fontsize="small", color=COLOR_OF["p99"])
    top.set_ylabel("delivery latency (ms, log)")
    bottom.set_yscale("log")
    bottom.yaxis.set_major_formatter(FuncFormatter(_number))
    bottom.set_ylabel("per second (log)")
    bottom.set_xlabel(f"seconds since the first stage's measurement began ({_clock(t0)}); "
                      f"bins of {stages[0].timeline.bin_seconds:g} s")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize="small", framealpha=0.85)
    behind = any(generator_behind(lag) for s in stages for lag in s.timeline.lag)
    note = " · hatched: seconds the generator was behind" if behind else ""
    figure.suptitle(f"{run.label}: within each stage, second by second (shaded: measurement windows){note}",
                    fontsize="medium")
    return _png(figure)


def _stage_bands(ax, stages: Sequence[Stage], t0: float, *, labels: bool) -> None:
    """Shade each stage's window; name it (rotated, small) when there is room."""
    windows = [(s, s.started_at - t0, s.ended_at - t0) for s in stages
               if s.started_at is not None and s.ended_at is not None]
    for i, (stage, a, b) in enumerate(windows):
        ax.axvspan(a, b, color="#000000", alpha=0.045 if i % 2 == 0 else 0.02, linewidth=0)
        if labels and len(windows) <= 40:
            ax.annotate(_short(stage.name, 16), ((a + b) / 2, 1.01), xycoords=("data", "axes fraction"),
                        rotation=60 if len(windows) > 8 else 0, ha="left" if len(windows) > 8 else "center",
                        va="bottom", fontsize="x-small", annotation_clip=False,
                        color=BEHIND if generator_behind(stage.lag_max) else "#333")


def server_side(server: ServerSide, run: Run) -> bytes:
    """CPU, memory and deliveries per replica (thin) and summed (thick), processing time; stages shaded."""
    figure = Figure(figsize=SERVER_SIZE, layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    windows = [(s.started_at, s.ended_at) for s in run.stages if s.started_at is not None and s.ended_at]
    lo = min(w[0] for w in windows) - 5 if windows else server.start
    hi = max(w[1] for w in windows) + 5 if windows else server.end
    t0 = lo
    panels = [
        (axes[0][0], "CPU (cores)", "cpu_cores", 1.0),
        (axes[0][1], "Resident memory (MiB)", "memory_bytes", 1 / 2**20),
        (axes[1][0], "Deliveries per second", "delivered_per_s", 1.0),
    ]
    instances = server.instances
    for ax, title, name, scale in panels:
        for k, instance in enumerate(instances):
            times, values = server.replicas.get(name, {}).get(instance, (np.empty(0), np.empty(0)))
            keep = (times >= lo) & (times <= hi)
            ax.plot(times[keep] - t0, values[keep] * scale, linewidth=0.9, color=f"C{k % 10}", label=instance)
        times, values = server.series.get(name, (np.empty(0), np.empty(0)))
        keep = (times >= lo) & (times <= hi)
        ax.plot(times[keep] - t0, values[keep] * scale, linewidth=2.0, color="black",
                label=f"sum of {len(instances)}" if instances else "sum")
        ax.set_title(title, fontsize="medium")
    ax = axes[1][1]
    for name, label, color in (("processing_p50_s", "p50", COLOR_OF["p50"]), ("processing_p99_s", "p99",
                                                                                 COLOR_OF["p99"])):
        times, values = server.series.get(name, (np.empty(0), np.empty(0)))
        keep = (times >= lo) & (times <= hi)
        ax.plot(times[keep] - t0, values[keep] * 1000, label=label, color=color, linewidth=1.2)
    ax.set_title("Processing time, all replicas (ms)", fontsize="medium")
    for row in axes:
        for ax in row:
            _stage_bands(ax, run.stages, t0, labels=False)
            for stage in run.stages:
                if generator_behind(stage.lag_max) and stage.started_at is not None and stage.ended_at:
                    ax.axvspan(stage.started_at - t0, stage.ended_at - t0, facecolor=BEHIND, alpha=0.15,
                               hatch="//", edgecolor=BEHIND, linewidth=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="x-small", frameon=False, ncols=2)
    for ax in axes[1]:
        ax.set_xlabel(f"seconds since {_clock(t0)}")
    figure.suptitle(f"{run.label}: server side from {server.url} (per replica and summed; rate window "
                    f"{server.window}; shaded: stages)", fontsize="medium")
    return _png(figure)


def _clock(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
