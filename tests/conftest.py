"""Shared fixtures: real server processes on 127.0.0.1 and free ports.

``chat_server`` starts ``scalechat serve`` as a subprocess (the product as a
user runs it) and stops it with SIGTERM; ``start_server`` makes more with
other settings. Every wait polls with a deadline.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from scalechat.chat import native
from support import SCALECHAT, ServerProcess, free_port, healthy, wait_until


def pytest_sessionstart(session):
    stale = native.stale()
    if stale:
        pytest.exit(native.stale_advice(stale), returncode=4)


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
            return healthy(server.http_url)

        wait_until(up, 15, message=f"server on port {port}")
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def chat_server(start_server) -> ServerProcess:
    """A server with default settings except a short heartbeat-free test profile."""
    return start_server()
