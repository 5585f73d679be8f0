"""The lean Redis connection against the real Redis on 127.0.0.1:6379: URLs, pipelining, failures."""

from __future__ import annotations

import asyncio
import socket

import pytest

from support import free_port

from scalechat.chat.redis_link import RedisAddress, RedisLink, ReplyError

pytestmark = pytest.mark.timeout(30)
LOCAL = RedisAddress.parse("redis://127.0.0.1:6379/0")


@pytest.mark.parametrize("url, expected", [
    ("redis://127.0.0.1:6379/0", RedisAddress()),
    ("redis://h:7000/3", RedisAddress(host="h", port=7000, db=3)),
    ("redis://:s3cret@h", RedisAddress(host="h", password="s3cret")),
    ("redis://u:p%40ss@h/2", RedisAddress(host="h", db=2, username="u", password="p@ss")),
    ("rediss://h?db=4", RedisAddress(host="h", db=4, tls=True)),
    ("unix:///run/redis.sock?db=1", RedisAddress(path="/run/redis.sock", db=1)),
])
def test_urls_parse_into_addresses(url, expected):
    assert RedisAddress.parse(url) == expected


@pytest.mark.parametrize("url, says", [
    ("http://h", "scheme must be"),
    ("redis://h/x", "database must be a number"),
    ("redis://h:99999", "port must be a number"),
    ("redis://", "no host"),
    ("unix://", "socket path"),
])
def test_bad_urls_say_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        RedisAddress.parse(url)


def test_the_address_never_shows_the_password():
    assert "s3cret" not in str(RedisAddress.parse("redis://:s3cret@h:1/2"))
    assert str(RedisAddress.parse("redis://:s3cret@h:1/2")) == "redis://h:1/2"


async def test_a_thousand_commands_in_flight_get_their_own_replies_in_order():
    link = await RedisLink.open(LOCAL, name="test-link", timeout=2)
    try:
        futures = [link.call("ECHO", str(i)) for i in range(1000)]
        assert await asyncio.gather(*futures) == [str(i).encode() for i in range(1000)]
        batch = link.send_many([b"*1\r\n$4\r\nPING\r\n"] * 3)
        assert await asyncio.gather(*batch) == [b"PONG"] * 3
    finally:
        link.close()


async def test_an_error_reply_fails_only_its_own_command():
    link = await RedisLink.open(LOCAL, name="test-link", timeout=2)
    try:
        bad, good = link.call("NOSUCHCOMMAND"), link.call("PING")
        with pytest.raises(ReplyError, match="unknown command"):
            await bad
        assert await good == b"PONG"
    finally:
        link.close()


async def test_a_lost_connection_fails_what_is_pending_and_says_so():
    lost = []
    link = await RedisLink.open(LOCAL, name="test-link", timeout=2, on_lost=lost.append)
    blocked = link.call("BLPOP", "test-link:never", 5)  # no reply for 5 s
    link.abort()
    with pytest.raises(ConnectionError):
        await blocked
    assert link.closed and len(lost) == 1
    with pytest.raises(ConnectionError):
        await link.call("PING")


async def test_connecting_to_nothing_fails_within_the_timeout():
    port = free_port()
    with pytest.raises((OSError, TimeoutError)):
        await RedisLink.open(RedisAddress(port=port), name="x", timeout=1)


async def test_a_silent_server_times_out_the_hello():
    with socket.socket() as listener:  # accepts (the kernel's backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = RedisAddress(port=listener.getsockname()[1])
        with pytest.raises(TimeoutError):
            await RedisLink.open(address, name="x", timeout=0.3)
