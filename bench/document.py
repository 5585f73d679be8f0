"""The envelope every benchmark's JSON is written in: what ran, where, on which code.

``{"benchmark", "format", "time", "date", "duration_s", "command", "host",
"options", ...results}``; ``host`` holds the machine's facts
(:func:`scalechat.hostinfo.host_facts`), the Python version and ``code``: the
commit of the checkout the server code was imported from, with the paths that
differed from it, and which per-message modules ran compiled (``compiled``,
:mod:`scalechat.chat.native`). ``bench/docs.py`` renders docs/benchmarks.md and the
README's performance table from such files, naming the date, host and commit.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import scalechat.chat
from scalechat.chat import native
from scalechat.hostinfo import host_facts

# The checkout whose server code runs (services/chat/scalechat/chat/__init__.py -> its root).
CODE = Path(scalechat.chat.__file__).resolve().parents[4]


def git_facts(root: Path = CODE) -> dict[str, Any]:
    """Commit, subject and the code paths that differ from it (server and core code)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=30).stdout.strip()

    dirty = git("status", "--porcelain", "--", "services", "src").splitlines()
    return {"root": str(root), "commit": git("rev-parse", "HEAD") or None,
            "subject": git("log", "-1", "--format=%s") or None, "dirty_paths": dirty}


class Run:
    """Started before the measurement (host facts before the process pins itself)."""

    def __init__(self, name: str, script: str, argv: list[str] | None = None) -> None:
        self.name = name
        self.started = time.time()
        python = sys.executable
        if Path(python).is_relative_to(CODE):  # the checkout's virtualenv (not resolved: a symlink)
            python = os.path.relpath(python)
        self.command = shlex.join([python, os.path.relpath(script),
                                   *(sys.argv[1:] if argv is None else argv)])
        self.host: dict[str, Any] = {**host_facts(), "python": sys.version.split()[0],
                                     "code": {**git_facts(), "compiled": native.compiled()},
                                     "loadavg_start": os.getloadavg()}

    def document(self, options: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
        self.host["loadavg_end"] = os.getloadavg()
        return {"benchmark": self.name, "format": 1,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "date": time.strftime("%Y-%m-%d", time.localtime(self.started)),
                "duration_s": round(time.time() - self.started, 1), "command": self.command,
                "host": self.host, "options": options, **results}

    def write(self, path: Path, options: dict[str, Any], results: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.document(options, results), indent=1) + "\n")
