"""The README's shell blocks run: every block marked ``<!-- readme-test: run -->``, line by line.

A block is marked ``run`` or ``skip: <why>`` by the comment above it, and every
``sh`` block must be one or the other, so a new command cannot land untried.
Each command runs as written in the repository, with only what a test needs
changed: the server is a ``scalechat serve`` on a free port (``8080`` is
rewritten to it, and ``make run &`` / ``make cluster`` / ``cluster status``
lines are left out: the cluster has its own tests, and ``--prometheus`` gets a
port nobody listens on), results go to a temporary
folder, and load tests are shortened (``--duration 1`` scales a manifest's
stages; shorter warm-up and drain). ``xdg-open FILE`` becomes ``test -f FILE``.
A load test may exit 3 (a stage missed its SLO on a busy machine); anything else
but 0 fails.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from support import free_port

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<mark>[^>]*?) -->\n)?```sh\n(?P<body>.*?)```", re.S)
DROPPED = re.compile(r"^(make (run|cluster|cluster-down)\b|\S*scalechat cluster status\b)")


def blocks() -> list[tuple[int, str, str]]:
    """(line number, mark, body) of every sh block."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m["mark"] or "", m["body"]) for m in BLOCK.finditer(text)]


def commands(body: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def rewrite(command: str, port: int, tmp: Path) -> str | None:
    """The command as this test runs it (see the module docstring), or None to leave it out."""
    if DROPPED.match(command):
        return None
    command = re.sub(r"\s+#\s.*$", "", command)
    command = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("results/", f"{tmp}/results/")
    # The cluster's Prometheus is not there: a port nobody listens on (analyze warns and goes on).
    command = re.sub(r'--prometheus "\$\(.*?cluster status.*?\)"', f"--prometheus http://127.0.0.1:{free_port()}",
                     command)
    if command.startswith("xdg-open "):
        return "test -f " + command.split(None, 1)[1]
    words = shlex.split(command)
    if len(words) > 1 and words[0].endswith("scalechat") and words[1] == "load" and "--help" not in words:
        command = re.sub(r"--duration \S+", "--duration 1", command)
        extra = []
        if "--duration" not in words:
            extra.append("--duration 1")
        if "--url" not in words:
            extra.append(f"--url 'ws://127.0.0.1:{port}/ws/{{room}}'")
        if "--warmup" not in words:
            extra.append("--warmup 0.2")
        if "--drain" not in words:
            extra.append("--drain 0.5")
        if "--out" not in words:
            extra.append(f"--out {tmp}/results/default")
        command = " ".join([command, *extra])
    return command


def test_every_sh_block_is_marked_run_or_skip_with_a_reason():
    for line, mark, _ in blocks():
        assert mark == "run" or re.fullmatch(r"skip: .+", mark), f"README.md:{line}: mark the block run or skip"
    assert sum(mark == "run" for _, mark, _ in blocks()) >= 3


@pytest.mark.timeout(400)
@pytest.mark.parametrize("line, body", [(line, body) for line, mark, body in blocks() if mark == "run"],
                         ids=lambda v: f"README.md:{v}" if isinstance(v, int) else "")
def test_readme_block_runs(line, body, chat_server, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = 0
    for command in commands(body):
        actual = rewrite(command, chat_server.port, tmp_path)
        if actual is None:
            continue
        result = subprocess.run(["bash", "-c", actual], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=300)
        allowed = {0, 3} if re.search(r"scalechat load (?!.*--help)", actual) else {0}
        assert result.returncode in allowed, (f"README.md:{line}: {command}\nran as: {actual}\n"
                                              f"exit {result.returncode}\n{result.stderr[-2000:]}")
        assert "Traceback" not in result.stderr, result.stderr
        ran += 1
    assert ran, f"README.md:{line}: nothing ran"
