"""``scalechat analyze``: a summary CSV, plots and one HTML report from load-test results.

    python -m scalechat.analysis.cli RESULTS_DIR... [EVENTS.csv...] [--out DIR]
        [--prometheus URL] [--title TITLE]

Writes into ``--out`` (default ``<first input>/report``): ``summary.csv`` (one row
per stage per input), ``latency-percentiles-2s.png``, ``latency-percentiles-log.png``,
``latency-mean-std.png``, ``sent-expected-received.png``, ``report.html`` (all of
it in one file) and, with ``--prometheus``, ``server.csv`` and ``server.png``.
Unreadable input: one line naming it on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from scalechat.analysis import plots, prometheus, summary
from scalechat.analysis.load import InputError, Run, load
from scalechat.analysis.report import Figure, render

PROG = "scalechat analyze"


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    figures = [
        Figure("latency-percentiles-2s.png", "Delivery latency by percentile, linear axis up to 2 s",
               plots.latency_by_percentile(runs, limit_s=2.0)),
        Figure("latency-percentiles-log.png", "Delivery latency by percentile, log scale",
               plots.latency_by_percentile(runs, log=True)),
        Figure("latency-mean-std.png", "Mean delivery latency ± standard deviation", plots.mean_std(runs)),
        Figure("sent-expected-received.png", "Messages sent, expected and received",
               plots.sent_expected_received(runs)),
    ]
    notes: list[str] = []
    server, server_rows = None, []
    if args.prometheus:
        server, note = _server_side(args.prometheus, runs)
        if note:
            print(f"{PROG}: warning: {note}", file=sys.stderr)
            notes.append(note)
        if server is not None:
            server_rows = summary.server_rows(runs, server.series)
            (out / "server.csv").write_text(summary.csv_text(server_rows, summary.SERVER_COLUMNS))
            figures.append(Figure("server.png", "Server side: CPU, memory, message rates, processing time",
                                  plots.server_side(server, runs)))
    for figure in figures:
        (out / figure.file_name).write_bytes(figure.png)
    page = render(title=title, runs=runs, rows=rows, figures=figures, server=server,
                  server_rows=server_rows, notes=notes)
    (out / "report.html").write_text(page, encoding="utf-8")
    print(f"{out / 'report.html'} (and summary.csv, {len(figures)} PNGs"
          f"{', server.csv' if server is not None else ''} in {out})")
    return 0


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
