"""bench/instructions.py counts the hot path's instructions under callgrind, both builds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scalechat.chat import native

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
@pytest.mark.skipif(len(native.compiled()) != len(native.modules()),
                    reason="the per-message modules are not compiled (no C compiler at install)")
def test_a_tiny_run_counts_both_builds(tmp_path: Path) -> None:
    out = tmp_path / "instructions.json"
    run = subprocess.run([sys.executable, "bench/instructions.py", "--rooms", "2", "--members", "2",
                          "--small", "20", "--large", "220", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "2 x 2, compiled:" in run.stdout and "2 x 2, plain:" in run.stdout
    assert "compiled / plain:" in run.stdout
    document = json.loads(out.read_text())
    counts = document["instructions_per_message"]
    assert set(counts) == {"compiled", "plain"} and all(n > 0 for n in counts.values())
    assert document["host"]["code"]["compiled"] == native.modules()


def test_large_must_exceed_small() -> None:
    run = subprocess.run([sys.executable, "bench/instructions.py", "--small", "10", "--large", "10"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "--large must be more than --small" in run.stderr
