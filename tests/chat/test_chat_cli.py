"""``scalechat chat`` run as a user runs it: a subprocess against a real server.

Scripted clients get piped stdin; a listener is kept open and its stdout read
line by line with a deadline. The close code a client sends is checked against
a small in-test aiohttp server, since the chat server does not report it.
"""

from __future__ import annotations

import asyncio
import os
import pty
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time

import jwt
import pytest

from support import aiohttp_ws_server, free_port
from aiohttp import web

from scalechat.chat.chat_cli import format_message, format_presence, room_url
SCALECHAT = [sys.executable, "-m", "scalechat.cli"]
TIMEOUT = 30
SECRET = "test-secret-of-at-least-32-bytes!"
CLOCK = r"\[\d\d:\d\d:\d\d\]"


def chat(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*SCALECHAT, "chat", url, *args], input=stdin, capture_output=True,
                          text=True, timeout=TIMEOUT)


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("scalechat chat: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


class Listener:
    """A client kept open (stdin a pipe) whose stdout is read with deadlines."""

    def __init__(self, url: str, *args: str) -> None:
        self.proc = subprocess.Popen([*SCALECHAT, "chat", url, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if re.search(pattern, line):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} in {self.seen}")
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                pass

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 10.0) -> tuple[int, str]:
        """Close stdin (end of input); return (exit code, stderr)."""
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        code = self.proc.wait(timeout)
        return code, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def listeners():
    started: list[Listener] = []

    def start(url: str, *args: str) -> Listener:
        listener = Listener(url, *args)
        started.append(listener)
        listener.expect(r"^\* you are ")
        return listener

    yield start
    for listener in started:
        listener.kill()


# --- pure formatting -----------------------------------------------------------------


def test_message_and_presence_formats():
    ts = int(time.mktime((2024, 5, 1, 13, 4, 5, 0, 0, -1)) * 1000)
    assert format_message({"ts": ts, "from": "bob", "text": "hi"}) == "[13:04:05] bob: hi"
    assert format_message({"ts": ts, "from": "eve", "text": "a\x1b[2Jb"}) == r"[13:04:05] eve: a\x1b[2Jb"
    assert format_presence({"event": "join", "name": "bob", "count": 3}) == "* bob joined (3 here)"
    assert format_presence({"event": "leave", "name": "bob", "count": 2}) == "* bob left (2 here)"


@pytest.mark.parametrize("raw", ["lobby", "http://h/ws/x", "ws:///ws/x", "ws://h:99999/ws/x"])
def test_room_url_rejects_non_websocket_urls(raw):
    with pytest.raises(ValueError, match=re.escape(repr(raw))):
        room_url(raw)


def test_help_documents_exit_codes():
    result = subprocess.run([*SCALECHAT, "chat", "--help"], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and "--linger" in result.stdout


# --- against the real server ---------------------------------------------------------


def test_scripted_lines_are_echoed_in_the_printed_format(chat_server):
    result = chat(chat_server.ws_url("lobby"), "--name", "alice", stdin="a\n\nb\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"\* you are alice in lobby \(epoch \w+\)", lines[0])
    assert "* alice joined (1 here)" in lines
    echoes = [line for line in lines if re.fullmatch(rf"{CLOCK} alice: .*", line)]
    assert [e.split(": ", 1)[1] for e in echoes] == ["a", "b"]


def test_without_a_name_and_without_a_terminal_the_server_names_us(chat_server):
    result = chat(chat_server.ws_url("lobby"), stdin="hello\n")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^{CLOCK} guest-\w+: hello$", result.stdout, re.M)


def test_two_clients_in_one_room_see_each_other(chat_server, listeners):
    url = chat_server.ws_url("room-1")
    lis = listeners(url, "--name", "lis")
    lis.send("hello from lis")
    lis.expect(rf"^{CLOCK} lis: hello from lis$")

    sender = chat(url, "--name", "sam", stdin="hello from sam\n")
    assert sender.returncode == 0, sender.stderr
    assert re.search(rf"^{CLOCK} lis: hello from lis$", sender.stdout, re.M)  # history
    lis.expect(r"^\* sam joined \(2 here\)$")
    lis.expect(rf"^{CLOCK} sam: hello from sam$")
    lis.expect(r"^\* sam left \(1 here\)$")
    assert lis.finish() == (0, "")


def test_history_resumes_after_since(chat_server):
    url = chat_server.ws_url("resume")
    first = chat(url, "--name", "a", stdin="one\ntwo\nthree\n")
    epoch = re.search(r"\(epoch (\w+)\)", first.stdout).group(1)
    again = chat(url, "--name", "b", "--since", "2", "--epoch", epoch)
    assert again.returncode == 0, again.stderr
    said = re.findall(rf"^{CLOCK} a: (\w+)$", again.stdout, re.M)
    assert said == ["three"]


def test_quit_closes_and_others_see_the_leave(chat_server, listeners):
    url = chat_server.ws_url("lobby")
    lis = listeners(url, "--name", "lis")
    result = chat(url, "--name", "quitter", stdin="bye\n/quit\nnever sent\n")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^{CLOCK} quitter: bye$", result.stdout, re.M)
    lis.expect(r"^\* quitter left \(1 here\)$")
    assert not any("never sent" in line for line in lis.seen)


def test_ctrl_c_closes_cleanly(chat_server, listeners):
    url = chat_server.ws_url("lobby")
    lis = listeners(url, "--name", "lis")
    other = listeners(url, "--name", "other")
    lis.expect(r"^\* other joined")
    other.proc.send_signal(signal.SIGINT)
    assert other.proc.wait(10) == 0
    assert "Traceback" not in other.proc.stderr.read()
    lis.expect(r"^\* other left \(1 here\)$")


def test_a_bad_room_prints_the_servers_reason_on_one_line(chat_server):
    result = chat(chat_server.ws_url("bad%20room!"))
    assert result.returncode == 4
    assert_one_error_line(result, "server refused the connection: 400 room must match")
    assert result.stdout == ""


def test_a_refused_connection_prints_one_line():
    port = free_port()
    result = chat(f"ws://127.0.0.1:{port}/ws/lobby")
    assert result.returncode == 3
    assert_one_error_line(result, f"cannot connect to 127.0.0.1:{port}", "refused")


def test_an_invalid_url_names_the_argument():
    result = chat("127.0.0.1:8080/ws/lobby")
    assert result.returncode == 2
    assert_one_error_line(result, "argument url", "ws://")


def test_server_shutdown_is_reported_with_its_close_code(chat_server, listeners):
    lis = listeners(chat_server.ws_url("lobby"), "--name", "lis", "--reconnect", "0")
    chat_server.stop(signal.SIGTERM)
    code = lis.proc.wait(15)
    stderr = lis.proc.stderr.read()
    assert code == 1
    assert stderr.splitlines() == ["scalechat chat: connection closed by server: 1001 going away"]


def test_a_token_names_the_user_and_its_absence_is_refused(start_server):
    server = start_server("--auth-secret", SECRET)
    token = jwt.encode({"name": "tok"}, SECRET, algorithm="HS256")
    result = chat(server.ws_url("lobby"), "--token", token, stdin="signed\n")
    assert result.returncode == 0, result.stderr
    assert re.search(rf"^{CLOCK} tok: signed$", result.stdout, re.M)
    refused = chat(server.ws_url("lobby"), "--name", "anon")
    assert refused.returncode == 4
    assert_one_error_line(refused, "server refused the connection: 401 missing ?token=")


def test_a_rejected_line_is_reported_and_fails_the_script(start_server):
    server = start_server("--rate-limit", "0.01", "--rate-burst", "3")
    result = chat(server.ws_url("lobby"), "--name", "fast", stdin="1\n2\n3\n4\n")
    assert result.returncode == 5
    assert re.findall(rf"^{CLOCK} fast: (\d)$", result.stdout, re.M) == ["1", "2", "3"]
    assert result.stderr.splitlines() == [
        "! rate_limited: rate limit exceeded: message dropped",
        "scalechat chat: 1 line(s) rejected, 0 not echoed within 5s"]


def test_a_policy_close_is_reported_with_its_code(start_server):
    server = start_server("--rate-limit", "0.01", "--rate-burst", "2")
    result = chat(server.ws_url("lobby"), "--name", "spam", stdin="1\n2\n3\n4\n5\n6\n")
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last == "scalechat chat: connection closed by server: 1008 rate limit exceeded persistently"
    assert "Traceback" not in result.stderr


def test_commands_are_answered_locally_and_never_sent(chat_server, listeners):
    url = chat_server.ws_url("cmds")
    lis = listeners(url, "--name", "lis")
    result = chat(url, "--name", "alice", stdin="/help\n/who\n/bogus x\n//slash\nplain\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert "* /who: who is here (the server's count; names seen joining since you came)" in out
    assert "* 2 here; known by name: alice (the others were here before you and have not spoken up)" in out
    assert result.stderr.splitlines() == [
        "! unknown command /bogus: /help lists them; start with // to send a line that begins with /"]
    lis.expect(rf"^{CLOCK} alice: /slash$")
    lis.expect(rf"^{CLOCK} alice: plain$")
    assert not [line for line in lis.seen if re.search(r"alice: /(help|who|bogus)", line)]


def test_help_lists_the_commands():
    result = subprocess.run([*SCALECHAT, "chat", "--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert "/help" in result.stdout and "/who" in result.stdout and "--reconnect" in result.stdout


# --- close codes, seen by a server we control ----------------------------------------


@pytest.fixture
async def recording_server():
    """An in-process WebSocket endpoint that records each client's close code.

    With ``echo`` false it never answers, to exercise ``--linger``.
    """
    state = {"echo": True, "close_codes": []}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "history", "room": "r", "epoch": "e", "name": "n",
                            "node": "t", "continuity_lost": False, "messages": []})
        async for msg in ws:
            if state["echo"]:
                frame = msg.json()
                await ws.send_json({"type": "message", "room": "r", "seq": 1, "id": "e-1",
                                    "from": "n", "text": frame["text"], "ts": 0,
                                    "cid": frame["cid"]})
        state["close_codes"].append(ws.close_code)
        return ws

    async with aiohttp_ws_server(handler, "/ws/r") as url:
        state["url"] = url
        yield state


async def run_client(url: str, *args: str, stdin: bytes) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *SCALECHAT, "chat", url, *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
    return proc.returncode, out, err


async def test_quit_sends_close_code_1000(recording_server):
    code, out, err = await run_client(recording_server["url"], "--name", "n", stdin=b"x\n/quit\n")
    assert code == 0, err
    assert b"n: x" in out
    await asyncio.wait_for(_until(lambda: recording_server["close_codes"]), 5)
    assert recording_server["close_codes"] == [1000]


async def test_unechoed_lines_give_up_after_linger(recording_server):
    recording_server["echo"] = False
    started = time.monotonic()
    code, _, err = await run_client(recording_server["url"], "--linger", "0.5", stdin=b"x\ny\n")
    assert code == 5
    assert err.decode().splitlines() == [
        "scalechat chat: 0 line(s) rejected, 2 not echoed within 0.5s"]
    assert time.monotonic() - started < 10
    await asyncio.wait_for(_until(lambda: recording_server["close_codes"]), 5)
    assert recording_server["close_codes"] == [1000]


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


# --- on a terminal ---------------------------------------------------------------------


def test_asks_for_a_name_on_a_terminal(chat_server):
    master, slave = pty.openpty()
    proc = subprocess.Popen([*SCALECHAT, "chat", chat_server.ws_url("lobby")],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen = bytearray()

    def read_until(needle: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not in {bytes(seen)!r}")
            if select.select([master], [], [], remaining)[0]:
                try:
                    seen.extend(os.read(master, 4096))
                except OSError:  # EIO: the child closed the terminal
                    break

    try:
        read_until(b"Your name: ")
        os.write(master, b"tina\n")
        read_until(b"* tina joined (1 here)")
        os.write(master, b"on a tty\n")
        read_until(b"tina: on a tty")
        os.write(master, b"\x04")  # Ctrl+D: end of input
        assert proc.wait(10) == 0
        assert b"Traceback" not in seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


async def test_a_lost_connection_is_resumed_with_since_and_nothing_is_shown_twice():
    """The server goes away after seq 6; the client comes back asking for what follows seq 6."""
    queries: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        queries.append(dict(request.query))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        message = {"type": "message", "room": "r", "from": "bob", "ts": 0, "cid": None}
        if len(queries) == 1:
            await ws.send_json({"type": "history", "room": "r", "epoch": "e1", "name": "n", "node": "t",
                                "continuity_lost": False, "last_seq": 5, "messages": []})
            await ws.send_json({**message, "seq": 6, "id": "e1-6", "text": "before"})
            await ws.close(code=1001, message=b"going away")
        else:
            await ws.send_json({"type": "history", "room": "r", "epoch": "e1", "name": "n", "node": "t",
                                "continuity_lost": False, "last_seq": 7,
                                "messages": [{**message, "seq": 6, "id": "e1-6", "text": "before"},
                                             {**message, "seq": 7, "id": "e1-7", "text": "after"}]})
            async for _ in ws:
                pass
        return ws

    async with aiohttp_ws_server(handler, "/ws/r") as url:
        proc = await asyncio.create_subprocess_exec(
            *SCALECHAT, "chat", url, "--name", "n", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out = b""
        try:
            async with asyncio.timeout(20):
                while b"bob: after" not in out:
                    out += await proc.stdout.read(4096)
        finally:
            proc.stdin.close()
            code = await asyncio.wait_for(proc.wait(), 15)
        rest, err = await proc.stdout.read(), await proc.stderr.read()
    lines = (out + rest).decode().splitlines()
    assert code == 0, err
    assert queries[0] == {"name": "n"}
    assert queries[1] == {"name": "n", "since": "6", "epoch": "e1"}
    assert [line.split(": ", 1)[1] for line in lines if " bob: " in line] == ["before", "after"]
    assert "* reconnected to r as n, resuming after seq 6" in lines
    assert re.match(r"! connection closed by server: 1001 going away; reconnecting in \d\.\ds \(attempt 1 of 8\)",
                    err.decode())


def test_on_a_terminal_incoming_lines_go_above_the_line_being_typed(chat_server):
    master, slave = pty.openpty()
    url = chat_server.ws_url("tty")
    proc = subprocess.Popen([*SCALECHAT, "chat", url, "--name", "tess"], stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    seen = bytearray()

    def read_until(needle: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not in {bytes(seen)!r}")
            if select.select([master], [], [], remaining)[0]:
                try:
                    seen.extend(os.read(master, 4096))
                except OSError:
                    break

    try:
        read_until(b"* tess joined (1 here)")
        read_until(b"> ")
        os.write(master, b"half a li")  # typed, not sent
        read_until(b"half a li")
        assert chat(url, "--name", "bob", stdin="hello tess\n").returncode == 0
        read_until(b"bob: hello tess")
        read_until(b"> half a li", 5)  # the prompt and the typed text, redrawn under the new line
        after = bytes(seen).split(b"bob: hello tess", 1)
        assert after[0].endswith(b"] ") and b"\r\x1b[K" in after[0][-40:]  # the input line was cleared first
        os.write(master, b"ne\n")
        read_until(b"tess: half a line")
        os.write(master, b"/quit\n")
        assert proc.wait(10) == 0
        assert b"Traceback" not in seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
