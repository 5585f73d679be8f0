"""Manifest files and flags: errors name the file, the flag or the field.

No server here: these read files and call ``load_cli.main`` in-process, plus
one real ``python -m scalechat.loadgen.load_cli`` run for the exit status.
(The schema and the models themselves: tests/loadtest.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalechat.loadgen import load_cli
from scalechat.loadgen.config import load_manifest
from scalechat.loadtest.schema import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "services" / "loadgen" / "examples"
URL = "ws://127.0.0.1:8080/ws/{room}"


def manifest(**spec_changes) -> dict:
    doc = {"apiVersion": "scalechat.io/v1alpha1", "kind": "LoadTest", "metadata": {"name": "t"},
           "spec": {"target": {"url": URL},
                    "stages": [{"clientsPerRoom": 10, "rate": 1, "durationSeconds": 5},
                               {"clientsPerRoom": 20, "rate": 2, "durationSeconds": 5}]}}
    doc["spec"].update(spec_changes)
    return doc


def stage_change(index: int, **changes) -> dict:
    doc = manifest()
    doc["spec"]["stages"][index].update(changes)
    return doc


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid(path):
    test = load_manifest(path)
    assert test.stages
    for stage in test.stages:  # constant rate x duration integral: exact expected counts
        assert (stage.rate * stage.duration_seconds).is_integer()


def test_seed_example_steps_ten_to_one_hundred_ten_clients_in_one_room():
    test = load_manifest(EXAMPLES / "seed-experiment.yaml")
    assert [s.clients_per_room for s in test.stages] == list(range(10, 111, 10))
    assert {s.rooms for s in test.stages} == {1}


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "lt.yaml"
    bad.write_text(yaml.safe_dump(stage_change(1, rate=-3)))
    with pytest.raises(ConfigError, match=r"lt\.yaml: spec\.stages\[1\]\.rate: must be > 0, got -3"):
        load_manifest(bad)
    bad.write_text("spec: [unclosed")
    with pytest.raises(ConfigError, match=r"lt\.yaml: not valid YAML at line 1"):
        load_manifest(bad)


# --------------------------------------------------------------------------- flags


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = load_cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, message", [
    (["--rooms", "2", "--clients-per-room", "3", "--rate", "1", "--duration", "2"],
     "--url: is required without a manifest (-f FILE)"),
    (["--url", "ws://h:1/ws/lobby", "--clients-per-room", "3", "--rate", "1", "--duration", "2"],
     "--url: must contain the {room} placeholder"),
    (["--url", URL, "--clients-per-room", "3", "--rate", "-3", "--duration", "2"], "--rate: must be > 0, got -3"),
    (["--url", URL, "--clients-per-room", "x", "--rate", "1", "--duration", "2"],
     "--clients-per-room: must be an integer, got 'x'"),
    (["--url", URL, "--clients-per-room", "3,4", "--rate", "1,2,3", "--duration", "2"],
     "--clients-per-room: has 2 values but --rate has 3"),
    (["--url", URL, "--clients-per-room", "3", "--rate", "1", "--duration", "2", "--size", "gauss:1"],
     "--size: must be N, uniform:MIN:MAX or lognormal:MEDIAN:SIGMA"),
    (["--url", URL, "--clients-per-room", "3", "--rate", "1", "--duration", "2", "--room-distribution", "zipf:-1"],
     "--room-distribution: must be > 0, got -1"),
    (["--url", URL, "--clients-per-room", "3", "--rate", "1", "--duration", "2", "--shard", "2/2"],
     "--shard: must be I/N with 0 <= I < N"),
    (["--url", URL, "--clients-per-room", "3", "--rate", "1", "--duration", "2", "--shard", "1/2"],
     "--run-id: is required with more than one shard"),
    (["--url", URL, "--clients-per-room", "3", "--rate", "1", "--duration", "2", "--step", "2"],
     "--step: needs --find-capacity"),
    (["--url", URL, "--clients-per-room", "3", "--rate", "1", "--duration", "2", "--slo-delivery", "2"],
     "--slo-delivery: must be <= 1, got 2"),
    (["--url", URL, "--clients-per-room", "3", "--rate", "1", "--duration", "2", "--run-id", "a b"],
     "--run-id: must be 1-24 letters"),
    (["-f", str(EXAMPLES / "loadtest.yaml"), "--rate", "3,4"],
     f"--rate: has 2 values but {EXAMPLES / 'loadtest.yaml'} has 3 stages"),
    (["-f", str(EXAMPLES / "loadtest.yaml"), "--duration", "3,4"], "--duration: takes one value with -f"),
    (["--url", URL, "--clients-per-room", "3", "--rate", "1", "--duration", "2", "--slo", "p99<=fast"],
     "--slo: cannot read 'p99<=fast'; expected comma-separated terms"),
    (["--url", URL, "--clients-per-room", "3", "--rate", "1", "--duration", "2", "--slo", "delivery>=120%"],
     "--slo: 'delivery>=120%': a delivery ratio is between 0 and 1"),
    (["-f", "/nonexistent/lt.yaml"], "/nonexistent/lt.yaml: cannot read"),
])
def test_bad_flags_give_one_line_naming_the_flag(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith(f"scalechat load: {message}"), err
    assert err.count("\n") == (2 if "--url: is required" in message else 1) and "Traceback" not in err


def test_every_missing_required_flag_is_named_at_once_with_an_example(capsys):
    code, out, err = run_cli(capsys, "--rooms", "50", "--clients-per-room", "4")
    assert code == 2 and out == ""
    first, example = err.splitlines()
    assert first == "scalechat load: --url, --rate, --duration: are required without a manifest (-f FILE); for example:"
    assert example.strip().startswith("scalechat load --url 'ws://127.0.0.1:8080/ws/{room}' --clients-per-room")


def test_usage_shows_the_required_flags(capsys):
    with pytest.raises(SystemExit):
        load_cli.main(["--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "-f FILE" in usage
    assert "--url URL --clients-per-room N[,N...] --rate R[,R...] --duration S[,S...]" in usage
    assert "[--url" not in usage and "[--rate" not in usage  # not shown as optional


def test_duration_scales_every_stage_of_a_manifest(capsys):
    code, out, err = run_cli(capsys, "-f", str(EXAMPLES / "loadtest.yaml"), "--duration", "6", "--dry-run")
    assert code == 0, err
    stages = yaml.safe_load(out)["spec"]["stages"]
    assert [s["durationSeconds"] for s in stages] == [3, 6, 3]  # 30, 60, 30 scaled by 0.1
    assert [s["warmupSeconds"] for s in stages] == [5, 5, 1]  # untouched


def test_stage_flags_replace_a_manifest_stage_value(capsys):
    code, out, err = run_cli(capsys, "-f", str(EXAMPLES / "loadtest.yaml"), "--rate", "2", "--clients-per-room",
                             "1,2,3", "--dry-run")
    assert code == 0, err
    stages = yaml.safe_load(out)["spec"]["stages"]
    assert [(s["rate"], s["clientsPerRoom"]) for s in stages] == [(2, 1), (2, 2), (2, 3)]
    assert [s["name"] for s in stages] == ["warm", "hot-rooms", "big-messages"]


def test_slo_flag_replaces_the_thresholds_it_names(capsys):
    code, out, err = run_cli(capsys, "-f", str(EXAMPLES / "seed-experiment.yaml"), "--slo",
                             "p50<=5ms, p99<=50ms,max<=2s", "--dry-run")
    assert code == 0, err
    assert yaml.safe_load(out)["spec"]["slo"] == {"p50Seconds": 0.005, "p99Seconds": 0.05, "maxSeconds": 2.0,
                                                   "deliveryRatio": 0.999}


def test_flag_lists_make_one_stage_per_value(capsys):
    code, out, _ = run_cli(capsys, "--url", URL, "--clients-per-room", "10,20,30", "--rate", "1",
                           "--duration", "2", "--size", "uniform:50:500", "--dry-run", "--run-id", "t1")
    assert code == 0
    spec = yaml.safe_load(out)["spec"]
    assert [(s["name"], s["clientsPerRoom"]) for s in spec["stages"]] == [
        ("clients-10", 10), ("clients-20", 20), ("clients-30", 30)]
    assert spec["stages"][0]["size"] == {"distribution": "uniform", "min": 50, "max": 500}
    assert "lt-t1-s2-r0=30" in out


def test_flags_override_a_manifest(capsys):
    code, out, _ = run_cli(capsys, "-f", str(EXAMPLES / "seed-experiment.yaml"), "--url", "ws://other:9/ws/{room}",
                           "--drain", "5", "--dry-run")
    spec = yaml.safe_load(out)["spec"]
    assert code == 0 and spec["target"]["url"] == "ws://other:9/ws/{room}" and spec["drainSeconds"] == 5


def test_module_entry_point_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "scalechat.loadgen.load_cli", "--url", URL, "--clients-per-room",
                           "3", "--rate", "-3", "--duration", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "scalechat load: --rate: must be > 0, got -3\n"


def test_help_documents_the_flags_and_an_example():
    proc = subprocess.run([sys.executable, "-m", "scalechat.loadgen.load_cli", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--url", "--rooms", "--clients-per-room", "--rate", "--size", "--duration", "--warmup", "--out",
                 "-f", "--workers", "--shard", "--run-id", "--room-distribution", "--arrival", "--connect-rate",
                 "--drain", "--events", "--find-capacity", "--step", "--max-steps", "--slo-p99", "--slo-delivery",
                 "--slo", "--summary-json"):
        assert flag in proc.stdout
    assert "examples:" in proc.stdout and "{room}" in proc.stdout
    assert "exit status:" in proc.stdout and "3    a stage missed the SLO" in proc.stdout
