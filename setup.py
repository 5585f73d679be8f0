"""Builds the core distribution; its frame parser compiled with mypyc when it can.

The list is ``scalechat.native.COMPILED`` (see that module: without a C
compiler, or with ``SCALECHAT_PURE_PYTHON=1``, it installs as plain Python).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
sys.path.insert(0, str(SOURCES))  # scalechat.native, from this checkout (nothing is installed yet)

from scalechat.native import extensions, listed  # noqa: E402

NAMES = listed(SOURCES / "scalechat/native.py")

if __name__ == "__main__" and sys.argv[1:] == ["--sources"]:  # for the Makefile's rebuild rule
    print(" ".join(f"src/scalechat/{name}.py" for name in NAMES))
else:
    from setuptools import setup

    setup(ext_modules=extensions(SOURCES, "src/scalechat", NAMES, "scalechat_core_native",
                                 "the core's compiled modules", mypy_path=[]))
