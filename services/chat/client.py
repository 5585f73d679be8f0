"""``scalechat chat``: chat in one room from a terminal or a script.

Guarantees:

* Output: history, then live messages, go to stdout as ``[hh:mm:ss] name: text``
  (local time of the server's ``ts``); status lines start with ``*`` (``* bob joined
  (3 here)``); ``error`` frames go to stderr as ``! code: reason``. Every line is
  flushed at once, so a pipe sees it. Control characters from peers are escaped.
* Input: each non-blank stdin line is sent as one message with a fresh ``cid``.
  stdin is read by a thread, so the event loop never blocks on it.
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
import codecs
import http
import itertools
import os
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
EPILOG = """exit codes:
  0  closed normally: /quit, end of input or Ctrl+C (or the server closed with 1000)
  1  the server closed the connection with another code (e.g. 1001 going away) or it was lost
  2  invalid arguments, e.g. a URL that is not ws:// or wss://
  3  cannot connect: connection refused, unknown host, timeout
  4  the server refused the WebSocket upgrade (HTTP status; its reason is printed)
  5  after /quit or end of input, a line sent was rejected or not echoed within --linger
"""
PROG = "scalechat chat"
HANDSHAKE_TIMEOUT = 15.0
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
    try:
        return asyncio.run(Session(url, args.linger).run())
    except KeyboardInterrupt:  # Ctrl+C before the connection was up
        return EXIT_OK


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


def read_stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines of stdin (without line endings) fed by a daemon thread; ``None`` at the end.

    ``os.read`` keeps the thread off ``sys.stdin``'s buffer lock, so the process can
    exit while the thread still waits on a terminal.
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

    threading.Thread(target=pump, name="stdin", daemon=True).start()
    return queue


class Session:
    """One connection: prints what arrives, sends what is typed, tracks unechoed cids."""

    def __init__(self, url: URL, linger: float) -> None:
        self.url, self.linger = url, linger
        self.name: str | None = None  # as the server knows us, from the history frame
        self.pending: set[str] = set()
        self.rejected = 0
        self.settled = asyncio.Event()
        self.settled.set()
        self.closing = False
        self._cids = (f"{secrets.token_hex(4)}-{n}" for n in itertools.count(1))
        self._refusal = ""

    async def run(self) -> int:
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._keep_refusal)
        where = f"cannot connect to {self.url.host}:{self.url.port}"
        async with aiohttp.ClientSession(trace_configs=[trace]) as client:
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    # max_msg_size=0: the history frame after --since may be large.
                    ws = await client.ws_connect(self.url, heartbeat=30.0, max_msg_size=0)
            except aiohttp.WSServerHandshakeError as exc:
                what = "server refused the connection" if exc.status >= 400 else "not a WebSocket endpoint"
                reason = self._refusal or PHRASES.get(exc.status) or exc.message
                return _fail(EXIT_REFUSED, f"{what}: {exc.status} {reason}")
            except aiohttp.ClientConnectorError as exc:
                err = exc.os_error
                why = os.strerror(err.errno) if (err.errno or 0) > 0 else (err.strerror or str(err))
                return _fail(EXIT_UNREACHABLE, f"{where}: {why.lower()}")
            except TimeoutError:
                return _fail(EXIT_UNREACHABLE, f"{where}: no answer in {HANDSHAKE_TIMEOUT:g}s")
            except aiohttp.ClientError as exc:
                return _fail(EXIT_UNREACHABLE, f"{where}: {exc or type(exc).__name__}")
            return await self._converse(ws)

    async def _keep_refusal(self, session, ctx, params: aiohttp.TraceRequestEndParams) -> None:
        # WSServerHandshakeError drops the response body, which holds the server's reason.
        if params.response.status >= 400:
            with suppress(Exception):
                body = await asyncio.wait_for(params.response.read(), 5.0)
                self._refusal = _safe(body.decode("utf-8", "replace").strip().splitlines()[0])

    async def _converse(self, ws: aiohttp.ClientWebSocketResponse) -> int:
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        receiver = asyncio.create_task(self._receive(ws))
        sender = asyncio.create_task(self._send_lines(ws, read_stdin_lines(loop)))
        stop = asyncio.create_task(interrupted.wait())
        await asyncio.wait({receiver, sender, stop}, return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and not receiver.done() and not interrupted.is_set():
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
        if interrupted.is_set() or not (self.pending or self.rejected):
            return EXIT_OK
        return _fail(EXIT_UNDELIVERED, f"{self.rejected} line(s) rejected, {len(self.pending)} "
                                       f"not echoed within {self.linger:g}s")

    async def _send_lines(self, ws: aiohttp.ClientWebSocketResponse,
                          lines: asyncio.Queue[str | None]) -> None:
        while (line := await lines.get()) is not None and line.strip() != "/quit":
            if not line.strip():
                continue
            cid = next(self._cids)
            self.pending.add(cid)
            self.settled.clear()
            try:
                await ws.send_str(orjson.dumps({"type": "message", "text": line, "cid": cid}).decode())
            except (ConnectionError, aiohttp.ClientError):
                return  # the receiver reports why the connection ended

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> int:
        """Print frames until the socket ends; the exit code if the server ended it."""
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
                return _fail(EXIT_OK if msg.data == aiohttp.WSCloseCode.OK else EXIT_CLOSED, line)
            detail = f": {msg.data}" if msg.type is aiohttp.WSMsgType.ERROR else ""
            return _fail(EXIT_CLOSED, f"connection lost{detail}")

    def _show(self, text: str) -> None:
        try:
            frame = orjson.loads(text)
            kind = frame["type"]
            if kind == "message":
                print(format_message(frame), flush=True)
                if frame["from"] == self.name:
                    self._settle(frame.get("cid"))
            elif kind == "history":
                self.name = frame["name"]
                print(f"* you are {_safe(self.name)} in {_safe(frame['room'])} "
                      f"(epoch {_safe(frame['epoch'])})")
                if frame["continuity_lost"]:
                    print("! history incomplete: messages after --since are gone; showing the latest",
                          file=sys.stderr, flush=True)
                for message in frame["messages"]:
                    print(format_message(message))
                sys.stdout.flush()
            elif kind == "presence":
                print(format_presence(frame), flush=True)
            elif kind == "error":
                print(f"! {_safe(frame['code'])}: {_safe(frame['reason'])}", file=sys.stderr, flush=True)
                if frame.get("cid") in self.pending:
                    self.rejected += 1
                    self._settle(frame["cid"])
        except (ValueError, KeyError, TypeError) as exc:
            print(f"! unreadable frame from server ({type(exc).__name__}: {exc})",
                  file=sys.stderr, flush=True)

    def _settle(self, cid: str | None) -> None:
        self.pending.discard(cid)
        if not self.pending:
            self.settled.set()
