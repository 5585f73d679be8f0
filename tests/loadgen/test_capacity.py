"""The capacity search: one dimension grown step by step, stopped by the first SLO miss."""

from __future__ import annotations

from scalechat.loadgen.capacity import CapacitySearch
from scalechat.loadtest.slo import Slo
from scalechat.loadtest.spec import RoomDistribution, SizeSpec, StageSpec
from scalechat.results import StageResult


def stage(clients=10, rate=2.0) -> StageSpec:
    return StageSpec(name="s", rooms=10, clients_per_room=clients, rate=rate, size=SizeSpec(), duration_seconds=3.0,
                 warmup_seconds=1.0, room_distribution=RoomDistribution(), arrival="constant")


def result(p99: float, received: int, expected: int, connect_errors: int = 0) -> StageResult:
    r = StageResult(0, "x", expected=expected, received=received, connect_errors=connect_errors)
    r.delivery.record_many([0.001] * 95 + [p99] * 5)  # p99 is the slow tail
    return r


def test_capacity_search_stops_at_the_first_failure_and_reports_the_last_hold():
    search = CapacitySearch(stage(clients=10), "clients", 10, 5, Slo(0.5, 0.999))
    first = search.next_stage(None)
    assert (first.name, first.clients_per_room) == ("clients-10", 10)
    second = search.next_stage(result(0.01, 100, 100))
    assert second.clients_per_room == 20
    assert search.next_stage(result(0.01, 50, 100)) is None
    report = search.report()
    assert (report["value"], report["stage"], report["bounded"]) == (10, "clients-10", True)


def test_capacity_search_without_failure_is_a_lower_bound():
    search = CapacitySearch(stage(rate=1.0), "rate", 0.5, 2, Slo(0.5, 0.999))
    assert search.next_stage(None).rate == 1.0
    assert search.next_stage(result(0.01, 1, 1)).rate == 1.5
    assert search.next_stage(result(0.01, 1, 1)) is None
    assert search.report()["value"] == 1.5 and search.report()["bounded"] is False
