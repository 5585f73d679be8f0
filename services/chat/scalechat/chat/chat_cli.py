"""``scalechat chat``: chat in one room from a terminal or a script.

Guarantees:

* Output: history, then live messages, go to stdout as ``[hh:mm:ss] name: text``
  (local time of the server's ``ts``); status lines start with ``*`` (``* bob joined
  (3 here)``); ``error`` frames and local complaints go to stderr as ``! ...``.
  Every line is flushed at once, so a pipe sees it. Control characters from peers
  are escaped. On a terminal, lines arrive above the line being typed (readline),
  which is redrawn under them.
* Input: each non-blank line is sent as one message with a fresh ``cid``, except
  commands, answered here and never sent: ``/help``, ``/quit``, ``/who`` and any
  other ``/word`` (refused with a hint); ``//text`` sends ``/text``. stdin is
  read by a thread, so the event loop never blocks on it.
* Reconnecting: when the connection is lost or the server closes with 1001,
  1011, 1012 or 1013, the client reconnects with exponential backoff and jitter
  (``--reconnect`` attempts), resuming with ``since`` and ``epoch`` as the web
  page does: it prints only messages it has not shown, and resends every line
  not yet echoed with its ``cid`` (the server stores a resend once).
* Ending: ``/quit`` or end of input closes with 1000 once every line sent has
  been echoed back or rejected (matched by ``cid``), waiting at most ``--linger``
  seconds; so ``printf 'a\\nb\\n' | scalechat chat URL`` prints both echoes.
  Ctrl+C closes with 1000 at once.
* Failures print one line on stderr, never a traceback, and exit with a code
  from ``EPILOG``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import codecs
import http
import itertools
import os
import random
import secrets
import signal
import sys
import threading
import time
from contextlib import suppress

import aiohttp
import orjson
from yarl import URL

EXIT_OK, EXIT_CLOSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_UNDELIVERED = range(6)
EPILOG = """commands (typed as a line; never sent to the room):
  /help        this list
  /who         who is here: the count from the server, the names seen joining
  /quit        leave (as end of input does)
  //text       send a line that starts with /

exit codes:
  0  closed normally: /quit, end of input or Ctrl+C (or the server closed with 1000)
  1  the server closed the connection with another code (e.g. 1008) or it was lost and
     --reconnect attempts did not bring it back
  2  invalid arguments, e.g. a URL that is not ws:// or wss://
  3  cannot connect: connection refused, unknown host, timeout
  4  the server refused the WebSocket upgrade (HTTP status; its reason is printed)
  5  after /quit or end of input, a line sent was rejected or not echoed within --linger
"""
PROG = "scalechat chat"
HANDSHAKE_TIMEOUT = 15.0
RETRYABLE_CLOSES = {1001, 1006, 1011, 1012, 1013}  # going away, lost, server error, restart, try later
RETRYABLE_STATUSES = {429, 502, 503, 504}  # refusals worth retrying while reconnecting
BACKOFF_BASE, BACKOFF_MAX, JITTER = 0.5, 10.0, 0.5  # as the web page: 0.5 s doubling to 10 s, +-50%
WHO_WAIT = 1.0  # seconds /who waits for the first count after joining

HELP = ["* /help: this list", "* /who: who is here (the server's count; names seen joining since you came)",
        "* /quit: leave", "* //text: send a line that starts with /", "* anything else: sent to the room"]
PROMPT = "> "
PHRASES = {status.value: status.phrase for status in http.HTTPStatus}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("url", help="the room's URL, e.g. ws://127.0.0.1:8080/ws/lobby")
    parser.add_argument("--name", help="your name in the room; asked for when stdin is a "
                                       "terminal, else the server makes one up")
    parser.add_argument("--token", help="signed token, for servers that require one (it names you)")
    parser.add_argument("--since", type=int, metavar="SEQ",
                        help="resume: get the messages after this seq as history")
    parser.add_argument("--epoch", help="the room epoch SEQ belongs to (printed when you join)")
    parser.add_argument("--linger", type=float, default=5.0, metavar="SECONDS",
                        help="after /quit or end of input, wait at most this long for the "
                             "server to echo the lines sent (default: %(default)s)")
    parser.add_argument("--reconnect", type=int, default=8, metavar="N",
                        help="after a lost connection (or a server going away), try this many "
                             "times to reconnect and resume, backing off from 0.5 s to 10 s; "
                             "0 exits at once (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        url = room_url(args.url)
    except ValueError as exc:
        return _fail(EXIT_USAGE, f"argument url: {exc}")
    if args.epoch is not None and args.since is None:
        return _fail(EXIT_USAGE, "argument --epoch: needs --since")
    name = args.name
    if name is None and args.token is None and "name" not in url.query and sys.stdin and sys.stdin.isatty():
        try:
            name = input("Your name: ").strip() or None  # blank: the server picks one
        except (EOFError, KeyboardInterrupt):
            print()
            return EXIT_OK
    extra = {"name": name, "token": args.token, "since": args.since, "epoch": args.epoch}
    url = url.update_query({k: str(v) for k, v in extra.items() if v is not None})
    if args.reconnect < 0:
        return _fail(EXIT_USAGE, "argument --reconnect: must be >= 0")
    terminal = Terminal.open()
    try:
        return asyncio.run(Session(url, args.linger, args.reconnect, terminal).run())
    except KeyboardInterrupt:  # Ctrl+C before the connection was up
        return EXIT_OK
    finally:
        terminal.close()


def room_url(raw: str) -> URL:
    """Parse ``raw`` as a ws:// or wss:// URL or raise ValueError saying why not."""
    try:
        url = URL(raw)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"{raw!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("ws", "wss") or not url.host or port is None:
        raise ValueError(f"{raw!r} is not a ws:// or wss:// URL with a host, "
                         "e.g. ws://127.0.0.1:8080/ws/lobby")
    return url


def _fail(code: int, line: str) -> int:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)
    return code


def _safe(text: str) -> str:
    """``text`` with control characters escaped, so a peer cannot drive our terminal."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def format_message(frame: dict) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(frame["ts"] / 1000))
    return f"[{clock}] {_safe(frame['from'])}: {_safe(frame['text'])}"


def format_presence(frame: dict) -> str:
    verb = "joined" if frame["event"] == "join" else "left"
    return f"* {_safe(frame['name'])} {verb} ({frame['count']} here)"


def read_stdin_lines(loop: asyncio.AbstractEventLoop, terminal: Terminal) -> asyncio.Queue[str | None]:
    """Lines of stdin (without line endings) fed by a daemon thread; ``None`` at the end.

    On a terminal the thread reads with readline (editing, history) under a prompt;
    otherwise ``os.read`` keeps it off ``sys.stdin``'s buffer lock, so the process can
    exit while the thread still waits.
    """
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    decode = codecs.getincrementaldecoder(getattr(sys.stdin, "encoding", None) or "utf-8")(errors="replace").decode

    def put(item: str | None) -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody listens any more
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        rest = ""
        try:
            while chunk := os.read(0, 65536):
                *lines, rest = (rest + decode(chunk)).split("\n")
                for line in lines:
                    put(line.removesuffix("\r"))
            if rest := rest + decode(b"", final=True):
                put(rest)
        except OSError:
            pass
        finally:
            put(None)

    def prompt() -> None:
        try:
            while True:
                terminal.reading = True
                put(input(PROMPT))
        except (EOFError, OSError, ValueError):
            pass
        finally:
            terminal.reading = False
            put(None)

    threading.Thread(target=prompt if terminal.tty else pump, name="stdin", daemon=True).start()
    return queue


class Terminal:
    """Where lines go. On a terminal, a line printed while one is being typed goes above it.

    The input line is cleared, the new line written, and readline redraws the
    prompt with what was typed (``rl_forced_update_display``, or the prompt and
    the buffer written back where that symbol cannot be found). The terminal's
    modes are restored on close, whatever readline left.
    """

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.reading = False
        self._saved = None
        self._redisplay = None
        self._readline = None
        if tty:
            import readline
            import termios

            self._readline = readline
            with suppress(termios.error):
                self._saved = termios.tcgetattr(0)
            with suppress(OSError, AttributeError):
                import ctypes
                self._redisplay = ctypes.CDLL(readline.__file__).rl_forced_update_display

    @classmethod
    def open(cls) -> Terminal:
        return cls(bool(sys.stdin and sys.stdin.isatty() and sys.stdout.isatty()))

    def line(self, text: str, stream=None) -> None:
        stream = stream or sys.stdout
        if not (self.tty and self.reading):
            print(text, file=stream, flush=True)
            return
        sys.stdout.write("\r\x1b[K")
        sys.stdout.flush()
        print(text, file=stream, flush=True)
        if self._redisplay is not None:
            self._redisplay()
        else:
            sys.stdout.write(PROMPT + self._readline.get_line_buffer())
        sys.stdout.flush()

    def close(self) -> None:
        if self._saved is not None:
            import termios
            with suppress(termios.error):
                termios.tcsetattr(0, termios.TCSADRAIN, self._saved)
            if self.reading:
                sys.stdout.write("\n")
                sys.stdout.flush()


class Session:
    """One conversation, over as many connections as it takes: prints, sends, resumes."""

    def __init__(self, url: URL, linger: float, reconnect: int = 0, terminal: Terminal | None = None) -> None:
        self.url, self.linger, self.reconnect = url, linger, reconnect
        self.terminal = terminal or Terminal(False)
        self.name: str | None = None  # as the server knows us, from the history frame
        self.room: str | None = None
        self.epoch: str | None = None
        self.last_seq: int | None = None  # the newest seq shown: resume after it
        self.count: int | None = None  # members, from the latest presence
        self.counted = asyncio.Event()  # set once a presence frame gave a count
        self.seen: set[str] = set()  # names seen joining (and not leaving) since we came
        self.pending: dict[str, str] = {}  # cid -> text, sent and not yet echoed or rejected
        self.rejected = 0
        self.settled = asyncio.Event()
        self.settled.set()
        self.closing = False
        self.eof = False
        self.joined_once = False
        self._cids = (f"{secrets.token_hex(4)}-{n}" for n in itertools.count(1))
        self._refusal = ""

    def out(self, line: str) -> None:
        self.terminal.line(line)

    def err(self, line: str) -> None:
        self.terminal.line(line, sys.stderr)

    async def run(self) -> int:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._keep_refusal)
        async with aiohttp.ClientSession(trace_configs=[trace]) as client:
            ws = await self._connect(client)
            if isinstance(ws, int):
                return ws
            loop = asyncio.get_running_loop()
            self.interrupted = asyncio.Event()
            loop.add_signal_handler(signal.SIGINT, self.interrupted.set)
            lines = read_stdin_lines(loop, self.terminal)
            while True:
                outcome = await self._converse(ws, lines)
                if not isinstance(outcome, tuple):
                    return outcome
                ws = await self._reconnect(client, outcome)
                if isinstance(ws, int):
                    return ws

    async def _connect(self, client: aiohttp.ClientSession, quiet: bool = False):
        """A connected socket, or the exit code (after one line on stderr unless ``quiet``)."""
        url = self.url
        if self.epoch is not None and self.last_seq is not None:  # resume after what we have shown
            url = url.update_query(since=str(self.last_seq), epoch=self.epoch)
        where = f"cannot connect to {url.host}:{url.port}"
        self._refusal = ""
        fail = (lambda code, line: (code, line)) if quiet else _fail
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                # max_msg_size=0: the history frame after --since may be large.
                return await client.ws_connect(url, heartbeat=30.0, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            what = "server refused the connection" if exc.status >= 400 else "not a WebSocket endpoint"
            reason = self._refusal or PHRASES.get(exc.status) or exc.message
            return fail(EXIT_REFUSED, f"{what}: {exc.status} {reason}") if not quiet or \
                exc.status not in RETRYABLE_STATUSES else (EXIT_UNREACHABLE, f"{what}: {exc.status} {reason}")
        except aiohttp.ClientConnectorError as exc:
            err = exc.os_error
            why = os.strerror(err.errno) if (err.errno or 0) > 0 else (err.strerror or str(err))
            return fail(EXIT_UNREACHABLE, f"{where}: {why.lower()}")
        except TimeoutError:
            return fail(EXIT_UNREACHABLE, f"{where}: no answer in {HANDSHAKE_TIMEOUT:g}s")
        except aiohttp.ClientError as exc:
            return fail(EXIT_UNREACHABLE, f"{where}: {exc or type(exc).__name__}")

    async def _reconnect(self, client: aiohttp.ClientSession, why: tuple[int, str]):
        """Try ``--reconnect`` times with backoff; the new socket, or the exit code."""
        code, line = why
        for attempt in range(1, self.reconnect + 1):
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1)) * random.uniform(1 - JITTER, 1 + JITTER)
            self.err(f"! {line}; reconnecting in {delay:.1f}s (attempt {attempt} of {self.reconnect})")
            with suppress(TimeoutError):
                await asyncio.wait_for(self.interrupted.wait(), delay)
            if self.interrupted.is_set():
                return EXIT_OK
            result = await self._connect(client, quiet=True)
            if not isinstance(result, tuple):
                return result
            code, line = result
            if code == EXIT_REFUSED:  # the server says no (bad token, room...): retrying will not help
                return _fail(code, line)
        return _fail(EXIT_CLOSED if why[0] == EXIT_CLOSED else code,
                     f"{why[1]}; gave up after {self.reconnect} reconnect attempt(s)")

    async def _keep_refusal(self, session, ctx, params: aiohttp.TraceRequestEndParams) -> None:
        # WSServerHandshakeError drops the response body, which holds the server's reason.
        if params.response.status >= 400:
            with suppress(Exception):
                body = await asyncio.wait_for(params.response.read(), 5.0)
                self._refusal = _safe(body.decode("utf-8", "replace").strip().splitlines()[0])

    async def _converse(self, ws: aiohttp.ClientWebSocketResponse, lines: asyncio.Queue[str | None]):
        """The exit code, or (code, why) when the connection should be resumed."""
        receiver = asyncio.create_task(self._receive(ws))
        for cid, text in list(self.pending.items()):  # after a reconnect: resend, same cid
            with suppress(ConnectionError, aiohttp.ClientError):
                await ws.send_str(orjson.dumps({"type": "message", "text": text, "cid": cid}).decode())
        sender = asyncio.create_task(self._send_lines(ws, lines))
        stop = asyncio.create_task(self.interrupted.wait())
        await asyncio.wait({receiver, sender, stop}, return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and not receiver.done() and not self.interrupted.is_set():
            settled = asyncio.create_task(self.settled.wait())  # linger for the echoes
            await asyncio.wait({receiver, settled, stop}, timeout=self.linger,
                               return_when=asyncio.FIRST_COMPLETED)
            settled.cancel()
        sender.cancel()
        stop.cancel()
        if receiver.done():
            return receiver.result()
        self.closing = True
        await ws.close(code=aiohttp.WSCloseCode.OK)
        await receiver
        if self.interrupted.is_set() or not (self.pending or self.rejected):
            return EXIT_OK
        return _fail(EXIT_UNDELIVERED, f"{self.rejected} line(s) rejected, {len(self.pending)} "
                                       f"not echoed within {self.linger:g}s")

    async def _send_lines(self, ws: aiohttp.ClientWebSocketResponse,
                          lines: asyncio.Queue[str | None]) -> None:
        while not self.eof:
            line = await lines.get()
            if line is None:
                self.eof = True
                return
            text = line.strip()
            if not text:
                continue
            if text.startswith("/") and not text.startswith("//"):
                if text.split()[0].lower() == "/who" and self.count is None:
                    # Right after joining, our own presence (the first count) may be on its way.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(WHO_WAIT):
                            await self.counted.wait()
                if self._command(text):
                    self.eof = True
                    return
                continue
            if text.startswith("//"):
                line = line.lstrip()[1:]
            cid = next(self._cids)
            self.pending[cid] = line
            self.settled.clear()
            try:
                await ws.send_str(orjson.dumps({"type": "message", "text": line, "cid": cid}).decode())
            except (ConnectionError, aiohttp.ClientError):
                return  # the receiver reports why the connection ended; the line is resent on resume

    def _command(self, text: str) -> bool:
        """Answer a command here; True for /quit."""
        word = text.split()[0].lower()
        if word == "/quit":
            return True
        if word == "/help":
            for line in HELP:
                self.out(line)
        elif word == "/who":
            others = sorted(self.seen - {self.name})
            count = "?" if self.count is None else str(self.count)
            names = ", ".join(_safe(n) for n in [self.name or "you", *others])
            self.out(f"* {count} here; known by name: {names}"
                     + ("" if self.count is None or self.count <= len(others) + 1
                        else " (the others were here before you and have not spoken up)"))
        else:
            self.err(f"! unknown command {_safe(word)}: /help lists them; start with // to send a line "
                     "that begins with /")
        return False

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse):
        """Print frames until the socket ends; the exit code, or (code, why) to resume."""
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._show(msg.data)
                continue
            if msg.type is aiohttp.WSMsgType.BINARY:
                continue
            if self.closing:
                return EXIT_OK
            if msg.type is aiohttp.WSMsgType.CLOSE:
                line = f"connection closed by server: {msg.data} {_safe(msg.extra or '')}".rstrip()
                if msg.data == aiohttp.WSCloseCode.OK:
                    return _fail(EXIT_OK, line)
                close = msg.data
            else:
                detail = f": {msg.data}" if msg.type is aiohttp.WSMsgType.ERROR else ""
                line, close = f"connection lost{detail}", 1006
            if self.reconnect and self.joined_once and close in RETRYABLE_CLOSES:
                return EXIT_CLOSED, line
            return _fail(EXIT_CLOSED, line)

    def _show(self, text: str) -> None:
        try:
            frame = orjson.loads(text)
            kind = frame["type"]
            if kind == "message":
                seq = frame.get("seq")
                if isinstance(seq, int) and self.last_seq is not None and seq <= self.last_seq:
                    if frame["from"] == self.name:
                        self._settle(frame.get("cid"))  # a resend's acknowledgement: shown already
                    return
                if isinstance(seq, int):
                    self.last_seq = seq
                self.out(format_message(frame))
                if frame["from"] == self.name:
                    self._settle(frame.get("cid"))
            elif kind == "history":
                self._history(frame)
            elif kind == "presence":
                if frame["event"] == "join":
                    self.seen.add(frame["name"])
                else:
                    self.seen.discard(frame["name"])
                self.count = frame["count"]
                self.counted.set()
                self.out(format_presence(frame))
            elif kind == "error":
                self.err(f"! {_safe(frame['code'])}: {_safe(frame['reason'])}")
                if frame.get("cid") in self.pending:
                    self.rejected += 1
                    self._settle(frame["cid"])
        except (ValueError, KeyError, TypeError) as exc:
            self.err(f"! unreadable frame from server ({type(exc).__name__}: {exc})")

    def _history(self, frame: dict) -> None:
        resumed = self.joined_once
        self.name, self.room = frame["name"], frame["room"]
        if resumed:
            since = self.last_seq
            self.out(f"* reconnected to {_safe(self.room)} as {_safe(self.name)}"
                     + (f", resuming after seq {since}" if since is not None and frame["epoch"] == self.epoch else ""))
        else:
            self.out(f"* you are {_safe(self.name)} in {_safe(self.room)} (epoch {_safe(frame['epoch'])})")
        if frame["continuity_lost"]:
            self.err("! history incomplete: messages after --since are gone; showing the latest" if not resumed
                     else "! history incomplete: messages sent while disconnected are gone; showing the latest")
            self.last_seq = None
        if frame["epoch"] != self.epoch:
            self.last_seq = None
        self.epoch = frame["epoch"]
        self.joined_once = True
        for message in frame["messages"]:
            seq = message.get("seq")
            if isinstance(seq, int) and self.last_seq is not None and seq <= self.last_seq:
                continue
            self.out(format_message(message))
        last = frame.get("last_seq")
        if isinstance(last, int):
            self.last_seq = max(last, self.last_seq or 0)

    def _settle(self, cid: str | None) -> None:
        self.pending.pop(cid, None)
        if not self.pending:
            self.settled.set()
