"""The layout: each file at the path of its module, a plain editable install, one
distribution per service with its own dependencies."""

from __future__ import annotations

import importlib.util
import re
import site
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOT = tomllib.loads((REPO / "pyproject.toml").read_text())
MEMBERS = ROOT["tool"]["scalechat"]["members"]
SOURCE_ROOTS = [REPO / "src", *(REPO / m for m in MEMBERS)]


def modules() -> dict[str, Path]:
    """Every module of the checkout by name, from its file's path alone."""
    out = {}
    for root in SOURCE_ROOTS:
        for path in (root / "scalechat").rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_the_makefile_installs_every_member_and_the_members_are_distributions():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^MEMBERS := (.*)$", makefile, re.M).group(1).split() == MEMBERS
    names = {tomllib.loads((REPO / m / "pyproject.toml").read_text())["project"]["name"] for m in MEMBERS}
    assert names == {"scalechat-chat", "scalechat-loadgen", "scalechat-analysis", "scalechat-operator"}


def test_every_module_is_found_at_the_path_its_name_gives():
    found = modules()
    assert {"scalechat.cli", "scalechat.chat.hub", "scalechat.loadgen.wsprotocol",
            "scalechat.analysis.plots", "scalechat.loadtest_operator.handlers"} <= set(found)
    for name, path in found.items():
        spec = importlib.util.find_spec(name)
        assert spec is not None, name
        origin = Path(spec.origin)
        if origin.suffix == ".so":  # compiled beside its source (scalechat.chat.native)
            origin = origin.with_name(origin.name.split(".")[0] + ".py")
        assert origin == path, name


def test_scalechat_is_a_namespace_package_with_no_owner():
    for root in SOURCE_ROOTS:
        assert not (root / "scalechat" / "__init__.py").exists(), root
    import scalechat
    assert getattr(scalechat, "__file__", None) is None
    assert {Path(p) for p in scalechat.__path__} == {r / "scalechat" for r in SOURCE_ROOTS}


def test_nothing_on_the_path_is_named_like_the_standard_library():
    """Each source root holds code in its scalechat folder only (examples/ holds YAML)."""
    for root in SOURCE_ROOTS:
        importable = {p.stem for p in root.iterdir()
                      if (p.suffix == ".py" or (p.is_dir() and p.name.isidentifier()))
                      and p.name not in ("__pycache__", "build")}
        assert "scalechat" in importable and not importable & set(sys.stdlib_module_names), root
        for name in importable - {"scalechat"}:
            assert not list((root / name).rglob("*.py")), f"{root / name} holds code outside scalechat/"


def test_the_editable_install_has_no_import_hook():
    """pip install -e of each distribution: a .pth naming its folder, no finder module."""
    folders = [Path(sysconfig.get_paths()["purelib"]), *map(Path, site.getsitepackages())]
    pth = {p for f in folders for p in f.glob("__editable__.scalechat*.pth")}
    if not pth:
        pytest.skip("scalechat is not installed in editable mode here (make test installs it so)")
    assert not [p for f in folders for p in f.glob("__editable___scalechat*finder.py")]
    listed = {Path(p.read_text().strip()) for p in pth}
    assert listed == set(SOURCE_ROOTS)


def test_the_chat_server_needs_neither_matplotlib_nor_kopf():
    chat = tomllib.loads((REPO / "services/chat/pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in chat if d.startswith(("matplotlib", "kopf", "kubernetes", "numpy"))]
    heavy = ("matplotlib", "kopf", "kubernetes", "scalechat.analysis", "scalechat.loadgen",
             "scalechat.loadtest_operator")
    probe = ("import sys, scalechat.chat.server, scalechat.chat.serve_cli, scalechat.chat.chat_cli; "
             f"print([m for m in sys.modules if m.split('.')[0] in {heavy!r} or m.startswith({heavy!r})])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
