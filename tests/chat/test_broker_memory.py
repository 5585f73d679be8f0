"""The memory broker's history, resume rules and bounds."""

import tracemalloc

import orjson
import pytest

from scalechat.chat.broker import Draft
from scalechat.chat.broker_memory import MemoryBroker
from scalechat.chat.budget import MemoryBudget
from scalechat.chat.settings import Settings


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def delivered():
    """(room, seq, message) as the broker delivered them; seq None for events."""
    return []


@pytest.fixture
async def broker(clock, delivered):
    b = MemoryBroker(Settings(history_size=5, history_on_join=3, room_idle_seconds=60, max_rooms=3),
                     clock=clock)
    await b.start(lambda room, seq, payload, t: delivered.append((room, seq, orjson.loads(payload))),
                  lambda room, payload: delivered.append((room, None, orjson.loads(payload))))
    yield b
    await b.close()


async def publish(b, room, text):
    return (await b.publish(Draft(room, "alice", text, None, 0.0))).seq


def seqs(history):
    return [orjson.loads(p)["seq"] for p in history.messages]


async def test_seq_starts_at_one_without_gaps_and_only_subscribed_rooms_deliver(broker, delivered):
    await broker.subscribe("a")
    assert [await publish(broker, "a", str(i)) for i in range(3)] == [1, 2, 3]
    assert await publish(broker, "b", "x") == 1
    assert [(r, s) for r, s, _ in delivered] == [("a", 1), ("a", 2), ("a", 3)]


async def test_history_memory_is_what_its_messages_hold():
    """A kept message costs about its size, not orjson's 4 KiB working buffer."""
    b = MemoryBroker(Settings(history_size=2000))
    text = "x" * 100
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            await publish(b, "a", text)
        per_message = (tracemalloc.get_traced_memory()[0] - before) / 2000
    finally:
        tracemalloc.stop()
    size = len((await b.history("a", None, None, 1)).messages[0])
    assert size < per_message < size + 250, (size, per_message)


async def test_history_is_bounded_and_since_resumes_exactly(broker):
    await broker.subscribe("a")
    for i in range(8):
        await publish(broker, "a", str(i))
    latest = await broker.history("a", None, None, 3)
    assert seqs(latest) == [6, 7, 8] and not latest.continuity_lost and latest.last_seq == 8
    resumed = await broker.history("a", 5, latest.epoch, 3)
    assert seqs(resumed) == [6, 7, 8] and not resumed.continuity_lost  # all after since, not limit
    assert seqs(await broker.history("a", 3, latest.epoch, 3)) == [4, 5, 6, 7, 8]
    assert seqs(await broker.history("a", 8, latest.epoch, 3)) == []


async def test_since_beyond_retained_history_or_other_epoch_loses_continuity(broker):
    await broker.subscribe("a")
    for i in range(8):
        await publish(broker, "a", str(i))
    epoch = (await broker.history("a", None, None, 3)).epoch
    too_old = await broker.history("a", 1, epoch, 3)  # seq 2 and 3 were dropped
    assert too_old.continuity_lost and seqs(too_old) == [6, 7, 8]
    other = await broker.history("a", 4, "stale-epoch", 3)
    assert other.continuity_lost and seqs(other) == [6, 7, 8]
    future = await broker.history("a", 99, epoch, 3)
    assert future.continuity_lost


async def test_idle_rooms_are_forgotten_and_get_a_new_epoch(broker, clock):
    await broker.subscribe("a")
    await publish(broker, "a", "x")
    epoch = (await broker.history("a", None, None, 3)).epoch
    await broker.unsubscribe("a")
    clock.now = 30
    assert broker.sweep() == 0
    clock.now = 61
    assert broker.sweep() == 1 and broker.room_count == 0
    fresh = await broker.history("a", 1, epoch, 3)
    assert fresh.epoch != epoch and fresh.continuity_lost and fresh.last_seq == 0


async def test_idle_room_count_is_capped(broker):
    for room in "abcdef":
        await broker.subscribe(room)
        await publish(broker, room, "x")
        await broker.unsubscribe(room)
    assert broker.room_count == 3  # max_rooms idle rooms, least recently active forgotten


async def test_rooms_with_members_are_never_forgotten(broker, clock):
    await broker.subscribe("a")
    clock.now = 10_000
    for room in "bcdef":
        await broker.subscribe(room)
        await broker.unsubscribe(room)
    broker.sweep()
    assert (await broker.history("a", None, None, 1)).epoch
    assert await publish(broker, "a", "still here") == 1


async def test_a_resent_cid_is_acknowledged_with_the_original_within_the_window(broker):
    await broker.subscribe("idem")
    first = await broker.publish(Draft("idem", "alice", "hi", "c1", 0.0))
    again = await broker.publish(Draft("idem", "alice", "hi", "c1", 0.0))
    other = await broker.publish(Draft("idem", "bob", "hi", "c1", 0.0))
    assert (first.seq, first.duplicate, again.seq, again.duplicate) == (1, False, 1, True)
    assert again.original == (await broker.history("idem", 0, None, 10)).messages[0]
    assert (other.seq, other.duplicate) == (2, False)  # a cid is the sender's own
    history_size = 5  # the fixture's
    for i in range(history_size):
        await publish(broker, "idem", str(i))
    late = await broker.publish(Draft("idem", "alice", "hi", "c1", 0.0))
    assert (late.seq, late.duplicate) == (history_size + 3, False)  # out of the window


async def test_history_is_capped_in_bytes_per_room_and_across_rooms_by_the_budget():
    budget = MemoryBudget(limit=7_000)  # less than the three rooms' caps together
    b = MemoryBroker(Settings(history_size=100, history_on_join=10, history_room_bytes=4_000),
                     budget=budget)
    await b.start(lambda *a: None, lambda *a: None)
    try:
        for room in ("old", "mid", "new"):
            for _ in range(30):
                await publish(b, room, "x" * 200)  # ~330 stored bytes each
        assert budget.history <= 7_000 and budget.history_dropped > 0
        kept = {room: (await b.history(room, 0, None, 100)) for room in ("old", "mid", "new")}
        assert sum(len(m) for m in kept["new"].messages) <= 4_000  # the room cap
        assert kept["old"].messages == [] and kept["old"].continuity_lost  # shed first
        assert kept["mid"].messages and kept["mid"].continuity_lost  # then the next one
        seqs = [orjson.loads(m)["seq"] for m in kept["new"].messages]
        assert seqs == list(range(seqs[0], 31))  # the newest, with no gap
    finally:
        await b.close()
