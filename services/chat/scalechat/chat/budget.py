"""The process's memory budget for what clients can make it hold: history and outgoing bytes.

Sans I/O: owners report bytes added and released; the budget says when it is
exceeded. Guarantee kept by its owners: after each history append the history
bytes are brought back under ``limit`` minus the outgoing bytes last measured,
by dropping the oldest history of the least recently active rooms first (a
later ``since`` into what was dropped gets ``continuity_lost``, never a silent
gap); outgoing bytes are measured every ``SWEEP_SECONDS`` and, above their
share, the connections holding the most are closed as slow consumers.
"""

from __future__ import annotations

from scalechat.hostinfo import cgroup_memory_limit

DEFAULT_LIMIT = 256 << 20  # bytes, when the process has no cgroup memory limit
CGROUP_SHARE = 4  # default: a quarter of the cgroup memory limit
SWEEP_SECONDS = 0.5
OUTGOING_SHARE = 0.5  # outgoing buffers may take at most this share of the budget


def default_limit() -> int:
    """A quarter of the cgroup memory limit when there is one, else ``DEFAULT_LIMIT``."""
    cgroup = cgroup_memory_limit()
    return cgroup // CGROUP_SHARE if cgroup else DEFAULT_LIMIT


class MemoryBudget:
    """Bytes of history plus outgoing buffers this process may hold (see the module docstring)."""

    __slots__ = ("limit", "history", "outgoing", "history_dropped")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.history = 0  # bytes of messages kept in rooms' history
        self.outgoing = 0  # bytes queued for clients, as last measured
        self.history_dropped = 0  # messages dropped from history to stay within the budget

    @property
    def history_room(self) -> int:
        """Bytes history may hold now: the limit less the outgoing bytes."""
        return self.limit - self.outgoing

    @property
    def outgoing_limit(self) -> int:
        return int(self.limit * OUTGOING_SHARE)
