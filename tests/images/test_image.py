"""The image, built by podman from this checkout and run under the chart's limits.

Every container runs as the chart runs its pods (conftest.py): the chart's uid,
its CPU and memory limits, a read-only root with /tmp the one writable place,
no capabilities. The server is configured as the chart's ConfigMap does it
(``serve`` and SCALECHAT_* variables); clients reach it on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time

import aiohttp
import pytest

from image_support import LIMITS, UID, VALUES, image_tool, memory, restricted

# A build from nothing (base image, dependency wheels) takes a few minutes.
pytestmark = pytest.mark.timeout(900)

CHART_ENV = {"SCALECHAT_HOST": "0.0.0.0",
             "SCALECHAT_GRACE_SECONDS": str(VALUES["chat"]["settings"]["graceSeconds"])}
ROOM = "image-test"


@pytest.fixture(scope="module")
def server(run_container):
    return run_container("serve", env=CHART_ENV)


def run(image: str, *args: str, volume: str | None = None, network: str = "none", timeout: float = 120):
    """``podman run --rm`` of the image, restricted like a pod; the CompletedProcess, whatever its status."""
    mounts = ["--volume", volume] if volume else []
    return image_tool.podman("run", "--rm", f"--network={network}", *restricted(), *mounts, image, *args,
                             check=False, timeout=timeout)


def test_the_image_holds_this_checkouts_code(image):
    installed = image_tool.installed_sources(image)
    assert "scalechat/chat/server.py" in installed and "scalechat/loadtest_operator/operator_cli.py" in installed
    assert image_tool.source_mismatches(installed) == []


def test_a_stale_or_partial_install_is_told_apart_from_the_checkout():
    """The comparison itself, on the checkout's own files (no podman needed)."""
    files, modules = image_tool.checkout_sources()
    installed = {rel: hashlib.sha256(path.read_bytes()).hexdigest() for rel, path in files.items()
                 if path.suffix != ".so"}
    assert image_tool.source_mismatches(installed) == []
    stale = {**installed, "scalechat/cli.py": "0" * 64, "scalechat/gone.py": "0" * 64}
    del stale["scalechat/chat/server.py"]
    assert image_tool.source_mismatches(stale) == [
        "scalechat/cli.py: differs from src/scalechat/cli.py",
        "scalechat/gone.py: in the image, not in the checkout",
        "scalechat/chat/server.py: in the checkout, not in the image"]


def test_the_c_extensions_are_compiled_into_the_image(image):
    probe = ("import redis.utils, scalechat.loadgen._fastscan, scalechat.loadgen._timer; "
             "assert redis.utils.HIREDIS_AVAILABLE, 'redis does not find hiredis'; "
             "from scalechat.chat import native; "
             "assert native.compiled() == native.modules(), native.compiled(); "
             "assert not native.stale(), native.stale()")
    result = run(image, "--version")  # the entrypoint itself
    assert result.returncode == 0 and result.stdout.strip() == f"scalechat {image_tool.version()}"
    result = image_tool.podman("run", "--rm", "--network=none", *restricted(), "--entrypoint", "python",
                               image, "-c", probe, check=False)
    assert result.returncode == 0, result.stderr


def test_serve_answers_its_health_endpoints(server):
    assert server.json("/healthz") == {"status": "ok"}
    assert server.json("/readyz")["ready"] is True


def test_info_reports_the_cpu_quota_and_memory_limit_it_runs_under(server):
    host = server.json("/info")["host"]
    assert host["cgroup_cpu_quota"] == float(LIMITS["cpu"])
    mebibytes = int(memory(LIMITS["memory"])[:-1])
    assert host["cgroup_memory_limit_bytes"] == mebibytes * 2**20


def test_metrics_are_served_on_their_own_port(server):
    status, body = server.get("/metrics", port=server.metrics_port)
    assert status == 200 and b"scalechat_" in body


def test_the_server_runs_as_the_charts_user_and_writes_only_to_tmp(server):
    probe = server.exec("python", "-c", (
        "import os, tempfile\n"
        "print(os.getuid(), os.getgid())\n"
        "for d in ('/tmp', '/', '/home/scalechat', '/var/tmp', '/run', '/usr/local/lib'):\n"
        "    try:\n"
        "        tempfile.TemporaryFile(dir=d).close(); print(d, 'writable')\n"
        "    except OSError:\n"
        "        print(d, 'read-only')\n"))
    assert probe.returncode == 0, probe.stderr
    ids, *places = probe.stdout.splitlines()
    assert ids == f"{UID} {UID}"
    assert [p for p in places if p.endswith(" writable")] == ["/tmp writable"]


async def _receive(ws: aiohttp.ClientWebSocketResponse, kind: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
        frame = json.loads(msg.data)
        if frame["type"] == kind:
            return frame


async def _close_code(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> int:
    """The close code the server sends, past any frames still queued before it."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return msg.data
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data)


async def test_two_clients_chat_through_the_published_port(server):
    async with aiohttp.ClientSession() as session:
        alice = await session.ws_connect(server.ws_url(ROOM, "name=alice"))
        bob = await session.ws_connect(server.ws_url(ROOM, "name=bob"))
        for ws in (alice, bob):
            await _receive(ws, "history")
        await alice.send_json({"type": "message", "text": "hello from the image", "cid": "c1"})
        got = await _receive(bob, "message")
        assert (got["from"], got["text"], got["room"]) == ("alice", "hello from the image", ROOM)
        assert (await _receive(alice, "message"))["cid"] == "c1"
        await bob.send_json({"type": "message", "text": "hi alice"})
        assert (await _receive(alice, "message"))["text"] == "hi alice"
        await alice.close()
        await bob.close()


async def test_sigterm_closes_sockets_with_1001_and_exits_0_within_the_grace(run_container):
    grace = VALUES["chat"]["settings"]["graceSeconds"]
    allowed = math.ceil(grace) + VALUES["chat"]["terminationMarginSeconds"]  # the pod's, less its preStop
    container = run_container("serve", env=CHART_ENV)
    async with aiohttp.ClientSession() as session:
        clients = [await session.ws_connect(container.ws_url(ROOM, f"name=c{i}")) for i in range(2)]
        for ws in clients:
            await _receive(ws, "history")
        started = time.monotonic()
        image_tool.podman("kill", "--signal", "TERM", container.name)
        codes = [await _close_code(ws, allowed) for ws in clients]
        waited = await asyncio.to_thread(image_tool.podman, "wait", container.name, timeout=allowed)
        elapsed = time.monotonic() - started
    assert codes == [1001, 1001]
    assert waited.stdout.strip() == "0", container.logs()
    assert elapsed < allowed, f"exited {elapsed:.1f}s after SIGTERM; the pod allows {allowed}s"


def test_load_runs_from_the_image_against_the_server(image, server, world_writable):
    """`scalechat load` as a LoadTest Job's pod runs it (results in /results), in the server's network."""
    result = run(image, "load", "--url", "ws://127.0.0.1:8080/ws/{room}", "--rooms", "1",
                 "--clients-per-room", "2", "--rate", "5", "--duration", "2", "--warmup", "0.5",
                 "--drain", "1", "--workers", "1", "--name", "image-test", "--out", "/results",
                 volume=f"{world_writable}:/results:rw", network=f"container:{server.name}")
    assert result.returncode == 0, result.stdout + result.stderr
    run_json = json.loads((world_writable / "run.json").read_text())
    assert run_json["server"]["host"]["cgroup_cpu_quota"] == float(LIMITS["cpu"])
    (stage,) = json.loads((world_writable / "shard-0-of-1.json").read_text())["stages"]
    assert stage["sent"] > 0 and stage["received"] == stage["expected"] > 0, stage


def test_operator_help_runs_from_the_image(image):
    result = run(image, "operator", "--help")
    assert result.returncode == 0, result.stderr
    assert "--standalone" in result.stdout
