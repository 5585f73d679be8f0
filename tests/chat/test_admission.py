"""Upgrade requests refused before the WebSocket opens: our own words in every 400, ASCII-only
`since`, HTTP/1.1 required, tokens that must expire, and the Origin rule (scheme, host and
port). Against the real server process, with raw requests where a client library would
correct them."""

from __future__ import annotations

import time
from urllib.parse import quote

import jwt
import pytest

from raw_ws import http_exchange, upgrade_request

SECRET = "a-test-secret-that-is-32-bytes-long!"


async def upgrade(server, path: str = "/ws/room", **kwargs) -> tuple[int, str]:
    status, body = await http_exchange(server.port, upgrade_request(path, **kwargs))
    return status, body.decode()


@pytest.mark.parametrize("since", ["\u0663", "\u00b2", "\uff11", "9" * 19, "9" * 5000, "-1",
                                   "1 ", "0x1", "1e3"])
async def test_since_takes_only_ascii_digits_and_the_400_is_in_our_words(chat_server, since):
    status, body = await upgrade(chat_server, f"/ws/room?since={quote(since)}")
    assert (status, body) == (400, "since must be a sequence number: 1-18 digits 0-9\n")


async def test_since_at_the_longest_is_accepted(chat_server):
    status, _ = await upgrade(chat_server, "/ws/room?since=" + "9" * 18)
    assert status == 101


async def test_http_1_0_upgrade_gets_400_not_101(chat_server):
    status, body = await upgrade(chat_server, version="1.0")
    assert status == 400 and "HTTP/1.1" in body
    assert chat_server.metric("scalechat_connections_refused_total", 'reason="bad_handshake"') == 1


async def test_a_request_that_is_not_a_handshake_gets_400_in_our_words(chat_server):
    request = b"GET /ws/room HTTP/1.1\r\nHost: 127.0.0.1\r\nSec-WebSocket-Key: %27x%27\r\n\r\n"
    status, body = await http_exchange(chat_server.port, request)
    assert status == 400 and body.startswith(b"not a WebSocket handshake") and b"'x'" not in body


# --- tokens ----------------------------------------------------------------------------


def token(**claims) -> str:
    return jwt.encode({"name": "tok", **claims}, SECRET, algorithm="HS256")


async def test_a_token_without_exp_is_refused_when_required(start_server):
    server = start_server("--auth-secret", SECRET, "--auth-require-exp")
    status, body = await upgrade(server, f"/ws/room?token={token()}")
    assert status == 401 and "no 'exp' claim" in body
    assert (await upgrade(server, f"/ws/room?token={token(exp=int(time.time()) + 60)}"))[0] == 101
    assert (await upgrade(server, f"/ws/room?token={token(exp=int(time.time()) - 10)}")) == (
        401, "token expired\n")


async def test_without_the_setting_a_token_without_exp_is_accepted(start_server):
    server = start_server("--auth-secret", SECRET)
    assert (await upgrade(server, f"/ws/room?token={token()}"))[0] == 101


@pytest.mark.parametrize("bad,reason", [
    ("garbage", "invalid token: not a JWT"),
    (jwt.encode({"name": "x"}, "another-secret-of-32-bytes-or-more", algorithm="HS256"),
     "invalid token: the signature does not match"),
    (jwt.encode({"name": "x", "nbf": int(time.time()) + 600}, SECRET, algorithm="HS256"),
     "invalid token: not valid yet ('nbf' or 'iat' in the future)"),
])
async def test_token_refusals_are_in_our_words(start_server, bad, reason):
    server = start_server("--auth-secret", SECRET)
    assert await upgrade(server, f"/ws/room?token={bad}") == (401, reason + "\n")


# --- the Origin rule -------------------------------------------------------------------


async def test_the_servers_own_origin_is_scheme_host_and_port(chat_server):
    own = f"127.0.0.1:{chat_server.port}"
    for origin, status in [(f"http://{own}", 101), (f"HTTP://{own}", 101),
                           (f"https://{own}", 403),  # the request came over plain http
                           (f"http://127.0.0.1:{chat_server.port + 1}", 403),
                           ("http://127.0.0.1", 403), ("null", 403), ("http://evil.example", 403)]:
        got, _ = await upgrade(chat_server, host=own, headers={"Origin": origin})
        assert got == status, origin
    # A host name in the Host header, with the scheme's default port filled in.
    for host in ("chat.example", "chat.example:80"):
        got, _ = await upgrade(chat_server, host=host, headers={"Origin": "http://chat.example"})
        assert got == 101, host
    got, _ = await upgrade(chat_server, host="chat.example", headers={"Origin": "http://chat.example:8080"})
    assert got == 403


async def test_x_forwarded_proto_counts_only_when_trusted(start_server):
    behind_tls = {"Origin": "https://chat.example", "X-Forwarded-Proto": "https"}
    plain = start_server()
    assert (await upgrade(plain, host="chat.example", headers=behind_tls))[0] == 403
    trusting = start_server("--trust-forwarded-proto")
    assert (await upgrade(trusting, host="chat.example", headers=behind_tls))[0] == 101
    assert (await upgrade(trusting, host="chat.example:443", headers=behind_tls))[0] == 101
    spoofed_scheme = {"Origin": "http://chat.example", "X-Forwarded-Proto": "https"}
    assert (await upgrade(trusting, host="chat.example", headers=spoofed_scheme))[0] == 403


async def test_allowed_origins_are_compared_as_origins(start_server):
    server = start_server("--allowed-origins", "https://chat.example:443,http://other.example:8080")
    for origin, status in [("https://chat.example", 101), ("http://other.example:8080", 101),
                           ("http://chat.example", 403), ("https://other.example:8080", 403)]:
        got, body = await upgrade(server, headers={"Origin": origin})
        assert got == status, origin
    assert body == "origin 'https://other.example:8080' is not allowed\n"
