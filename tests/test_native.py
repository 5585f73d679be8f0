"""Compiled modules beside their source: stale builds, the lists, the plain-source finder."""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

from scalechat import native

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
ROOT = Path(__file__).resolve().parents[1]


def test_a_source_edited_after_its_build_or_a_module_no_longer_compiled_is_stale(tmp_path):
    names = ["fresh", "installed", "edited", "plain", "dropped"]
    for name in names:
        (tmp_path / f"{name}.py").write_text("")
        if name != "plain":
            (tmp_path / f"{name}{SUFFIX}").write_bytes(b"")
    (tmp_path / f"shared__mypyc{SUFFIX}").write_bytes(b"")  # no source: not a module's build
    built = 1_000_000.0
    for name, source in (("fresh", built - 60), ("installed", built + 0.5), ("edited", built + 60),
                         ("dropped", built - 60)):
        os.utime(tmp_path / f"{name}{SUFFIX}", (built, built))
        os.utime(tmp_path / f"{name}.py", (source, source))
    assert native.stale(tmp_path, ["fresh", "installed", "edited", "plain"]) == ["dropped", "edited"]


def test_the_list_is_read_without_importing(tmp_path):
    (tmp_path / "native.py").write_text('import nothing_installed\nCOMPILED = ("a", "b")\n')
    assert native.listed(tmp_path / "native.py") == ["a", "b"]
    assert native.listed(ROOT / "src/scalechat/native.py") == list(native.COMPILED)


def test_prefer_source_imports_the_listed_modules_from_their_py_files(tmp_path):
    (tmp_path / "pkg_native_probe").mkdir()
    (tmp_path / "pkg_native_probe/mod.py").write_text("WHERE = __file__\n")
    (tmp_path / f"pkg_native_probe/mod{SUFFIX}").write_bytes(b"not a real extension")
    probe = ("import sys; from pathlib import Path; from scalechat import native; "
             f"sys.path.insert(0, {str(tmp_path)!r}); "
             f"listed = native.Compiled('pkg_native_probe', Path({str(tmp_path / 'pkg_native_probe')!r}), ('mod',)); "
             "native.prefer_source(listed); import pkg_native_probe.mod as m; print(m.WHERE); "
             "native.prefer_source(listed)")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.stdout.strip() == str(tmp_path / "pkg_native_probe/mod.py")
    assert "already imported: pkg_native_probe.mod" in run.stderr
