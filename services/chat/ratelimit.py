"""Per-connection token bucket, sans I/O (the caller passes the clock)."""

from __future__ import annotations


class TokenBucket:
    """Allows ``rate`` events per second on average and ``burst`` at once.

    ``consecutive_drops`` counts refusals since the last allowed event, so a
    caller can escalate a client that keeps sending while limited.
    """

    __slots__ = ("rate", "burst", "_tokens", "_stamp", "consecutive_drops")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now
        self.consecutive_drops = 0

    def allow(self, now: float) -> bool:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.consecutive_drops = 0
            return True
        self.consecutive_drops += 1
        return False
