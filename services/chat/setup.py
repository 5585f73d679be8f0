"""Builds the chat service; its per-message modules compiled with mypyc when it can.

The list is ``scalechat.chat.native.COMPILED`` (see ``scalechat.native``: without
a C compiler, or with ``SCALECHAT_PURE_PYTHON=1``, they install as plain Python).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORE = HERE.parent.parent / "src"
sys.path.insert(0, str(CORE))  # scalechat.native, from this checkout (nothing is installed yet)

from scalechat.native import extensions, listed  # noqa: E402

NAMES = listed(HERE / "scalechat/chat/native.py")

if __name__ == "__main__" and sys.argv[1:] == ["--sources"]:  # for the Makefile's rebuild rule
    print(" ".join(f"services/chat/scalechat/chat/{name}.py" for name in NAMES))
else:
    from setuptools import setup

    os.chdir(HERE)  # mypyc writes its C under build/ here
    setup(ext_modules=extensions(HERE, "scalechat/chat", NAMES, "scalechat_chat_native",
                                 "the chat server's modules", mypy_path=[CORE]))
