"""SLO thresholds: the command-line expression, the verdict per stage and its wording."""

from __future__ import annotations

import re

import pytest

from scalechat.results import StageResult
from scalechat.loadtest.slo import Slo, check_slo, describe, judge, parse_expression, thresholds


def stage(latencies: list[float], received: int = 100, expected: int = 100, connect_errors: int = 0) -> StageResult:
    result = StageResult(0, "s", received=received, expected=expected, connect_errors=connect_errors)
    result.delivery.record_many(latencies)
    return result


@pytest.mark.parametrize("text, spec", [
    ("p99<=50ms,delivery>=99.9%", {"p99Seconds": 0.05, "deliveryRatio": 0.999}),
    (" p50 < 500us , p99.9<=2s, max<=3 ", {"p50Seconds": 0.0005, "p999Seconds": 2.0, "maxSeconds": 3.0}),
    ("p90<=0.25,delivery>=0.99", {"p90Seconds": 0.25, "deliveryRatio": 0.99}),
])
def test_expressions_become_spec_keys(text, spec):
    assert parse_expression(text) == pytest.approx(spec)


@pytest.mark.parametrize("text, problem", [
    ("", "is empty"),
    ("p98<=1s", "cannot read 'p98<=1s'"),
    ("p99>=1s", "p99 takes <= and a duration"),
    ("delivery<=1", "delivery takes >="),
    ("delivery>=101%", "between 0 and 1"),
    ("p99<=0ms", "must be > 0"),
    ("p99<=1s,p99<=2s", "p99 is given twice"),
])
def test_bad_expressions_say_what_is_wrong(text, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        parse_expression(text)


def test_every_threshold_is_checked_and_failures_are_worded_like_the_limit():
    slo = {"p50Seconds": 0.002, "p99Seconds": 0.05, "maxSeconds": 1.0, "deliveryRatio": 0.999}
    verdict = judge(stage([0.001] * 98 + [0.2, 0.3], received=990, expected=1000), slo)
    assert [c.passed for c in verdict.checks] == [True, False, True, False]
    assert not verdict.passed
    assert verdict.failures() == ["p99 200ms > 50ms", "delivery 99% < 99.9%"]
    assert describe(slo) == "p50 <= 2ms, p99 <= 50ms, max <= 1s, delivery >= 99.9%"


def test_a_stage_without_samples_or_with_connection_errors_fails():
    slo = {"p99Seconds": 1.0, "deliveryRatio": 0.5}
    assert judge(stage([0.001] * 10), slo).passed
    assert judge(stage([]), slo).failures() == ["no deliveries measured", "p99: not measured"]
    assert judge(stage([0.001] * 10, connect_errors=2), slo).failures() == ["2 connection error(s)"]


def test_generator_lag_beyond_100ms_is_flagged_not_judged():
    verdict = judge(stage([0.001] * 10), {"p99Seconds": 1.0}, send_lag_max=0.25)
    assert verdict.passed and verdict.generator_behind
    assert not judge(stage([0.001] * 10), {"p99Seconds": 1.0}, send_lag_max=0.05).generator_behind


def test_thresholds_refuse_unknown_keys():
    with pytest.raises(ValueError, match="unknown SLO key 'p95Seconds'"):
        thresholds({"p95Seconds": 1})


def result(p99: float, received: int, expected: int, connect_errors: int = 0) -> StageResult:
    r = StageResult(0, "x", expected=expected, received=received, connect_errors=connect_errors)
    r.delivery.record_many([0.001] * 95 + [p99] * 5)  # p99 is the slow tail
    return r


def test_check_slo_gives_one_verdict_and_one_line_of_reason():
    slo = Slo(p99_seconds=0.5, delivery_ratio=0.999)
    assert check_slo(result(0.01, 1000, 1000), slo)[0]
    assert check_slo(result(0.9, 1000, 1000), slo)[0] is False
    assert check_slo(result(0.01, 990, 1000), slo) == (False, "delivery ratio 0.9900 < 0.999")
    assert check_slo(result(0.01, 1000, 1000), Slo(0.5, 0.999, max_seconds=0.001)) == (False, "max 10ms > 1ms")
    assert not check_slo(result(0.01, 1000, 1000, connect_errors=1), slo)[0]
    assert not check_slo(StageResult(0, "x"), slo)[0]
