"""bench/hostile.py runs an attack against a real server and reports what the issue asks for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "hostile.py"
pytestmark = pytest.mark.timeout(120)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the benchmark pins to two cores")
def test_a_short_attack_reports_rss_uptime_and_the_normal_clients_latency(tmp_path):
    out = tmp_path / "hostile.json"
    done = subprocess.run([sys.executable, str(BENCH), "--seconds", "2", "--attacks",
                           "silent-readers", "presence-flood", "--json", str(out)],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["benchmark"] == "hostile" and report["date"]
    assert len(report["host"]["code"]["commit"]) == 40 and report["host"]["cpu_count"] >= 2
    rows = {r["attack"]: r for r in report["results"]}
    assert set(rows) == {"silent-readers", "presence-flood"}
    for row in rows.values():
        assert row["server_up"] and row["echo_samples"] > 0
        assert 0 < row["peak_rss_mib"] < row["pod_mib"]


def test_bad_flags_name_the_flag():
    done = subprocess.run([sys.executable, str(BENCH), "--seconds", "0"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "--seconds" in done.stderr
