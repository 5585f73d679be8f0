"""bench/c100k.py on a small scale: connections over several source addresses, one broadcast, /healthz."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "c100k.py"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the benchmark pins to two cores")
def test_every_connection_gets_the_broadcast_in_both_layouts(tmp_path):
    out = tmp_path / "c100k.json"
    done = subprocess.run([sys.executable, str(BENCH), "--connections", "300", "--per-address", "120",
                           "--settle", "0.5", "--deadline", "60", "--json", str(out),
                           "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "c100k" and len(report["host"]["code"]["commit"]) == 40
    rows = {r["layout"]: r for r in report["results"]}
    assert set(rows) == {"one-room", "rooms-of-4"}
    for row in rows.values():
        assert row["connected"] == 300 and row["failed"] == 0 and row["source_addresses"] == 3
        assert row["delivered"] == row["broadcast_deliveries"] == 300
        assert row["broadcast_seconds"] is not None and row["healthz_probes"] > 0
        assert row["rss_bytes_per_connection"] > 0
    assert rows["one-room"]["broadcast_messages"] == 1 and rows["rooms-of-4"]["broadcast_messages"] == 75


def test_bad_flags_name_the_flag():
    done = subprocess.run([sys.executable, str(BENCH), "--per-address", "30000"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "--per-address" in done.stderr
