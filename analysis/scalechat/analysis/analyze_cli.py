"""``scalechat analyze``: a summary CSV, one set of charts per run and one HTML report.

    python -m scalechat.analysis.analyze_cli RESULTS_DIR... [EVENTS.csv...] [--out DIR]
        [--prometheus URL] [--title TITLE]

Writes into ``--out`` (default ``<first input>/report``) what :data:`WRITES` lists.
Unreadable input: one line naming it on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from scalechat.analysis import experiment, plots, prometheus, summary
from scalechat.analysis.load import InputError, Run, load
from scalechat.analysis.report import Figure, render

PROG = "scalechat analyze"


WRITES = """\
writes, into --out (default <first input>/report):
  report.html              one self-contained page: per run its SLO verdicts, charts and
                           table, then the runs' specs, hardware and errors by kind
  summary.csv              one row per stage per run: counts, delivery and echo latency
                           percentiles, generator lag, SLO verdict
  <run>-latency.png        p50/p90/p99/p99.9/max against the stepped dimension (clients,
                           rooms or rate; else the stages), SLO thresholds drawn
  <run>-throughput.png     messages sent/s, deliveries expected/s and made/s against it
  <run>-over-time.png      latency and throughput second by second within each stage
  with --prometheus URL:
  <run>-server.png         CPU, memory and deliveries per replica and summed, processing time
  server.csv               per stage: the server side summed, and the replicas' imbalance
  server-replicas.csv      per stage and replica: CPU, memory, messages per second, share
Stages where the generator fell behind its timetable are hatched on every chart and
marked in the table: their latencies include the generator's own delay."""

EXAMPLES = """\
examples:
  scalechat analyze results/seed                         # report in results/seed/report/
  scalechat analyze results/seed results/rooms --out results/report
  scalechat analyze results/scaleout --prometheus http://127.0.0.1:9090   # adds the server side"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = ((parser.description + ". ") if parser.description else "") + \
        "Read load-test results and write a report of them, one set of charts per run."
    parser.epilog = WRITES + "\n\n" + EXAMPLES
    parser.add_argument("inputs", nargs="+", metavar="PATH",
                        help="a results directory (run.json and shard-*-of-*.json, merged) or a raw "
                             "event log; the events-shard-*.csv logs of one directory form one run "
                             "(name them to add send lag and per-sender echo latency)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where to write the report (default: <first input>/report)")
    parser.add_argument("--prometheus", metavar="URL",
                        help="Prometheus base URL (e.g. http://127.0.0.1:9090): add the server side "
                             "(CPU, memory, message rates, processing time) for each stage's window")
    parser.add_argument("--title", help="report title (default: the inputs' names)")


def run(args: argparse.Namespace) -> int:
    try:
        runs = load(args.inputs)
    except InputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    first = Path(args.inputs[0])
    out: Path = args.out or (first if first.is_dir() else first.parent) / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"{PROG}: {out}: cannot create the output directory: {exc.strerror or exc}", file=sys.stderr)
        return 2
    title = args.title or "Load test: " + ", ".join(run.label for run in runs)

    rows = summary.summary_rows(runs)
    (out / "summary.csv").write_text(summary.csv_text(rows))
    notes: list[str] = []
    server, server_rows, replica_rows = None, [], []
    if args.prometheus:
        server, note = _server_side(args.prometheus, runs)
        if note:
            print(f"{PROG}: warning: {note}", file=sys.stderr)
            notes.append(note)
        if server is not None:
            replica_rows = summary.replica_rows(runs, server.replicas)
            server_rows = summary.server_rows(runs, server.series, replica_rows)
            (out / "server.csv").write_text(summary.csv_text(server_rows, summary.SERVER_COLUMNS))
            (out / "server-replicas.csv").write_text(summary.csv_text(replica_rows, summary.REPLICA_COLUMNS))
    figures: dict[str, list[Figure]] = {}
    slugs = _slugs(runs)
    for run in runs:
        figures[run.label] = run_figures(run, slugs[run.label], server)
    written = [f for fs in figures.values() for f in fs]
    for figure in written:
        (out / figure.file_name).write_bytes(figure.png)
    page = render(title=title, runs=runs, rows=rows, figures=figures, server=server,
                  server_rows=server_rows, replica_rows=replica_rows, notes=notes)
    (out / "report.html").write_text(page, encoding="utf-8")
    extra = ", server.csv, server-replicas.csv" if server is not None else ""
    print(f"{out / 'report.html'} (and summary.csv, {len(written)} PNGs{extra} in {out})")
    return 0


def run_figures(run: Run, slug: str, server: prometheus.ServerSide | None) -> list[Figure]:
    """The run's charts: latency and throughput against its stepped dimension, over time, server side."""
    axis = experiment.stepped_axis(run)
    verdicts = experiment.verdicts(run)
    figures = [
        Figure(f"{slug}-latency.png", f"{run.label}: delivery latency percentiles by {axis.label}",
               plots.latency_by_stage(run, axis, verdicts)),
        Figure(f"{slug}-throughput.png", f"{run.label}: messages and deliveries per second by {axis.label}",
               plots.throughput_by_stage(run, axis, verdicts)),
    ]
    timeline = plots.over_time(run)
    if timeline is not None:
        figures.append(Figure(f"{slug}-over-time.png", f"{run.label}: latency and throughput within each stage",
                              timeline))
    if server is not None:
        figures.append(Figure(f"{slug}-server.png", f"{run.label}: server side per replica and summed",
                              plots.server_side(server, run)))
    return figures


def _slugs(runs: Sequence[Run]) -> dict[str, str]:
    """A file-name-safe, unique prefix per run."""
    out: dict[str, str] = {}
    for run in runs:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.label).strip("-.")[:60] or "run"
        slug, n = base, 2
        while slug in out.values():
            slug, n = f"{base}-{n}", n + 1
        out[run.label] = slug
    return out


def _server_side(url: str, runs: Sequence[Run]) -> tuple[prometheus.ServerSide | None, str | None]:
    """The server series over every stage's window (with a margin), or why there are none."""
    windows = [(s.started_at, s.ended_at) for r in runs for s in r.stages
               if s.started_at is not None and s.ended_at is not None]
    if not windows:
        return None, "no stage has a time window (unix times): no server side from Prometheus"
    start, end = min(w[0] for w in windows), max(w[1] for w in windows)
    margin = max(5.0, 0.05 * (end - start))
    try:
        return prometheus.fetch(url, start - margin, end + margin), None
    except prometheus.PrometheusError as exc:
        return None, f"Prometheus not usable, the report has no server side: {exc}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
