"""A LoadTest's children, as plain manifests: the spec ConfigMap and the Indexed Job.

Pure: no API calls. Names are derived from the LoadTest's name alone, so a
retried handler builds the same objects and a second create is a 409, never a
second Job. Both children are adopted (``kopf.adopt``): a controller owner
reference to the LoadTest with ``blockOwnerDeletion``, so deleting the
LoadTest makes Kubernetes garbage-collect the Job, its pods and the ConfigMap.

The Job runs ``spec.parallelism`` pods at once, one per shard (completion
index ``i`` runs ``scalechat load --shard i/n``), every pod reading the same
manifest from the ConfigMap and storing its results in Redis under
:func:`results_key`, where the operator merges them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import yaml

from scalechat.loadtest.schema import API_VERSION, KIND, ConfigError
from scalechat.loadtest.slo import Slo
from scalechat.loadtest.spec import LoadTest, parse_spec

JOB_NAME_MAX = 52
"""Indexed Job pods are named ``<job>-<index>-<5 random>`` and that must fit a 63-character
DNS label: 52 leaves room for 4-digit indices (the limit CronJob names have for the same reason)."""
NAME_MAX = 63
SPEC_DIR = "/etc/loadtest"
SPEC_FILE = "loadtest.yaml"
RESULTS_DIR = "/results"
CONTAINER = "loadgen"
OPERATOR_FIELDS = ("image", "resources")
"""spec fields only the operator reads; the load generator's manifest never carries them."""
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "1", "memory": "512Mi"},
    "limits": {"cpu": "2", "memory": "1Gi"},
}
LABEL_LOADTEST = "scalechat.io/loadtest"
ANNOTATION_SLO = "scalechat.io/slo"
ANNOTATION_RESULTS_KEY = "scalechat.io/results-key"
ANNOTATION_RUN_ID = "scalechat.io/run-id"
DEADLINE_FACTOR = 2.0
DEADLINE_MARGIN_SECONDS = 600


class SpecError(ValueError):
    """The LoadTest cannot become a Job; ``str()`` starts with the field path."""


@dataclass(frozen=True)
class JobOptions:
    """What the operator adds to every Job: defaults a LoadTest may override, and where results go."""

    image: str
    redis_url: str
    image_pull_policy: str = "IfNotPresent"


def child_name(owner: str, suffix: str, limit: int = NAME_MAX) -> str:
    """``<owner>-<suffix>`` as a DNS label (pod hostnames derive from it).

    A name that is too long or has dots (a LoadTest's name may) is cut or
    changed, and made unique again by a hash of the original.
    """
    full = f"{owner}-{suffix}"
    if len(full) <= limit and "." not in owner:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    head = owner.replace(".", "-")[: limit - len(suffix) - len(digest) - 2].rstrip("-")
    return f"{head}-{digest}-{suffix}"


def job_name(loadtest: str) -> str:
    return child_name(loadtest, "load", JOB_NAME_MAX)


def configmap_name(loadtest: str) -> str:
    return child_name(loadtest, "spec")


def label_value(name: str) -> str:
    """A label value (<= 63 characters) standing for ``name``: cut, with a hash of the whole."""
    if len(name) <= NAME_MAX:
        return name
    return f"{name[:NAME_MAX - 9].rstrip('-.')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def run_id(uid: str) -> str:
    """The shards' shared ``--run-id``: the uid's first 24 hex digits (the flag takes 1-24 characters)."""
    return re.sub(r"[^0-9a-zA-Z]", "", uid)[:24]


def results_key(uid: str) -> str:
    """Redis hash of one LoadTest's shard results; the uid keeps a recreated LoadTest apart."""
    return f"scalechat:loadtest:{uid}"


def validated(spec: Mapping[str, Any]) -> LoadTest:
    """``spec`` validated as ``scalechat load`` validates it (operator-only fields left out)."""
    try:
        return parse_spec({k: v for k, v in spec.items() if k not in OPERATOR_FIELDS}, "spec")
    except ConfigError as exc:
        raise SpecError(str(exc)) from None


def manifest(body: Mapping[str, Any], test: LoadTest) -> dict[str, Any]:
    """The manifest every shard runs: the normalized spec (defaults filled in)."""
    meta = body["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace"), "uid": meta["uid"]},
            "spec": test.to_spec()}


def labels(body: Mapping[str, Any]) -> dict[str, str]:
    return {"app.kubernetes.io/name": "scalechat", "app.kubernetes.io/component": "loadgen",
            "app.kubernetes.io/managed-by": "scalechat-operator",
            LABEL_LOADTEST: label_value(body["metadata"]["name"])}


def configmap(body: Mapping[str, Any], test: LoadTest) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": configmap_name(body["metadata"]["name"]), "labels": labels(body)},
            "immutable": True,  # the spec of a started LoadTest never changes
            "data": {SPEC_FILE: yaml.safe_dump(manifest(body, test), sort_keys=False)}}


def resources(spec: Mapping[str, Any]) -> dict[str, Any]:
    """spec.resources (requests/limits) as given, else :data:`DEFAULT_RESOURCES`."""
    given = spec.get("resources")
    if given is None:
        return copy.deepcopy(DEFAULT_RESOURCES)
    if not isinstance(given, Mapping) or set(given) - {"requests", "limits"} or not all(
            isinstance(v, Mapping) for v in given.values()):
        raise SpecError("spec.resources: must be {requests: {...}, limits: {...}} as in a container, "
                        f"got {given!r}")
    return {k: dict(v) for k, v in given.items()}


def deadline_seconds(test: LoadTest) -> int:
    """activeDeadlineSeconds: twice the planned run time plus a margin, so a hung shard ends."""
    stages = list(test.stages)
    if test.find_capacity is not None:  # the search may grow its one stage up to max_steps times
        fc, base = test.find_capacity, stages[0]
        grown = (fc.max_steps - 1) * fc.step
        clients = {"clients": base.rooms * (base.clients_per_room + grown),
                   "rooms": (base.rooms + grown) * base.clients_per_room}.get(fc.dimension, base.total_clients)
        stages = [base] * fc.max_steps
        connect = clients / (test.parallelism * test.connect_rate)
    else:
        connect = max(s.total_clients for s in stages) / (test.parallelism * test.connect_rate)
    planned = sum(s.warmup_seconds + s.duration_seconds + test.drain_seconds + connect for s in stages)
    return math.ceil(DEADLINE_FACTOR * planned + DEADLINE_MARGIN_SECONDS)


def job(body: Mapping[str, Any], test: LoadTest, options: JobOptions) -> dict[str, Any]:
    meta, spec = body["metadata"], body.get("spec", {})
    image = spec.get("image") or options.image
    if not image:
        raise SpecError("spec.image: is required when the operator has no default image (--image)")
    shards, uid = test.parallelism, meta["uid"]
    args = ["load", "-f", f"{SPEC_DIR}/{SPEC_FILE}", "--shard", f"$(JOB_COMPLETION_INDEX)/{shards}",
            "--run-id", run_id(uid), "--out", RESULTS_DIR,
            "--results-redis", options.redis_url, "--results-key", results_key(uid)]
    container = {
        "name": CONTAINER, "image": image, "imagePullPolicy": options.image_pull_policy, "args": args,
        # The Job controller injects this variable too (and skips it when declared); declaring it
        # makes the $(JOB_COMPLETION_INDEX) in args expand whatever the cluster does.
        "env": [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}],
        "resources": resources(spec),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
                         {"name": "results", "mountPath": RESULTS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    pod = {
        "restartPolicy": "Never", "enableServiceLinks": False, "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "spec", "configMap": {"name": configmap_name(meta["name"])}},
                    {"name": "results", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
    }
    slo = {"p99Seconds": test.slo.p99_seconds, "deliveryRatio": test.slo.delivery_ratio}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(meta["name"]), "labels": labels(body),
                     "annotations": {ANNOTATION_SLO: json.dumps(slo), ANNOTATION_RESULTS_KEY: results_key(uid),
                                     ANNOTATION_RUN_ID: run_id(uid)}},
        "spec": {
            "completionMode": "Indexed", "completions": shards, "parallelism": shards,
            # A retried shard would replay its stages out of step with the others: fail instead.
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_seconds(test),
            "template": {"metadata": {"labels": labels(body)}, "spec": pod},
        },
    }


def children(body: Mapping[str, Any], options: JobOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ConfigMap, Job) of a LoadTest, owned by it; SpecError names the offending field."""
    spec = body.get("spec") or {}
    test = validated(spec)
    cm, jb = configmap(body, test), job(body, test, options)
    kopf.adopt([cm, jb], owner=dict(body))
    return cm, jb


def job_slo(job_manifest: Mapping[str, Any]) -> Slo:
    """The SLO a Job was started with (its annotation): a later spec edit cannot change it."""
    raw = (job_manifest.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_SLO)
    if not raw:
        return Slo()
    slo = json.loads(raw)
    return Slo(float(slo["p99Seconds"]), float(slo["deliveryRatio"]))
