"""Log-bucketed latency histograms that merge exactly across processes and machines.

Guarantees, for histograms built with equal :class:`HistogramConfig`:

* A reported value (percentile, bucket value) has relative error <= ``relative_error``
  for recorded values in ``[min_value, max_value]``.
* Merge is exact and associative for ``counts``, ``count``, ``negative``, ``min`` and
  ``max``: merging shard histograms gives the same values as one histogram that
  recorded every value, in any merge order. ``sum`` and the spread behind ``std`` are
  float sums whose last bits depend on the order of addition, so ``mean`` and
  ``std`` agree to about 1e-9 relative, not bit for bit.
* ``to_dict`` / ``from_dict`` round-trip exactly, through JSON as well.

Bucket indices come from ``np.log``. Machines whose ``log`` differs by an ulp can
bin a value lying within ~1e-15 (relative) of a bucket edge into neighbouring
buckets; the error bound still holds and merged counts are still the exact sums
of the shard counts.

Recording is cheap because it does not bin one value at a time: ``record``
appends to a list and ``record_many`` keeps short arrays; they are binned in one
numpy pass when ``buffer_size`` values are waiting or when a reader needs the
counts, and long arrays are binned at once. Histograms are not thread-safe; use
one per thread or process and merge.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

FORMAT_VERSION = 1
DEFAULT_BUFFER_SIZE = 65_536
MAX_BUCKETS = 1_000_000
# record_many bins arrays this long at once: a numpy pass costs ~20 us however
# short the array. Binning goes in slices of _CHUNK values (128 KiB) so that
# numpy's temporaries stay in cache.
_BIN_AT_ONCE = 4_096
_CHUNK = 16_384


@dataclass(frozen=True)
class HistogramConfig:
    """Bucket layout; histograms merge only with histograms of an equal config.

    With ``g = 1 + 2 * relative_error``, bucket 0 holds every value below
    ``min_value`` (zero, negatives, underflow) and bucket ``k >= 1`` holds
    ``[min_value * g**(k-1), min_value * g**k)``; the last bucket also holds every
    value at or above ``max_value``. A bucket is reported as its geometric midpoint
    ``lower * sqrt(g)``, which is within ``sqrt(g) - 1 < relative_error`` of every
    value in the bucket. Bucket 0 is reported as ``min_value``.
    """

    min_value: float = 1e-6
    """Smallest value with the error guarantee (seconds: 1 microsecond)."""
    max_value: float = 3600.0
    """Largest value with the error guarantee (seconds: 1 hour)."""
    relative_error: float = 0.01
    """Bound on ``|reported - true| / true`` for values in range."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"HistogramConfig.{field.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"HistogramConfig.{field.name} must be finite, got {value!r}")
            object.__setattr__(self, field.name, float(value))
        if self.min_value <= 0:
            raise ValueError(f"HistogramConfig.min_value must be > 0, got {self.min_value!r}")
        if self.max_value <= self.min_value:
            raise ValueError(
                f"HistogramConfig.max_value must be > min_value ({self.min_value!r}), "
                f"got {self.max_value!r}"
            )
        if not 0 < self.relative_error < 1:
            raise ValueError(
                f"HistogramConfig.relative_error must be in (0, 1), got {self.relative_error!r}"
            )
        if self.n_buckets > MAX_BUCKETS:
            raise ValueError(
                f"HistogramConfig needs {self.n_buckets} buckets (limit {MAX_BUCKETS}): "
                "raise relative_error or narrow [min_value, max_value]"
            )

    @cached_property
    def gamma(self) -> float:
        """Ratio between the edges of one bucket."""
        return 1.0 + 2.0 * self.relative_error

    @cached_property
    def n_buckets(self) -> int:
        """Number of buckets, the underflow bucket included."""
        span = math.log(self.max_value) - math.log(self.min_value)
        return math.ceil(span / math.log(self.gamma)) + 1

    @cached_property
    def _log_gamma(self) -> float:
        return math.log(self.gamma)

    @cached_property
    def _bucket_values(self) -> np.ndarray:
        k = np.arange(self.n_buckets, dtype=np.float64)
        values = self.min_value * np.exp((k - 0.5) * self._log_gamma)
        values[0] = self.min_value
        values.flags.writeable = False
        return values

    def bucket_index(self, values: npt.ArrayLike) -> np.ndarray:
        """Bucket index (int64) of each finite value; raises ValueError on NaN or inf."""
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v).all():
            raise ValueError("bucket_index: values must be finite")
        return self._index(v)

    def bucket_value(self, indices: npt.ArrayLike) -> np.ndarray:
        """Reported value of each bucket index (float64)."""
        return self._bucket_values[np.asarray(indices, dtype=np.intp)]

    def _index(self, v: np.ndarray) -> np.ndarray:
        # Values below min_value / 2 all land in bucket 0 anyway; raising them to
        # that floor keeps zero and negatives away from log's -inf and NaN.
        x = np.maximum(v, 0.5 * self.min_value)
        np.divide(x, self.min_value, out=x)
        np.log(x, out=x)
        np.divide(x, self._log_gamma, out=x)
        np.floor(x, out=x)
        idx = x.astype(np.int64)
        idx += 1
        # ufuncs rather than np.clip, whose wrapper costs microseconds per call.
        np.maximum(idx, 0, out=idx)
        np.minimum(idx, self.n_buckets - 1, out=idx)
        indices: np.ndarray = idx
        return indices

    def to_dict(self) -> dict[str, float]:
        """The fields, JSON-safe; ``HistogramConfig(**d)`` rebuilds an equal config."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


class LogHistogram:
    """Counts of non-negative values (seconds) in log-spaced buckets, plus summary stats.

    ``count``, ``min``, ``max`` and ``negative`` are exact; ``mean`` and ``std``
    (population, ddof=0) are float-accurate and include every recorded value.
    Negative values (clock skew) count in bucket 0 and in ``negative``.
    Every query on an empty histogram returns NaN, so a report row for a run
    without samples still renders; ``count`` tells the cases apart.
    """

    __slots__ = (
        "_config", "_buffer_size", "_buffer", "_pending", "_pending_len",
        "_counts", "_count", "_negative", "_sum", "_m2", "_min", "_max",
    )

    def __init__(
        self, config: HistogramConfig | None = None, *, buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"LogHistogram buffer_size must be >= 1, got {buffer_size!r}")
        self._config = config if config is not None else HistogramConfig()
        self._buffer_size = buffer_size
        self._buffer: list[float] = []
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._counts = np.zeros(self._config.n_buckets, dtype=np.int64)
        self._count = 0
        self._negative = 0
        self._sum = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean
        self._min = math.inf
        self._max = -math.inf

    # -- recording -----------------------------------------------------------

    def record(self, value: float) -> None:
        """Record one value: a list append, binned later. Validation waits for ``flush``."""
        buffer = self._buffer
        buffer.append(value)
        if len(buffer) >= self._buffer_size:
            self.flush()

    def record_many(self, values: npt.ArrayLike) -> None:
        """Record every value of an array; raises ValueError and records nothing
        if any value is NaN or infinite."""
        array = np.asarray(values, dtype=np.float64).ravel()
        if not np.isfinite(array).all():
            bad = array.size - int(np.count_nonzero(np.isfinite(array)))
            raise ValueError(f"record_many: {bad} non-finite values; nothing recorded")
        if array.size >= _BIN_AT_ONCE:
            self._bin(array)
            return
        self._pending.append(array.copy())  # the caller may reuse its array
        self._pending_len += array.size
        if self._pending_len >= self._buffer_size:
            self.flush()

    def flush(self) -> None:
        """Bin every value waiting in the buffers. Every query calls this first.

        Values given to ``record`` that are not finite real numbers are dropped
        here, after every valid value is binned, and ValueError names how many.
        """
        dropped = 0
        buffer = self._buffer
        if buffer:
            received = len(buffer)
            try:
                array = np.fromiter(buffer, dtype=np.float64, count=received)
            except (TypeError, ValueError):
                reals = [v for v in buffer if isinstance(v, numbers.Real)]
                array = np.fromiter(reals, dtype=np.float64, count=len(reals))
            buffer.clear()
            finite = np.isfinite(array)
            if not finite.all():
                array = array[finite]
            dropped = received - array.size
            self._pending.append(array)
        if self._pending:
            batch = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)
            self._pending.clear()
            self._pending_len = 0
            self._bin(batch)
        if dropped:
            raise ValueError(f"record: dropped {dropped} values that were not finite numbers")

    def _bin(self, array: np.ndarray) -> None:
        for start in range(0, array.size, _CHUNK):
            self._bin_chunk(array[start : start + _CHUNK])

    def _bin_chunk(self, values: np.ndarray) -> None:
        self._counts += np.bincount(self._config._index(values), minlength=self._counts.size)
        total = float(values.sum())
        deviations = values - total / values.size
        self._combine(
            values.size,
            int(np.count_nonzero(values < 0)),
            total,
            float((deviations * deviations).sum()),  # not @: BLAS threads cost more than they save here
            float(values.min()),
            float(values.max()),
        )

    def _combine(self, n: int, negative: int, total: float, m2: float, lo: float, hi: float) -> None:
        if n == 0:
            return
        if self._count == 0:
            self._m2 = m2
        else:
            # Chan et al.'s pairwise update: no cancellation when std << mean.
            delta = total / n - self._sum / self._count
            self._m2 += m2 + delta * delta * (self._count * n / (self._count + n))
        self._count += n
        self._negative += negative
        self._sum += total
        self._min = min(self._min, lo)
        self._max = max(self._max, hi)

    # -- queries -------------------------------------------------------------

    @property
    def config(self) -> HistogramConfig:
        return self._config

    @property
    def counts(self) -> np.ndarray:
        """A copy of the per-bucket counts (int64, ``config.n_buckets`` long)."""
        self.flush()
        return self._counts.copy()

    @property
    def count(self) -> int:
        self.flush()
        return self._count

    @property
    def negative(self) -> int:
        """How many recorded values were below zero (they also count in bucket 0)."""
        self.flush()
        return self._negative

    @property
    def sum(self) -> float:
        self.flush()
        return self._sum

    @property
    def mean(self) -> float:
        self.flush()
        return self._sum / self._count if self._count else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0)."""
        self.flush()
        return math.sqrt(max(self._m2, 0.0) / self._count) if self._count else math.nan

    @property
    def min(self) -> float:
        """Smallest recorded value, exactly."""
        self.flush()
        return self._min if self._count else math.nan

    @property
    def max(self) -> float:
        """Largest recorded value, exactly."""
        self.flush()
        return self._max if self._count else math.nan

    def percentile(self, q: float) -> float:
        """Nearest-rank ``q``-th percentile, ``0 <= q <= 100``; see ``percentiles``."""
        return float(self.percentiles(q))

    def percentiles(self, qs: npt.ArrayLike) -> np.ndarray:
        """Nearest-rank percentiles (float64, shaped like ``qs``), each ``0 <= q <= 100``.

        The rank is ``ceil(q / 100 * count)`` (at least 1), as numpy's
        ``method="inverted_cdf"``. The answer is the reported value of the bucket
        holding that rank, clamped to ``[min, max]``: within ``relative_error`` of
        the true value when that value is in ``[min_value, max_value]``, and exact
        for the first and last rank, so ``p0 == min`` and ``p100 == max``.
        """
        q = np.asarray(qs, dtype=np.float64)
        if not ((q >= 0) & (q <= 100)).all():
            raise ValueError(f"percentiles must be in [0, 100], got {qs!r}")
        self.flush()
        n = self._count
        if n == 0:
            return np.full(q.shape, math.nan)
        rank = np.clip(np.ceil((q.ravel() / 100.0) * n), 1, n)
        index = np.searchsorted(np.cumsum(self._counts), rank, side="left")
        out = np.clip(self._config.bucket_value(index), self._min, self._max)
        out[rank == 1] = self._min
        out[rank == n] = self._max
        shaped: np.ndarray = out.reshape(q.shape)
        return shaped

    # -- merging -------------------------------------------------------------

    def merge(self, other: LogHistogram) -> None:
        """Add ``other``'s values to this histogram (``other`` is unchanged).

        Raises ValueError if the configs differ.
        """
        if not isinstance(other, LogHistogram):
            raise TypeError(f"can only merge a LogHistogram, got {type(other).__name__}")
        if other._config != self._config:
            raise ValueError(
                f"cannot merge histograms with different configs: {self._config} and {other._config}"
            )
        self.flush()
        other.flush()
        self._counts += other._counts
        self._combine(
            other._count, other._negative, other._sum, other._m2, other._min, other._max
        )

    @classmethod
    def merged(
        cls, histograms: Iterable[LogHistogram], config: HistogramConfig | None = None
    ) -> LogHistogram:
        """A new histogram holding the values of all ``histograms``.

        ``config`` defaults to the first histogram's; with no histograms and no
        ``config`` there is nothing to take it from, and ValueError is raised.
        """
        result = cls(config) if config is not None else None
        for histogram in histograms:
            if result is None:
                result = cls(histogram.config)
            result.merge(histogram)
        if result is None:
            raise ValueError("LogHistogram.merged: no histograms and no config given")
        return result

    # -- serialization -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: config, scalar stats and the non-zero buckets only."""
        self.flush()
        nonzero = np.flatnonzero(self._counts)
        empty = self._count == 0
        return {
            "version": FORMAT_VERSION,
            "config": self._config.to_dict(),
            "count": self._count,
            "negative": self._negative,
            "sum": self._sum,
            "m2": self._m2,
            "min": None if empty else self._min,
            "max": None if empty else self._max,
            "bucket_index": nonzero.tolist(),
            "bucket_count": self._counts[nonzero].tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogHistogram:
        """Inverse of ``to_dict``; raises ValueError naming the first bad key."""
        _check(isinstance(data, dict), "data must be a dict")
        _check(data.get("version") == FORMAT_VERSION, f"version must be {FORMAT_VERSION}")
        raw_config, names = data.get("config"), {field.name for field in fields(HistogramConfig)}
        _check(isinstance(raw_config, dict) and set(raw_config) == names,
               f"config must have exactly the keys {sorted(names)}")
        assert isinstance(raw_config, dict)  # checked above
        histogram = cls(HistogramConfig(**raw_config))

        index = _int_list(data, "bucket_index", minimum=0)
        counts = _int_list(data, "bucket_count", minimum=1)
        n_buckets = histogram._config.n_buckets
        _check(len(index) == len(counts), "bucket_index and bucket_count differ in length")
        _check(all(a < b for a, b in zip(index, index[1:])) and (not index or index[-1] < n_buckets),
               f"bucket_index must increase strictly and stay below {n_buckets}")
        count, negative = _int_value(data, "count"), _int_value(data, "negative")
        _check(count == sum(counts), "count differs from the sum of bucket_count")
        _check(negative <= (counts[0] if index and index[0] == 0 else 0),
               "negative exceeds the count of bucket 0")
        total, m2 = _float_value(data, "sum"), _float_value(data, "m2")
        _check(m2 >= 0, "m2 must be >= 0")
        if count == 0:
            _check(data.get("min") is None and data.get("max") is None,
                   "min and max must be null when count is 0")
            lo, hi = math.inf, -math.inf
        else:
            lo, hi = _float_value(data, "min"), _float_value(data, "max")
            _check(lo <= hi, "min exceeds max")

        histogram._counts[index] = counts
        histogram._count, histogram._negative = count, negative
        histogram._sum, histogram._m2 = total, m2
        histogram._min, histogram._max = lo, hi
        return histogram

    def __repr__(self) -> str:
        # No flush: repr must not raise for values record() has not validated yet.
        waiting = len(self._buffer) + self._pending_len
        return f"LogHistogram(binned={self._count}, waiting={waiting}, config={self._config})"


def _check(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(f"LogHistogram.from_dict: {problem}")


def _int_value(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    _check(type(value) is int and value >= 0, f"{key} must be an int >= 0, got {value!r}")
    assert isinstance(value, int)
    return value


def _int_list(data: dict[str, Any], key: str, minimum: int) -> list[int]:
    values = data.get(key)
    _check(isinstance(values, list) and all(type(v) is int and v >= minimum for v in values),
           f"{key} must be a list of ints >= {minimum}")
    assert isinstance(values, list)
    return values


def _float_value(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    _check(not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value),
           f"{key} must be a finite number, got {value!r}")
    assert isinstance(value, (int, float))
    return float(value)
