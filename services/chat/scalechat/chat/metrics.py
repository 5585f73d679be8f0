"""Prometheus metrics of one chat process, served from a thread.

The exporter runs in its own thread with its own registry, so a scrape is
answered even while the event loop is saturated (it needs the GIL for a few
milliseconds, not a turn of the loop).

The per-message counters and the processing-time histogram sit on the hot
path: they are ``hot`` (:class:`~scalechat.chat.counters.HotCounters`), read
by a collector at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (CollectorRegistry, Counter, Gauge, Info, PlatformCollector,
                               ProcessCollector, disable_created_metrics, start_http_server)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from scalechat.chat.counters import PROCESSING_BUCKETS, HotCounters
from scalechat.chat.protocol import ErrorCode, RefusalReason

disable_created_metrics()  # *_created series only add cardinality here


class Metrics:
    def __init__(self, connections: Callable[[], int], rooms: Callable[[], int],
                 host_facts: dict[str, object]) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        Gauge("scalechat_connections", "Open WebSocket connections.",
              registry=registry).set_function(connections)
        Gauge("scalechat_rooms", "Rooms with at least one local member.",
              registry=registry).set_function(rooms)
        self.hot = HotCounters()  # the message path's, exported by _HotCollector
        registry.register(_HotCollector(self.hot))
        self.slow_consumers = Counter("scalechat_slow_consumer_disconnects_total",
                                      "Connections closed with 1013 because they stopped reading.",
                                      registry=registry)
        self.rejected = Counter("scalechat_messages_rejected_total",
                                "Client frames refused, by reason.", ["reason"], registry=registry)
        for code in (*ErrorCode, "too_big", "binary", "invalid_utf8"):
            self.rejected.labels(reason=str(code))
        self.throttled = Counter(
            "scalechat_reads_throttled_total",
            "Times a connection's reading was delayed because it sent more bytes per second "
            "than rate_limit_bytes.", registry=registry)
        self.close_aborts = Counter(
            "scalechat_close_aborts_total",
            "Sockets aborted because the peer did not take its close frame within the close "
            "timeout (a client that stopped reading).", registry=registry)
        self.deduplicated = Counter(
            "scalechat_messages_deduplicated_total",
            "Messages resent with a cid the room already stored: acknowledged with the original "
            "seq, not stored again.", registry=registry)
        self.connections_refused = Counter(
            "scalechat_connections_refused_total", "Upgrades refused before the WebSocket opened.",
            ["reason"], registry=registry)
        for reason in RefusalReason:  # every series exists from the start, so rate() sees the first
            self.connections_refused.labels(reason=reason.value)
        Info("scalechat_host", "Facts about the host a load test must be read against.",
             registry=registry).info({k: "" if v is None else str(v) for k, v in host_facts.items()})
        self._server = None

    def watch_budget(self, budget) -> None:
        """Export the memory budget's figures (read at scrape time)."""
        registry = self.registry
        Gauge("scalechat_memory_budget_bytes", "Bytes of history plus outgoing buffers this "
              "process may hold.", registry=registry).set_function(lambda: budget.limit)
        Gauge("scalechat_history_bytes", "Bytes of messages kept in rooms' history in this "
              "process.", registry=registry).set_function(lambda: budget.history)
        Gauge("scalechat_outgoing_bytes", "Bytes queued for clients, as last measured.",
              registry=registry).set_function(lambda: budget.outgoing)
        registry.register(_BudgetCollector(budget))

    def serve(self, host: str, port: int) -> None:
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _HotCollector(Collector):
    def __init__(self, hot: HotCounters) -> None:
        self._hot = hot

    def collect(self) -> Iterator[Metric]:
        m = self._hot
        yield CounterMetricFamily("scalechat_messages_received",
                                  "Client messages accepted and published.", value=m.received)
        yield CounterMetricFamily("scalechat_messages_delivered",
                                  "Messages queued to local recipients (one per recipient).",
                                  value=m.delivered)
        yield CounterMetricFamily("scalechat_broker_messages_received",
                                  "Messages this node received from the broker (pub/sub), "
                                  "including those for local senders.", value=m.broker_received)
        counts, total = list(m.buckets), m.processing_sum
        cumulative, running = [], 0
        for bound, count in zip((*map(str, PROCESSING_BUCKETS), "+Inf"), counts):
            running += count
            cumulative.append((bound, running))
        yield HistogramMetricFamily(
            "scalechat_message_processing_seconds",
            "From a message reaching this process to its write to the last local recipient.",
            buckets=cumulative, sum_value=total)


class _BudgetCollector(Collector):
    """The budget's counter, kept as a plain int on the message path."""

    def __init__(self, budget) -> None:
        self._budget = budget

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("scalechat_history_dropped",
                                  "Messages dropped from history to stay within the memory "
                                  "budget (least recently active rooms first).",
                                  value=self._budget.history_dropped)
