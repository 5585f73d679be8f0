"""bench/limits.py: the cgroup sampler, and a tiny real run with the server in its container.

Speed is never asserted: the run must name the quota the server's /info
reported next to its result, count the server's CPU from its cgroup, and
leave no container behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_limits", REPO / "bench" / "limits.py")
limits = sys.modules["bench_limits"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(limits)


def test_the_sampler_reads_a_cgroups_cpu_time_and_averages_it_over_a_window():
    sampler = limits.CgroupSampler(os.getpid(), interval=0.05)  # this process's own cgroup
    sampler.start()
    started = time.time()
    while time.time() - started < 0.5:  # busy: the cgroup's usage must grow
        pass
    sampler.stop()
    window = sampler.window(started, time.time())
    assert window is not None and window["cpus_used"] > 0 and window["throttled_periods"] >= 0
    assert sampler.window(started - 100, started - 99) is None  # no samples there


@pytest.mark.timeout(600)
@pytest.mark.skipif(bool(limits.image_tool.missing_tools()),
                    reason="podman and runc not installed (`make image-test` installs them as root)")
def test_a_tiny_run_names_the_servers_quota_next_to_its_capacity(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "limits.py"), "--cpus", "0.5", "--rounds", "1", "--start", "2",
         "--step", "2", "--max-steps", "2", "--seconds", "1", "--warmup", "0.5", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=580)
    assert proc.returncode == 0, out + err
    (report_file,) = tmp_path.glob("*/report.json")
    (row,) = json.loads(report_file.read_text())["rows"]
    assert row["server_cpu_quota"] == 0.5 and row["server_memory_limit_bytes"] == 512 * 2**20
    assert row["capacity_rooms"] in (2, 4) and row["server_at_capacity"]["cpus_used"] > 0
    line = next(line for line in out.splitlines() if line.startswith("| 1 | 0.5 |"))
    assert "**0.5 CPU**" in line and "512 MiB" in line
    left = limits.image_tool.podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    assert not [n for n in left if n.startswith(f"scalechat-limits-{proc.pid}-")]
