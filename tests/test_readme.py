"""The README stays true: its settings table and its commands."""

import re
from pathlib import Path

from scalechat.chat.settings import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_settings_table_matches_the_settings_object():
    text = README.read_text()
    match = re.search(r"<!-- settings-table.*?-->\n(.*?)<!-- end settings-table -->", text, re.S)
    assert match, "README lost its settings table markers"
    assert match.group(1).strip() == settings_table().strip(), (
        "README settings table is stale: run `python -m scalechat.chat.settings --readme`")


def test_quick_start_names_the_two_commands():
    text = README.read_text()
    assert "make run" in text and "make test" in text
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()
