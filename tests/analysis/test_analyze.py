"""``scalechat analyze`` on results directories with known latencies: the CSV's numbers,
the PNGs, the HTML in a real browser, shard merging and errors that name the input."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from scalechat.analysis import analyze_cli, summary
from scalechat.analysis.load import load
from scalechat.eventlog import EventLogWriter

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
PNGS = ("latency.png", "throughput.png", "over-time.png")  # one set per run, prefixed with the run's name
SIZES = {"latency.png": (1000, 550), "throughput.png": (1000, 550), "over-time.png": (1000, 700)}


@pytest.fixture(scope="module")
def report(tmp_path_factory, make_stages, write_results):
    """Two runs (2 and 3 shards; the second interrupted) analysed once for the module."""
    base = tmp_path_factory.mktemp("analyze")
    stages = make_stages(1)
    baseline = write_results(base / "baseline", stages, shards=2, name="baseline")
    tuned = write_results(base / "tuned", make_stages(2, 0.5), shards=3, name="tuned", interrupted=True)
    out = base / "out"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = analyze_cli.main([str(baseline), str(tuned), "--out", str(out), "--title", "Fixture <b>run</b>"])
    return SimpleNamespace(code=code, out=out, stages=stages, stdout=stdout.getvalue())


def reference_percentiles(values: np.ndarray) -> np.ndarray:
    return np.percentile(values, summary.PERCENTILES, method="inverted_cdf")


def test_summary_csv_has_exact_counts_and_percentiles_within_1_percent(report, csv_rows):
    assert report.code == 0 and "report.html" in report.stdout
    rows = csv_rows(report.out / "summary.csv")
    assert list(rows[0]) == list(summary.COLUMNS)
    assert [(r["config"], r["stage_name"]) for r in rows] == [
        (config, name) for config in ("baseline", "tuned")
        for name in ("clients=40", "clients=80", "clients=160")]
    for row, stage in zip(rows[:3], report.stages):
        assert (int(row["sent"]), int(row["expected"]), int(row["received"])) == (
            stage.sent, stage.expected, stage.received)
        assert float(row["delivery_ratio"]) == stage.received / stage.expected
        assert int(row["duplicates"]) == 2  # one per shard
        assert float(row["duration_s"]) == 20.0
        assert int(row["errors"]) == sum(stage.errors.values())
        assert row["error_kinds"] == " ".join(f"{k}={v}" for k, v in sorted(stage.errors.items()))
        for kind, values in (("delivery", stage.delivery), ("echo", stage.echo)):
            assert int(row[f"{kind}_count"]) == values.size
            got = [float(row[f"{kind}_{summary.percentile_name(q)}_s"]) for q in summary.PERCENTILES]
            np.testing.assert_allclose(got, reference_percentiles(values), rtol=0.01)
            assert float(row[f"{kind}_max_s"]) == values.max()
            assert float(row[f"{kind}_mean_s"]) == pytest.approx(values.mean(), rel=1e-9)
            assert float(row[f"{kind}_std_s"]) == pytest.approx(values.std(), rel=1e-6)
        assert row["send_lag_p99_s"] == ""  # only event logs know it
    assert float(rows[2]["delivery_ratio"]) == 0.8


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_one_set_of_plots_per_run_of_the_promised_size(report):
    import matplotlib.image
    for run in ("baseline", "tuned"):
        for name in PNGS:
            path = report.out / f"{run}-{name}"
            assert png_size(path) == SIZES[name], path.name
            pixels = matplotlib.image.imread(path)
            assert pixels.std() > 0.01, f"{path.name} is blank"


def test_verdicts_and_generator_lag_are_in_the_csv(report, csv_rows):
    rows = csv_rows(report.out / "summary.csv")[:3]
    assert [(r["clients_per_room"], r["slo_passed"], r["generator_behind"]) for r in rows] == [
        ("4", "True", "False"), ("8", "True", "False"), ("16", "False", "True")]
    assert rows[2]["slo_failures"].startswith("p99 ") and "delivery 80% < 99.9%" in rows[2]["slo_failures"]
    assert float(rows[2]["send_lag_max_s"]) == 0.3


def test_the_stepped_dimension_is_the_x_axis(results_dir, make_stages):
    from scalechat.analysis.experiment import stepped_axis
    run = load([results_dir("seedlike", make_stages())])[0]
    axis = stepped_axis(run)
    assert (axis.label, axis.positions, axis.numeric) == ("clients (one room)", (4.0, 8.0, 16.0), True)
    mixed = load([results_dir("mixed", make_stages())])[0]
    for stage, rooms in zip(mixed.stages, (1, 2, 4)):
        stage.planned["rooms"] = rooms  # rooms and clients both step: no single dimension
    assert stepped_axis(mixed).numeric is False and stepped_axis(mixed).names == tuple(s.name for s in mixed.stages)


def test_html_report_renders_offline_in_chromium(report):
    from playwright.sync_api import sync_playwright
    page_path = report.out / "report.html"
    html = page_path.read_text()
    assert "<script" not in html and "<link" not in html
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requested = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(page_path.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate(
                "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            assert images == [[True, 1000, 550], [True, 1000, 550], [True, 1000, 700]] * 2
            assert page.inner_text("h1") == "Fixture <b>run</b>"  # escaped, shown as text
            assert page.eval_on_selector_all("h2", "hs => hs.map(h => h.innerText)")[:2] == ["baseline", "tuned"]
            table = page.eval_on_selector_all(
                "table.summary tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText))")
            assert [(r[0], r[1]) for r in table] == [
                (n, v) for _ in ("baseline", "tuned") for n, v in (("clients=40", "✓"), ("clients=80", "✓"),
                                                                   ("clients=160", "✗"))]
            assert table[2][7] == "80.00%" and table[2][14] == "⚠ 300 ms"
            behind = page.eval_on_selector_all("table.summary tr.behind td:first-child", "cs => cs.map(c => c.innerText)")
            assert behind == ["clients=160", "clients=160"]
            # No cell breaks inside a word: every text cell of a run's table is one line high.
            lines = page.eval_on_selector_all(
                "table.summary td.text, table.summary td.num, table.summary th",
                """cs => cs.map(c => { const r = document.createRange(); r.selectNodeContents(c);
                       return new Set(Array.from(r.getClientRects()).map(b => Math.round(b.top))).size; })""")
            assert set(lines) <= {0, 1}, lines
            text = page.inner_text("body")
            assert "SLO p99 <= 1s, delivery >= 99.9%: ✗ 1 of 3 stage(s) missed it: clients=160." in text
            assert "The generator fell behind in 1 stage(s): clients=160." in text
            assert "Run tuned was interrupted" in text
            assert "Test CPU 9000" in text and "rate_limited" in text and "close_1013" in text
            assert "ws://127.0.0.1:8080" in text  # the spec
            assert all(url.startswith(("file:", "data:")) for url in requested), requested
            # The screenshot a reader sees first: kept beside the report, and not blank.
            shot = report.out / "report-screenshot.png"
            page.set_viewport_size({"width": 1200, "height": 900})
            page.screenshot(path=str(shot))
            import matplotlib.image
            pixels = matplotlib.image.imread(shot)
            assert pixels.shape[:2] == (900, 1200) and pixels.std() > 0.05
        finally:
            browser.close()


def test_shard_files_merge_to_the_numbers_of_one_shard(results_dir, make_stages):
    stages = make_stages(5)
    rows = summary.summary_rows(load([results_dir("one", stages, shards=1),
                                      results_dir("four", stages, shards=4)]))
    for a, b in zip(rows[:3], rows[3:]):
        for column in summary.COLUMNS:
            if column in ("config", "source", "duplicates"):  # the fixture: 1 duplicate per shard
                continue
            if column.endswith(("_mean_s", "_std_s")):  # float sums: equal to ~1e-9, not bit for bit
                assert a[column] == pytest.approx(b[column], rel=1e-9), column
            else:
                assert a[column] == b[column], column


def test_default_output_is_beside_the_first_input(results_dir, make_stages, analyze):
    run = results_dir("run", make_stages()[:1])
    outcome = analyze(run)
    assert outcome.code == 0
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted(
        ["summary.csv", "report.html", "run-latency.png", "run-throughput.png", "run-over-time.png"])


def corrupt_shard(d: Path) -> None:
    (d / "shard-1-of-2.json").write_text('{"format": 1, "shard": 1, "shards": 2, "stages": [{"ind')


@pytest.mark.parametrize("breakage, expected", [
    (lambda d: d.rename(d.with_name("gone")), "no such results directory or event log"),
    (lambda d: (d / "run.json").unlink(), "run.json: cannot read run description"),
    (corrupt_shard, "shard-1-of-2.json: not a readable shard result file"),
    (lambda d: (d / "shard-0-of-2.json").unlink(), "shard files are incomplete or mixed"),
    (lambda d: (d / "run.json").write_text("[1, 2]"), "not a run description"),
])
def test_bad_input_is_one_line_naming_it_and_exit_2(results_dir, make_stages, analyze, breakage, expected):
    good = results_dir("good", make_stages()[:1])
    broken = results_dir("broken", make_stages()[:1])
    breakage(broken)
    outcome = analyze(good, broken)
    assert outcome.code == 2
    assert outcome.err.count("\n") == 1 and "Traceback" not in outcome.err
    assert outcome.err.startswith("scalechat analyze: ") and str(broken) in outcome.err
    assert expected in outcome.err


def test_a_bad_event_log_names_file_and_line(tmp_path, analyze):
    log = tmp_path / "events.csv"
    log.write_text("kind,stage,sender\nS,1,2\n")
    outcome = analyze(log)
    assert outcome.code == 2 and outcome.err.strip() == (
        f"scalechat analyze: {log}:1: not a scalechat event log: header b'kind,stage,sender', "
        "expected 'kind,stage,sender,msgno,receiver_or_size,scheduled_ns,event_ns'")


def test_python_m_entry_point_reports_bad_input_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scalechat.analysis.analyze_cli", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"scalechat analyze: {tmp_path / 'missing'}: "
                             "no such results directory or event log\n")


def write_log(path: Path, stage_latencies: dict[int, np.ndarray], members: int = 4, first_sender: int = 0):
    """Sends and receipts with the given delivery latencies (seconds), ``members`` per send."""
    t0 = 1_732_700_000_000_000_000
    with EventLogWriter(path) as log:
        for stage, latencies in stage_latencies.items():
            for i, chunk in enumerate(latencies.reshape(-1, members)):
                sender = first_sender + i % 10
                scheduled = t0 + stage * 60_000_000_000 + i * 1_000_000
                log.send(stage, sender, i, scheduled, scheduled + 20_000, 100)
                room = range(sender - sender % members, sender - sender % members + members)
                for receiver, latency in zip(room, chunk):
                    log.receipt(stage, sender, i, receiver, scheduled, scheduled + int(latency * 1e9))
    return path


def test_event_logs_of_one_run_merge_and_a_single_log_stands_alone(tmp_path, analyze, csv_rows):
    rng = np.random.default_rng(4)
    lat = {0: rng.lognormal(np.log(0.003), 0.5, 4000), 1: rng.lognormal(np.log(0.2), 0.9, 8000)}
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"stages": [{"name": "warm"}, {"name": "hot"}]}))
    half = {s: v[: v.size // 2] for s, v in lat.items()}
    rest = {s: v[v.size // 2:] for s, v in lat.items()}
    write_log(run / "events-shard-0-of-1-w0.csv", half)
    write_log(run / "events-shard-0-of-1-w1.csv", rest, first_sender=100)
    single = write_log(tmp_path / "solo.csv", {3: lat[0]})
    outcome = analyze(run / "events-shard-0-of-1-w0.csv", run / "events-shard-0-of-1-w1.csv", single,
                      "--out", tmp_path / "out")
    assert outcome.code == 0, outcome.err
    rows = csv_rows(tmp_path / "out" / "summary.csv")
    assert [(r["config"], r["stage"], r["stage_name"]) for r in rows] == [
        ("run (events)", "0", "warm"), ("run (events)", "1", "hot"), ("solo", "3", "stage 3")]
    for row, values in zip(rows, [lat[0], lat[1], lat[0]]):
        assert int(row["sent"]) == values.size // 4 and int(row["received"]) == values.size
        assert row["expected"] == "" and row["delivery_ratio"] == ""
        got = [float(row[f"delivery_{summary.percentile_name(q)}_s"]) for q in summary.PERCENTILES]
        np.testing.assert_allclose(got, reference_percentiles(values), rtol=0.01)
        assert float(row["send_lag_max_s"]) == pytest.approx(20e-6)
        assert int(row["duplicates"]) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Slowest echoes, hot" in html


def test_analysis_imports_nothing_from_the_services():
    code = ("import sys, scalechat.analysis.analyze_cli; "
            "bad = [m for m in sys.modules if m.startswith(('scalechat.chat', 'scalechat.loadgen'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
