"""The operator end to end: the real `kopf run` of our handlers against kmock, which stands in
for the Kubernetes API server (stateful, over HTTP), and the real Redis for shard results.

kmock runs no Job controller and no garbage collector: where Kubernetes would
act, the tests do it through the API (set a Job's status, delete a LoadTest)
and check what the operator did in response, as kubectl would see it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import numpy as np
import pytest
import yaml
from kmock import resource

from scalechat import results_store
from scalechat.loadtest.spec import parse_manifest
from scalechat.loadtest_operator import jobs
from scalechat.loadtest_operator.handlers import POLL_SECONDS
from scalechat.results import StageResult, merge_stage_results

pytestmark = pytest.mark.timeout(60)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def started(api, name: str, **kwargs) -> tuple[dict, dict]:
    """Create a LoadTest and wait for its Job; (LoadTest, Job)."""
    lt = api.loadtest(name, **kwargs)
    await api.create(api.LOADTESTS, lt)

    async def pending():
        return (await api.status(name)).get("phase") == "Pending"

    await api.eventually(pending, 15, f"{name} to be Pending")
    return lt, await api.get(api.JOBS, jobs.job_name(name))


async def _equals(probe, wanted) -> bool:
    return await probe() == wanted


def shard_results(seed: int) -> list[StageResult]:
    """Two stages of one shard with known counts and delivery latencies (~20 ms)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, name in enumerate(("warm", "peak")):
        stage = StageResult(index=i, name=name, sent=1000 + seed, expected=10_000, received=9_995 - seed)
        stage.delivery.record_many(rng.lognormal(np.log(0.02 * (i + 1)), 0.4, 5_000 + 1_000 * seed))
        out.append(stage)
    return out


async def test_a_loadtest_becomes_one_indexed_job_and_a_spec_configmap_both_owned_by_it(operator, api):
    resources = {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
    lt, job = await started(api, "shape", parallelism=3, resources=resources)
    uid = lt["metadata"]["uid"]

    assert [j["metadata"]["name"] for j in await api.items(api.JOBS)] == ["shape-load"]
    owner = {"apiVersion": "scalechat.io/v1alpha1", "kind": "LoadTest", "name": "shape", "uid": uid,
             "controller": True, "blockOwnerDeletion": True}
    assert job["metadata"]["ownerReferences"] == [owner]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == api.IMAGE
    assert container["args"] == [
        "load", "-f", "/etc/loadtest/loadtest.yaml", "--shard", "$(JOB_COMPLETION_INDEX)/3",
        "--run-id", jobs.run_id(uid), "--out", "/results",
        "--results-redis", api.REDIS_URL, "--results-key", jobs.results_key(uid)]
    assert container["resources"] == resources

    (cm,) = await api.items(api.CONFIGMAPS)
    assert cm["metadata"]["ownerReferences"] == [owner]
    assert {"name": "spec", "configMap": {"name": cm["metadata"]["name"]}} in pod["volumes"]
    manifest = yaml.safe_load(cm["data"]["loadtest.yaml"])
    test = parse_manifest(manifest)  # what `scalechat load -f` will accept
    assert (test.parallelism, [s.name for s in test.stages]) == (3, ["warm", "peak"])
    assert "resources" not in manifest["spec"]
    assert (await api.status("shape"))["jobName"] == "shape-load"


async def test_a_job_left_by_an_earlier_attempt_is_taken_as_created(operator, api, k8s):
    lt = api.loadtest("again")
    earlier = jobs.children(lt, jobs.JobOptions(api.IMAGE, api.REDIS_URL))[1]
    earlier["metadata"]["annotations"]["attempt"] = "first"
    await api.create(api.JOBS, earlier)
    await api.create(api.LOADTESTS, lt)

    async def pending():
        return (await api.status("again")).get("phase") == "Pending"

    await api.eventually(pending, 15, "Pending")
    (job,) = await api.items(api.JOBS)
    assert job["metadata"]["annotations"]["attempt"] == "first"  # kept, not replaced
    assert len(k8s["post", resource("batch/v1/jobs")]) == 2  # ours above, then the operator's 409


async def test_a_create_retried_after_a_failed_response_yields_still_one_job(operator, api, k8s):
    # The API server stores the Job but the response is lost (503): the retry gets a 409.
    posts = k8s["post", resource("batch/v1/jobs")]
    posts[:1] << 503
    lt, job = await started(api, "retried")
    assert [j["metadata"]["name"] for j in await api.items(api.JOBS)] == ["retried-load"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == lt["metadata"]["uid"]
    assert len(posts) == 2


async def test_a_job_name_taken_by_another_owner_fails_the_loadtest(operator, api):
    await api.create(api.JOBS, {"apiVersion": "batch/v1", "kind": "Job",
                            "metadata": {"name": "taken-load", "namespace": "loadtests"}, "spec": {}})
    lt = api.loadtest("taken")
    await api.create(api.LOADTESTS, lt)

    async def failed():
        status = await api.status("taken")
        return status if status.get("phase") == "Failed" else None

    status = await api.eventually(failed, 15, "Failed")
    assert status["message"].startswith("NameTaken: Job loadtests/taken-load exists and is not controlled")
    assert "ownerReferences" not in (await api.get(api.JOBS, "taken-load"))["metadata"]


async def test_progress_then_completion_with_every_shards_results_give_the_merged_status(operator, api):
    lt, job = await started(api, "full")
    key = jobs.results_key(lt["metadata"]["uid"])

    results_store.set_progress(api.REDIS_URL, key, 0, 0, "warm")
    await api.patch(api.JOBS, "full-load", {"status": {"active": 2, "ready": 2, "startTime": now()}}, "status")

    async def phase_stage():
        status = await api.status("full")
        return (status.get("phase"), status.get("stage"))

    await api.eventually(lambda: _equals(phase_stage, ("Running", "warm")), 10, "Running, stage warm")
    for shard in (0, 1):
        results_store.set_progress(api.REDIS_URL, key, shard, 1, "peak")
    await api.eventually(lambda: _equals(phase_stage, ("Running", "peak")), 10, "stage peak")

    shards = [shard_results(0), shard_results(1)]
    for shard, stages in enumerate(shards):
        results_store.store_shard(api.REDIS_URL, key, shard, 2, stages)
    await api.patch(api.JOBS, "full-load", {"status": {
        "active": 0, "ready": 0, "succeeded": 2, "completionTime": now(),
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now()}]}}, "status")

    async def succeeded():
        status = await api.status("full")
        return status if status.get("phase") == "Succeeded" else None

    status = await api.eventually(succeeded, 10, "Succeeded")
    expected = merge_stage_results(shards)
    assert [s["name"] for s in status["stages"]] == ["warm", "peak"]
    for row, merged in zip(status["stages"], expected):
        assert row["p99"] == merged.delivery.percentile(99)  # the exactly merged histogram's
        assert row["p50"] == merged.delivery.percentile(50)
        assert row["max"] == merged.delivery.max
        assert row["sent"] == shards[0][merged.index].sent + shards[1][merged.index].sent
        assert row["received"] == shards[0][merged.index].received + shards[1][merged.index].received
        assert row["deliveryRatio"] == merged.delivery_ratio
    assert status["sloPassed"] is True  # p99 ~60 ms < 250 ms, ratio ~0.9995 > 0.99
    assert status["p99"] == status["stages"][-1]["p99"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Complete": "True", "SloPassed": "True"}
    assert status["finishedAt"] and status["startedAt"]

    async def released():  # kopf's finalizer goes with the timer: a finished test deletes at once
        return not (await api.get(api.LOADTESTS, "full"))["metadata"].get("finalizers")

    await api.eventually(released, 10, "the finalizer to be removed")


async def test_a_failed_job_fails_the_loadtest_with_the_jobs_reason(operator, api):
    await started(api, "broken")
    await api.patch(api.JOBS, "broken-load", {"status": {"failed": 1, "conditions": [
        {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": now()},
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "Job has reached the specified backoff limit", "lastTransitionTime": now()}]}}, "status")

    async def failed():
        status = await api.status("broken")
        return status if status.get("phase") == "Failed" else None

    status = await api.eventually(failed, 10, "Failed")
    assert status["message"] == "BackoffLimitExceeded: Job has reached the specified backoff limit"
    (condition,) = status["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Failed", "True", "BackoffLimitExceeded")


async def test_a_completed_job_whose_results_never_arrive_fails_after_the_grace_period(operator, api):
    lt, _ = await started(api, "lost")
    results_store.store_shard(api.REDIS_URL, jobs.results_key(lt["metadata"]["uid"]), 1, 2, shard_results(1))
    await api.patch(api.JOBS, "lost-load", {"status": {"succeeded": 2, "completionTime": now(), "conditions": [
        {"type": "Complete", "status": "True", "lastTransitionTime": now()}]}}, "status")

    async def failed():
        status = await api.status("lost")
        return status if status.get("phase") == "Failed" else None

    status = await api.eventually(failed, 15, "Failed (grace is 3 s in these tests)")
    assert status["message"] == "ResultsMissing: the Job completed but only shards [1] of 2 stored results within 3s"


async def test_a_spec_change_while_running_is_refused_and_the_job_keeps_the_original_spec(operator, api):
    _, job = await started(api, "fixed")
    await api.patch(api.JOBS, "fixed-load", {"status": {"active": 2, "ready": 2, "startTime": now()}}, "status")

    async def running():
        return (await api.status("fixed")).get("phase") == "Running"

    await api.eventually(running, 10, "Running")
    job = await api.get(api.JOBS, "fixed-load")
    # kmock does not bump metadata.generation: do what the API server would.
    await api.patch(api.LOADTESTS, "fixed", {"metadata": {"generation": 2}, "spec": {"parallelism": 5}})

    async def refused():
        conditions = (await api.status("fixed")).get("conditions") or []
        return next((c for c in conditions if c["type"] == "SpecChangeRefused"), None)

    condition = await api.eventually(refused, 10, "the SpecChangeRefused condition")
    assert (condition["status"], condition["reason"], condition["observedGeneration"]) == ("True", "SpecImmutable", 2)
    assert "delete the LoadTest and create it again" in condition["message"]
    assert await api.items(api.JOBS) == [job]  # the very same Job, unpatched
    assert (await api.status("fixed"))["phase"] == "Running"


async def test_a_deleted_loadtest_leaves_its_job_to_the_garbage_collector_and_gets_nothing_new(
        operator, api, k8s):
    lt, job = await started(api, "gone")

    async def guarded():  # while its timer runs, kopf's finalizer lets the operator see the deletion
        return (await api.get(api.LOADTESTS, "gone"))["metadata"].get("finalizers") == ["scalechat.io/operator"]

    await api.eventually(guarded, 10, "the operator's finalizer")
    await api.delete(api.LOADTESTS, "gone")

    async def deleted():
        return await api.get(api.LOADTESTS, "gone") is None

    await api.eventually(deleted, 10, "the LoadTest (and kopf's finalizer) to go")
    creates = k8s["post", resource("batch/v1/jobs")] | k8s["post", resource("v1/configmaps")]
    before = len(creates)
    # Kubernetes (not kmock) deletes the Job because the LoadTest owned and controlled it:
    (ref,) = job["metadata"]["ownerReferences"]
    assert (ref["uid"], ref["controller"], ref["blockOwnerDeletion"]) == (lt["metadata"]["uid"], True, True)
    # ... and the operator must not act for the LoadTest any more: a few timer periods pass quietly.
    deadline = time.monotonic() + 3 * POLL_SECONDS
    while time.monotonic() < deadline:
        assert len(creates) == before
        assert [j["metadata"]["name"] for j in await api.items(api.JOBS)] == ["gone-load"]
        await asyncio.sleep(0.2)
    assert await api.get(api.JOBS, "gone-load") == job
