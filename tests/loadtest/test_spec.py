"""The LoadTest models: a manifest in, a frozen LoadTest out, or one error naming the field."""

from __future__ import annotations

import pytest

from scalechat.loadtest.schema import ConfigError
from scalechat.loadtest.spec import parse_manifest, parse_spec

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


def test_a_spec_alone_parses_with_its_path_in_errors():
    spec = manifest()["spec"]
    assert parse_spec(spec, "spec", {"name": "t"}) == parse_manifest(manifest())
    with pytest.raises(ConfigError, match=r"^in\.stages\[0\]\.rate: must be > 0"):
        parse_spec({**spec, "stages": [{"clientsPerRoom": 1, "rate": 0, "durationSeconds": 1}]}, "in")
