"""The send loop's nanosecond timer (services/loadgen/scalechat/loadgen/_timer.c), on a real event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from scalechat.loadgen import worker

Timer = worker.Timer


def test_the_c_timer_is_built():
    assert Timer is not None, "scalechat.loadgen._timer did not build; see pip's output"


async def test_it_fires_once_at_the_set_time_never_before():
    timer = Timer()
    loop = asyncio.get_running_loop()
    fired: list[tuple[int, int]] = []
    done = loop.create_future()

    def on_fire() -> None:
        fired.append((time.monotonic_ns(), timer.read()))
        if len(fired) == 3:
            done.set_result(None)
        else:
            timer.set(due[len(fired)])

    now = time.monotonic_ns()
    due = [now + 2_000_000, now + 2_300_000, now - 1]  # the last one is already past: fires at once
    loop.add_reader(timer.fileno(), on_fire)
    try:
        timer.set(due[0])
        await asyncio.wait_for(done, 5)
    finally:
        loop.remove_reader(timer.fileno())
        timer.close()
    assert [n for _, n in fired] == [1, 1, 1]
    assert fired[0][0] >= due[0] and fired[1][0] >= due[1]


def test_read_without_expiry_is_zero_and_misuse_is_refused():
    timer = Timer()
    assert timer.read() == 0
    with pytest.raises(ValueError, match="disarm"):
        timer.set(0)
    timer.close()
    timer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        timer.fileno()
