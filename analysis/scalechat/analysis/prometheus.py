"""The server side of a load test, from Prometheus's HTTP API (``/api/v1/query_range``).

One range query per metric over the span of all stages; each is summed over the
replicas, as the server's capacity is what they do together, and CPU, memory and
message rates are also asked for per replica (:data:`PER_REPLICA`, by
``instance``), so a report shows whether the replicas share the load. Only
targets that export ``scalechat_connections`` count, so Prometheus's own process
metrics (or a Redis exporter's) never mix in. Per-stage statistics are cut from
these series by :func:`scalechat.analysis.summary.server_rows` and
:func:`~scalechat.analysis.summary.replica_rows`.

The rate window follows Grafana's ``$__rate_interval``: four scrape intervals
(read from ``/api/v1/targets``; 15 s if unknown) and at least two steps.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCALECHAT = "and on (job, instance) scalechat_connections"
QUERIES: dict[str, str] = {
    "replicas": "count(scalechat_connections)",
    "cpu_cores": f"sum(rate(process_cpu_seconds_total[{{w}}]) {SCALECHAT})",
    "memory_bytes": f"sum(process_resident_memory_bytes {SCALECHAT})",
    "received_per_s": "sum(rate(scalechat_messages_received_total[{w}]))",
    "delivered_per_s": "sum(rate(scalechat_messages_delivered_total[{w}]))",
    "processing_p50_s": "histogram_quantile(0.5, sum by (le) "
                        "(rate(scalechat_message_processing_seconds_bucket[{w}])))",
    "processing_p99_s": "histogram_quantile(0.99, sum by (le) "
                        "(rate(scalechat_message_processing_seconds_bucket[{w}])))",
}
# The same, one series per replica (its ``instance`` label).
PER_REPLICA: dict[str, str] = {
    "cpu_cores": f"sum by (instance) (rate(process_cpu_seconds_total[{{w}}]) {SCALECHAT})",
    "memory_bytes": f"sum by (instance) (process_resident_memory_bytes {SCALECHAT})",
    "received_per_s": "sum by (instance) (rate(scalechat_messages_received_total[{w}]))",
    "delivered_per_s": "sum by (instance) (rate(scalechat_messages_delivered_total[{w}]))",
}
MAX_POINTS = 600  # per series; Prometheus refuses more than 11,000
DEFAULT_SCRAPE_SECONDS = 15.0


class PrometheusError(Exception):
    """Prometheus could not be asked (unreachable, an HTTP error, an answer not understood)."""


@dataclass(frozen=True)
class ServerSide:
    url: str
    start: float
    end: float
    step: float
    window: str
    queries: dict[str, str]
    series: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (unix times, values)
    # name of PER_REPLICA -> instance -> (unix times, values)
    replicas: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)

    @property
    def instances(self) -> list[str]:
        """Every replica seen, sorted."""
        return sorted({i for by_instance in self.replicas.values() for i in by_instance})


def fetch(url: str, start: float, end: float, *, timeout: float = 10.0) -> ServerSide:
    """Every series of :data:`QUERIES` from ``start`` to ``end`` (unix seconds)."""
    base = url.rstrip("/")
    step = max(1.0, math.ceil((end - start) / MAX_POINTS))
    scrape = _scrape_interval(base, timeout)
    window = f"{int(max(4 * scrape, 2 * step))}s"
    queries = {name: query.replace("{w}", window) for name, query in QUERIES.items()}
    params = {"start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    series = {}
    for name, query in queries.items():
        series[name] = _matrix(_get(base, "/api/v1/query_range", {"query": query, **params}, timeout), query)
    replicas = {}
    for name, query in PER_REPLICA.items():
        query = query.replace("{w}", window)
        queries[f"{name} by replica"] = query
        replicas[name] = _by_instance(_get(base, "/api/v1/query_range", {"query": query, **params}, timeout),
                                      query)
    return ServerSide(url=base, start=start, end=end, step=step, window=window, queries=queries,
                      series=series, replicas=replicas)


def _scrape_interval(base: str, timeout: float) -> float:
    targets = _get(base, "/api/v1/targets", {"state": "active"}, timeout)
    seconds = [_duration(t.get("scrapeInterval", "")) for t in targets.get("activeTargets", [])
               if isinstance(t, dict)]
    seconds = [s for s in seconds if s]
    return max(seconds) if seconds else DEFAULT_SCRAPE_SECONDS


def _duration(text: str) -> float | None:
    """Prometheus durations such as ``1s``, ``500ms``, ``1m30s``."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", text or "")
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * unit[u] for n, u in parts)


def _get(base: str, path: str, params: dict[str, str], timeout: float) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        raise PrometheusError(f"{base}{path}: HTTP {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise PrometheusError(f"{base}: unreachable: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, not JSON
        raise PrometheusError(f"{base}{path}: {exc}") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else body
        raise PrometheusError(f"{base}{path}: {error}")
    return body.get("data") or {}


def _by_instance(data: dict[str, Any], query: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if data.get("resultType") != "matrix":
        raise PrometheusError(f"query {query!r}: expected a matrix, got {data.get('resultType')!r}")
    out = {}
    for item in data.get("result") or []:
        instance = str((item.get("metric") or {}).get("instance", "?"))
        values = np.array([(float(t), float(v)) for t, v in item.get("values", [])], dtype=np.float64)
        if values.size:
            out[instance] = (values[:, 0], values[:, 1])
    return out


def _matrix(data: dict[str, Any], query: str) -> tuple[np.ndarray, np.ndarray]:
    """The single series a summed query returns (empty arrays when there is none)."""
    if data.get("resultType") != "matrix":
        raise PrometheusError(f"query {query!r}: expected a matrix, got {data.get('resultType')!r}")
    result = data.get("result") or []
    if not result:
        return np.empty(0), np.empty(0)
    values = np.array([(float(t), float(v)) for t, v in result[0].get("values", [])], dtype=np.float64)
    if values.size == 0:
        return np.empty(0), np.empty(0)
    return values[:, 0], values[:, 1]
