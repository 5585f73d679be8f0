"""Modules compiled with mypyc beside their source, and the checks that keep that honest.

A distribution that compiles modules lists them as ``COMPILED`` in a
``native.py`` of its package (this one for the core; ``scalechat.chat.native``
for the chat server) and builds them in its ``setup.py`` with
:func:`extensions` when a C compiler is at hand. Without one, or with
``SCALECHAT_PURE_PYTHON=1`` at install, the same source installs as plain
Python: same behaviour, slower. A build is imported instead of its source, so
an edited source runs only once rebuilt (``make`` does it): :func:`stale` names
the builds that would run other code than their source.
``SCALECHAT_PURE_PYTHON=1`` at run time imports the sources instead
(:func:`prefer_source`: for a debugger or a Python-level profiler, and to test
the plain path).

Standard library only: the ``setup.py`` files import it before anything is
installed.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

# The core's compiled modules: the frame parser, which both ends run on every frame read.
COMPILED = ("wsframes",)
# An install writes a module's source and build moments apart, in either order: a source
# is stale only when saved this many seconds after its build (an edit, not an install).
STALE_AFTER = 2.0


class Compiled(NamedTuple):
    """One package's compiled modules: ``names`` in ``package``, whose files are in ``folder``."""

    package: str
    folder: Path
    names: tuple[str, ...]

    def modules(self) -> list[str]:
        return [f"{self.package}.{name}" for name in self.names]


CORE = Compiled("scalechat", Path(__file__).resolve().parent, COMPILED)


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of some :class:`Compiled` lists as their ``.py`` files, never their builds."""

    def __init__(self, lists: Sequence[Compiled]) -> None:
        self.sources = {f"{c.package}.{name}": c.folder / f"{name}.py"
                        for c in lists for name in c.names}

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        return None if source is None else importlib.util.spec_from_file_location(fullname, source)


def prefer_source(*lists: Compiled) -> None:
    """Import the sources of ``lists``' modules from now on (none may be imported yet)."""
    wanted = [module for c in lists for module in c.modules()]
    loaded = [module for module in wanted if module in sys.modules]
    if loaded:
        raise RuntimeError(f"already imported: {', '.join(loaded)}")
    finders = [f for f in sys.meta_path if isinstance(f, _SourceFinder)]
    if not finders or not set(wanted) <= set(finders[0].sources):
        sys.meta_path.insert(0, _SourceFinder(lists))


def compiled(*lists: Compiled) -> list[str]:
    """The modules of ``lists`` that are imported as extension modules."""
    found = []
    for module in (m for c in lists for m in c.modules()):
        spec = importlib.util.find_spec(module)
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            found.append(module)
    return found


def stale(folder: Path, names: Sequence[str]) -> list[str]:
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


def listed(native_py: Path) -> list[str]:
    """``COMPILED`` of a ``native.py``, read without importing its package."""
    tree = ast.parse(native_py.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED":
            return list(ast.literal_eval(node.value))
    raise SystemExit(f"{native_py} defines no COMPILED")


def extensions(base: Path, folder: str, names: Sequence[str], group: str,
               what: str, mypy_path: Sequence[Path]) -> list:
    """For a ``setup.py``: ``names`` in ``folder`` (relative to the setup.py's folder, the
    working directory) compiled as one mypyc ``group``, their module names taken from
    ``base``; or none (plain Python) without a C compiler or with ``SCALECHAT_PURE_PYTHON=1``.

    With a compiler, a module that does not compile fails the install: a type
    error there is a bug, not a reason to fall back quietly.
    """
    if os.environ.get("SCALECHAT_PURE_PYTHON") == "1":
        print(f"SCALECHAT_PURE_PYTHON=1: {what} install as plain Python")
        return []
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        print(f"no C compiler ({compiler}): {what} install as plain Python")
        return []
    from mypyc.build import mypycify

    # mypy resolves scalechat.* from the folders of a checkout, names modules from base.
    os.environ["MYPYPATH"] = os.pathsep.join(str(p) for p in (base, *mypy_path))
    # No config file: the checkout's [tool.mypy] strictness is for the type check in the
    # tests; here the dependencies may be missing (build isolation), so their types are Any.
    return mypycify(["--config-file=", "--follow-imports=silent", "--explicit-package-bases",
                     "--ignore-missing-imports", *(f"{folder}/{name}.py" for name in names)],
                    opt_level="3", group_name=group)
