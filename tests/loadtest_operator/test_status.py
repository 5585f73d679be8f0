"""status.py: the LoadTest status decided from an observed Job and shard snapshot (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from scalechat.loadtest.slo import Slo
from scalechat.loadtest_operator import jobs, status
from scalechat.results import StageResult, merge_stage_results
from scalechat.results_store import ShardProgress, Snapshot

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SLO = Slo(p99_seconds=0.1, delivery_ratio=0.99)


def stage(index: int, name: str, latency: float, n: int = 1000, expected: int = 1000, received: int = 1000,
          seed: int = 0) -> StageResult:
    result = StageResult(index=index, name=name, sent=n // 10, expected=expected, received=received)
    result.delivery.record_many(np.random.default_rng(seed).lognormal(np.log(latency), 0.3, n))
    return result


def job(completions: int = 2, slo: Slo = SLO, **job_status) -> dict:
    return {"metadata": {"annotations": {jobs.ANNOTATION_SLO: f'{{"p99Seconds": {slo.p99_seconds}, '
                                                              f'"deliveryRatio": {slo.delivery_ratio}}}'}},
            "spec": {"completions": completions}, "status": job_status}


COMPLETE = {"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2025-03-01T11:59:50Z"}],
            "completionTime": "2025-03-01T11:59:50Z", "succeeded": 2}


def test_a_stage_row_has_the_merged_histograms_percentiles_and_the_summed_counts():
    shards = [[stage(0, "s", 0.02, seed=1)], [stage(0, "s", 0.05, seed=2)]]
    (merged,) = merge_stage_results(shards)
    row = status.stage_status(merged)
    assert row == {"name": "s", "p50": merged.delivery.percentile(50), "p90": merged.delivery.percentile(90),
                   "p99": merged.delivery.percentile(99), "max": merged.delivery.max,
                   "sent": 200, "expected": 2000, "received": 2000, "deliveryRatio": 1.0}


def test_a_stage_without_deliveries_has_no_latencies_and_the_ratio_stays_within_the_crd_bounds():
    empty = StageResult(index=0, name="idle", sent=5, expected=10, received=12)
    assert status.stage_status(empty) == {"name": "idle", "sent": 5, "expected": 10, "received": 12,
                                          "deliveryRatio": 1.0}


def test_merged_results_that_meet_the_slo_succeed():
    t = status.reconcile({"phase": "Running", "jobName": "x-load"}, job(**COMPLETE),
                         Snapshot(2, {0: [stage(0, "a", 0.01)], 1: [stage(0, "a", 0.01, seed=3)]}), NOW, 60)
    patch = t.patch
    assert (patch["phase"], patch["sloPassed"], patch["stage"]) == ("Succeeded", True, "a")
    assert patch["finishedAt"] == "2025-03-01T11:59:50Z"  # the Job's completion, not the poll
    assert patch["p99"] == patch["stages"][0]["p99"] and patch["deliveryRatio"] == 1.0
    assert {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]} == {
        "Complete": ("True", "ResultsMerged"), "SloPassed": ("True", "SloMet")}
    assert [(e.type, e.reason) for e in t.events] == [("Normal", "Succeeded")]


def test_a_stage_over_the_p99_bound_or_under_the_delivery_ratio_misses_the_slo():
    slow, lossy = stage(0, "slow", 0.5), stage(1, "lossy", 0.01, received=900)
    t = status.succeeded({}, [slow, lossy], SLO, NOW)
    assert t.patch["sloPassed"] is False
    assert t.patch["message"].startswith("SLO missed: stage slow: p99 ")
    assert "stage lossy: delivery ratio 0.9000 < 0.99" in t.patch["message"]
    (slo_condition,) = [c for c in t.patch["conditions"] if c["type"] == "SloPassed"]
    assert (slo_condition["status"], slo_condition["reason"]) == ("False", "SloMissed")
    assert [(e.type, e.reason) for e in t.events] == [("Warning", "SloMissed")]


def test_a_failed_job_fails_with_its_condition_reason_and_message():
    failed_job = job(conditions=[
        {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"},
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline", "lastTransitionTime": "2025-03-01T11:00:00Z"}])
    t = status.reconcile({"phase": "Running"}, failed_job, Snapshot(), NOW, 60)
    assert t.patch["phase"] == "Failed"
    assert t.patch["message"] == "DeadlineExceeded: Job was active longer than specified deadline"
    assert t.patch["finishedAt"] == "2025-03-01T11:00:00Z"
    assert [(e.type, e.reason) for e in t.events] == [("Warning", "DeadlineExceeded")]


def test_a_failure_target_alone_is_not_yet_a_failure():
    pending_failure = job(ready=1, conditions=[{"type": "FailureTarget", "status": "True", "reason": "X"}])
    assert status.reconcile({"phase": "Running"}, pending_failure, Snapshot(), NOW, 60).patch == {
        "startedAt": "2025-03-01T12:00:00Z", "message": "the shards are running"}


def test_a_vanished_job_fails_the_loadtest():
    t = status.reconcile({"phase": "Running", "jobName": "x-load"}, None, Snapshot(), NOW, 60)
    assert (t.patch["phase"], t.patch["message"]) == ("Failed", "JobMissing: Job x-load no longer exists")


def test_a_complete_job_waits_for_missing_results_then_fails_after_the_grace_period():
    partial = Snapshot(2, {0: [stage(0, "a", 0.01)]})
    current = {"phase": "Running", "startedAt": "2025-03-01T11:00:00Z", "message": "the shards are running"}
    waiting = status.reconcile(current, job(**COMPLETE), partial, NOW, 60)
    assert waiting.patch == {"message": "the Job completed; waiting for every shard's results"}
    late = status.reconcile(current, job(**COMPLETE), partial, NOW + timedelta(seconds=51), 60)
    assert (late.patch["phase"], late.patch["message"]) == (
        "Failed", "ResultsMissing: the Job completed but only shards [0] of 2 stored results within 60s")


def test_results_of_another_shard_count_are_not_merged():
    one_shard = Snapshot(1, {0: [stage(0, "a", 0.01)]})
    patch = status.reconcile({"phase": "Running"}, job(**COMPLETE), one_shard, NOW, 60).patch
    assert "stages" not in patch and patch.get("phase", "Running") == "Running"


@pytest.mark.parametrize(("job_status", "progress", "phase"), [
    ({}, {}, "Pending"),
    ({"active": 2}, {}, "Pending"),  # pods exist but none runs yet (e.g. pulling the image)
    ({"active": 2, "ready": 1}, {}, "Running"),
    ({"active": 2}, {0: ShardProgress(0, "a", 1.0)}, "Running"),  # a shard reported a stage
])
def test_the_phase_is_pending_until_a_shard_runs(job_status, progress, phase):
    t = status.reconcile({"phase": "Pending"}, job(**job_status), Snapshot(progress=progress), NOW, 60)
    assert t.patch.get("phase", "Pending") == phase


def test_while_running_only_what_changed_is_patched_with_an_event_per_change():
    current = {"phase": "Pending", "jobName": "x-load"}
    progress = {0: ShardProgress(1, "peak", 1.0), 1: ShardProgress(0, "warm", 1.0)}
    running = job(ready=2, startTime="2025-03-01T11:58:00Z")
    first = status.reconcile(current, running, Snapshot(progress=progress), NOW, 60)
    assert first.patch == {"phase": "Running", "startedAt": "2025-03-01T11:58:00Z",
                           "message": "the shards are running", "stage": "warm"}  # the earliest shard's stage
    assert [e.reason for e in first.events] == ["Running", "Stage"]
    again = status.reconcile({**current, **first.patch}, running, Snapshot(progress=progress), NOW, 60)
    assert (again.patch, again.events) == ({}, ())


def test_a_condition_keeps_its_transition_time_until_its_status_changes():
    first = status.set_condition([], "SloPassed", "True", "SloMet", "ok", NOW)
    later = NOW + timedelta(minutes=5)
    same = status.set_condition(first, "SloPassed", "True", "SloMet", "still ok", later)
    assert same[0]["lastTransitionTime"] == "2025-03-01T12:00:00Z" and same[0]["message"] == "still ok"
    flipped = status.set_condition(same, "SloPassed", "False", "SloMissed", "no", later)
    assert flipped[0]["lastTransitionTime"] == "2025-03-01T12:05:00Z"
    assert status.set_condition([], "X", "True", "not a reason!", "m", NOW)[0]["reason"] == "Unknown"


def test_a_refused_spec_change_adds_its_condition_and_keeps_the_others():
    current = {"conditions": status.set_condition([], "Failed", "False", "Fine", "", NOW)}
    patch = status.refuse_spec_change(current, NOW, 3)
    refused = patch["conditions"][-1]
    assert (refused["type"], refused["status"], refused["reason"], refused["observedGeneration"]) == (
        "SpecChangeRefused", "True", "SpecImmutable", 3)
    assert [c["type"] for c in patch["conditions"]] == ["Failed", "SpecChangeRefused"]
