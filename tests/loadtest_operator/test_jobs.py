"""jobs.py: a LoadTest's ConfigMap and Indexed Job as pure manifests (no API server involved)."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from scalechat.loadgen.plan import RUN_ID_PATTERN
from scalechat.loadtest.spec import parse_manifest
from scalechat.loadtest_operator import jobs

UID = "8a1c3f0e-2b4d-4c6e-9f80-1a2b3c4d5e6f"
OPTIONS = jobs.JobOptions(image="scalechat:1.0", redis_url="redis://results:6379/0")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def body(name: str = "peak", **spec) -> dict:
    return {"apiVersion": "scalechat.io/v1alpha1", "kind": "LoadTest",
            "metadata": {"name": name, "namespace": "team", "uid": UID, "labels": {"team": "chat"}},
            "spec": {"target": {"url": "ws://chat:8080/ws/{room}"},
                     "stages": [{"name": "s1", "rooms": 10, "clientsPerRoom": 50, "rate": 1, "durationSeconds": 60,
                                 "warmupSeconds": 5}],
                     "parallelism": 4, "connectRate": 100, "drainSeconds": 2, **spec}}


def test_children_are_named_after_the_loadtest():
    cm, job = jobs.children(body(), OPTIONS)
    assert (cm["metadata"]["name"], job["metadata"]["name"]) == ("peak-spec", "peak-load")
    assert jobs.children(body(), OPTIONS) == (cm, job)  # deterministic: a retry builds the same objects


@pytest.mark.parametrize("length", [47, 48, 60, 253])
def test_long_names_are_cut_to_fit_and_stay_unique(length):
    name = "a" * (length - 1) + "b"
    other = "a" * (length - 1) + "c"
    job_name = jobs.job_name(name)
    assert len(job_name) <= jobs.JOB_NAME_MAX and job_name.endswith("-load") and DNS_LABEL.match(job_name)
    assert jobs.job_name(other) != job_name
    assert len(jobs.configmap_name(name)) <= 63
    assert len(jobs.label_value(name)) <= 63


def test_a_cut_name_does_not_end_its_head_with_a_dash():
    name = "x" * 38 + "-" + "y" * 30
    assert "--" not in jobs.job_name(name)


def test_dots_of_a_loadtest_name_do_not_reach_the_dns_label_of_its_job():
    dotted, dashed = jobs.job_name("peak.v2"), jobs.job_name("peak-v2")
    assert DNS_LABEL.match(dotted) and dotted.startswith("peak-v2-") and dotted.endswith("-load")
    assert dotted != dashed == "peak-v2-load"


def test_children_are_owned_and_controlled_by_the_loadtest_in_its_namespace():
    for child in jobs.children(body(), OPTIONS):
        meta = child["metadata"]
        assert meta["namespace"] == "team"
        assert meta["ownerReferences"] == [{"apiVersion": "scalechat.io/v1alpha1", "kind": "LoadTest",
                                            "name": "peak", "uid": UID, "controller": True,
                                            "blockOwnerDeletion": True}]
        assert meta["labels"]["scalechat.io/loadtest"] == "peak"
        assert meta["labels"]["team"] == "chat"  # the owner's labels are carried over


def test_the_job_runs_one_shard_per_completion_index():
    _, job = jobs.children(body(), OPTIONS)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed", 4, 4, 0)
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:5] == ["load", "-f", "/etc/loadtest/loadtest.yaml", "--shard", "$(JOB_COMPLETION_INDEX)/4"]
    assert container["env"] == [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    assert args[args.index("--results-redis") + 1] == "redis://results:6379/0"
    assert args[args.index("--results-key") + 1] == f"scalechat:loadtest:{UID}"
    run_id = args[args.index("--run-id") + 1]
    assert RUN_ID_PATTERN.fullmatch(run_id) and run_id == "8a1c3f0e2b4d4c6e9f801a2b"
    assert pod["restartPolicy"] == "Never"
    assert {"name": "spec", "mountPath": "/etc/loadtest", "readOnly": True} in container["volumeMounts"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_configmap_holds_a_manifest_the_load_generator_accepts_without_operator_fields():
    cm, _ = jobs.children(body(image="custom:2", resources={"limits": {"cpu": "3"}}), OPTIONS)
    assert cm["immutable"] is True
    manifest = yaml.safe_load(cm["data"]["loadtest.yaml"])
    assert "image" not in manifest["spec"] and "resources" not in manifest["spec"]
    test = parse_manifest(manifest)
    assert (test.name, test.parallelism, test.stages[0].rooms) == ("peak", 4, 10)
    assert manifest["spec"]["slo"] == {"p99Seconds": 0.5, "deliveryRatio": 0.999}  # defaults filled in


def test_resources_default_and_spec_resources_replace_them_whole():
    _, job = jobs.children(body(), OPTIONS)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == jobs.DEFAULT_RESOURCES
    mine = {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "300Mi"}}
    _, job = jobs.children(body(resources=mine), OPTIONS)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == mine


def test_spec_image_overrides_the_operators_image():
    _, job = jobs.children(body(image="custom:2"), OPTIONS)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "custom:2"


@pytest.mark.parametrize(("spec", "error"), [
    ({"target": {"url": "http://chat/ws/{room}"}}, "spec.target.url: must start with ws://"),
    ({"parallelism": 0}, "spec.parallelism: must be >= 1, got 0"),
    ({"resources": {"limit": {"cpu": "1"}}}, "spec.resources: must be {requests: {...}, limits: {...}}"),
])
def test_an_invalid_spec_is_refused_naming_the_field(spec, error):
    with pytest.raises(jobs.SpecError, match=re.escape(error)):
        jobs.children(body(**spec), OPTIONS)


def test_without_any_image_the_spec_must_name_one():
    with pytest.raises(jobs.SpecError, match=r"spec.image: is required when the operator has no default image"):
        jobs.children(body(), jobs.JobOptions(image="", redis_url="redis://r:6379/0"))


def test_the_deadline_is_twice_the_planned_time_plus_a_margin():
    _, job = jobs.children(body(), OPTIONS)
    # 5 s warm-up + 60 s + 2 s drain + 500 clients / (4 shards x 100/s) to connect
    assert job["spec"]["activeDeadlineSeconds"] == math.ceil(2 * (5 + 60 + 2 + 500 / 400) + 600)


def test_a_capacity_search_gets_a_deadline_for_every_step():
    search = body(parallelism=1, findCapacity={"dimension": "clients", "step": 50, "maxSteps": 5})
    _, job = jobs.children(search, OPTIONS)
    # 5 steps; the last one has 10 rooms x (50 + 4 x 50) clients to connect at 100/s
    assert job["spec"]["activeDeadlineSeconds"] == math.ceil(2 * 5 * (5 + 60 + 2 + 2500 / 100) + 600)


def test_the_slo_the_job_started_with_is_read_back_from_the_job():
    _, job = jobs.children(body(slo={"p99Seconds": 0.2, "deliveryRatio": 0.95}), OPTIONS)
    slo = jobs.job_slo(job)
    assert (slo.p99_seconds, slo.delivery_ratio) == (0.2, 0.95)
    assert jobs.job_slo({"metadata": {}}).p99_seconds == 0.5
