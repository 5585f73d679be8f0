"""bench/scaleout.py, a short run at a tiny load: every figure is there, every delivery exact.

Speed is never asserted: the figures must exist and be consistent, the
clients must have received exactly what the replicas accepted, and the run
must leave no process behind. The JSON must also be one ``scalechat capacity``
can read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scalechat.capacity import Costs, load_of, plan

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = [
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the benchmark pins to 2 cores"),
    pytest.mark.skipif(not (shutil.which("redis-server") and (shutil.which("nginx")
                                                              or os.path.exists("/usr/sbin/nginx"))),
                       reason="needs redis-server and nginx (make apt-test)"),
]


def processes_in(folder: Path) -> list[str]:
    """Command lines of the processes whose working directory is ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") == str(folder):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("scaleout")
    out = folder / "scaleout.json"
    # Children inherit the working directory: what is left there afterwards was left by the run.
    proc = subprocess.run(
        [sys.executable, str(BENCH / "scaleout.py"), "--seconds", "1", "--warm-up", "0.3",
         "--idle-seconds", "0.2", "--load", "300", "--scenarios", "4x3",
         "--saturation-scenario", "4x3", "--saturation-start", "150", "--steps", "2",
         "--step-seconds", "0.5", "--scaleout-scenario", "4x3", "--scaleout-load", "150",
         "--busy-seconds", "0.5", "--json", str(out), "--run-dir", str(folder / "run")],
        cwd=folder, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert processes_in(folder) == []
    return json.loads(out.read_text())


def test_host_facts_and_the_code_measured_are_recorded(result):
    host = result["host"]
    assert host["cpu_model"] and host["cpu_count"] >= 2 and result["date"]
    assert len(host["code"]["commit"]) == 40 and "dirty_paths" in host["code"]
    assert host["redis_server"] and host["nginx"]


def test_fixed_load_compares_the_brokers_and_every_delivery_was_exact(result):
    runs = {r["broker"]: r for r in result["fixed"]}
    assert set(runs) == {"memory", "redis"}
    for run in runs.values():
        check = run["check"]
        assert check["exact"], check
        assert check["client_messages"] == check["accepted"] * 3 > 0
        assert run["replica_cpu_us_per_delivery"] > 0 and run["delivered"] > 0
    assert runs["redis"]["redis_messages"] > 0 and runs["redis"]["redis_cpu_s"] > 0
    summary = result["summary"]
    assert summary["exact"] is True
    assert summary["replica_cpu_ratio_redis_vs_memory"]["4x3"] > 0
    assert "4x3" in summary["redis_cpu_us_per_message"]


def test_saturation_and_scale_out_are_measured(result):
    assert {r["broker"] for r in result["saturation"]} == {"memory", "redis"}
    for run in result["saturation"]:
        assert 1 <= len(run["steps"]) <= 2 and run["saturation_deliveries_per_s"] > 0
        assert run["check"]["exact"] and "refused_unavailable" in run
    assert result["summary"]["saturation"]["ratio"] > 0
    one, two = result["scaleout"]
    assert (one["replicas"], one["shards"], two["replicas"], two["shards"]) == (1, 1, 2, 2)
    for run in (one, two):
        assert run["check"]["exact"] and run["deliveries_per_cpu_s"] > 0
        assert run["nginx_cpu_s"] >= 0 and len(run["keys_per_shard"]) == run["shards"]
    assert sum(two["connections_per_replica"]) == 12
    assert result["summary"]["scaleout"]["ratio"] > 0


def test_a_busy_shard_is_measured_through_the_replicas_broker_code(result):
    busy = result["busy_shard"]
    assert busy["published"] > 0 and busy["refused_unavailable"] == 0
    assert busy["fanned_out"] == busy["published"]  # the subscribed broker got each one back
    assert busy["redis_net_cpu_us_per_message"] > 0 and busy["redis_cpu_us_per_wake_up"] > 0
    assert "redis_cpu_us_per_message_busy" in result["summary"]["met"]
    assert result["costs"]["redis_cpu_us_per_message"]["scenario"].startswith("busy shard")


def test_the_capacity_model_reads_the_costs(result):
    costs = Costs.from_document(result, "smoke")
    assert costs.redis_message_us > 0 and costs.message_us + costs.delivery_us > 0
    assert costs.balancer_delivery_us is not None and costs.connection_bytes is not None
    p = plan(load_of(10_000, 3, rate_per_client=1), costs)
    assert p.replicas >= 1 and p.shards >= 1
