"""The receive path's accounting, without sockets: fast (numpy) and exact per-message paths agree.

The C path (test_fastscan.py) is off here: these feed ``on_messages`` directly."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from loadgen_streams import frame, make_run, stream
from scalechat.loadgen.worker import NEVER, StageRun

pytestmark = pytest.mark.asyncio


def deliver(run: StageRun, frames: list[bytes], batch: int) -> tuple:
    client = run.clients[1]
    for i in range(0, len(frames), batch):
        client.on_messages(frames[i:i + batch])
    return (run.received, run.duplicates, run.out_of_order, run.late, run.live_received,
            run.result.delivery.count, run.result.echo.count)


@pytest.mark.parametrize("batch", [1, 7, 64, 1000])
async def test_fast_and_exact_paths_count_the_same(batch):
    got = deliver(make_run(), stream(), batch)
    # window [1000, 2000): msgnos 10..59 of 4 senders = 200 receipts; echo = sender 1's 50
    assert got == (200, 1, 1, 0, 60 * 4 + 2, 200, 50)


async def test_receipts_after_the_deadline_are_late():
    run = make_run(deadline=0)
    got = deliver(run, [frame(s, m, 1000 + m) for m in range(50) for s in range(4)], 64)
    assert got[:4] == (0, 0, 0, 200)


async def test_foreign_messages_are_ignored():
    run = make_run()
    foreign = b'{"type":"message","room":"r","seq":1,"id":"e","from":"h","text":"hello","ts":1,"cid":null}'
    out_of_range = frame(99, 1, 1500)  # sender index beyond the room
    got = deliver(run, [foreign, out_of_range] * 20 + [frame(0, 0, 1500)], 64)
    assert got[0] == 1 and got[1] == 0


async def test_latency_is_measured_from_the_scheduled_time():
    run = make_run(start=0, end=NEVER)
    run.clients[0].on_messages([frame(1, 0, time.monotonic_ns() - 2_000_000_000)])
    assert run.result.delivery.max == pytest.approx(2.0, abs=0.05)


async def test_a_gap_then_the_missing_messages_counts_them_out_of_order():
    run = make_run()
    frames = [frame(0, 15, 1150)] + [frame(0, m, 1000 + m * 10) for m in range(10, 15)]
    assert deliver(run, frames * 1, 64)[:4] == (6, 0, 5, 0)


async def test_random_batching_never_changes_the_counts():
    frames = stream()
    expected = deliver(make_run(), frames, 1)
    rng = random.Random(5)
    for _ in range(5):
        run = make_run()
        client, i = run.clients[1], 0
        while i < len(frames):
            n = rng.randint(1, 80)
            client.on_messages(frames[i:i + n])
            i += n
        assert (run.received, run.duplicates, run.out_of_order, run.late, run.live_received,
                run.result.delivery.count, run.result.echo.count) == expected
    await asyncio.sleep(0)


async def test_a_server_that_orders_keys_differently_is_still_understood():
    run = make_run()
    reordered = [b'{"room":"r","type":"message","text":"%d %d %d xx","seq":1}' % (s, 20, 1200) for s in range(4)]
    assert deliver(run, reordered, 64)[:5] == (4, 0, 0, 0, 4)
