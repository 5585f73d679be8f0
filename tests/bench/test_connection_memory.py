"""bench/connection_memory.py on 100 connections: allocations per connection, by package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "connection_memory.py"


def test_it_attributes_each_connections_memory_to_packages():
    done = subprocess.run([sys.executable, str(BENCH), "--connections", "100"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"^100 connections: [\d,]+ bytes of Python allocations each$", done.stdout, re.M)
    assert re.search(r"^  aiohttp +[\d,]+ B$", done.stdout, re.M)
    assert re.search(r"^  scalechat +[\d,]+ B$", done.stdout, re.M)


def test_bad_flags_name_the_flag():
    done = subprocess.run([sys.executable, str(BENCH), "--connections", "0"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "--connections" in done.stderr
