"""Micro-benchmark: nanoseconds per recorded value for LogHistogram.

Baseline, measured in the same run: appending floats to a Python list, the floor
for any per-value Python call. Each case is timed ``--repeat`` times, interleaved
with the others so background load hits them alike; the table shows the best.
Times include the final flush, so binning is paid for in every row.

    python bench/histogram.py [--values N] [--repeat R]
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

import numpy as np

from scalechat.histogram import LogHistogram


def list_append(values: list[float], _: np.ndarray) -> None:
    buffer: list[float] = []
    append = buffer.append
    for value in values:
        append(value)


def record_loop(values: list[float], _: np.ndarray) -> None:
    histogram = LogHistogram()
    record = histogram.record
    for value in values:
        record(value)
    histogram.flush()


def record_loop_attribute(values: list[float], _: np.ndarray) -> None:
    histogram = LogHistogram()
    for value in values:
        histogram.record(value)
    histogram.flush()


def list_then_record_many(values: list[float], _: np.ndarray) -> None:
    # The caller batches: appends to its own list, hands it over every 10_000.
    histogram = LogHistogram()
    buffer: list[float] = []
    append = buffer.append
    for value in values:
        append(value)
        if len(buffer) >= 10_000:
            histogram.record_many(buffer)
            buffer.clear()
    histogram.record_many(buffer)
    histogram.flush()


def record_many_in(chunk: int) -> Callable[[list[float], np.ndarray], None]:
    def run(_: list[float], array: np.ndarray) -> None:
        histogram = LogHistogram()
        for start in range(0, array.size, chunk):
            histogram.record_many(array[start : start + chunk])
        histogram.flush()

    return run


def timed_ns(case: Callable[[list[float], np.ndarray], None], values: list[float], array: np.ndarray) -> int:
    gc.disable()
    try:
        start = time.perf_counter_ns()
        case(values, array)
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=200_000, help="values per timed run")
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per case; the best counts")
    args = parser.parse_args()

    # Latencies around 5 ms with a long tail, like a loaded chat server.
    array = np.random.default_rng(0).lognormal(mean=np.log(0.005), sigma=1.0, size=args.values)
    values = array.tolist()
    cases = {
        "list.append (baseline)": list_append,
        "record(v), bound method": record_loop,
        "hist.record(v)": record_loop_attribute,
        "list.append + record_many": list_then_record_many,
        "record_many, 100 per call": record_many_in(100),
        "record_many, 10_000 per call": record_many_in(10_000),
        "record_many, whole array": record_many_in(args.values),
    }
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.repeat):
        for name, case in cases.items():
            best[name] = min(best[name], timed_ns(case, values, array))

    baseline = best["list.append (baseline)"]
    print(f"{args.values:,} values, best of {args.repeat}")
    print(f"{'case':<30} {'ns/value':>9} {'vs list.append':>15}")
    for name, ns in best.items():
        print(f"{name:<30} {ns / args.values:>9.1f} {ns / baseline:>14.2f}x")


if __name__ == "__main__":
    main()
