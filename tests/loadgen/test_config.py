"""The LoadTest manifest and the flags: validation errors name the field, the schema exports.

No server here: these call the validator and ``cli.main`` in-process, plus
one real ``python -m scalechat.loadgen.cli`` run for the exit status.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalechat.loadgen import cli
from scalechat.loadgen.config import (ConfigError, load_manifest, openapi_schema, parse_manifest,
                                      validate, SPEC_SCHEMA)

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


def error_of(doc) -> str:
    with pytest.raises(ConfigError) as info:
        parse_manifest(doc)
    return str(info.value)


@pytest.mark.parametrize("doc, message", [
    (stage_change(1, rate=-3), "spec.stages[1].rate: must be > 0, got -3"),
    (stage_change(0, clientsPerRoom=0), "spec.stages[0].clientsPerRoom: must be >= 1, got 0"),
    (stage_change(0, clientsPerRoom=2.5), "spec.stages[0].clientsPerRoom: must be an integer, got 2.5"),
    (stage_change(0, rate="fast"), "spec.stages[0].rate: must be a number, got a string 'fast'"),
    (stage_change(1, clientPerRoom=3), "spec.stages[1].clientPerRoom: unknown field (did you mean clientsPerRoom?)"),
    (stage_change(0, arrival="bursty"), "spec.stages[0].arrival: must be one of constant, poisson, got 'bursty'"),
    (stage_change(0, size={"distribution": "uniform", "min": 10}),
     "spec.stages[0].size.max: is required for distribution=uniform"),
    (stage_change(0, size={"distribution": "uniform", "min": 300, "max": 100}),
     "spec.stages[0].size.max: must be >= min (300), got 100"),
    (stage_change(0, size={"distribution": "gaussian"}),
     "spec.stages[0].size.distribution: must be one of fixed, uniform, lognormal, got 'gaussian'"),
    (stage_change(0, size=[1, 2]), "spec.stages[0].size: must be integer or object, got a list"),
    (stage_change(1, roomDistribution={"type": "zipf", "exponent": 0}),
     "spec.stages[1].roomDistribution.exponent: must be > 0, got 0"),
    (stage_change(1, name="stage-0"), "spec.stages[1].name: duplicates stages[0].name 'stage-0'"),
    (manifest(target={"url": "ws://127.0.0.1:8080/ws/lobby"}),
     "spec.target.url: must contain the {room} placeholder, got 'ws://127.0.0.1:8080/ws/lobby'"),
    (manifest(target={"url": "wss://chat/ws/{room}"}), "spec.target.url: must start with ws://"),
    (manifest(stages=[]), "spec.stages: must have at least 1 item(s)"),
    (manifest(slo={"deliveryRatio": 1.5}), "spec.slo.deliveryRatio: must be <= 1, got 1.5"),
    (manifest(events="json"), "spec.events: must be one of none, csv, got 'json'"),
    (manifest(findCapacity={"dimension": "rate"}), "spec.findCapacity: needs exactly one stage to grow, got 2"),
    ({**manifest(), "kind": "Deployment"}, "kind: must be LoadTest, got 'Deployment'"),
    ({**manifest(), "apiVersion": "v1"}, "apiVersion: must be scalechat.io/v1alpha1, got 'v1'"),
    ({k: v for k, v in manifest().items() if k != "spec"}, "spec: is required"),
])
def test_bad_manifests_name_the_field(doc, message):
    assert error_of(doc).startswith(message)


def test_a_missing_required_field_is_named():
    doc = manifest()
    del doc["spec"]["stages"][1]["durationSeconds"]
    assert error_of(doc) == "spec.stages[1].durationSeconds: is required"


def test_defaults_are_filled_and_normalized():
    test = parse_manifest(manifest())
    stage = test.stages[0]
    assert (stage.name, stage.rooms, stage.warmup_seconds, stage.arrival) == ("stage-0", 1, 1.0, "constant")
    assert stage.size.distribution == "fixed" and stage.size.bytes == 100
    assert (test.workers, test.parallelism, test.events, test.slo.p99_seconds) == (0, 1, "none", 0.5)
    spec = test.to_spec()
    assert parse_manifest({**manifest(), "spec": spec}) == test  # normalized spec round-trips


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


def test_openapi_schema_is_structural_with_required_enums_and_minimums():
    schema = openapi_schema()
    stage = schema["properties"]["stages"]["items"]
    assert schema["required"] == ["target", "stages"]
    assert stage["required"] == ["clientsPerRoom", "rate", "durationSeconds"]
    assert stage["properties"]["arrival"]["enum"] == ["constant", "poisson"]
    assert stage["properties"]["rate"] == {**stage["properties"]["rate"], "minimum": 0, "exclusiveMinimum": True}
    assert stage["properties"]["clientsPerRoom"]["minimum"] == 1
    size = stage["properties"]["size"]
    assert size["x-kubernetes-preserve-unknown-fields"] is True and "oneOf" not in size

    def walk(node, path="spec"):  # structural: every field typed (or explicitly preserved)
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(schema)
    schema["properties"].clear()
    assert SPEC_SCHEMA["properties"], "openapi_schema() must return a copy"


def test_validate_fills_nested_defaults():
    out = validate({"clientsPerRoom": 1, "rate": 1, "durationSeconds": 1}, SPEC_SCHEMA["properties"]["stages"]["items"], "s")
    assert out["roomDistribution"] == {"type": "uniform", "exponent": 1.0}


# --------------------------------------------------------------------------- flags


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
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
        cli.main(["--help"])
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
    proc = subprocess.run([sys.executable, "-m", "scalechat.loadgen.cli", "--url", URL, "--clients-per-room",
                           "3", "--rate", "-3", "--duration", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "scalechat load: --rate: must be > 0, got -3\n"


def test_help_documents_the_flags_and_an_example():
    proc = subprocess.run([sys.executable, "-m", "scalechat.loadgen.cli", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for flag in ("--url", "--rooms", "--clients-per-room", "--rate", "--size", "--duration", "--warmup", "--out",
                 "-f", "--workers", "--shard", "--run-id", "--room-distribution", "--arrival", "--connect-rate",
                 "--drain", "--events", "--find-capacity", "--step", "--max-steps", "--slo-p99", "--slo-delivery",
                 "--slo", "--summary-json"):
        assert flag in proc.stdout
    assert "examples:" in proc.stdout and "{room}" in proc.stdout
    assert "exit status:" in proc.stdout and "3    a stage missed the SLO" in proc.stdout
