"""ruff and mypy, as configured in pyproject.toml, report nothing: `make test` runs both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHECKED = ["src", "services", "analysis", "operator", "bench", "tests", "docker", "tools"]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *CHECKED],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mypy_is_clean_on_the_strict_core():
    # The files and the strictness are pyproject.toml's [tool.mypy]: the core's types.
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "no issues found" in result.stdout
