"""Fixtures for analysis tests: results directories with known latencies, written
as the load generator writes them, and ``analyze`` run in-process."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from scalechat.analysis import analyze_cli
from scalechat.histogram import LogHistogram
from scalechat.hostinfo import host_facts
from scalechat.results import StageResult, Timeline, write_json_atomic, write_shard

T0 = 1_732_700_000.0
STAGE_SECONDS = 20.0


@dataclass(frozen=True)
class KnownStage:
    name: str
    delivery: np.ndarray  # seconds: every value the shards recorded
    echo: np.ndarray
    sent: int
    expected: int
    received: int
    errors: dict[str, int]
    members: int = 4
    lag: float = 0.0  # seconds the generator fell behind


def known_stages(seed: int = 1, scale: float = 1.0) -> list[KnownStage]:
    """Three stages, from comfortable to overloaded (latencies past the seed's 2 s line, 20% lost)."""
    rng = np.random.default_rng(seed)
    stages = []
    for i, (median, members, loss) in enumerate([(0.004, 4, 0.0), (0.05, 8, 0.001), (1.5, 16, 0.2)]):
        sent = 500 * (i + 1)
        expected = sent * members
        received = int(expected * (1 - loss))
        delivery = rng.lognormal(np.log(median * scale), 0.8, received)
        stages.append(KnownStage(f"clients={members * 10}", delivery, delivery[:sent], sent, expected,
                                 received, {"rate_limited": 3 * i, "close_1013": i // 2} if i else {},
                                 members=members, lag=0.3 if i == 2 else 0.0))
    return stages


def write_results_dir(path: Path, stages: list[KnownStage], *, shards: int = 2, name: str = "fixture",
                      interrupted: bool = False, t0: float = T0,
                      stage_seconds: float = STAGE_SECONDS) -> Path:
    """Every count and value split across ``shards`` shard files, as parallel workers would."""
    path.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        results = []
        for index, stage in enumerate(stages):
            def part(n: int, shard: int = shard) -> int:
                return n // shards + (1 if shard < n % shards else 0)
            delivery, echo = LogHistogram(), LogHistogram()
            delivery.record_many(stage.delivery[shard::shards])
            echo.record_many(stage.echo[shard::shards])
            start = t0 + index * stage_seconds
            timeline = Timeline(1.0)
            bins = np.array_split(stage.delivery[shard::shards], int(stage_seconds))
            for k, values in enumerate(bins):
                counts = LogHistogram()
                counts.record_many(values)
                timeline.add(k, sent=part(stage.sent) // len(bins), lag=stage.lag if k == 1 else 0.0,
                             buckets=counts.counts)
            results.append(StageResult(
                index=index, name=stage.name, started_at=start + 0.01 * shard,
                ended_at=start + stage_seconds - 0.01 * shard, sent=part(stage.sent),
                expected=part(stage.expected), received=part(stage.received), duplicates=1,
                connections=part(40), errors=Counter({k: part(v) for k, v in stage.errors.items()}),
                delivery=delivery, echo=echo, send_lag_max=stage.lag, timeline=timeline))
        write_shard(path, shard, shards, results)
    write_json_atomic(path / "run.json", {
        "format": 1, "spec": {"target": "ws://127.0.0.1:8080", "rooms": 10,
                              "stages": [{"name": s.name, "seconds": stage_seconds} for s in stages],
                              "slo": {"p99Seconds": 1.0, "deliveryRatio": 0.999}},
        "metadata": {"name": name},
        "stages": [{"name": s.name, "rooms": 1, "clientsPerRoom": s.members, "rate": 1.0} for s in stages],
        "generator": host_facts(), "server": {"node": "replica-0", "host": {"cpu_model": "Test CPU 9000"}},
        "shards": shards, "workers": 1, "started_at": t0,
        "finished_at": t0 + len(stages) * stage_seconds, "interrupted": interrupted})
    return path


@pytest.fixture
def results_dir(tmp_path):
    """Factory: ``results_dir("name", stages, shards=3)`` -> a results directory."""
    def make(name: str, stages: list[KnownStage], **kwargs) -> Path:
        return write_results_dir(tmp_path / name, stages, name=name, **kwargs)
    return make


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def analyze(capsys):
    """``analyze(*argv)`` runs ``scalechat analyze`` in this process -> Outcome."""
    def run(*argv: str | Path) -> Outcome:
        code = analyze_cli.main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)
    return run


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def csv_rows():
    return read_csv


@pytest.fixture(scope="session")
def make_stages():
    """``make_stages(seed, scale)`` -> three KnownStage (see known_stages)."""
    return known_stages


@pytest.fixture(scope="session")
def write_results():
    """``write_results(path, stages, shards=..., name=..., interrupted=...)`` (see write_results_dir)."""
    return write_results_dir
