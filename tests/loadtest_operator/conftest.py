"""Fixtures for the operator's end-to-end tests: kmock stands in for the Kubernetes API server.

``k8s`` is kmock's stateful API emulator (HTTP on 127.0.0.1) with the bundled
built-in resources and the LoadTest resource declared, a kubeconfig pointing
at it, and the operator's settings in the environment. ``operator`` runs the
real ``kopf run -m scalechat.loadtest_operator.handlers`` (``kopf.testing.KopfRunner``,
in a thread) against it. kmock runs no controllers and collects no garbage:
tests set a Job's status themselves and check owner references instead of
deletion cascades. It assigns no uid/resourceVersion, so test objects carry
their own. Shard results go to the real Redis at 127.0.0.1:6379 under keys
derived from per-test uids, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import kubernetes
import pytest
import redis
import yaml
from kmock import ResourceInfo, action, resource
from kopf.testing import KopfRunner

from scalechat.loadtest_operator import jobs

NAMESPACE = "loadtests"
REDIS_URL = "redis://127.0.0.1:6379/0"
IMAGE = "scalechat:test"
LOADTESTS = "/apis/scalechat.io/v1alpha1/namespaces/loadtests/loadtests"
JOBS = "/apis/batch/v1/namespaces/loadtests/jobs"
CONFIGMAPS = "/api/v1/namespaces/loadtests/configmaps"


def loadtest(name: str, parallelism: int = 2, **spec: Any) -> dict[str, Any]:
    """A LoadTest as a client would create it, with the uid and resourceVersion kmock does not assign."""
    return {
        "apiVersion": "scalechat.io/v1alpha1", "kind": "LoadTest",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": str(uuid.uuid4()), "resourceVersion": "1",
                     "generation": 1, "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"target": {"url": "ws://chat.scalechat:8080/ws/{room}"}, "parallelism": parallelism,
                 "stages": [{"name": "warm", "rooms": 4, "clientsPerRoom": 10, "rate": 1, "durationSeconds": 20},
                            {"name": "peak", "rooms": 8, "clientsPerRoom": 20, "rate": 2, "durationSeconds": 30}],
                 "slo": {"p99Seconds": 0.25, "deliveryRatio": 0.99}, **spec},
    }


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {result!r}")
        await asyncio.sleep(0.1)


class Api:
    """A tiny client of the emulated API server, as kubectl would use it, and the tests' helpers.

    (Test modules cannot import this conftest: only tests/ is on sys.path.)
    """

    LOADTESTS, JOBS, CONFIGMAPS = LOADTESTS, JOBS, CONFIGMAPS
    NAMESPACE, REDIS_URL, IMAGE = NAMESPACE, REDIS_URL, IMAGE
    eventually = staticmethod(eventually)

    def __init__(self, session: aiohttp.ClientSession, kmock: Any, uids: list[str]) -> None:
        self.session = session
        self.kmock = kmock
        self.uids = uids

    def loadtest(self, name: str, parallelism: int = 2, **spec: Any) -> dict[str, Any]:
        """A new LoadTest manifest; its Redis results key is deleted after the test."""
        body = loadtest(name, parallelism, **spec)
        self.uids.append(body["metadata"]["uid"])
        return body

    async def request(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        async with self.session.request(method, path, json=body, headers=headers) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise AssertionError(f"{method} {path}: {resp.status} {data.get('message')}")
            return data

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", path, body)

    async def get(self, path: str, name: str) -> dict[str, Any] | None:
        async with self.session.get(f"{path}/{name}") as resp:
            return None if resp.status == 404 else await resp.json()

    async def items(self, path: str) -> list[dict[str, Any]]:
        return (await self.request("GET", path))["items"]

    async def patch(self, path: str, name: str, body: dict[str, Any], subresource: str = "") -> dict[str, Any]:
        suffix = f"/{subresource}" if subresource else ""
        return await self.request("PATCH", f"{path}/{name}{suffix}", body, "application/merge-patch+json")

    async def delete(self, path: str, name: str) -> dict[str, Any]:
        return await self.request("DELETE", f"{path}/{name}")

    async def status(self, name: str) -> dict[str, Any]:
        obj = await self.get(LOADTESTS, name)
        return (obj or {}).get("status") or {}


@pytest.fixture
def k8s(kmock, tmp_path, monkeypatch):
    """kmock's API emulator with the LoadTest resource, and the environment pointing at it."""
    with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        kmock.resources.load_bundled()
    kmock.resources["scalechat.io/v1alpha1/loadtests"] = ResourceInfo(
        kind="LoadTest", singular="loadtest", namespaced=True, subresources={"status"},
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
        "users": [{"name": "kmock", "user": {"token": "kmock"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}]}))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster config
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # The kubernetes client read $KUBECONFIG once, at import; kopf's login uses that default.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.setenv("SCALECHAT_OPERATOR_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("SCALECHAT_OPERATOR_IMAGE", IMAGE)
    monkeypatch.setenv("SCALECHAT_OPERATOR_RESULTS_GRACE_SECONDS", "3")
    return kmock


@pytest.fixture
async def api(k8s):
    uids: list[str] = []
    async with aiohttp.ClientSession(base_url=str(k8s.url)) as session:
        yield Api(session, k8s, uids)
    client = redis.Redis.from_url(REDIS_URL)
    for uid in uids:
        client.delete(jobs.results_key(uid))


@pytest.fixture
async def operator(k8s):
    """The real `kopf run` of the handlers module, in a thread, against kmock (in this loop)."""
    runner = KopfRunner(["run", "--standalone", "--all-namespaces", "--verbose", "-m",
                         "scalechat.loadtest_operator.handlers"], timeout=30)
    await asyncio.to_thread(runner.__enter__)
    try:
        # Objects created before kopf watches are listed and then replayed by kmock's watch (it
        # ignores resourceVersion): wait for the watch so that each test sees one ADDED event.
        watching = k8s[action.WATCH, resource("scalechat.io/v1alpha1/loadtests")]
        await eventually(lambda: asyncio.sleep(0, bool(watching)), 20, "kopf to watch LoadTests")
        yield runner
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)
    assert runner.exit_code == 0, runner.output
