"""The per-message modules run compiled, never stale, and their plain sources still pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scalechat import native as core
from scalechat.chat import native

ROOT = Path(__file__).resolve().parents[2]
# The sans-I/O and socket-level tests of the compiled modules, run again on their sources.
PLAIN_TESTS = ["test_wsframes.py", *(f"chat/test_{name}.py" for name in (
    "room", "outbox", "hub", "protocol", "framing", "ratelimit", "deflate", "client_socket",
    "broker_memory", "node", "counters"))]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: the modules install as plain Python")
def test_with_a_compiler_every_per_message_module_is_compiled():
    assert native.compiled() == native.modules()


@pytest.mark.parametrize(("setup", "builds"), [("setup.py", core.CORE),
                                               ("services/chat/setup.py", native.CHAT)])
def test_each_setup_lists_the_sources_make_rebuilds_on(setup, builds):
    listed = subprocess.run([sys.executable, setup, "--sources"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert [ROOT / path for path in listed] == [builds.folder / f"{name}.py" for name in builds.names]
    assert set(native.PER_MESSAGE) == {core.CORE, native.CHAT}


def test_the_plain_sources_pass_the_same_tests():
    env = {**os.environ, "SCALECHAT_PURE_PYTHON": "1"}
    probe = subprocess.run([sys.executable, "-c", "from scalechat.chat import native, node; "
                            "print(native.compiled())"], env=env, capture_output=True, text=True,
                           check=True)
    assert probe.stdout.strip() == "[]"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *(f"tests/{name}" for name in PLAIN_TESTS)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
