"""The per-message counters and processing-time histogram: plain numbers, one writer.

Updated by the event loop on every message (no lock, no Prometheus object on
the message path); ``metrics.Metrics`` reads them at scrape time from its
exporter thread. A scrape may see the histogram one observation behind the
counts; it never sees a count decrease. Compiled with the per-message modules
(``scalechat.chat.native``): an increment is a field update.
"""

from __future__ import annotations


# From 100 us to 10 s: loop stalls show up in the top buckets.
PROCESSING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                      0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BOUNDS: list[float] = list(PROCESSING_BUCKETS)  # indexed natively when compiled


class HotCounters:
    """Messages received, delivered and taken from the broker; seconds from a message
    reaching the process to its write to the last local recipient."""

    __slots__ = ("received", "delivered", "broker_received", "buckets", "processing_sum")

    def __init__(self) -> None:
        self.received = 0  # client messages accepted and published
        self.delivered = 0  # messages queued to local recipients, one per recipient
        self.broker_received = 0  # messages from the broker, local senders' included
        self.buckets = [0] * (len(PROCESSING_BUCKETS) + 1)  # last: above the top bound
        self.processing_sum = 0.0

    def observe_processing(self, received: list[float], now: float) -> None:
        """One observation per ``perf_counter`` time in ``received``, each ending at ``now``."""
        buckets, bounds, top = self.buckets, _BOUNDS, len(_BOUNDS)
        total = 0.0
        for t in received:
            seconds = now - t
            i = 0  # the first bound >= seconds (bisect_left), from the bottom: most are small
            while i < top and bounds[i] < seconds:
                i += 1
            buckets[i] += 1
            total += seconds
        self.processing_sum += total
