"""LogHistogram: error bound, exact merge, exact serialization, edge values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalechat.histogram import HistogramConfig, LogHistogram

CONFIG = HistogramConfig()
R = CONFIG.relative_error

in_range = st.one_of(
    st.floats(CONFIG.min_value, CONFIG.max_value),
    st.floats(math.log(CONFIG.min_value), math.log(CONFIG.max_value)).map(
        lambda x: min(max(math.exp(x), CONFIG.min_value), CONFIG.max_value)
    ),
)
any_value = st.one_of(
    in_range,
    st.just(0.0),
    st.floats(-10.0, 10.0),  # negatives: clock skew
    st.floats(1e-12, CONFIG.min_value),  # underflow
    st.floats(CONFIG.max_value, 1e9),  # beyond the top bucket
)
fast = settings(deadline=None, max_examples=50)


def recorded(values, *, one_by_one: bool = False, buffer_size: int = 65_536) -> LogHistogram:
    histogram = LogHistogram(CONFIG, buffer_size=buffer_size)
    if one_by_one:
        for value in values:
            histogram.record(float(value))
    else:
        histogram.record_many(np.asarray(values, dtype=np.float64))
    return histogram


def exact_fields(histogram: LogHistogram) -> dict:
    data = histogram.to_dict()
    return {key: data[key] for key in ("count", "negative", "min", "max", "bucket_index", "bucket_count")}


def assert_close_stats(a: LogHistogram, b: LogHistogram, scale: float) -> None:
    if a.count == 0:
        assert math.isnan(a.mean) and math.isnan(b.mean)
        return
    assert math.isclose(a.mean, b.mean, rel_tol=1e-9, abs_tol=1e-9 * scale)
    assert math.isclose(a.std, b.std, rel_tol=1e-9, abs_tol=1e-9 * scale)


# -- error bound -------------------------------------------------------------


@fast
@given(st.lists(in_range, min_size=1, max_size=50))
def test_every_in_range_value_is_reported_within_relative_error(values):
    v = np.array(values)
    reported = CONFIG.bucket_value(CONFIG.bucket_index(v))
    assert np.all(np.abs(reported - v) <= R * v)


def test_bucket_edges_are_reported_within_relative_error():
    edges = CONFIG.min_value * CONFIG.gamma ** np.arange(CONFIG.n_buckets - 1)
    for v in (edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf)):
        v = v[(v >= CONFIG.min_value) & (v <= CONFIG.max_value)]
        reported = CONFIG.bucket_value(CONFIG.bucket_index(v))
        assert np.all(np.abs(reported - v) <= R * v)


@fast
@given(
    st.lists(in_range, min_size=1, max_size=300),
    st.lists(st.floats(0, 100), min_size=1, max_size=10),
)
def test_percentiles_are_within_relative_error_of_nearest_rank(values, qs):
    want = np.percentile(values, qs, method="inverted_cdf")
    got = recorded(values).percentiles(qs)
    assert np.all(np.abs(got - want) <= R * want)


def test_percentiles_of_a_large_lognormal_sample_are_within_relative_error():
    values = np.random.default_rng(7).lognormal(mean=-5, sigma=2, size=200_000)
    values = np.clip(values, CONFIG.min_value, CONFIG.max_value)
    qs = np.linspace(0, 100, 1001)
    want = np.percentile(values, qs, method="inverted_cdf")
    got = recorded(values).percentiles(qs)
    assert np.all(np.abs(got - want) <= R * want)


@fast
@given(st.lists(any_value, min_size=1, max_size=200))
def test_p0_is_min_and_p100_is_max_exactly(values):
    histogram = recorded(values)
    assert histogram.percentile(0) == histogram.min == min(values)
    assert histogram.percentile(100) == histogram.max == max(values)


@fast
@given(st.lists(any_value, min_size=1, max_size=200), st.lists(st.floats(0, 100), max_size=10))
def test_percentiles_match_percentile_one_at_a_time(values, qs):
    histogram = recorded(values)
    assert histogram.percentiles(qs).tolist() == [histogram.percentile(q) for q in qs]


@pytest.mark.parametrize("q", [-0.1, 100.1, math.nan])
def test_percentile_outside_0_to_100_raises(q):
    with pytest.raises(ValueError):
        recorded([1.0]).percentile(q)


# -- merge -------------------------------------------------------------------


@fast
@given(
    values=st.lists(any_value, max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=6),
    one_by_one=st.lists(st.booleans(), min_size=7, max_size=7),
    buffer_size=st.integers(1, 64),
)
def test_merged_shards_equal_one_histogram_of_all_values(values, cuts, one_by_one, buffer_size):
    whole = recorded(values)
    shards = np.split(np.array(values, dtype=np.float64), sorted(cuts))
    parts = [
        recorded(shard, one_by_one=flag, buffer_size=buffer_size)
        for shard, flag in zip(shards, one_by_one)
    ]
    merged = LogHistogram.merged(parts)
    assert np.array_equal(merged.counts, whole.counts)
    assert exact_fields(merged) == exact_fields(whole)
    assert merged.count == len(values)
    assert_close_stats(merged, whole, scale=max(map(abs, values), default=1.0))


@fast
@given(
    shards=st.lists(st.lists(any_value, max_size=40), min_size=1, max_size=5),
    data=st.data(),
)
def test_merge_is_order_independent_and_associative(shards, data):
    parts = [recorded(shard) for shard in shards]
    reordered = data.draw(st.permutations(parts))
    forward = LogHistogram.merged(parts)
    assert exact_fields(LogHistogram.merged(reordered)) == exact_fields(forward)

    right_first = LogHistogram.merged(parts[1:], config=CONFIG)
    nested = LogHistogram.merged([parts[0], right_first])
    assert exact_fields(nested) == exact_fields(forward)
    scale = max((abs(v) for shard in shards for v in shard), default=1.0)
    assert_close_stats(nested, forward, scale)


def test_record_and_record_many_bin_alike_across_batch_sizes():
    values = np.random.default_rng(3).lognormal(mean=-5, sigma=3, size=70_000)
    values[::1000] *= -1
    one_by_one = recorded(values, one_by_one=True)
    batches = LogHistogram(CONFIG)
    for chunk in np.split(values, [10, 100, 5_000, 60_000]):
        batches.record_many(chunk)
    assert exact_fields(batches) == exact_fields(one_by_one) == exact_fields(recorded(values))
    assert_close_stats(batches, one_by_one, scale=float(np.abs(values).max()))


def test_merge_leaves_other_unchanged_and_self_merge_doubles():
    a, b = recorded([0.001, 0.002]), recorded([0.5])
    before = b.to_dict()
    a.merge(b)
    assert b.to_dict() == before
    assert a.count == 3 and a.max == 0.5
    a.merge(a)
    assert a.count == 6 and a.counts.sum() == 6


def test_merge_with_a_different_config_raises():
    a = LogHistogram(HistogramConfig(relative_error=0.01))
    b = LogHistogram(HistogramConfig(relative_error=0.02))
    with pytest.raises(ValueError, match="different configs"):
        a.merge(b)
    with pytest.raises(ValueError, match="different configs"):
        LogHistogram.merged([a, b])


def test_merged_of_nothing_needs_a_config():
    with pytest.raises(ValueError):
        LogHistogram.merged([])
    assert LogHistogram.merged([], config=CONFIG).count == 0


# -- serialization -----------------------------------------------------------


@fast
@given(st.lists(any_value, max_size=300))
def test_json_round_trip_is_exact(values):
    histogram = recorded(values)
    data = histogram.to_dict()
    restored = LogHistogram.from_dict(json.loads(json.dumps(data)))
    assert restored.to_dict() == data
    assert np.array_equal(restored.counts, histogram.counts)
    qs = [0, 25, 50, 90, 99, 100]
    np.testing.assert_array_equal(restored.percentiles(qs), histogram.percentiles(qs))
    np.testing.assert_array_equal([restored.mean, restored.std], [histogram.mean, histogram.std])


def test_to_dict_stores_only_non_zero_buckets():
    data = recorded([0.001] * 1000 + [0.002, 1.0]).to_dict()
    assert data["bucket_count"] == [1000, 1, 1]
    assert len(data["bucket_index"]) == 3


def _set(key, value):
    def mutate(data):
        data[key] = value
    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        _set("version", 2),
        _set("config", {"min_value": 1e-6, "max_value": 3600.0}),
        _set("config", {"min_value": 1e-6, "max_value": 3600.0, "relative_error": 2.0}),
        _set("count", 99),
        _set("bucket_index", [5, 5, 9]),
        _set("bucket_index", [1, 2, CONFIG.n_buckets]),
        _set("bucket_count", [1, 0, 2]),
        _set("bucket_count", [1, 2]),
        _set("min", None),
        _set("sum", math.inf),
        _set("negative", 2),
    ],
)
def test_from_dict_rejects_inconsistent_data(mutate):
    data = recorded([-0.5, 0.001, 0.002]).to_dict()
    assert len(data["bucket_index"]) == 3
    mutate(data)
    with pytest.raises(ValueError):
        LogHistogram.from_dict(data)


# -- config ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_value": 0.0},
        {"min_value": -1.0},
        {"max_value": 1e-7},
        {"relative_error": 0.0},
        {"relative_error": 1.0},
        {"relative_error": math.nan},
        {"max_value": math.inf},
        {"relative_error": 1e-9},  # far too many buckets
        {"min_value": "1e-6"},
    ],
)
def test_invalid_config_raises(kwargs):
    with pytest.raises(ValueError, match="HistogramConfig"):
        HistogramConfig(**kwargs)


def test_config_equality_ignores_int_versus_float():
    assert HistogramConfig(max_value=3600) == HistogramConfig(max_value=3600.0)
    assert HistogramConfig(max_value=3600).to_dict()["max_value"] == 3600.0


# -- empty, negative and invalid values -------------------------------------


def test_empty_histogram_reports_nan_and_zero_counts():
    histogram = LogHistogram()
    assert histogram.count == 0 and histogram.negative == 0
    for value in (histogram.mean, histogram.std, histogram.min, histogram.max, histogram.percentile(50)):
        assert math.isnan(value)
    assert np.isnan(histogram.percentiles([0, 50, 100])).all()
    data = histogram.to_dict()
    assert data["min"] is None and data["bucket_index"] == []
    assert LogHistogram.from_dict(data).to_dict() == data


def test_negative_values_count_in_bucket_zero_and_in_negative():
    values = [-0.5, -1e-9, 0.0, 0.002]
    histogram = recorded(values)
    assert histogram.negative == 2
    assert histogram.counts[0] == 3  # the two negatives and the zero
    assert histogram.count == 4
    assert histogram.min == -0.5 == histogram.percentile(0)
    assert math.isclose(histogram.mean, np.mean(values), rel_tol=1e-12)
    assert math.isclose(histogram.std, np.std(values), rel_tol=1e-12)


def test_out_of_range_values_clamp_into_the_end_buckets():
    histogram = recorded([1e-9, 1e6])
    counts = histogram.counts
    assert counts[0] == 1 and counts[-1] == 1
    assert histogram.percentile(100) == 1e6


def test_record_many_with_a_non_finite_value_records_nothing():
    histogram = LogHistogram()
    with pytest.raises(ValueError, match="non-finite"):
        histogram.record_many([0.001, math.nan])
    assert histogram.count == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None, "fast"])
def test_invalid_record_is_dropped_at_flush_and_the_rest_kept(bad):
    histogram = LogHistogram()
    histogram.record(0.001)
    histogram.record(bad)
    histogram.record(0.002)
    with pytest.raises(ValueError, match="dropped 1"):
        histogram.flush()
    assert histogram.count == 2
    assert histogram.max == 0.002


def test_record_flushes_on_its_own_when_the_buffer_fills():
    histogram = LogHistogram(buffer_size=10)
    for i in range(25):
        histogram.record(0.001 * (i + 1))
    assert "waiting=5" in repr(histogram)
    assert histogram.count == 25
