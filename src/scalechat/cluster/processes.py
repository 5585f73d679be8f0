"""Detached processes tracked by PID, free ports, and polling with a deadline.

Every process of a cluster is started in its own session (``setsid``, what
``start_new_session`` does) with stdout and stderr appended to a log file, so
``scalechat cluster up`` can return while they run. No ``Popen`` object is
kept: a process is known by its PID and its start time (``/proc/PID/stat``),
which is what the state file records, so any later command (or test) can
check and stop it, and a PID reused by an unrelated process is never signalled.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from scalechat.cluster.errors import ClusterError

HOST = "127.0.0.1"  # everything listens on loopback only
POLL = 0.05  # seconds between two polls
# Debian puts daemons in /usr/sbin, which is not on an ordinary user's PATH.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One started process: enough to find it again, check it and stop it."""

    name: str
    pid: int
    started: int  # start time in clock ticks since boot (field 22 of /proc/PID/stat)
    argv: tuple[str, ...]
    log: str

    def to_dict(self) -> dict:
        return {"name": self.name, "pid": self.pid, "started": self.started,
                "argv": list(self.argv), "log": self.log}

    @classmethod
    def from_dict(cls, data: dict) -> ProcessRecord:
        return cls(data["name"], int(data["pid"]), int(data["started"]), tuple(data["argv"]),
                   data["log"])


# --- programs and ports -----------------------------------------------------------


def find_program(name: str, override: str | None = None) -> str | None:
    """Absolute path of ``name`` (or of ``override`` when given), or None."""
    if override:
        path = shutil.which(override)
        return os.path.abspath(path) if path else None
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))
    return os.path.abspath(path) if path else None


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the kernel's pick; taken again later by its user)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(port: int, what: str, host: str = HOST) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ClusterError(f"{what} port {port} on {host} is not free "
                               f"({exc.strerror or exc}); choose another one") from None


# --- starting, checking, stopping -------------------------------------------------


def spawn(name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> ProcessRecord:
    """Start ``argv`` (argv[0] an absolute path) in a new session, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # close-on-exec
    try:
        # setsigdef: Python ignores SIGPIPE and SIGXFSZ, and children must not inherit
        # that (what Popen's restore_signals does).
        pid = os.posix_spawn(argv[0], list(argv), os.environ if env is None else env, setsid=True,
                             setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                             file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                           (os.POSIX_SPAWN_DUP2, fd, 1),
                                           (os.POSIX_SPAWN_DUP2, fd, 2)])
    except OSError as exc:
        raise ClusterError(f"cannot start {name} ({argv[0]}): {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    started = _start_time(pid)
    if started is None:  # it died at once and was reaped: keep a record that is never alive
        started = -1
    return ProcessRecord(name, pid, started, tuple(argv), str(log))


def _start_time(pid: int) -> int | None:
    """Start time of a live process; None when it is gone or a zombie (reaped if ours)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return None  # our child, just exited: now reaped
    except ChildProcessError:
        pass  # not our child (started by an earlier command)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])  # field 22 of stat; the list starts at field 3


def is_running(proc: ProcessRecord) -> bool:
    return _start_time(proc.pid) == proc.started


def send_signal(proc: ProcessRecord, sig: int, group: bool = False) -> bool:
    """Signal ``proc`` (or its whole process group) if it is still that process."""
    if not is_running(proc):
        return False
    try:
        # setsid made the process the leader of its own group: pgid == pid.
        (os.killpg if group else os.kill)(proc.pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        raise ClusterError(f"cannot signal {proc.name} (pid {proc.pid}): {exc.strerror}") from None
    return True


def stop(targets: Iterable[tuple[ProcessRecord, int]], timeout: float) -> list[ProcessRecord]:
    """Send each process its stop signal, wait for all; SIGKILL the group of any left.

    Returns the processes that needed SIGKILL.
    """
    targets = list(targets)
    for proc, sig in targets:
        send_signal(proc, sig)
    procs = [proc for proc, _ in targets]
    left = wait_gone(procs, timeout)
    for proc in left:
        send_signal(proc, signal.SIGKILL, group=True)
    if wait_gone(left, 5.0):
        names = ", ".join(f"{p.name} (pid {p.pid})" for p in left)
        raise ClusterError(f"still running after SIGKILL: {names}")
    return left


def kill(proc: ProcessRecord, timeout: float = 5.0) -> None:
    """SIGKILL the process group of ``proc`` and wait until it is gone."""
    send_signal(proc, signal.SIGKILL, group=True)
    if wait_gone([proc], timeout):
        raise ClusterError(f"{proc.name} (pid {proc.pid}) survived SIGKILL for {timeout:g}s")


def wait_gone(procs: Iterable[ProcessRecord], timeout: float) -> list[ProcessRecord]:
    """Wait until none of ``procs`` runs; return those still running at the deadline."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if is_running(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL)


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it returns something true; ClusterError at the deadline.

    The predicate may raise ClusterError itself to give up early (a process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)


def require_running(proc: ProcessRecord) -> None:
    """Raise ClusterError naming the log if ``proc`` has exited."""
    if not is_running(proc):
        raise ClusterError(f"{proc.name} (pid {proc.pid}) exited; see {proc.log}: "
                           f"{log_tail(Path(proc.log))}")


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log, joined on one line (for one-line errors)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) or "(empty log)"


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of a GET to ``url``; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError, http.client.HTTPException):
        return None
