"""bench/hotpath.py drives the real server core: every message reaches every member."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import uvloop

SPEC = importlib.util.spec_from_file_location(
    "hotpath", Path(__file__).resolve().parents[2] / "bench" / "hotpath.py")
hotpath = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(hotpath)


def test_a_short_run_delivers_everything_and_reports_a_cost() -> None:
    # run() asserts the node's delivered counter equals messages x members.
    per_message = uvloop.run(hotpath.run(rooms=3, members=4, messages=600))
    assert per_message > 0
