"""Exceptions of the cluster tool; each message is one line, printed as is.

    ClusterError     anything the user can fix: a busy port, a missing program, a
                     cluster already running, a process that did not come up (exit 1)
     +-- UsageError  arguments that cannot work, e.g. ``--replicas 0`` (exit 2)
"""

from __future__ import annotations


class ClusterError(Exception):
    """A problem with a one-line explanation for the user."""


class UsageError(ClusterError):
    """Arguments that cannot work whatever the machine's state."""
