"""bench/fanout.py's tail decomposition: the server's histogram read as a quantile bound."""

from __future__ import annotations

import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # a script, and its sibling scripts
import fanout  # noqa: E402
import procs  # noqa: E402

INF = math.inf


def test_the_quantile_is_the_first_bound_holding_that_share_of_the_window():
    before = {0.0001: 10, 0.001: 10, 0.01: 10, INF: 10}  # cumulative, as Prometheus exports
    after = {0.0001: 110, 0.001: 208, 0.01: 210, INF: 210}  # the window: 100, 198, 200 of 200
    assert fanout.bucket_quantile(before, after, 0.5) == 0.0001
    assert fanout.bucket_quantile(before, after, 0.99) == 0.001
    assert fanout.bucket_quantile(before, after, 1.0) == 0.01


def test_only_the_top_bucket_or_nothing_at_all():
    assert fanout.bucket_quantile({}, {0.001: 0, INF: 5}, 0.99) == INF
    assert math.isnan(fanout.bucket_quantile({0.001: 3, INF: 3}, {0.001: 3, INF: 3}, 0.99))


def test_the_machines_ticks_count_up_and_steal_is_one_of_them():
    stolen0, all0 = procs.machine_ticks()
    sum(range(200_000))
    stolen1, all1 = procs.machine_ticks()
    assert 0 <= stolen0 <= stolen1 <= all1 and all0 <= all1
