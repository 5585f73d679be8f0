from scalechat.chat.ratelimit import TokenBucket


def test_burst_then_refill():
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.consecutive_drops == 1
    assert not bucket.allow(0.05)  # half a token
    assert bucket.allow(0.1)
    assert bucket.consecutive_drops == 0


def test_sustained_rate_is_honoured():
    bucket = TokenBucket(rate=20, burst=40, now=0.0)
    allowed = sum(bucket.allow(i / 100) for i in range(1000))  # 100 msg/s for 10 s
    assert allowed == 40 + 20 * 10 - 1 or allowed == 40 + 20 * 10  # burst + refill (float edge)


def test_refill_is_capped_at_burst():
    bucket = TokenBucket(rate=100, burst=2, now=0.0)
    assert sum(bucket.allow(1000.0) for _ in range(5)) == 2
