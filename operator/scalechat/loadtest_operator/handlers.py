"""kopf handlers of LoadTests (scalechat.io/v1alpha1): each small, each safe to run again.

* create: the spec ConfigMap and the Indexed Job (deterministic names; a 409 is
  success), phase Pending.
* timer, every :data:`POLL_SECONDS` on unfinished LoadTests: reads the Job
  and the shards' progress and results in Redis, and moves the status on
  (Running, stage, then Succeeded with merged results, or Failed).
* update of spec: refused with a SpecChangeRefused condition; the Job keeps
  the original spec.
* delete: nothing to do. The children carry a controller owner reference,
  so Kubernetes garbage-collects the Job, its pods and the ConfigMap.

No state in this module: the status (read back from the API), Redis and the
Job are the state; configuration comes in through kopf's ``memo``.
Run with ``scalechat operator`` or ``kopf run -m scalechat.loadtest_operator.handlers``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import kopf
import redis

from scalechat import results_store
from scalechat.loadtest_operator import jobs, kube, status
from scalechat.loadtest_operator.settings import OperatorConfig

LOADTESTS = ("scalechat.io", "v1alpha1", "loadtests")
POLL_SECONDS = 2.0
"""How often an unfinished LoadTest's Job and results are read (one GET, one HGETALL)."""
ANNOTATION_PREFIX = "scalechat.io"


def _now() -> datetime:
    return datetime.now(UTC)


def _apply(body: kopf.Body, patch: kopf.Patch, transition: status.Transition) -> None:
    patch.status.update(transition.patch)
    for event in transition.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def _unfinished(body: kopf.Body, **_: Any) -> bool:
    return bool(body.status.get("jobName")) and body.status.get("phase") not in status.FINISHED


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    settings.peering.standalone = True  # one replica; no KopfPeering objects
    settings.scanning.disabled = True  # RBAC grants no CRD or namespace listing
    # Annotations, not status.kopf: the CRD's structural schema would prune unknown status fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/operator"  # kopf's, while a timer runs
    # Reconnect watches that a proxy or load balancer silently dropped.
    settings.watching.server_timeout, settings.watching.client_timeout = 300, 330
    if "config" not in memo:  # started by `kopf run`, not by `scalechat operator`
        memo.config = OperatorConfig.from_sources()
    memo.api = kube.api_client()
    logger.info("LoadTest operator: results Redis %s, default image %r",
                memo.config.redis_url, memo.config.image or None)


@kopf.on.create(*LOADTESTS)
def start(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo.config
    options = jobs.JobOptions(config.image, config.redis_url, config.image_pull_policy)
    try:
        configmap, job = jobs.children(body, options)
        kube.create_owned(memo.api, configmap)
        created = kube.create_owned(memo.api, job)
    except (jobs.SpecError, kube.Rejected, kube.NotOurs) as exc:
        reason = "InvalidSpec" if isinstance(exc, jobs.SpecError) else type(exc).reason
        _apply(body, patch, status.failed(body.status, reason, str(exc), _now()))
        return
    name, shards = job["metadata"]["name"], job["spec"]["completions"]
    patch.status.update(status.created(name, shards, meta.get("generation")))
    kopf.info(body, reason="JobCreated" if created else "JobFound",
              message=f"Job {name}: {shards} shard(s), results under {jobs.results_key(meta['uid'])}")


@kopf.timer(*LOADTESTS, interval=POLL_SECONDS, when=_unfinished)
def follow_job(body: kopf.Body, namespace: str, uid: str, patch: kopf.Patch, memo: kopf.Memo,
               **_: Any) -> None:
    current = dict(body.status)
    job = kube.read_job(memo.api, namespace, current["jobName"])
    try:
        snap = results_store.snapshot(memo.config.redis_url, jobs.results_key(uid))
    except redis.RedisError as exc:
        raise kopf.TemporaryError(f"results Redis unreachable: {exc}", delay=5 * POLL_SECONDS) from None
    except ValueError as exc:  # a record that no retry can make readable
        _apply(body, patch, status.failed(current, "ResultsUnreadable", str(exc), _now()))
        return
    _apply(body, patch, status.reconcile(current, job, snap, _now(), memo.config.results_grace_seconds))


@kopf.on.update(*LOADTESTS, field="spec")
def refuse_spec_change(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    patch.status.update(status.refuse_spec_change(body.status, _now(), meta.get("generation")))
    kopf.warn(body, reason=status.SPEC_CHANGE_REFUSED,
              message="spec changes are not applied to a started LoadTest; delete and recreate it")
