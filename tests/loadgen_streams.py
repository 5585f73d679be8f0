"""Message streams and stage runs shared by the receive-path tests (test_worker, test_fastscan)."""

from __future__ import annotations

from scalechat.loadgen.plan import plan_stage
from scalechat.loadgen.worker import NEVER, StageRun
from scalechat.loadtest.spec import RoomDistribution, SizeSpec, StageSpec


class _NoEvents:
    events = None


def frame(sender: int, msgno: int, sched: int) -> bytes:
    return (f'{{"type":"message","room":"r","seq":1,"id":"e-1","from":"n","text":"{sender} {msgno} {sched} xx",'
            f'"ts":1,"cid":null}}').encode()


def make_run(start: int = 1000, end: int = 2000, deadline: int = NEVER) -> StageRun:
    stage = StageSpec("s", 1, 4, 1.0, SizeSpec(), 1.0, 0.0, RoomDistribution(), "constant")
    run = StageRun(_NoEvents(), 0, stage, list(plan_stage("t", 0, stage, 1).rooms), "ws://h/{room}", 10.0, 0.0)
    run.set_window(start, end, deadline)
    return run


def stream() -> list[bytes]:
    """Four senders in order, with warm-up traffic, a gap filled later, a repeat and a presence frame."""
    frames = [frame(s, m, 900 + m * 10) for m in range(60) for s in range(4)]  # sched 900..1490
    frames.remove(frame(2, 30, 1200))
    frames.insert(200, frame(2, 30, 1200))  # arrives after later ones: out of order
    frames.insert(150, frame(3, 5, 950))  # a repeat of a warm-up message: not counted
    frames.insert(230, frame(0, 40, 1300))  # a repeat in the window (after the original): duplicate
    frames.insert(10, b'{"type":"presence","room":"r","event":"join","name":"x","count":4}')
    return frames
