"""Helpers shared by tests (importable as ``support``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
SCALECHAT = [sys.executable, "-m", "scalechat.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, message="condition", *, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes.

    ``message`` names what is awaited; it may be a callable, evaluated on failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {_said(message)}")
        time.sleep(interval)


async def eventually(predicate, timeout: float = 10.0, message="condition", *, interval: float = 0.02):
    """``wait_until`` for async tests: sleeps with asyncio so the loop keeps running.

    ``predicate`` may also be a coroutine function (a Redis query, say); its result is awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {_said(message)}")
        await asyncio.sleep(interval)


def _said(message) -> str:
    return message() if callable(message) else message


@dataclass
class ServerProcess:
    port: int
    metrics_port: int
    proc: subprocess.Popen
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def ws_url(self, room: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{room}" + (f"?{query}" if query else "")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, labels: str = "") -> float:
        """Value of one sample from the metrics endpoint (0.0 when absent)."""
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        wanted = name + (f"{{{labels}}}" if labels else "")
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class ThrowawayRedis:
    """A redis-server we own on a free port: no persistence, so a restart loses every key."""

    def __init__(self, tmp_path: Path, *extra_args: str) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> ThrowawayRedis:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.dir), "--daemonize", "no", "--save", "", "--appendonly", "no",
             "--logfile", str(self.dir / "redis.log"), *self.extra_args])
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            assert self.proc.poll() is None, (self.dir / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def command(self, *args: str) -> bytes:
        """One command over a raw socket (inline protocol); the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(" ".join(args).encode() + b"\r\n")
            return s.recv(1 << 16)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(url + "/healthz", timeout=1).status == 200
    except OSError:
        return False


@contextlib.asynccontextmanager
async def aiohttp_ws_server(handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                            path: str = "/ws") -> AsyncIterator[str]:
    """Serve ``handler`` at ``path`` on 127.0.0.1 in this process; yields the ws:// URL."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}{path}"
    finally:
        await runner.cleanup()
