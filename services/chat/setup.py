"""Builds the chat service; its per-message modules compiled with mypyc when it can.

The list is ``scalechat.chat.native.COMPILED``. Without a C compiler, or with
``SCALECHAT_PURE_PYTHON=1``, the same modules install as plain Python (slower,
same behaviour). With one, a module that does not compile fails the install:
a type error there is a bug, not a reason to fall back quietly.
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """``native.COMPILED``, read without importing the package (its dependencies are not here)."""
    tree = ast.parse((HERE / "scalechat/chat/native.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED":
            return [f"scalechat/chat/{name}.py" for name in ast.literal_eval(node.value)]
    raise SystemExit("scalechat/chat/native.py defines no COMPILED")


def extensions() -> list:
    if os.environ.get("SCALECHAT_PURE_PYTHON") == "1":
        print("SCALECHAT_PURE_PYTHON=1: the chat server's modules install as plain Python")
        return []
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        print(f"no C compiler ({compiler}): the chat server's modules install as plain Python")
        return []
    from mypyc.build import mypycify

    # mypy resolves scalechat.* from this service and the shared core (src/), as in a checkout.
    os.environ["MYPYPATH"] = os.pathsep.join([str(HERE), str(HERE.parent.parent / "src")])
    os.chdir(HERE)  # mypyc writes its C under build/ here and names modules from here
    # No config file: the checkout's [tool.mypy] strictness is for the type check in the
    # tests; here the dependencies may be missing (build isolation), so their types are Any.
    return mypycify(["--config-file=", "--follow-imports=silent", "--explicit-package-bases",
                     "--ignore-missing-imports", *compiled_modules()],
                    opt_level="3", group_name="scalechat_chat_native")


if __name__ == "__main__" and sys.argv[1:] == ["--sources"]:  # for the Makefile's rebuild rule
    print(" ".join(f"services/chat/{path}" for path in compiled_modules()))
else:
    from setuptools import setup

    setup(ext_modules=extensions())
