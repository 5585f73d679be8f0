"""results_store: shard results and progress in the real Redis at 127.0.0.1:6379.

Each test uses its own key (uuid) and deletes it afterwards.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import redis

from scalechat import results_store
from scalechat.results import StageResult, merge_stage_results

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def key():
    name = f"test:results-store:{uuid.uuid4().hex}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


def shard_stages(seed: int, stages: int = 2) -> list[StageResult]:
    """Stages with known counts and delivery latencies (lognormal around 20 ms)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(stages):
        stage = StageResult(index=i, name=f"s{i}", started_at=100.0 + seed + i, ended_at=110.0 + seed + i,
                            sent=100 + seed, expected=1000 + seed, received=990 + seed, connections=10)
        stage.delivery.record_many(rng.lognormal(np.log(0.02), 0.5, 2_000 + 100 * seed))
        stage.echo.record_many(rng.lognormal(np.log(0.01), 0.5, 500))
        stage.errors["rate_limited"] = seed
        out.append(stage)
    return out


def test_merged_is_none_until_every_shard_is_stored_then_exact(key):
    shards = [shard_stages(seed) for seed in range(3)]
    assert results_store.merged(REDIS_URL, key) is None  # nothing stored yet
    for i in (2, 0):
        results_store.store_shard(REDIS_URL, key, i, 3, shards[i])
        assert results_store.merged(REDIS_URL, key) is None
    results_store.store_shard(REDIS_URL, key, 1, 3, shards[1])

    merged = results_store.merged(REDIS_URL, key)
    expected = merge_stage_results(shards)
    assert [m.to_dict() for m in merged] == [e.to_dict() for e in expected]
    assert merged[0].sent == sum(s[0].sent for s in shards)
    assert merged[1].delivery.percentile(99) == expected[1].delivery.percentile(99)
    assert merged[0].errors["rate_limited"] == 0 + 1 + 2


def test_load_shards_returns_expected_count_and_each_shards_stages(key):
    assert results_store.load_shards(REDIS_URL, key) == (0, {})
    stages = shard_stages(5)
    results_store.store_shard(REDIS_URL, key, 1, 2, stages)
    shards, results = results_store.load_shards(REDIS_URL, key)
    assert shards == 2
    assert list(results) == [1]
    assert [s.to_dict() for s in results[1]] == [s.to_dict() for s in stages]


def test_a_shard_stored_twice_is_replaced_not_added(key):
    results_store.store_shard(REDIS_URL, key, 0, 1, shard_stages(1))
    again = shard_stages(2)
    results_store.store_shard(REDIS_URL, key, 0, 1, again)
    assert [s.to_dict() for s in results_store.merged(REDIS_URL, key)] == [s.to_dict() for s in again]


def test_the_hash_holds_shard_file_json_and_expires(key):
    results_store.store_shard(REDIS_URL, key, 0, 2, shard_stages(0), ttl=120)
    client = redis.Redis.from_url(REDIS_URL)
    data = json.loads(client.hget(key, "shard-0-of-2"))
    assert (data["format"], data["shard"], data["shards"], len(data["stages"])) == (1, 0, 2, 2)
    assert 0 < client.ttl(key) <= 120


def test_progress_reports_each_shards_current_stage(key):
    assert results_store.load_progress(REDIS_URL, key) == {}
    results_store.set_progress(REDIS_URL, key, 0, 0, "warm")
    results_store.set_progress(REDIS_URL, key, 1, 0, "warm")
    results_store.set_progress(REDIS_URL, key, 0, 1, "peak")
    progress = results_store.load_progress(REDIS_URL, key)
    assert {i: (p.stage_index, p.stage_name) for i, p in progress.items()} == {0: (1, "peak"), 1: (0, "warm")}
    # progress fields are not results
    snap = results_store.snapshot(REDIS_URL, key)
    assert (snap.shards, snap.results, snap.complete, snap.merged()) == (0, {}, False, None)


def test_results_of_two_shard_counts_under_one_key_are_an_error_naming_the_key(key):
    results_store.store_shard(REDIS_URL, key, 0, 2, shard_stages(0))
    results_store.store_shard(REDIS_URL, key, 0, 3, shard_stages(0))
    with pytest.raises(ValueError, match=f"{key}: shard results of different shard counts \\[2, 3\\]"):
        results_store.merged(REDIS_URL, key)


def test_a_corrupt_field_is_an_error_naming_key_and_field(key):
    redis.Redis.from_url(REDIS_URL).hset(key, "shard-0-of-1", "{not json")
    with pytest.raises(ValueError, match=f"{key} field shard-0-of-1: not a readable shard record"):
        results_store.load_shards(REDIS_URL, key)


def test_bad_arguments_are_refused_before_writing(key):
    with pytest.raises(ValueError, match="shard must be in 0..1, got 2"):
        results_store.store_shard(REDIS_URL, key, 2, 2, [])
    with pytest.raises(ValueError, match="ttl must be > 0"):
        results_store.set_progress(REDIS_URL, key, 0, 0, "s", ttl=0)
    assert not redis.Redis.from_url(REDIS_URL).exists(key)


def test_delete_forgets_the_run(key):
    results_store.store_shard(REDIS_URL, key, 0, 1, shard_stages(0))
    results_store.delete(REDIS_URL, key)
    assert results_store.load_shards(REDIS_URL, key) == (0, {})


def test_an_unreachable_redis_raises_redis_errors():
    with pytest.raises(redis.ConnectionError):
        results_store.merged("redis://127.0.0.1:1/0", "nothing")
