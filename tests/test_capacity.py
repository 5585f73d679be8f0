"""scalechat capacity: the arithmetic of its --help, the measured-costs file, and its errors."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from scalechat import capacity
from scalechat.capacity import Costs, CostsError, fit_line, load_of, plan
from scalechat.cli import main

REPO = Path(__file__).resolve().parent.parent


def costs(**overrides) -> Costs:
    values = dict(message_us=40.0, delivery_us=10.0, redis_message_us=20.0,
                  balancer_delivery_us=5.0, connection_bytes=20_000.0,
                  replica_idle_bytes=50_000_000.0, redis_message_bytes=400.0, history_size=1000,
                  source="test.json", date="2026-12-04", host="test CPU, 2 cores", commit="abc")
    values.update(overrides)
    return Costs(**values)


def document(**cost_overrides) -> dict:
    """The parts of a bench/scaleout.py JSON the model reads."""
    doc_costs = {
        "replica": [
            {"room_size": 4, "scenario": "100x4", "cpu_us_per_delivery": 25.0, "batched": False},
            {"room_size": 10, "scenario": "100x10", "cpu_us_per_delivery": 16.0, "batched": False},
            {"room_size": 100, "scenario": "1x100", "cpu_us_per_delivery": 4.0, "batched": True},
        ],
        "redis_cpu_us_per_message": {"value": 12.5, "scenario": "100x4"},
        "nginx_cpu_us_per_delivery": {"value": 6.0, "config": "1 replica + 1 shard"},
        "replica_rss_bytes_per_connection": {"value": 16000, "scenario": "100x10"},
        "replica_rss_bytes_idle": 60_000_000,
        "redis_memory_bytes_per_stored_message": {"value": 300, "scenario": "100x4"},
        "history_size": 1000, "refused_unavailable": 0, "exact": True,
    }
    doc_costs.update(cost_overrides)
    return {"time": "2026-12-04T10:00:00+0000", "date": "2026-12-04",
            "host": {"cpu_model": "AMD EPYC", "cpu_count": 2,
                     "code": {"commit": "0123456789abcdef", "dirty_paths": []}},
            "costs": doc_costs}


# --- the replica cost line --------------------------------------------------------------


def test_two_room_sizes_give_the_line_through_both():
    # 100x4 at 25 µs per delivery is 100 µs per message; 100x10 at 16 is 160: 60 per 6 members.
    m, d, note = fit_line([(4, 25.0), (10, 16.0)])
    assert (m, d, note) == (pytest.approx(60.0), pytest.approx(10.0), None)


def test_one_room_size_counts_all_of_its_cost_per_delivery():
    m, d, note = fit_line([(4, 25.0)])
    assert (m, d) == (0.0, 25.0) and "one room size" in note


def test_a_line_that_would_go_below_zero_is_clamped_and_says_so():
    # Cost per message falls as rooms grow (a noisy or troubled run): no negative per-delivery cost.
    m, d, note = fit_line([(4, 200.0), (10, 40.0)])
    assert d == 0.0 and m == pytest.approx((800 + 400) / 2) and "below 0" in note


def test_no_point_is_an_error():
    with pytest.raises(CostsError):
        fit_line([])


# --- the plan ---------------------------------------------------------------------------


def test_load_from_a_rate_per_client_or_from_deliveries_is_the_same():
    by_rate = load_of(1000, 10, rate_per_client=0.5)
    by_deliveries = load_of(1000, 10, deliveries_per_s=5000)
    assert by_rate == by_deliveries
    assert (by_rate.messages_per_s, by_rate.deliveries_per_s, by_rate.rooms) == (500, 5000, 100)
    with pytest.raises(ValueError):
        load_of(1000, 10, rate_per_client=1, deliveries_per_s=1)


def test_plan_follows_the_arithmetic_of_the_help():
    load = load_of(100_000, 10, deliveries_per_s=500_000)  # 50,000 messages/s
    p = plan(load, costs(), cpu_target=0.5, connections_per_replica=10_000, heartbeat_seconds=25)
    # replica: 50,000 x (40 + 10 x 10) µs + (100,000 / 25) pings x 2 x 10 µs = 7.08 cores
    assert p.replica_cores == pytest.approx(7.08)
    assert p.replica_cpus == 15 and p.replicas == 15 and p.bound_by == "CPU"
    assert p.redis_cores == pytest.approx(1.0) and p.shards == 2  # 50,000 x 20 µs at 50%
    assert p.balancer_cores == pytest.approx(2.5) and p.balancer_cpus == 5  # 500,000 x 5 µs
    assert p.cpus == 15 + 2 + 5
    assert p.replica_memory_bytes == pytest.approx(15 * 50e6 + 100_000 * 20_000)
    assert p.redis_memory_bytes == pytest.approx(10_000 * 1000 * 400)  # rooms x history x bytes


def test_connections_per_replica_can_set_the_replica_count():
    p = plan(load_of(1_000_000, 10, rate_per_client=0.001), costs(), heartbeat_seconds=0)
    assert p.replica_cpus == 1 and p.replicas == 100
    assert p.bound_by == "connections per replica"


def test_no_heartbeat_cost_when_heartbeats_are_left_out():
    load = load_of(10_000, 4, rate_per_client=1)
    with_pings = plan(load, costs(), heartbeat_seconds=30)
    without = plan(load, costs(), heartbeat_seconds=0)
    assert with_pings.replica_cores - without.replica_cores == pytest.approx(10_000 / 30 * 20 / 1e6)


def test_without_memory_or_balancer_figures_those_rows_are_left_empty():
    p = plan(load_of(1000, 10, rate_per_client=1),
             costs(balancer_delivery_us=None, connection_bytes=None, redis_message_bytes=None))
    assert p.balancer_cores is None and p.balancer_cpus == 0
    assert p.replica_memory_bytes is None and p.redis_memory_bytes is None
    assert [row[0] for row in capacity.rows(p)] == ["replicas", "Redis shards", "total"]


# --- the costs file ---------------------------------------------------------------------


def test_costs_come_from_the_unbatched_rooms_and_name_their_source():
    c = Costs.from_document(document(), "x.json")
    assert (c.message_us, c.delivery_us) == (pytest.approx(60.0), pytest.approx(10.0))
    assert c.replica_scenarios == ("100x4", "100x10") and c.redis_scenario == "100x4"
    assert (c.redis_message_us, c.balancer_delivery_us, c.connection_bytes) == (12.5, 6.0, 16000)
    assert c.commit == "0123456789ab" and c.date == "2026-12-04"
    assert any("1x100" in note for note in c.notes)


def test_refusals_in_the_measured_runs_are_reported_with_the_answer():
    c = Costs.from_document(document(refused_unavailable=17481), "x.json")
    assert any("17,481" in note for note in c.notes)


def test_a_file_without_costs_is_an_error_naming_it(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"fixed": []}))
    with pytest.raises(CostsError, match="other.json"):
        capacity.load_costs(path)


def test_the_default_is_the_newest_measured_file(tmp_path):
    for name, when in (("scaleout-b.json", "2026-12-01T00:00:00"),
                       ("scaleout-a.json", "2026-12-05T00:00:00")):
        (tmp_path / name).write_text(json.dumps({**document(), "time": when}))
    assert capacity.newest_results(tmp_path).name == "scaleout-a.json"
    with pytest.raises(CostsError, match="no scaleout"):
        capacity.newest_results(tmp_path / "empty")


# --- the command line -------------------------------------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(["capacity", *argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, flag", [
    (["--connections", "many", "--room-size", "10", "--deliveries", "5"], "--connections"),
    (["--connections", "0", "--room-size", "10", "--deliveries", "5"], "--connections"),
    (["--connections", "100", "--room-size", "-3", "--deliveries", "5"], "--room-size"),
    (["--connections", "100", "--room-size", "10", "--deliveries", "nan?"], "--deliveries"),
    (["--connections", "100", "--room-size", "10", "--rate-per-client", "1", "--cpu-target", "1.5"],
     "--cpu-target"),
    (["--connections", "100", "--room-size", "10", "--rate-per-client", "1", "--deliveries", "5"],
     "--deliveries"),
    (["--connections", "100", "--room-size", "10"], "--rate-per-client"),
    (["--connections", "5", "--room-size", "10", "--deliveries", "5"], "--room-size"),
    (["--connections", "100", "--room-size", "10", "--deliveries", "5", "--costs", "/nonexistent.json"],
     "--costs"),
])
def test_bad_input_is_one_line_naming_the_flag(capsys, argv, flag):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert flag in err and "Traceback" not in err


def test_the_cli_prints_the_costs_source_and_the_plan(capsys, tmp_path):
    path = tmp_path / "scaleout-test.json"
    path.write_text(json.dumps(document()))
    code, out, _ = run_cli(capsys, "--connections", "1000000", "--room-size", "10",
                           "--deliveries", "500000", "--costs", str(path), "--format", "json")
    result = json.loads(out)
    assert code == 0 and result["costs"]["commit"] == "0123456789ab"
    # 50,000 x (60 + 10 x 10) µs + 1,000,000 / 30 x 2 x 10 µs
    assert result["replica_cores"] == pytest.approx(8.0 + 2 / 3)
    assert result["replicas"] == 100
    # Redis: 50,000 x 12.5 µs = 0.63 cores, one shard at 70%; the history, 100,000 rooms x
    # 1,000 messages x 300 bytes (27.9 GiB), needs four of 8 GiB.
    assert result["redis_cores"] == pytest.approx(0.625)
    assert result["shards"] == 4 and result["shards_bound_by"] == "memory"


def test_the_readme_table_is_the_models_output(capsys, monkeypatch):
    """The README's capacity table is what its command prints from the committed costs."""
    monkeypatch.chdir(REPO)  # the command names the costs file relative to the repository
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- capacity-table: scalechat (capacity .*?) -->\n(.*?)<!-- end capacity-table -->",
                      text, re.S)
    assert match, "README lost its capacity-table markers"
    argv = shlex.split(match.group(1))
    assert "--costs" in argv, "the README table must name the costs file it was made from"
    code = main([*argv, "--format", "markdown"])
    assert code == 0
    assert match.group(2).strip() == capsys.readouterr().out.strip(), (
        "README capacity table is stale: rerun its command with --format markdown")


def test_redis_shards_are_also_bound_by_the_history_they_hold():
    costs = Costs.from_document(document(), "test")
    load = load_of(1_000_000, 10, deliveries_per_s=500_000)
    roomy = plan(load, costs, shard_memory_bytes=1e15)
    tight = plan(load, costs, shard_memory_bytes=roomy.redis_memory_bytes / 4.5)
    assert roomy.shards_bound_by == "CPU" and tight.shards_bound_by == "memory"
    assert tight.shards == 5 and tight.cpus == roomy.cpus - roomy.shards + 5
