"""The few Kubernetes API calls the handlers make, through the official (sync) client.

The handlers are sync, so kopf runs them in its thread pool and these blocking
calls never stall its event loop. Objects go in and come out as plain dicts
(``_preload_content=False``): the manifests of :mod:`scalechat.loadtest_operator.jobs`
are dicts, and raw JSON keeps every field the server sent.

Errors: :class:`Rejected` for objects the API server refuses as invalid (400,
422: retrying cannot help); ``kopf.TemporaryError`` for an unreachable or
overloaded server (429, 5xx, connection errors: retry soon); anything else
propagates and kopf retries it with its backoff.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import kubernetes
import urllib3
from kubernetes.client import ApiClient, BatchV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException

RETRY_SECONDS = 5.0


class Rejected(Exception):
    """The API server refused an object as invalid."""

    reason = "Rejected"


class NotOurs(Exception):
    """An object with a child's name exists but another owner controls it."""

    reason = "NameTaken"


def api_client() -> ApiClient:
    """A client for the in-cluster service account, else for $KUBECONFIG (or ~/.kube/config)."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        # Pass $KUBECONFIG explicitly: the client reads it into a default once, at import.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                           client_configuration=configuration)
    return ApiClient(configuration)


def _verbs(api: ApiClient, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(create, read) of a child kind."""
    if kind == "Job":
        batch = BatchV1Api(api)
        return batch.create_namespaced_job, batch.read_namespaced_job
    if kind == "ConfigMap":
        core = CoreV1Api(api)
        return core.create_namespaced_config_map, core.read_namespaced_config_map
    raise ValueError(f"no API calls for kind {kind!r}")


def _json(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def _api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


def _classify(exc: Exception, what: str) -> Exception:
    """The exception a handler should see for a failed call."""
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return kopf.TemporaryError(f"{what}: API server unreachable: {exc}", delay=RETRY_SECONDS)
    assert isinstance(exc, ApiException)
    if exc.status in (400, 422):
        return Rejected(f"{what}: {_api_message(exc)}")
    if exc.status == 429 or exc.status >= 500:
        return kopf.TemporaryError(f"{what}: {_api_message(exc)}", delay=RETRY_SECONDS)
    return exc


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return next((ref.get("uid") for ref in refs if ref.get("controller")), None)


def create_owned(api: ApiClient, manifest: Mapping[str, Any]) -> bool:
    """Create ``manifest``; True if created, False if our own copy was there (a 409 is success).

    NotOurs when the name is taken by an object another owner controls.
    """
    meta = manifest["metadata"]
    what = f"{manifest['kind']} {meta['namespace']}/{meta['name']}"
    create, read = _verbs(api, manifest["kind"])
    try:
        create(meta["namespace"], manifest, _preload_content=False)
        return True
    except ApiException as exc:
        if exc.status != 409:
            raise _classify(exc, f"creating {what}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise _classify(exc, f"creating {what}") from None
    try:
        existing = _json(read(meta["name"], meta["namespace"], _preload_content=False))
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        raise _classify(exc, f"reading {what}") from None
    if controller_uid(existing) != controller_uid(manifest):
        raise NotOurs(f"{what} exists and is not controlled by this LoadTest: delete or rename one of them")
    return False


def read_job(api: ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The Job as the API server has it, or None if there is none."""
    try:
        return _json(BatchV1Api(api).read_namespaced_job(name, namespace, _preload_content=False))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise _classify(exc, f"reading Job {namespace}/{name}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise _classify(exc, f"reading Job {namespace}/{name}") from None
