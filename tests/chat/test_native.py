"""The per-message modules run compiled, never stale, and their plain sources still pass."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scalechat.chat import native

ROOT = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
# The sans-I/O and socket-level tests of the compiled modules, run again on their sources.
PLAIN_TESTS = ["test_room.py", "test_outbox.py", "test_hub.py", "test_protocol.py",
               "test_framing.py", "test_ratelimit.py", "test_deflate.py", "test_client_socket.py",
               "test_broker_memory.py", "test_node.py"]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler: the modules install as plain Python")
def test_with_a_compiler_every_per_message_module_is_compiled():
    assert native.compiled() == list(native.COMPILED)


def test_a_source_edited_after_its_build_or_a_module_no_longer_compiled_is_stale(tmp_path):
    names = ["fresh", "installed", "edited", "plain", "dropped"]
    for name in names:
        (tmp_path / f"{name}.py").write_text("")
        if name != "plain":
            (tmp_path / f"{name}{SUFFIX}").write_bytes(b"")
    (tmp_path / f"shared__mypyc{SUFFIX}").write_bytes(b"")  # no source: not a module's build
    built = 1_000_000.0
    for name, source in (("fresh", built - 60), ("installed", built + 0.5), ("edited", built + 60),
                         ("dropped", built - 60)):
        os.utime(tmp_path / f"{name}{SUFFIX}", (built, built))
        os.utime(tmp_path / f"{name}.py", (source, source))
    assert native.stale(tmp_path, ["fresh", "installed", "edited", "plain"]) == ["dropped", "edited"]


def test_setup_lists_the_sources_make_rebuilds_on():
    listed = subprocess.run([sys.executable, "services/chat/setup.py", "--sources"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == [f"services/chat/scalechat/chat/{name}.py" for name in native.COMPILED]
    assert all((ROOT / path).is_file() for path in listed)


def test_the_plain_sources_pass_the_same_tests():
    env = {**os.environ, "SCALECHAT_PURE_PYTHON": "1"}
    probe = subprocess.run([sys.executable, "-c", "from scalechat.chat import native, node; "
                            "print(native.compiled())"], env=env, capture_output=True, text=True,
                           check=True)
    assert probe.stdout.strip() == "[]"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *(f"tests/chat/{name}" for name in PLAIN_TESTS)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
