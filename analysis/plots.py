"""The report's figures as PNG bytes (matplotlib's Agg, no pyplot and no global state).

A *configuration* is one stage of one run, as in the seed's plots (e.g. "100
clients"); several runs put their stages side by side. Latencies are drawn in
milliseconds from the delivery histograms (every receipt), the main measure.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from scalechat.analysis.load import Run, Stage
from scalechat.analysis.prometheus import ServerSide
from scalechat.analysis.summary import PERCENTILES

DPI = 100
SIZE = (10.0, 5.5)  # inches: 1000 x 550 pixels
SERVER_SIZE = (10.0, 7.0)
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")


def _png(figure: Figure) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def _configurations(runs: Sequence[Run]) -> list[tuple[int, Stage, str]]:
    """(run number, stage, label) of every stage of every run."""
    many = len(runs) > 1
    return [(r, stage, f"{run.label}: {stage.name}" if many else stage.name)
            for r, run in enumerate(runs) for stage in run.stages]


def _stage_colors(run: Run, colormap: str = "viridis") -> list:
    from matplotlib import colormaps
    n = max(len(run.stages), 1)
    return [colormaps[colormap](0.9 * i / max(n - 1, 1)) for i in range(n)]


def _legend(ax, count: int) -> None:
    if count:
        ax.legend(fontsize="small" if count <= 12 else "x-small", loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), ncols=1 if count <= 24 else 2, frameon=False)


def latency_by_percentile(runs: Sequence[Run], *, limit_s: float | None = 2.0, log: bool = False) -> bytes:
    """Delivery latency at each of PERCENTILES, a line per configuration.

    ``limit_s`` truncates the axis as the seed did (beyond 2 s is unusable in a
    chat; an axis ending lower when every value does); ``log`` draws the full
    range on a log scale instead.
    """
    figure = Figure(figsize=SIZE, layout="constrained")
    ax = figure.add_subplot()
    x = np.arange(len(PERCENTILES))
    lines, highest = 0, 0.0
    for r, run in enumerate(runs):
        colors = _stage_colors(run, ("viridis", "plasma", "cividis", "magma")[r % 4])
        for stage, color in zip(run.stages, colors):
            if not stage.delivery.count:
                continue
            ms = stage.delivery.percentiles(PERCENTILES) * 1000
            highest = max(highest, float(ms.max()))
            label = f"{run.label}: {stage.name}" if len(runs) > 1 else stage.name
            ax.plot(x, ms, LINESTYLES[r % len(LINESTYLES)], marker=MARKERS[r % len(MARKERS)],
                    color=color, label=label, markersize=4)
            lines += 1
    ax.set_xticks(x, [f"p{q:g}" for q in PERCENTILES])
    ax.set_xlabel("percentile")
    ax.set_ylabel("delivery latency (ms)")
    if log:
        ax.set_yscale("log")
        ax.set_title("Delivery latency by percentile (log scale)")
    else:
        limit = (limit_s or 2.0) * 1000
        if highest > limit:
            ax.set_ylim(0, limit)
            ax.set_title(f"Delivery latency by percentile (truncated at {limit / 1000:g} s)")
        else:  # nothing to cut: the axis ends at the data
            ax.set_ylim(0, max(highest * 1.05, 1e-3))
            ax.set_title(f"Delivery latency by percentile (all below {limit / 1000:g} s)")
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax, lines)
    if not lines:
        ax.text(0.5, 0.5, "no latency samples", ha="center", transform=ax.transAxes)
    return _png(figure)


def mean_std(runs: Sequence[Run]) -> bytes:
    """Mean delivery latency per configuration, the bar spanning ± one standard deviation."""
    figure = Figure(figsize=SIZE, layout="constrained")
    ax = figure.add_subplot()
    configurations = _configurations(runs)
    x = np.arange(len(configurations))
    means = np.array([s.delivery.mean if s.delivery.count else np.nan for _, s, _ in configurations]) * 1000
    stds = np.array([s.delivery.std if s.delivery.count else np.nan for _, s, _ in configurations]) * 1000
    colors = [f"C{r % 10}" for r, _, _ in configurations]
    # The lower bar stops at zero: a latency is never negative, the spread is one-sided there.
    ax.bar(x, np.nan_to_num(means), color=colors, alpha=0.75,
           yerr=[np.minimum(np.nan_to_num(stds), np.nan_to_num(means)), np.nan_to_num(stds)],
           capsize=4, ecolor="black")
    for i, (mean, std) in enumerate(zip(means, stds)):
        if np.isfinite(mean):
            ax.annotate(f"{mean:.3g} ± {std:.2g}", (i, mean), textcoords="offset points", xytext=(4, 4),
                        fontsize="x-small")
    ax.set_xticks(x, [label for _, _, label in configurations], rotation=30 if len(x) > 6 else 0,
                  ha="right" if len(x) > 6 else "center")
    ax.set_ylabel("delivery latency (ms)")
    ax.set_title("Mean delivery latency ± standard deviation")
    ax.grid(True, axis="y", alpha=0.3)
    return _png(figure)


def sent_expected_received(runs: Sequence[Run]) -> bytes:
    """Messages sent, receipts expected (sent x room members) and received, per configuration."""
    figure = Figure(figsize=SIZE, layout="constrained")
    ax = figure.add_subplot()
    configurations = _configurations(runs)
    x = np.arange(len(configurations))
    width = 0.27
    series = [("sent", [s.sent for _, s, _ in configurations], "C0"),
              ("expected", [np.nan if s.expected is None else s.expected for _, s, _ in configurations],
               "C7"),
              ("received", [s.received for _, s, _ in configurations], "C2")]
    for i, (name, values, color) in enumerate(series):
        ax.bar(x + (i - 1) * width, np.nan_to_num(np.array(values, dtype=float)), width, label=name,
               color=color)
    for i, (_, stage, _) in enumerate(configurations):
        ratio = stage.delivery_ratio
        if ratio is not None and np.isfinite(ratio):
            ax.annotate(f"{ratio:.1%}", (i + width, stage.received), textcoords="offset points",
                        xytext=(0, 3), ha="center", fontsize="x-small")
    ax.set_xticks(x, [label for _, _, label in configurations], rotation=30 if len(x) > 6 else 0,
                  ha="right" if len(x) > 6 else "center")
    ax.set_ylabel("messages")
    ax.set_title("Sent vs expected vs received (received / expected above the bar)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(frameon=False)
    return _png(figure)


def server_side(server: ServerSide, runs: Sequence[Run]) -> bytes:
    """CPU, memory, message rates and processing time over the run, stage windows shaded."""
    figure = Figure(figsize=SERVER_SIZE, layout="constrained")
    axes = figure.subplots(2, 2, sharex=True)
    t0 = server.start
    panels = [
        (axes[0][0], "CPU (cores, all replicas)", [("cpu_cores", "cores", 1.0)]),
        (axes[0][1], "Resident memory (MiB, all replicas)", [("memory_bytes", "RSS", 1 / 2**20)]),
        (axes[1][0], "Messages per second", [("received_per_s", "received", 1.0),
                                             ("delivered_per_s", "delivered", 1.0)]),
        (axes[1][1], "Processing time (ms)", [("processing_p50_s", "p50", 1000.0),
                                              ("processing_p99_s", "p99", 1000.0)]),
    ]
    for ax, title, metrics in panels:
        for name, label, scale in metrics:
            times, values = server.series.get(name, (np.empty(0), np.empty(0)))
            ax.plot(times - t0, values * scale, label=label, linewidth=1.2)
        _shade_stages(ax, runs, t0)
        ax.set_title(title, fontsize="medium")
        ax.grid(True, alpha=0.3)
        if len(metrics) > 1:
            ax.legend(fontsize="small", frameon=False)
    for ax in axes[1]:
        ax.set_xlabel(f"seconds since {_clock(t0)}")
    figure.suptitle(f"Server side from {server.url} (rate window {server.window})")
    return _png(figure)


def _shade_stages(ax, runs: Sequence[Run], t0: float) -> None:
    for run in runs:
        for i, stage in enumerate(run.stages):
            if stage.started_at is None or stage.ended_at is None:
                continue
            ax.axvspan(stage.started_at - t0, stage.ended_at - t0, color=f"C{i % 10}", alpha=0.08)
            ax.annotate(stage.name, (stage.started_at - t0, 1.0), xycoords=("data", "axes fraction"),
                        fontsize="xx-small", va="top", rotation=90, alpha=0.7)


def _clock(t: float) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
