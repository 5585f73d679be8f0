"""``scalechat --help`` and the help pages of the subcommands whose text the entry point wires."""

from __future__ import annotations

import subprocess

from support import SCALECHAT


def help_text(*args: str) -> str:
    result = subprocess.run([*SCALECHAT, *args, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_top_level_help_points_to_the_quick_start():
    text = help_text()
    assert 'quick start (README.md, "Quick start"):' in text and "make run" in text
    for command in ("serve", "chat", "load", "analyze", "cluster"):
        assert f"  {command} " in text or f"  scalechat {command} " in text


def test_serve_help_shows_choices_and_an_example():
    text = help_text("serve")
    assert "--broker {memory,redis}" in text and "--log-level {debug,info,warning,error}" in text
    assert "STR]" not in text.split("--broker")[1].split("\n")[0]
    assert "examples:\n  scalechat serve " in text


def test_analyze_help_says_what_it_writes_with_an_example():
    text = help_text("analyze")
    assert "writes, into --out" in text
    for name in ("report.html", "summary.csv", "<run>-latency.png", "<run>-over-time.png", "server-replicas.csv"):
        assert name in text
    assert "examples:\n  scalechat analyze results/" in text
