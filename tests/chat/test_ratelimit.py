import pytest

from scalechat.chat.ratelimit import AddressLimiter, TokenBucket


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


def test_a_bucket_takes_a_cost_such_as_a_messages_bytes():
    bucket = TokenBucket(rate=1000, burst=3000, now=0.0)
    assert bucket.allow(0.0, 2000) and not bucket.allow(0.0, 2000)
    assert bucket.allow(1.0, 2000)  # 1,000 left + 1,000 refilled


def test_addresses_get_their_own_join_buckets():
    limiter = AddressLimiter(rate=1, burst=2)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("b", 0.0)  # another address is not affected
    assert limiter.allow("a", 1.0)  # one token back after a second


def test_the_address_map_forgets_the_longest_unused_first():
    limiter = AddressLimiter(rate=1, burst=1, max_addresses=2)
    assert limiter.allow("a", 0.0) and not limiter.allow("a", 0.0)
    limiter.allow("b", 0.0)
    limiter.allow("c", 0.0)  # a third address: "a", unused the longest, is forgotten
    assert limiter.allow("a", 0.0)  # starts full again


def test_reserve_goes_into_debt_and_says_how_long_to_wait():
    bucket = TokenBucket(rate=1000, burst=2000, now=0.0)
    assert bucket.reserve(0.0, 1500) == 0.0
    assert bucket.reserve(0.0, 1500) == pytest.approx(1.0)  # 1,000 tokens short at 1,000/s
    assert bucket.reserve(1.0, 0) == 0.0  # repaid after a second


def test_wait_says_when_the_tokens_are_there_and_takes_nothing():
    bucket = TokenBucket(rate=10.0, burst=20, now=0.0)
    assert bucket.wait(0.0, 20) == 0.0 and bucket.wait(0.0, 25) == pytest.approx(0.5)
    assert bucket.allow(0.0, 20)  # wait took nothing
    assert bucket.wait(0.0, 5) == pytest.approx(0.5) and bucket.wait(1.0, 5) == 0.0
