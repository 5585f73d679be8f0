"""Which of the chat server's modules run compiled, and whether a compiled one is stale.

The per-message path (socket, node, broker, hub, room, outbox, protocol) is
compiled with mypyc when the service is installed with a C compiler at hand
(``services/chat/setup.py``); the source stays the same Python, which runs
as it is without a compiler or with ``SCALECHAT_PURE_PYTHON=1`` at install.
A compiled module is imported instead of its source, so an edited source
runs only once rebuilt (``make`` does it): :func:`stale` names the ones whose
source is newer than their build. ``SCALECHAT_PURE_PYTHON=1`` at run time
imports the sources instead (:func:`prefer_source`; for a debugger or a
Python-level profiler, and to test the plain path).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = "scalechat.chat"
# The modules a message passes through, in the order it meets them.
COMPILED = ("client_socket", "deflate", "node", "ratelimit", "protocol", "broker",
            "broker_memory", "hub", "room", "outbox", "framing")
_HERE = Path(__file__).resolve().parent
# An install writes a module's source and build moments apart, in either order: a source
# is stale only when saved this many seconds after its build (an edit, not an install).
STALE_AFTER = 2.0


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`COMPILED` as their ``.py`` files, never their builds."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{name}.py")


def prefer_source() -> None:
    """Import the sources of :data:`COMPILED` from now on (none may be imported yet)."""
    loaded = [name for name in COMPILED if f"{PACKAGE}.{name}" in sys.modules]
    if loaded:
        raise RuntimeError(f"already imported: {', '.join(loaded)}")
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def compiled() -> list[str]:
    """The modules of :data:`COMPILED` that are imported as extension modules."""
    found = []
    for name in COMPILED:
        spec = importlib.util.find_spec(f"{PACKAGE}.{name}")
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            found.append(name)
    return found


def stale(folder: Path = _HERE, names: Sequence[str] = COMPILED) -> list[str]:
    """Builds in ``folder`` that would run other code than their source: older than it, or
    of a module no longer in ``names`` (a rebuild leaves those behind: delete them)."""
    found = []
    for built in sorted(folder.glob("*.so")):
        name = built.name.split(".")[0]
        source = folder / f"{name}.py"
        if not source.exists():
            continue  # mypyc's shared library, or an extension without a Python twin
        if name not in names or source.stat().st_mtime > built.stat().st_mtime + STALE_AFTER:
            found.append(name)
    return found


def stale_advice(names: Sequence[str]) -> str:
    """What to say about :func:`stale`'s findings, and what to do."""
    return (f"stale builds, running other code than the source: {', '.join(names)} (rebuild: "
            "make .venv/.native, or pip install -e services/chat; delete a build of a module "
            "no longer in scalechat.chat.native.COMPILED)")
