"""The image's Dockerfile, read by a small parser of its instructions (no container engine needed).

The parser joins line continuations, skips comments and parser directives,
splits flags (--from=, --mount=) from arguments and groups instructions into
stages. The build context is listed from Dockerfile.dockerignore by
docker/image.py, and the project is built into a wheel from that context
alone, as the builder stage does. test_image.py builds and runs the image.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from image_support import image_tool

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|[\w.+-]+-dev)\b")


# --------------------------------------------------------------------------- the parser


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    flags: tuple[tuple[str, str], ...]  # ("from", "builder"), ("mount", "type=bind,...")
    args: str  # the rest, continuations joined with spaces
    line: int  # where it starts, 1-based

    def flag(self, name: str) -> str | None:
        return next((value for key, value in self.flags if key == name), None)

    @property
    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, else None (shell form)."""
        if not self.args.startswith("["):
            return None
        try:
            value = json.loads(self.args)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    index: int
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def position(self, predicate) -> int:
        """Index of the first instruction matching predicate (-1 when none)."""
        return next((n for n, i in enumerate(self.instructions) if predicate(i)), -1)


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """(instructions before the first FROM, stages)."""
    lines = text.splitlines()
    escape = "\\"
    start = 0
    for start, line in enumerate(lines):  # noqa: B007  (parser directives: only at the very top; start is used below)
        match = re.match(r"#\s*(\w+)\s*=\s*(\S+)\s*$", line)
        if not match:
            break
        if match.group(1).lower() == "escape":
            escape = match.group(2)
    instructions: list[Instruction] = []
    pending: list[str] = []
    first = 0
    for number, raw in enumerate(lines[start:], start + 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments vanish even inside a continuation
        if not pending:
            first = number
        if stripped.endswith(escape):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        instructions.append(_instruction(" ".join(p for p in pending if p), first))
        pending = []
    if pending:
        raise ValueError(f"line {first}: the last instruction ends with a line continuation")
    preamble, stages = [], []
    for inst in instructions:
        if inst.keyword == "FROM":
            words = inst.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3) or (len(words) == 3 and name is None):
                raise ValueError(f"line {inst.line}: FROM image [AS name], got {inst.args!r}")
            stages.append(Stage(len(stages), words[0], name))
        elif stages:
            stages[-1].instructions.append(inst)
        else:
            preamble.append(inst)
    return preamble, stages


def _instruction(text: str, line: int) -> Instruction:
    keyword, _, rest = text.partition(" ")
    flags = []
    rest = rest.strip()
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        key, _, value = word[2:].partition("=")
        flags.append((key, value))
        rest = rest.strip()
    if "<<" in rest and keyword.upper() in ("RUN", "COPY"):
        raise ValueError(f"line {line}: heredocs are not supported by this parser")
    return Instruction(keyword.upper(), tuple(flags), rest, line)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(stages) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def builder(stages) -> Stage:
    return stages[0]


def test_the_parser_joins_continuations_skips_comments_and_splits_stages():
    text = ("# syntax=docker/dockerfile:1\n"
            "ARG BASE=python:3.11-slim\n"
            "FROM $BASE AS one\n"
            "RUN apt-get update \\\n"
            "    # a comment inside the continuation\n"
            " && echo hi\n"
            "\n"
            "FROM python:3.11-slim\n"
            "COPY --from=one --chown=1:1 /a /b\n"
            'CMD ["serve", "--host", "0.0.0.0"]\n'
            "ENTRYPOINT scalechat serve\n")
    preamble, parsed = parse_dockerfile(text)
    assert [i.keyword for i in preamble] == ["ARG"]
    assert [(s.base, s.name) for s in parsed] == [("$BASE", "one"), ("python:3.11-slim", None)]
    (run,) = parsed[0].instructions
    assert run.args == "apt-get update && echo hi" and run.line == 4
    copy, cmd, entrypoint = parsed[1].instructions
    assert copy.flag("from") == "one" and copy.flag("chown") == "1:1" and copy.args == "/a /b"
    assert cmd.exec_form == ["serve", "--host", "0.0.0.0"]
    assert entrypoint.exec_form is None


def test_the_parser_refuses_a_dangling_continuation():
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("FROM python:3.11-slim\nRUN echo \\\n")


# --------------------------------------------------------------------------- the image


def test_the_image_is_built_in_a_builder_and_a_runtime_stage(stages):
    assert len(stages) >= 2
    assert stages[0].name == "builder" and stages[-1].name == "runtime"


def test_both_stages_start_from_slim_python_3_11(stages):
    for stage in stages:
        assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", stage.base), stage.base


def test_the_final_stage_runs_as_a_numeric_non_root_user(final):
    users = final.all("USER")
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].args.partition(":")
    assert user.isdigit() and int(user) != 0, "numeric, so Kubernetes' runAsNonRoot can verify it"
    assert not group or (group.isdigit() and int(group) != 0)
    useradd = " ".join(i.args for i in final.all("RUN") if "useradd" in i.args)
    assert f"--uid {user}" in useradd


def test_no_build_tools_are_installed_in_the_final_stage(final, builder):
    for run in final.all("RUN"):
        if re.search(r"\b(apt-get|apt|apk|yum|dnf)\b.*\binstall\b", run.args):
            assert not BUILD_TOOLS.search(run.args), f"line {run.line}: {run.args}"
    assert any(BUILD_TOOLS.search(r.args) for r in builder.all("RUN")), "compilers belong in the builder"


def test_the_final_stage_installs_wheels_built_by_the_builder_without_keeping_them(final, builder):
    assert any("pip wheel" in r.args for r in builder.all("RUN"))
    installs = [r for r in final.all("RUN") if "pip install" in r.args]
    assert installs and all("--no-index" in r.args for r in installs), "no downloads in the final stage"
    assert all("from=builder" in (r.flag("mount") or "") for r in installs), "wheels bind-mounted, not copied"
    copied = [source for c in final.all("COPY") if c.flag("from") == "builder" for source in c.args.split()[:-1]]
    assert copied and all(source.endswith(".sha256") for source in copied), "only the wheels' checksums"


def test_every_install_from_the_builder_follows_a_copy_of_its_checksums(final):
    """buildah 1.28 reuses a RUN --mount=from=builder layer after the builder's output changed
    (seen: an image with the old code). A COPY's cache key is its content: new wheels, new install."""
    previous = None
    for inst in final.instructions:
        if inst.keyword == "RUN" and "from=builder" in (inst.flag("mount") or ""):
            source = re.search(r"source=([^,]+)", inst.flag("mount")).group(1)
            assert previous is not None and previous.keyword == "COPY" and previous.flag("from") == "builder" \
                and previous.args.split()[0] == f"{source}.sha256", f"line {inst.line}: no checksum COPY before it"
        previous = inst


def test_dependencies_are_built_and_installed_before_the_source_is_copied(builder, final):
    copy_deps = builder.position(lambda i: i.keyword == "COPY" and "pyproject.toml" in i.args)
    wheel_deps = builder.position(lambda i: i.keyword == "RUN" and "pip wheel" in i.args and "-r " in i.args)
    copy_source = builder.position(lambda i: i.keyword == "COPY" and i.args.split()[0] in package_folders())
    wheel_app = builder.position(lambda i: i.keyword == "RUN" and "pip wheel" in i.args and "--no-deps" in i.args)
    assert -1 < copy_deps < wheel_deps < copy_source < wheel_app
    install_deps = final.position(lambda i: i.keyword == "RUN" and "pip install" in i.args and "-r " in i.args)
    install_app = final.position(lambda i: i.keyword == "RUN" and "pip install" in i.args and "--no-deps" in i.args)
    assert -1 < install_deps < install_app
    assert not [c for c in final.all("COPY") if c.flag("from") is None], "the final stage copies no source"


def test_sigterm_stops_the_server(final):
    (stop,) = final.all("STOPSIGNAL")
    assert stop.args == "SIGTERM"


def test_the_entrypoint_is_scalechat_and_serves_on_all_interfaces_by_default(final):
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    assert entrypoint.exec_form == ["scalechat"], "exec form: signals reach the server as PID 1"
    assert cmd.exec_form == ["serve", "--host", "0.0.0.0"]


def test_the_exposed_ports_are_the_servers_defaults(final):
    from scalechat.chat.settings import Settings
    exposed = {int(p) for e in final.all("EXPOSE") for p in e.args.split()}
    assert exposed == {Settings().port, Settings().metrics_port}


def test_python_writes_nothing_beside_its_code(final):
    env = " ".join(e.args for e in final.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "MPLCONFIGDIR=/tmp/" in env  # read-only root in the pods


# --------------------------------------------------------------------------- the build context


def build_context() -> list[str]:
    return image_tool.context_files()


def test_the_ignore_rules_follow_docker_semantics(tmp_path):
    patterns = image_tool.dockerignore_patterns("*\n!src\n**/__pycache__\n!keep/**/*.py\n")
    assert image_tool.is_ignored("README.md", patterns)
    assert not image_tool.is_ignored("src/scalechat/cli.py", patterns)
    assert image_tool.is_ignored("src/scalechat/__pycache__/cli.cpython-311.pyc", patterns)
    assert not image_tool.is_ignored("keep/a/b.py", patterns)
    for rel in ("src/a.py", "src/__pycache__/a.pyc", "keep/x/b.py", "keep/x/c.txt", "other/d.py", "top.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    (tmp_path / "ignore").write_text("*\n!src\n**/__pycache__\n!keep/**/*.py\n")
    assert image_tool.context_files(tmp_path, tmp_path / "ignore") == ["keep/x/b.py", "src/a.py"]


def members() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["scalechat"]["members"]


def package_folders() -> set[str]:
    """Top-level folders of the namespace's portions (src/ and each member): what the wheels are built from."""
    return {path.split("/")[0] for path in ["src", *members()]}


def test_the_build_context_holds_exactly_what_the_image_is_built_from():
    context = build_context()
    assert not [f for f in context if f.endswith(".so")], "the builder compiles its own extensions"
    tops = {f.split("/")[0] for f in context}
    assert tops == {"pyproject.toml", "setup.py", "README.md", "docker"} | package_folders()
    assert "docker/requirements.py" in context and "docker/Dockerfile" not in context
    assert not [f for f in context if "__pycache__" in f or f.endswith(".pyc")]
    assert not [f for f in context if f.startswith(("tests/", "charts/", "build/", ".venv/"))]


def test_the_builder_copies_every_package_folder(builder):
    copied = {source.rstrip("/") for c in builder.all("COPY") if not c.flag("from") for source in c.args.split()[:-1]}
    assert package_folders() <= copied, f"not copied: {package_folders() - copied}"


def test_every_file_the_dockerfile_copies_is_in_the_build_context(stages):
    context = build_context()
    for stage in stages:
        for copy in stage.all("COPY"):
            if copy.flag("from"):
                continue
            for source in copy.args.split()[:-1]:
                assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), \
                    f"line {copy.line}: {source} is not in the build context"


def test_the_project_builds_into_wheels_from_the_build_context_alone(tmp_path):
    root = tmp_path / "context"
    for f in build_context():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, root / f)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--quiet", "--wheel-dir", str(tmp_path / "wheels"), ".", *(f"./{m}" for m in members())],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = {w.name.split("-")[0]: zipfile.ZipFile(w) for w in (tmp_path / "wheels").glob("*.whl")}
    assert set(wheels) == {"scalechat", "scalechat_chat", "scalechat_loadgen", "scalechat_analysis",
                           "scalechat_operator"}
    names = [n for w in wheels.values() for n in w.namelist()]
    for needed in ("scalechat/cli.py", "scalechat/chat/server.py", "scalechat/chat/static/index.html",
                   "scalechat/loadgen/config.py", "scalechat/loadtest_operator/operator_cli.py"):
        assert needed in names, needed
    # A namespace package: no wheel may own scalechat/__init__.py, or it would hide the others.
    assert "scalechat/__init__.py" not in names
    assert not [n for n in wheels["scalechat_chat"].namelist()
                if n.startswith("scalechat/") and not n.startswith("scalechat/chat/")]
    entry_points = next(n for n in wheels["scalechat"].namelist() if n.endswith("entry_points.txt"))
    assert "scalechat = scalechat.cli:main" in wheels["scalechat"].read(entry_points).decode()


def test_the_requirements_script_lists_the_runtime_dependencies():
    script = REPO / "docker" / "requirements.py"
    expected = []
    for folder in [".", *members()]:
        for req in tomllib.loads((REPO / folder / "pyproject.toml").read_text())["project"]["dependencies"]:
            if not req.startswith("scalechat") and req not in expected:
                expected.append(req)
    result = subprocess.run([sys.executable, str(script), str(REPO / "pyproject.toml")],
                            capture_output=True, text=True, check=True)
    assert result.stdout.split("\n")[:-1] == expected
    assert "scalechat" not in result.stdout  # the members are built from source
    assert {"aiohttp>=3.10", "kopf>=1.45", "matplotlib>=3.8"} <= set(expected)
    unknown = subprocess.run([sys.executable, str(script), str(REPO / "pyproject.toml"), "nosuchextra"],
                             capture_output=True, text=True)
    assert unknown.returncode != 0 and "nosuchextra" in unknown.stderr