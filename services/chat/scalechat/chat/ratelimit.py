"""Per-connection token bucket, sans I/O (the caller passes the clock)."""

from __future__ import annotations


class TokenBucket:
    """Allows ``rate`` events per second on average and ``burst`` at once.

    ``consecutive_drops`` counts refusals since the last allowed event, so a
    caller can escalate a client that keeps sending while limited.
    """

    __slots__ = ("rate", "burst", "_tokens", "_stamp", "consecutive_drops")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now
        self.consecutive_drops = 0

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens (1 per message, or a message's bytes) if there are that many."""
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            self.consecutive_drops = 0
            return True
        self.consecutive_drops += 1
        return False

    def wait(self, now: float, cost: float) -> float:
        """Seconds until ``cost`` tokens are there (0 if they are now); takes nothing."""
        tokens = min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.rate)
        return 0.0 if tokens >= cost else (cost - tokens) / self.rate

    def reserve(self, now: float, cost: float) -> float:
        """Take ``cost`` tokens, going into debt if need be; return the seconds until the
        debt is repaid (0 when there were enough). For a caller that waits instead of dropping."""
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._stamp = now
        self._tokens -= cost
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class AddressLimiter:
    """One token bucket per client address, for events such as joins; sans I/O.

    Memory is bounded: at most ``max_addresses`` buckets; when full, the bucket
    unused the longest is forgotten first (a forgotten address starts full again,
    so an attacker gains nothing by rotating addresses it cannot spoof).
    """

    def __init__(self, rate: float, burst: int, max_addresses: int = 100_000) -> None:
        self.rate, self.burst, self.max_addresses = rate, burst, max_addresses
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, address: str, now: float) -> bool:
        buckets = self._buckets
        bucket = buckets.pop(address, None)  # re-inserted last: dict order is recency
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, now)
            if len(buckets) >= self.max_addresses:
                del buckets[next(iter(buckets))]
        buckets[address] = bucket
        return bucket.allow(now)
