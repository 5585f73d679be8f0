"""The README stays true: its settings tables and its commands."""

import re
from pathlib import Path

from scalechat.chat.settings import settings_table
from scalechat.loadtest_operator.settings import README_MARKER, OperatorConfig
from scalechat.settings import marked_block

README = Path(__file__).resolve().parent.parent / "README.md"


def test_settings_table_matches_the_settings_object():
    text = README.read_text()
    match = re.search(r"<!-- settings-table.*?-->\n(.*?)<!-- end settings-table -->", text, re.S)
    assert match, "README lost its settings table markers"
    assert match.group(1).strip() == settings_table().strip(), (
        "README settings table is stale: run `python -m scalechat.chat.settings --readme`")


def test_operator_settings_table_matches_its_settings():
    table = marked_block(README.read_text(), README_MARKER)
    assert table is not None, "README lost its operator settings table markers"
    assert table.strip() == OperatorConfig.table().strip(), (
        "README operator settings table is stale: run `python -m scalechat.loadtest_operator.settings --readme`")


def test_quick_start_names_the_two_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()


def test_make_run_serves_the_web_page(tmp_path):
    """The README's main command, as a user runs it (ports moved off 8080/9000 by env)."""
    import os
    import signal
    import subprocess
    import urllib.request

    from support import free_port, wait_until

    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "SCALECHAT_PORT": str(port), "SCALECHAT_METRICS_PORT": str(metrics_port)}
    proc = subprocess.Popen(["make", "run"], cwd=README.parent, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def page():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read().decode()
            except OSError:
                assert proc.poll() is None, "make run exited"
                return None

        html = wait_until(page, 120, message="make run to serve the page")
        assert "<title>" in html and "app.js" in html
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
