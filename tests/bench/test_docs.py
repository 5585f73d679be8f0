"""docs/benchmarks.md's and the README's benchmark tables are bench/docs.py's rendering of bench/results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
_spec = importlib.util.spec_from_file_location("bench_docs", BENCH / "docs.py")
docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs)


@pytest.mark.parametrize("path", docs.FILES, ids=lambda p: p.name)
def test_the_tables_are_rendered_from_the_committed_results(path):
    text = path.read_text()
    assert docs.BLOCK.search(text), f"{path.name} lost its bench-table markers"
    assert docs.render(text) == text, f"{path.name}: stale benchmark tables; run .venv/bin/python bench/docs.py"


def test_every_figure_names_its_date_host_and_commit():
    for kind in ("fanout", "scaleout", "hostile"):
        path, doc = docs.newest(kind)
        assert doc["benchmark"] == kind and doc["date"] and len(doc["host"]["code"]["commit"]) == 40
        assert doc["host"]["cpu_model"] and doc["host"]["cpu_usable"] >= 1
        assert doc["date"] in docs.provenance(path, doc) and path.name in docs.provenance(path, doc)


def test_the_performance_table_quotes_the_newest_results():
    table = docs.performance_table()
    _, scaleout = docs.newest("scaleout")
    ratio = scaleout["summary"]["replica_cpu_ratio_redis_vs_memory"]["100x4"]
    assert f"{ratio:.2f}x" in table and scaleout["host"]["code"]["commit"][:7] in table
    assert table.count("\n") >= 8  # header, rule and a row per figure


def test_an_unknown_table_is_named():
    with pytest.raises(SystemExit, match="nosuch"):
        docs.render("<!-- bench-table: nosuch -->\n<!-- end bench-table -->")
