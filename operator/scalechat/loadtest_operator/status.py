"""A LoadTest's status from what was observed: its Job, and the shards' results and progress.

Pure: the handlers fetch, these functions decide. :func:`reconcile` returns the
status fields that must change (an empty patch when nothing did) and the
Events to post. Phases: ``Pending`` until a shard runs, ``Running``,
then ``Succeeded`` (every shard's results merged exactly) or ``Failed``
(the Job failed or vanished, or results never arrived).

Latencies are delivery latencies (scheduled send to receipt) in seconds,
percentiles of the exactly merged histogram. A stage meets the SLO as
``scalechat load`` judges it (:func:`scalechat.loadtest.slo.check_slo`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scalechat.loadtest.slo import Slo, check_slo
from scalechat.loadtest_operator import jobs
from scalechat.results import StageResult
from scalechat.results_store import ShardProgress, Snapshot

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
FINISHED = frozenset({SUCCEEDED, FAILED})
SPEC_CHANGE_REFUSED = "SpecChangeRefused"
_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Transition:
    patch: dict[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class JobState:
    kind: str  # pending | running | complete | failed
    reason: str = ""
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def set_condition(conditions: Sequence[Mapping[str, Any]], type_: str, status: str, reason: str,
                  message: str, now: datetime, generation: int | None = None) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set (metav1.Condition); its transition time moves only on a change."""
    reason = reason if _REASON.match(reason or "") else "Unknown"
    old = next((c for c in conditions if c.get("type") == type_), None)
    new = {"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == status
           else timestamp(now)}
    if generation is not None:
        new["observedGeneration"] = generation
    return [dict(c) for c in conditions if c.get("type") != type_] + [new]


def stage_status(result: StageResult) -> dict[str, Any]:
    """One merged stage as status.stages[] holds it (latencies only when some were measured)."""
    out: dict[str, Any] = {"name": result.name}
    if result.delivery.count:
        p50, p90, p99 = (float(x) for x in result.delivery.percentiles([50, 90, 99]))
        out.update(p50=p50, p90=p90, p99=p99, max=float(result.delivery.max))
    # The CRD bounds deliveryRatio to [0, 1]; a late joiner's receipts must not get the status refused.
    out.update(sent=result.sent, expected=result.expected, received=result.received,
               deliveryRatio=min(1.0, result.delivery_ratio))
    return out


def created(job_name: str, shards: int, generation: int | None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": PENDING, "jobName": job_name,
                              "message": f"Job {job_name} created: {shards} shard(s)"}
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def failed(current: Mapping[str, Any], reason: str, message: str, now: datetime,
           finished_at: str | None = None) -> Transition:
    conditions = set_condition(current.get("conditions", []), "Failed", "True", reason, message, now)
    patch = {"phase": FAILED, "message": f"{reason}: {message}", "finishedAt": finished_at or timestamp(now),
             "conditions": conditions}
    return Transition(patch, (Event("Warning", reason if _REASON.match(reason) else "Failed", message),))


def succeeded(current: Mapping[str, Any], stages: list[StageResult], slo: Slo, now: datetime,
              finished_at: str | None = None) -> Transition:
    verdicts = [(stage.name, *check_slo(stage, slo)) for stage in stages]
    missed = [f"stage {name}: {why}" for name, ok, why in verdicts if not ok]
    passed = bool(stages) and not missed
    message = (f"{len(stages)} stage(s) met the SLO" if passed
               else "SLO missed: " + ("; ".join(missed) or "no stage finished"))
    conditions = set_condition(current.get("conditions", []), "Complete", "True", "ResultsMerged",
                               f"results of every shard merged: {len(stages)} stage(s)", now)
    conditions = set_condition(conditions, "SloPassed", "True" if passed else "False",
                               "SloMet" if passed else "SloMissed", message, now)
    rows = [stage_status(stage) for stage in stages]
    patch: dict[str, Any] = {"phase": SUCCEEDED, "stages": rows, "sloPassed": passed, "message": message,
                             "finishedAt": finished_at or timestamp(now), "conditions": conditions}
    if rows:
        patch["stage"] = rows[-1]["name"]
        patch["deliveryRatio"] = rows[-1]["deliveryRatio"]
        if "p99" in rows[-1]:
            patch["p99"] = rows[-1]["p99"]
    event = Event("Normal", "Succeeded", message) if passed else Event("Warning", "SloMissed", message)
    return Transition(patch, (event,))


def refuse_spec_change(current: Mapping[str, Any], now: datetime, generation: int | None) -> dict[str, Any]:
    """The condition telling that a spec edit was not applied (the Job keeps the original spec)."""
    message = ("the spec of a LoadTest cannot change once its Job exists; the test goes on with the "
               "original spec: delete the LoadTest and create it again to run the new one")
    return {"conditions": set_condition(current.get("conditions", []), SPEC_CHANGE_REFUSED, "True",
                                        "SpecImmutable", message, now, generation)}


def job_state(job: Mapping[str, Any], progress: Mapping[int, ShardProgress]) -> JobState:
    """What the Job says: its final conditions first, then whether any shard is under way."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Failed":
            return JobState("failed", cond.get("reason") or "JobFailed", cond.get("message") or "the Job failed",
                            status.get("startTime"), cond.get("lastTransitionTime"))
        if cond.get("type") == "Complete":
            return JobState("complete", started_at=status.get("startTime"),
                            finished_at=status.get("completionTime") or cond.get("lastTransitionTime"))
    under_way = status.get("ready") or status.get("succeeded") or progress
    return JobState("running" if under_way else "pending", started_at=status.get("startTime"))


def current_stage(progress: Mapping[int, ShardProgress]) -> str | None:
    """The earliest stage any shard is in: the one not yet finished everywhere."""
    return min(progress.values(), key=lambda p: p.stage_index).stage_name if progress else None


def reconcile(current: Mapping[str, Any], job: Mapping[str, Any] | None, snap: Snapshot, now: datetime,
              results_grace: float) -> Transition:
    """The next status of an unfinished LoadTest given its Job (None: gone) and the stored shards."""
    if job is None:
        return failed(current, "JobMissing", f"Job {current.get('jobName')} no longer exists", now)
    state = job_state(job, snap.progress)
    if state.kind == "failed":
        return failed(current, state.reason, state.message, now, state.finished_at)
    shards = int((job.get("spec") or {}).get("completions") or 1)
    if state.kind == "complete":
        stages = snap.merged() if snap.shards == shards else None
        if stages is not None:
            return succeeded(current, stages, jobs.job_slo(job), now, state.finished_at)
        ended = parse_time(state.finished_at) or now
        if (now - ended).total_seconds() > results_grace:
            have = sorted(snap.results) if snap.shards == shards else []
            return failed(current, "ResultsMissing", f"the Job completed but only shards {have} of {shards} "
                          f"stored results within {results_grace:g}s", now)
        return progressed(current, RUNNING, current_stage(snap.progress), state.started_at or timestamp(now),
                          "the Job completed; waiting for every shard's results")
    phase = PENDING if state.kind == "pending" else RUNNING
    return progressed(current, phase, current_stage(snap.progress), state.started_at or timestamp(now))


def progressed(current: Mapping[str, Any], phase: str, stage: str | None, started_at: str,
               message: str = "the shards are running") -> Transition:
    desired: dict[str, Any] = {"phase": phase}
    if phase == RUNNING:
        desired.update(startedAt=current.get("startedAt") or started_at, message=message)
    if stage is not None:
        desired["stage"] = stage
    patch = {k: v for k, v in desired.items() if current.get(k) != v}
    events = []
    if patch.get("phase") == RUNNING:
        events.append(Event("Normal", "Running", "the load generator pods are running"))
    if "stage" in patch:
        events.append(Event("Normal", "Stage", f"stage {stage} started"))
    return Transition(patch, tuple(events))
