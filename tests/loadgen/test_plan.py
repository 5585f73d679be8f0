"""The plan is pure: Zipf allocation, room partitioning and timetables, without sockets."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, strategies as st

from scalechat.loadgen.plan import (Timetable, apportion, assign_workers, client_counts, plan_stage,
                                    size_sampler, zipf_weights)
from scalechat.loadtest.spec import RoomDistribution, SizeSpec, StageSpec


def stage(rooms=10, clients=10, dist="uniform", exponent=1.0, rate=2.0, **kw) -> StageSpec:
    return StageSpec(name="s", rooms=rooms, clients_per_room=clients, rate=rate, size=SizeSpec(),
                 duration_seconds=kw.get("duration", 3.0), warmup_seconds=1.0,
                 room_distribution=RoomDistribution(dist, exponent), arrival=kw.get("arrival", "constant"))


def test_zipf_counts_follow_the_weights():
    counts = client_counts(stage(rooms=20, clients=50, dist="zipf", exponent=1.0))
    weights = zipf_weights(20, 1.0)
    assert sum(counts) == 1000
    assert counts == sorted(counts, reverse=True)
    for count, weight in zip(counts, weights):
        assert abs(count - 1000 * weight) < 1  # largest remainder: within one of the ideal share
    assert counts[0] / counts[9] == pytest.approx(10, rel=0.05)  # k^-1: room 1 is 10x room 10


def test_zipf_skew_grows_with_the_exponent():
    mild = client_counts(stage(rooms=10, clients=100, dist="zipf", exponent=0.5))
    steep = client_counts(stage(rooms=10, clients=100, dist="zipf", exponent=2.0))
    assert steep[0] > mild[0] and steep[-1] < mild[-1]


@given(total_extra=st.integers(0, 500), rooms=st.integers(1, 60), exponent=st.floats(0.1, 3.0))
def test_apportion_is_exact_and_gives_every_room_a_client(total_extra, rooms, exponent):
    counts = apportion(rooms + total_extra, zipf_weights(rooms, exponent))
    assert sum(counts) == rooms + total_extra and min(counts) >= 1 and len(counts) == rooms


def test_uniform_rooms_are_equal():
    assert client_counts(stage(rooms=4, clients=7)) == [7, 7, 7, 7]


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_shards_partition_the_rooms_and_balance_clients(shards):
    s = stage(rooms=30, clients=20, dist="zipf", exponent=1.2)
    plan = plan_stage("run1", 0, s, shards)
    assert plan == plan_stage("run1", 0, s, shards)  # deterministic: every shard computes the same plan
    owned = [plan.for_shard(i) for i in range(shards)]
    assert sorted(r.index for rooms in owned for r in rooms) == list(range(30))
    loads = [sum(r.clients for r in rooms) for rooms in owned]
    assert sum(loads) == 600
    assert max(loads) - min(loads) <= max(r.clients for r in plan.rooms)  # LPT bound


def test_rooms_are_named_per_run_and_stage():
    plan = plan_stage("abc", 3, stage(rooms=2), 1)
    assert [r.name for r in plan.rooms] == ["lt-abc-s3-r0", "lt-abc-s3-r1"]
    assert plan_stage("abd", 3, stage(rooms=2), 1).rooms[0].seed != plan.rooms[0].seed


def test_workers_never_split_a_room():
    rooms = plan_stage("r", 0, stage(rooms=9, clients=5, dist="zipf"), 1).for_shard(0)
    per_worker = assign_workers(rooms, 4)
    assert Counter(r.index for w in per_worker for r in w) == Counter(range(9))


@pytest.mark.parametrize("rate, duration", [(5.0, 2.0), (0.5, 4.0), (20.0, 3.0)])
def test_constant_timetable_puts_exactly_rate_times_duration_in_any_window(rate, duration):
    rng = random.Random(1)
    for _ in range(20):
        table = Timetable(rate, "constant", rng)
        start = rng.uniform(0, 5)
        times = [table.t]
        while times[-1] < start + duration + 1:
            times.append(table.advance())
        assert sum(start <= t < start + duration for t in times) == rate * duration


def test_poisson_timetable_has_the_rate_on_average():
    table = Timetable(100.0, "poisson", random.Random(7))
    times = [table.advance() for _ in range(20000)]
    assert times[-1] == pytest.approx(200, rel=0.03)


def test_size_samplers_stay_in_bounds():
    rng = random.Random(3)
    uniform = size_sampler(SizeSpec("uniform", lo=10, hi=20), rng)
    lognormal = size_sampler(SizeSpec("lognormal", lo=5, hi=500, median=100, sigma=1.0), rng)
    u = [uniform() for _ in range(2000)]
    ln = sorted(lognormal() for _ in range(2000))
    assert min(u) == 10 and max(u) == 20
    assert 5 <= ln[0] and ln[-1] <= 500 and 80 <= ln[1000] <= 125
