"""Prometheus metrics of one chat process, served from a thread.

The exporter runs in its own thread with its own registry, so a scrape is
answered even while the event loop is saturated (it needs the GIL for a few
milliseconds, not a turn of the loop).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, Info,
                               PlatformCollector, ProcessCollector, disable_created_metrics,
                               start_http_server)

from scalechat.chat.protocol import ErrorCode

# From 100 us to 10 s: loop stalls show up in the top buckets.
PROCESSING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                      0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
        self.received = Counter("scalechat_messages_received_total",
                                "Client messages accepted and published.", registry=registry)
        self.delivered = Counter("scalechat_messages_delivered_total",
                                 "Messages queued to local recipients (one per recipient).",
                                 registry=registry)
        self.processing = Histogram(
            "scalechat_message_processing_seconds",
            "From a message reaching this process to its write to the last local recipient.",
            buckets=PROCESSING_BUCKETS, registry=registry)
        self.slow_consumers = Counter("scalechat_slow_consumer_disconnects_total",
                                      "Connections closed with 1013 because they stopped reading.",
                                      registry=registry)
        self.rejected = Counter("scalechat_messages_rejected_total",
                                "Client frames refused, by reason.", ["reason"], registry=registry)
        for code in (*ErrorCode, "too_big", "binary", "invalid_utf8"):
            self.rejected.labels(reason=str(code))
        self.connections_refused = Counter(
            "scalechat_connections_refused_total", "Upgrades refused before the WebSocket opened.",
            ["reason"], registry=registry)
        Info("scalechat_host", "Facts about the host a load test must be read against.",
             registry=registry).info({k: "" if v is None else str(v) for k, v in host_facts.items()})
        self._server = None

    def observe_processing(self, received: list[float], now: float) -> None:
        observe = self.processing.observe
        for t in received:
            observe(now - t)

    def serve(self, host: str, port: int) -> None:
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
