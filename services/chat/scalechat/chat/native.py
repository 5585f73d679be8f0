"""Which of the chat server's per-message modules run compiled, and whether one is stale.

The per-message path (socket, node, broker, hub, room, outbox, protocol) is
compiled with mypyc when the service is installed with a C compiler at hand
(``services/chat/setup.py``), and so is the core's frame parser
(``scalechat.native``); the source stays the same Python, which runs as it is
without a compiler or with ``SCALECHAT_PURE_PYTHON=1`` at install. A compiled
module is imported instead of its source, so an edited source runs only once
rebuilt (``make`` does it). ``SCALECHAT_PURE_PYTHON=1`` at run time imports the
sources instead (:func:`prefer_source`).
"""

from __future__ import annotations

from pathlib import Path

from scalechat import native as core

# The modules a message passes through, in the order it meets them.
COMPILED = ("client_socket", "deflate", "node", "ratelimit", "protocol", "broker",
            "broker_memory", "budget", "hub", "room", "outbox", "framing", "counters")
CHAT = core.Compiled("scalechat.chat", Path(__file__).resolve().parent, COMPILED)
# What a message runs through: the core's frame parser, then the chat server's modules.
PER_MESSAGE = (core.CORE, CHAT)


def modules() -> list[str]:
    """The per-message modules, as imported: all of them run compiled after a full build."""
    return [module for c in PER_MESSAGE for module in c.modules()]


def compiled() -> list[str]:
    """The per-message modules that are imported as extension modules."""
    return core.compiled(*PER_MESSAGE)


def prefer_source() -> None:
    """Import the per-message modules' sources from now on (none may be imported yet)."""
    core.prefer_source(*PER_MESSAGE)


def stale() -> list[str]:
    """Per-message modules whose build would run other code than their source (or that
    are no longer listed): see :func:`scalechat.native.stale`."""
    return [f"{c.package}.{name}" for c in PER_MESSAGE for name in core.stale(c.folder, c.names)]


def stale_advice(names: list[str]) -> str:
    """What to say about :func:`stale`'s findings, and what to do."""
    return (f"stale builds, running other code than the source: {', '.join(names)} (rebuild: "
            "make .venv/.native, or pip install -e . -e services/chat; delete a build of a "
            "module no longer in a COMPILED list: scalechat.native, scalechat.chat.native)")
