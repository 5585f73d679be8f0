"""Shared fixtures: real server processes on 127.0.0.1 and free ports.

``chat_server`` starts ``scalechat serve`` as a subprocess (the product as a
user runs it) and stops it with SIGTERM; ``start_server`` makes more with
other settings. Every wait polls with a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCALECHAT = [sys.executable, "-m", "scalechat.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


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


def _healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(url + "/healthz", timeout=1).status == 200
    except OSError:
        return False


@pytest.fixture
def start_server(tmp_path):
    """Factory: ``start_server("--rate-limit", "5", env={...})`` -> a running ServerProcess."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, port: int | None = None) -> ServerProcess:
        port = port or free_port()
        metrics_port = free_port()
        log_path = tmp_path / f"server-{port}-{len(started)}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SCALECHAT_")}
        full_env.update(env or {})
        cmd = [*SCALECHAT, "serve", "--port", str(port), "--metrics-port", str(metrics_port), *args]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=tmp_path)
        server = ServerProcess(port, metrics_port, proc, log_path, list(args))
        started.append(server)

        def up():
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{server.log()}")
            return _healthy(server.http_url)

        wait_until(up, 15, message=f"server on port {port}")
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def chat_server(start_server) -> ServerProcess:
    """A server with default settings except a short heartbeat-free test profile."""
    return start_server()
