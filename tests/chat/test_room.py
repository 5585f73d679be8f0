"""A room's flush policy and presence budget, sans I/O: no loop, no socket, the clock passed in."""

from __future__ import annotations

import pytest

from scalechat.chat.room import (PRESENCE_BURST, PRESENCE_DELIVERIES, PRESENCE_DELIVERY_BURST,
                                 PRESENCE_RATE, Room)

INTERVAL = 0.01


def room_of(members: int) -> Room:
    room = Room(INTERVAL, now=0.0)
    room.members.update(object() for _ in range(members))  # members are only counted here
    return room


def test_take_hands_over_the_queued_frames_and_starts_empty():
    room = room_of(2)
    room.queue(b"f1", 1)
    room.queue(b"f2", 2)
    room.queued = True
    assert room.take() == ([b"f1", b"f2"], [1, 2], [])
    assert room.take() == ([], [], []) and not room.queued


def test_a_room_batches_from_two_frames_per_interval_and_leaves_under_one():
    room, now = room_of(4), 0.0
    for _ in range(40):  # four frames per interval
        now += INTERVAL
        room.flushed(now, 4, INTERVAL)
    assert room.batching
    for _ in range(40):  # 1.5 per interval: between one and two, it stays
        now += 2 * INTERVAL
        room.flushed(now, 3, INTERVAL)
    assert room.batching
    for _ in range(40):  # one frame per two intervals
        now += 2 * INTERVAL
        room.flushed(now, 1, INTERVAL)
    assert not room.batching


def test_without_an_interval_every_room_stays_prompt():
    room = room_of(4)
    for i in range(1, 50):
        room.flushed(i * 0.001, 10, 0.0)
    assert not room.batching


def test_small_room_presence_goes_at_once_then_is_held_and_coalesced_per_name():
    room, now = room_of(3), 100.0
    assert all(room.offer_presence(now, f"n{i}", b"j%d" % i) is None for i in range(PRESENCE_BURST))
    assert room.offer_presence(now, "a", b"join-a") == pytest.approx(1 / PRESENCE_RATE)
    assert room.offer_presence(now, "b", b"join-b") == 0.0  # a release is already due
    assert room.offer_presence(now, "a", b"leave-a") == 0.0
    assert room.release_presence(now + 1 / PRESENCE_RATE) == [b"join-b", b"leave-a"]
    assert room.release_presence(now + 1) == []


def test_a_big_room_spends_its_delivery_budget_and_sends_the_newest_frame():
    members = 5_000
    room, now = room_of(members), 100.0
    burst = PRESENCE_DELIVERY_BURST // members
    assert all(room.offer_presence(now, f"n{i}", b"j%d" % i) is None for i in range(burst))
    delay = room.offer_presence(now, "late", b"join-late")
    assert delay == pytest.approx(members / PRESENCE_DELIVERIES)
    for i in range(500):  # a storm of distinct joins while held
        room.offer_presence(now, f"s{i}", b"join-s%d" % i)
    assert room.release_presence(now + delay) == [b"join-s499"]  # older ones superseded


def test_a_room_bigger_than_the_burst_still_gets_a_frame_now_and_then():
    room, now = room_of(100_000), 0.0
    assert room.presence_cost() == PRESENCE_DELIVERY_BURST
    assert room.offer_presence(now, "a", b"join-a") is None
    delay = room.offer_presence(now, "b", b"join-b")
    assert delay == pytest.approx(PRESENCE_DELIVERY_BURST / PRESENCE_DELIVERIES)
    assert room.release_presence(now + delay) == [b"join-b"]
