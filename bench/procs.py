"""A benchmark's processes, read from /proc, and a server started pinned on free ports.

CPU time comes from ``/proc/<pid>/stat`` at the kernel's tick, write calls
from ``/proc/<pid>/io``; a server counts as started once ``/healthz``
answers on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 15.0


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nothing listens on now (the kernel's picks, held together)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx: master and workers; a CLI and its workers)."""
    pids = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                pids += process_tree(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return pids


def machine_ticks() -> tuple[int, int]:
    """(stolen, all) CPU ticks of the whole machine so far (/proc/stat's first line): the
    share the hypervisor took from the VM."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[7], sum(fields)


def samples(metrics_port: int) -> dict[str, float]:
    """A server's Prometheus samples on 127.0.0.1, by series (name with its labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def write_syscalls(pid: int) -> int:
    """write/writev/send calls made by ``pid`` so far (``syscw`` in /proc/<pid>/io).

    Per delivery, this shows how well the server batches: the kernel cost of a
    loopback send is paid per call, nearly whatever its size.
    """
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no syscw line")


def start_server(core: int, argv: Callable[[int], list[str]],
                 what: str = "the server") -> tuple[subprocess.Popen, int]:
    """Start ``argv(port)`` pinned to ``core`` on a free port; return once /healthz answers."""
    port = free_port()
    proc = subprocess.Popen(["taskset", "-c", str(core), *argv(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"{what} did not start (exit {proc.poll()})") from None
            time.sleep(0.05)


def start_scalechat(core: int, *flags: str, prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int, int]:
    """``scalechat serve FLAGS`` pinned to ``core`` (after ``prefix``, e.g. prlimit); return
    the process, its port and its metrics port."""
    metrics_port = free_port()
    proc, port = start_server(core, lambda port: [
        *prefix, sys.executable, "-m", "scalechat.cli", "serve", "--port", str(port),
        "--metrics-port", str(metrics_port), *flags], "scalechat")
    return proc, port, metrics_port
