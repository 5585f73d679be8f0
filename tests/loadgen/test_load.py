"""``scalechat load`` against a real server: exact counts, stalls, Zipf rooms, Ctrl+C, shards, capacity.

Each test runs ``python -m scalechat.loadgen.load_cli`` as a subprocess on
127.0.0.1 with small stages (2-4 s) and reads the results directory through
:mod:`scalechat.results`. Constant arrival with ``rate x duration`` integral
makes ``sent`` exact, so counts can be compared with ``==``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from support import wait_until

from scalechat.loadgen.wsclient import connect
from scalechat.results import read_results_dir

pytestmark = pytest.mark.timeout(90)
LOAD = [sys.executable, "-m", "scalechat.loadgen.load_cli"]


def server_connections(server) -> int:
    with urllib.request.urlopen(server.http_url + "/info", timeout=2) as response:
        return json.loads(response.read())["connections"]


def load_args(server, out: Path, *args: str) -> list[str]:
    return [*LOAD, "--url", server.ws_url("{room}"), "--out", str(out), *args]


def run_load(server, out: Path, *args: str, timeout: float = 60, code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(load_args(server, out, *args), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == code, proc.stderr
    return proc


def start_load(server, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(load_args(server, out, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_nothing_lost_means_exact_counts(chat_server, tmp_path):
    proc = run_load(chat_server, tmp_path / "r", "--rooms", "3", "--clients-per-room", "4", "--rate", "5",
                    "--duration", "2", "--warmup", "0.5", "--workers", "2", "--drain", "2")
    run, (stage,) = read_results_dir(tmp_path / "r")
    assert stage.connections == 12
    assert stage.sent == 12 * 5 * 2
    assert stage.expected == stage.sent * 4 == stage.received
    assert stage.delivery_ratio == 1.0
    assert (stage.duplicates, stage.out_of_order, stage.late, stage.connect_errors) == (0, 0, 0, 0)
    assert dict(stage.errors) == {}
    assert stage.delivery.count == stage.received and stage.echo.count == stage.sent
    assert 0 < stage.delivery.percentile(50) < 0.5
    assert run["interrupted"] is False and run["workers"] == 2 and run["shards"] == 1
    assert run["server"]["connections"] == 0  # GET /info answered before the run
    assert run["generator"]["cpu_count"] >= 1
    assert run["spec"]["stages"][0]["clientsPerRoom"] == 4
    assert "stage-0" in proc.stdout and "results:" in proc.stdout
    assert server_connections(chat_server) == 0
    # Over time: every measured send in the bin of its scheduled second, every receipt in one bin.
    timeline = stage.timeline
    # Receipts still in flight at the window's end open one more bin, with no sends in it.
    assert timeline.bin_seconds == 1.0 and timeline.sent[:2] == [60, 60]
    assert not any(timeline.sent[2:]) and len(timeline.sent) <= 3
    assert sum(timeline.received) == stage.received
    assert sum(sum(b.values()) for b in timeline.latency) == stage.delivery.count
    # The stage's last progress line is its final result, not a snapshot.
    done = [line for line in proc.stderr.splitlines() if "] done " in line]
    assert len(done) == 1 and "conns 12/12  sent/s 60  recv/s 240" in done[0], proc.stderr
    assert "SLO (p99 <= 500ms, delivery >= 99.9%): ✓ all 1 stage(s) passed" in proc.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["passed"] is True and summary["exit_code"] == 0
    assert summary["stages"][0]["slo"]["checks"][0]["name"] == "p99"


def test_a_missed_slo_exits_3_and_the_summary_goes_to_stdout_as_json(chat_server, tmp_path):
    proc = subprocess.run(load_args(chat_server, tmp_path / "r", "--clients-per-room", "3", "--rate", "4,8",
                                    "--duration", "1", "--warmup", "0.5", "--workers", "1",
                                    "--slo", "p50<=1s,max<=1us", "--summary-json", "-"),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    summary = json.loads(proc.stdout)  # nothing else on stdout
    assert summary["exit_code"] == 3 and summary["passed"] is False
    assert summary["failed_stages"] == ["rate-4", "rate-8"]
    checks = summary["stages"][0]["slo"]["checks"]
    assert [(c["name"], c["passed"]) for c in checks] == [("p50", True), ("p99", True), ("max", False),
                                                           ("delivery", True)]
    assert summary["stages"][1]["sent"] == 3 * 8 and summary["stages"][1]["rate"] == 8
    assert "SLO (p50 <= 1s, p99 <= 500ms, max <= 1us, delivery >= 99.9%): ✗ 2 of 2 stage(s) failed" in proc.stderr
    assert "✗ rate-8: max " in proc.stderr
    assert json.loads((tmp_path / "r" / "summary.json").read_text()) == summary


def test_duration_shortens_every_stage_of_a_manifest(chat_server, tmp_path):
    manifest = tmp_path / "lt.yaml"
    manifest.write_text(f"""
apiVersion: scalechat.io/v1alpha1
kind: LoadTest
metadata: {{name: long}}
spec:
  target: {{url: "{chat_server.ws_url('{room}')}"}}
  workers: 1
  stages:
    - {{name: a, clientsPerRoom: 2, rate: 2, durationSeconds: 600, warmupSeconds: 0.5}}
    - {{name: b, clientsPerRoom: 3, rate: 2, durationSeconds: 300, warmupSeconds: 0.5}}
""")
    proc = subprocess.run([*LOAD, "-f", str(manifest), "--duration", "2", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    run, stages = read_results_dir(tmp_path / "r")
    assert [s["durationSeconds"] for s in run["stages"]] == [2, 1]
    assert [(s.sent, round(s.ended_at - s.started_at, 3)) for s in stages] == [(2 * 2 * 2, 2.0), (3 * 2 * 1, 1.0)]
    assert f"note: stage durations scaled x0.00333 by --duration 2: 300-600 s in {manifest}" in proc.stdout


def test_a_server_stall_shows_in_the_latency_of_sends_scheduled_during_it(start_server, tmp_path):
    """The coordinated-omission test: a 1 s event-loop stall must reach the percentiles."""
    server = start_server("--debug-endpoints", "--rate-limit", "1000", "--rate-burst", "1000")
    load = start_load(server, tmp_path / "r", "--clients-per-room", "5", "--rate", "20", "--duration", "4",
                      "--warmup", "0.5", "--workers", "1")
    wait_until(lambda: server_connections(server) == 5, 20, "5 connections")
    time.sleep(1.5)  # inside the measurement window (it starts ~0.7 s after the last connect)
    request = urllib.request.Request(server.http_url + "/debug/stall?seconds=1", method="POST")
    assert urllib.request.urlopen(request, timeout=10).status == 200
    out, err = load.communicate(timeout=30)
    assert load.returncode == 3, err  # the stall broke the default SLO (p99 <= 500 ms)
    assert "✗ stage-0: p99 " in out
    _, (stage,) = read_results_dir(tmp_path / "r")
    assert stage.received == stage.expected == stage.sent * 5
    # Every send scheduled during the stall waited for its end: ~1/4 of the window is
    # delayed by 0..1 s, so the tail is the stall, not one unlucky message per client.
    assert stage.delivery.max >= 0.9
    assert stage.echo.max >= 0.9
    assert stage.delivery.percentile(99) >= 0.8
    assert stage.delivery.percentile(90) >= 0.4
    assert stage.delivery.percentile(50) < 0.1


def presence_count(server, room: str) -> int:
    """Members of ``room`` as the server counts them: join as an observer, read its presence."""
    import asyncio

    async def observe() -> int:
        ws = await connect(server.ws_url(room, "name=observer"), timeout=5)
        try:
            async with asyncio.timeout(5):
                while True:
                    frame = orjson.loads(await ws.recv())
                    if frame["type"] == "presence" and frame["name"] == "observer":
                        return frame["count"] - 1
        finally:
            await ws.close()

    return asyncio.run(observe())


def test_zipf_rooms_are_skewed_on_the_server(start_server, tmp_path):
    server = start_server("--rate-limit", "1000")
    load = start_load(server, tmp_path / "r", "--rooms", "4", "--clients-per-room", "5",
                      "--room-distribution", "zipf:1", "--rate", "2", "--duration", "3", "--warmup", "0.5",
                      "--run-id", "zipft", "--workers", "2")
    wait_until(lambda: server_connections(server) == 20, 20, "20 connections")
    counts = [presence_count(server, f"lt-zipft-s0-r{k}") for k in range(4)]
    out, err = load.communicate(timeout=30)
    assert load.returncode == 0, err
    assert counts == [10, 5, 3, 2]  # 20 x k^-1 / H(4), largest remainder
    run, (stage,) = read_results_dir(tmp_path / "r")
    assert run["plan"][0]["clients"] == counts
    assert stage.received == stage.expected == sum(2 * 3 * c * c for c in counts)


def test_ctrl_c_leaves_complete_results_and_closes_every_socket_with_1000(chat_server, tmp_path):
    load = start_load(chat_server, tmp_path / "r", "--rooms", "4", "--clients-per-room", "5", "--rate", "10",
                      "--duration", "60", "--warmup", "0.5", "--workers", "2")
    wait_until(lambda: server_connections(chat_server) == 20, 20, "20 connections")
    time.sleep(1.5)
    load.send_signal(signal.SIGINT)
    out, err = load.communicate(timeout=20)
    assert load.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    run, (stage,) = read_results_dir(tmp_path / "r")
    assert run["interrupted"] is True and run["finished_at"] >= run["started_at"]
    assert stage.sent > 0 and stage.received == stage.expected  # drained
    assert not [kind for kind in stage.errors if kind.startswith("close_")]  # all closes were 1000/1000
    assert stage.ended_at - stage.started_at < 10
    wait_until(lambda: server_connections(chat_server) == 0, 10, "the server to see every socket closed")
    log = chat_server.log()
    assert "ERROR" not in log and "Traceback" not in log and "WARNING" not in log


def test_two_shards_merged_equal_one_run(start_server, tmp_path):
    server = start_server("--rate-limit", "1000")
    spec = ["--rooms", "5", "--clients-per-room", "4", "--room-distribution", "zipf:1.2", "--rate", "4",
            "--duration", "2", "--warmup", "0.5", "--workers", "1"]
    shard_dir, single_dir = tmp_path / "sharded", tmp_path / "single"
    loads = [start_load(server, shard_dir, *spec, "--shard", f"{i}/2", "--run-id", "shardt") for i in (0, 1)]
    loads.append(start_load(server, single_dir, *spec, "--shard", "0/1", "--run-id", "singlet"))
    for load in loads:
        _, err = load.communicate(timeout=60)
        assert load.returncode == 0, err
    run, (merged,) = read_results_dir(shard_dir)
    single_run, (single,) = read_results_dir(single_dir)
    for name in ("sent", "expected", "received", "connections", "duplicates", "out_of_order", "late"):
        assert getattr(merged, name) == getattr(single, name), name
    assert merged.received == merged.expected and merged.delivery.count == single.delivery.count
    plan = run["plan"][0]
    assert plan["clients"] == single_run["plan"][0]["clients"]  # the same rooms ...
    assert sorted(set(plan["shard"])) == [0, 1]  # ... split over both shards
    per_shard = [sum(c for c, s in zip(plan["clients"], plan["shard"]) if s == i) for i in (0, 1)]
    assert sum(per_shard) == 20 and sorted(json.loads((shard_dir / f"shard-{i}-of-2.json").read_text())
                                           ["stages"][0]["connections"] for i in (0, 1)) == sorted(per_shard)


def test_find_capacity_stops_at_the_first_step_that_breaks_the_slo(start_server, tmp_path):
    # 5 msg/s per connection with a bucket of 2: rates 2 and 4 pass, 6 loses messages.
    server = start_server("--rate-limit", "5", "--rate-burst", "2")
    proc = run_load(server, tmp_path / "r", "--clients-per-room", "2", "--rate", "2", "--duration", "2",
                    "--warmup", "1", "--drain", "1", "--find-capacity", "rate", "--step", "2", "--max-steps", "5",
                    "--workers", "1", timeout=90)
    run, stages = read_results_dir(tmp_path / "r")
    assert [s.name for s in stages] == ["rate-2", "rate-4", "rate-6"]
    assert stages[1].delivery_ratio == 1.0
    assert stages[2].delivery_ratio < 0.999 and stages[2].errors["rate_limited"] > 0
    capacity = run["capacity"]
    assert (capacity["dimension"], capacity["value"], capacity["stage"], capacity["bounded"]) == \
        ("rate", 4.0, "rate-4", True)
    assert [s["holds"] for s in capacity["steps"]] == [True, True, False]
    assert "capacity: rate = 4 (stage rate-4)" in proc.stdout


def test_event_log_holds_every_measured_send_and_receipt(chat_server, tmp_path):
    from scalechat.eventlog import read_event_log

    run_load(chat_server, tmp_path / "r", "--rooms", "2", "--clients-per-room", "3", "--rate", "5",
             "--duration", "2", "--warmup", "0.5", "--workers", "2", "--events", "csv")
    _, (stage,) = read_results_dir(tmp_path / "r")
    logs = sorted((tmp_path / "r").glob("events-shard-0-of-1-w*.csv"))
    assert [p.name for p in logs] == ["events-shard-0-of-1-w0.csv", "events-shard-0-of-1-w1.csv"]
    summaries = [read_event_log(p).stages.get(0) for p in logs]
    assert sum(s.sends for s in summaries) == stage.sent == 60
    assert sum(s.receipts for s in summaries) == stage.received == 180
    assert sum(s.echo_receipts for s in summaries) == stage.echo.count == 60
    assert max(s.delivery.max for s in summaries) == pytest.approx(stage.delivery.max, rel=1e-6)


def test_connection_errors_are_counted_not_fatal(start_server, tmp_path):
    server = start_server("--max-connections", "4")
    run_load(server, tmp_path / "r", "--rooms", "2", "--clients-per-room", "3", "--rate", "5", "--duration", "2",
             "--warmup", "0.5", "--workers", "1", "--connect-rate", "50", code=3)  # not every client connected
    _, (stage,) = read_results_dir(tmp_path / "r")
    assert (stage.connections, stage.connect_errors, stage.errors["connect_http_503"]) == (4, 2, 2)
    assert stage.sent == 4 * 5 * 2 and stage.received == stage.expected > 0


def test_an_unreachable_target_fails_fast_with_one_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{s.getsockname()[1]}/ws/{{room}}"
    proc = subprocess.run([*LOAD, "--url", url, "--clients-per-room", "2", "--rate", "1", "--duration", "1",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"scalechat load: cannot reach {url}: ") and proc.stderr.count("\n") == 1


@pytest.fixture
def redis_url(tmp_path):
    """A throwaway redis-server on a free port (no persistence)."""
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                return c.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_until(up, 10, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)


def test_results_also_go_to_redis_for_shards_without_a_shared_disk(chat_server, tmp_path, redis_url):
    from scalechat import results_store

    run_load(chat_server, tmp_path / "r", "--clients-per-room", "2", "--rate", "5", "--duration", "1",
             "--warmup", "0.5", "--workers", "1", "--results-redis", redis_url, "--results-key", "lt-1")
    _, local = read_results_dir(tmp_path / "r")
    stored = results_store.merged(redis_url, "lt-1")
    assert [s.to_dict() for s in stored] == [s.to_dict() for s in local]
    assert results_store.load_progress(redis_url, "lt-1")[0].stage_name == "stage-0"
