"""One Redis-broker replica driven at its capacity loses nothing and refuses nothing.

``scalechat serve --broker redis`` (the Redis at 127.0.0.1:6379, a fresh key
prefix) is pinned to one core and ``scalechat load`` to the other when there
are two. 100 rooms x 4 clients offer 10,000 messages/s (40,000 deliveries/s):
at this machine's ~20-30 µs of replica CPU per delivery that is about one core,
the replica's capacity, so hundreds of publishes are in flight at once (more
than any connection pool holds). Every delivery must arrive exactly once and no
message may be refused with ``unavailable``. Bounded: 1 s warm-up, 4 s
measured, 3 s drain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from support import SCALECHAT

from scalechat.results import read_results_dir

pytestmark = pytest.mark.timeout(120)
ROOMS, PER_ROOM, RATE, SECONDS = 100, 4, 25, 4


def pinned(core: int) -> list[str]:
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        return ["taskset", "-c", str(core)]
    return []


def test_a_saturated_replica_delivers_every_message_and_refuses_none(start_server, tmp_path):
    prefix = f"test-capacity-{uuid.uuid4().hex[:12]}"
    server = start_server("--broker", "redis", "--redis-url", "redis://127.0.0.1:6379/0",
                          "--redis-prefix", prefix, "--rate-limit", "1000", "--rate-burst", "1000",
                          "--log-level", "warning")
    if pinned(0):
        subprocess.run(["taskset", "-pc", "0", str(server.proc.pid)], check=True,
                       capture_output=True)
    results = tmp_path / "results"
    done = subprocess.run(
        [*pinned(1), *SCALECHAT, "load", "--url", server.ws_url("{room}"), "--rooms", str(ROOMS),
         "--clients-per-room", str(PER_ROOM), "--rate", str(RATE), "--duration", str(SECONDS),
         "--warmup", "1", "--drain", "3", "--workers", "1", "--out", str(results)],
        capture_output=True, text=True, timeout=90, cwd=tmp_path)
    # 3: at capacity the default SLO (p99 <= 500 ms) may be missed; what counts here is that nothing is lost.
    assert done.returncode in (0, 3), done.stdout + done.stderr
    _, (stage,) = read_results_dir(results)
    assert stage.connections == ROOMS * PER_ROOM
    assert stage.sent >= ROOMS * PER_ROOM * RATE * SECONDS * 0.95, stage.to_dict()
    assert (stage.received, stage.duplicates, stage.out_of_order) == (stage.expected, 0, 0), \
        stage.to_dict()
    assert not stage.errors, stage.errors
    assert server.metric("scalechat_messages_rejected_total", 'reason="unavailable"') == 0
    published = server.metric("scalechat_messages_received_total")
    assert server.metric("scalechat_messages_delivered_total") == published * PER_ROOM
