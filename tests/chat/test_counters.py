"""The per-message counters: each observation in the bucket Prometheus expects."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from scalechat.chat.counters import PROCESSING_BUCKETS, HotCounters


@given(st.lists(st.floats(0.0, 20.0) | st.sampled_from(PROCESSING_BUCKETS), max_size=50))
def test_an_observation_lands_in_the_first_bucket_whose_bound_holds_it(seconds):
    counters = HotCounters()
    counters.observe_processing([100.0 - s for s in seconds], 100.0)
    expected = [0] * (len(PROCESSING_BUCKETS) + 1)  # the last: above the top bound (+Inf)
    for s in seconds:
        expected[bisect_left(PROCESSING_BUCKETS, 100.0 - (100.0 - s))] += 1
    assert counters.buckets == expected
    assert abs(counters.processing_sum - sum(100.0 - (100.0 - s) for s in seconds)) < 1e-6


def test_the_counts_start_at_zero():
    counters = HotCounters()
    assert (counters.received, counters.delivered, counters.broker_received) == (0, 0, 0)
    assert counters.buckets == [0] * (len(PROCESSING_BUCKETS) + 1) and counters.processing_sum == 0.0
