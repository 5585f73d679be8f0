"""Build the scalechat image with podman, on machines where no registry is reachable.

    python docker/image.py build    # `make image`: base if missing, then docker/Dockerfile; prints the name
    python docker/image.py prune    # drop superseded scalechat images and their layers

The base (``python:3.11-slim-bookworm``, the Dockerfile's FROM) is used as is
when podman has it; otherwise it is made here with mmdebstrap from the host's
apt sources and imported under that name, labelled with a digest of its recipe
(a changed recipe remakes it).

The image is tagged ``localhost/scalechat:src-<digest>``, the digest covering
every file of the build context, the Dockerfile and the base image: a second
build of an unchanged checkout reuses the image without running podman build.
It is also tagged ``localhost/scalechat:<version>``, the chart's default tag.
The builder stage is tagged too (``localhost/scalechat-builder:latest``) so
that pruning keeps its layers (build tools, dependency wheels) as cache.

Podman runs with ``build/image/containers.conf``: runc (crun cannot handle
this host's hybrid cgroups) and open-file limits within the hard limit (the
default asks for more). :func:`podman` applies it to every call.

Nothing here trusts a tag to say what an image holds: :func:`installed_sources`
reads the installed package out of the image for tests to compare with
:func:`checkout_sources`.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "docker" / "Dockerfile.dockerignore"
WORK = REPO / "build" / "image"

REPOSITORY = "localhost/scalechat"
BUILDER = "localhost/scalechat-builder:latest"
KEEP_IMAGES = 3
"""``src-*`` images kept by :func:`prune`, newest first (the current one always)."""

BASE = "docker.io/library/python:3.11-slim-bookworm"
BASE_LABEL = "io.scalechat.base.recipe"
"""On the base made here, and inherited by every image built on it: what :func:`prune` may remove."""
SOURCE_LABEL = "io.scalechat.source"
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "python3.11-dev", "ca-certificates", "netbase",
                 "tzdata")
"""python3.11-dev: without the headers pip skips optional C extensions (the load generator's) silently."""
BASE_HOOKS = (
    # The official image's layout: `python` and `pip` on PATH, pip free to install system-wide.
    'ln -sf /usr/bin/python3 "$1/usr/local/bin/python"',
    'ln -sf /usr/bin/pip3 "$1/usr/local/bin/pip"',
    'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
)
BASE_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8")
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

TOOLS = ("podman", "runc")
"""What every build and run needs; mmdebstrap only when the base image is missing."""
DEBS = "podman runc mmdebstrap uidmap slirp4netns fuse-overlayfs"


class ImageError(RuntimeError):
    """Podman is missing or failed; the message says which command and why."""


# --------------------------------------------------------------------------- podman


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def containers_conf() -> Path:
    """The containers.conf every podman call here uses (written when it differs)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else hard
    text = ("# Written by docker/image.py: podman's settings for this machine.\n"
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
            "[engine]\n"
            'runtime = "runc"\n')
    path = WORK / "containers.conf"
    if not path.exists() or path.read_text() != text:
        WORK.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(containers_conf())}


def podman(*args: str, check: bool = True, capture: bool = True, timeout: float = 120,
           **kwargs) -> subprocess.CompletedProcess:
    """Run ``podman ARGS``; raises :class:`ImageError` with its output when it fails and check."""
    if shutil.which("podman") is None:
        raise ImageError(f"podman is not installed (as root: apt-get install {DEBS})")
    result = subprocess.run(["podman", *args], env=podman_env(), text=True, timeout=timeout,
                            capture_output=capture, **kwargs)
    if check and result.returncode != 0:
        output = (result.stderr or "") + (result.stdout or "") if capture else "(see above)"
        raise ImageError(f"podman {' '.join(args)} exited {result.returncode}: {output.strip()}")
    return result


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def inspect(image: str) -> dict:
    return json.loads(podman("image", "inspect", image).stdout)[0]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One build at a time per checkout (tests and `make image` may overlap)."""
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------- the base image


def base_recipe() -> str:
    sources = next((p for p in APT_SOURCES if p.exists()), None)
    recipe = {"packages": BASE_PACKAGES, "hooks": BASE_HOOKS, "changes": BASE_CHANGES,
              "sources": sources.read_text() if sources else None}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def ensure_base(log=print) -> str:
    """The base image's id: the one podman has, unless it is ours from an older recipe; else made."""
    recipe = base_recipe()
    if exists(BASE):
        labels = inspect(BASE).get("Labels") or {}
        if labels.get(BASE_LABEL) in (None, recipe):  # a pulled image, or ours and current
            return inspect(BASE)["Id"]
        log(f"base image recipe changed ({labels[BASE_LABEL]} -> {recipe}): remaking {BASE}")
    sources = next((p for p in APT_SOURCES if p.exists()), None)
    if sources is None or shutil.which("mmdebstrap") is None:
        raise ImageError(f"{BASE} is missing and cannot be made here: it needs mmdebstrap and the host's "
                         f"apt sources ({' or '.join(map(str, APT_SOURCES))})")
    rootfs = WORK / "rootfs.tar"
    log(f"making {BASE} with mmdebstrap (about a minute)")
    hooks = [f"--customize-hook={hook}" for hook in BASE_HOOKS]
    result = subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                             *hooks, "bookworm", str(rootfs), str(sources)],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise ImageError(f"mmdebstrap exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    try:
        changes = [f"--change={c}" for c in (*BASE_CHANGES, f"LABEL {BASE_LABEL}={recipe}")]
        podman("import", *changes, str(rootfs), BASE, timeout=600)
    finally:
        rootfs.unlink(missing_ok=True)
    return inspect(BASE)["Id"]


# --------------------------------------------------------------------------- the build context


def _pattern_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern, str]]:
    """(negated, regex, pattern) per rule of a .dockerignore, in order."""
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        patterns.append((negated, _pattern_regex(pattern), pattern))
    return patterns


def is_ignored(path: str, patterns) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for negated, regex, _ in patterns:
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def context_files(root: Path = REPO, ignore_file: Path = DOCKERIGNORE) -> list[str]:
    """The files podman sends as the build context, relative to ``root``, sorted."""
    patterns = dockerignore_patterns(ignore_file.read_text())
    # The literal start of each exception ("keep/" of "keep/**/*.py"): an ignored
    # folder is entered only when an exception may re-include something in it.
    reincluded = [re.split(r"[*?\[]", pattern)[0] for negated, _, pattern in patterns if negated]
    files = []
    for folder, dirs, names in os.walk(root):
        rel = os.path.relpath(folder, root)
        rel = "" if rel == "." else rel + "/"
        dirs[:] = sorted(d for d in dirs if not is_ignored(rel + d, patterns)
                         or any(p.startswith(rel + d + "/") or (rel + d + "/").startswith(p) for p in reincluded))
        files += [rel + n for n in names if not is_ignored(rel + n, patterns) and (Path(folder) / n).is_file()]
    return sorted(files)


def source_digest(base_id: str) -> str:
    """What the image is built from: the context's paths and bytes, the Dockerfile, the base."""
    digest = hashlib.sha256(base_id.encode())
    for rel in [*context_files(), *(str(p.relative_to(REPO)) for p in (DOCKERFILE, DOCKERIGNORE))]:
        digest.update(rel.encode() + b"\0" + hashlib.sha256((REPO / rel).read_bytes()).digest())
    return digest.hexdigest()[:16]


def version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


# --------------------------------------------------------------------------- build and prune


def build(log=print) -> str:
    """This checkout's image, built unless an image of the same digest exists; returns its name."""
    with _locked():
        base_id = ensure_base(log)
        name = f"{REPOSITORY}:src-{source_digest(base_id)}"
        if exists(name):
            log(f"reusing {name}: built from this checkout's files")
        else:
            log(f"building {name}")
            common = ["build", "--pull=never", "--layers", "-f", str(DOCKERFILE)]
            if CA_BUNDLE.exists():  # pip in RUN reaches the index through the host's CA bundle; not kept
                common += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
            podman(*common, "--target", "builder", "-t", BUILDER, str(REPO), capture=False, timeout=1800,
                   stdout=subprocess.DEVNULL)
            podman(*common, "--label", f"{SOURCE_LABEL}={name.rsplit('-', 1)[1]}", "-t", name,
                   str(REPO), capture=False, timeout=1800)
        podman("tag", name, f"{REPOSITORY}:{version()}")
        prune(keep=name, log=log)
        return name


def prune(keep: str | None = None, log=print) -> None:
    """Keep the newest :data:`KEEP_IMAGES` ``src-*`` images (and ``keep``); remove unused layers.

    Only images built on the base made here carry :data:`BASE_LABEL`; nothing
    else in podman's storage is touched.
    """
    listing = podman("images", "--format", "json", REPOSITORY).stdout
    images = sorted(json.loads(listing or "[]"), key=lambda i: i.get("Created", 0), reverse=True)
    tagged = [n for i in images for n in (i.get("Names") or []) if n.startswith(f"{REPOSITORY}:src-")]
    old = [n for n in tagged if n != keep][KEEP_IMAGES - 1:]
    if old:
        podman("rmi", *old, check=False)
    removed = podman("image", "prune", "--force", "--filter", f"label={BASE_LABEL}").stdout.split()
    if old or removed:
        log(f"pruned {len(old)} old image(s), {len(removed)} unused layer(s)")


# --------------------------------------------------------------------------- what the image holds


_INSTALLED = """
import hashlib, json, pathlib, scalechat
root = pathlib.Path(next(iter(scalechat.__path__)))  # a namespace package: one folder once installed
print(json.dumps({str(p.relative_to(root.parent)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(root.rglob('*')) if p.is_file()
                  and '__pycache__' not in p.parts and p.suffix not in ('.so', '.pyc')}))
"""


def installed_sources(image: str) -> dict[str, str]:
    """``{"scalechat/chat/app.py": sha256}`` of the package installed in ``image`` (compiled files left out)."""
    result = podman("run", "--rm", "--read-only", "--network=none", "--entrypoint", "python", image,
                    "-c", _INSTALLED)
    return json.loads(result.stdout)


def source_roots() -> list[Path]:
    """The folders holding a portion of the ``scalechat`` namespace: src/ and each member."""
    members = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["scalechat"]["members"]
    return [REPO / "src", *(REPO / m for m in members)]


def checkout_sources() -> tuple[dict[str, Path], set[str]]:
    """(installed path -> checkout file, the installed paths of every module in the checkout)."""
    files = {}
    for root in source_roots():
        for path in (root / "scalechat").rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files[str(path.relative_to(root))] = path
    return files, {rel for rel in files if rel.endswith(".py")}


def source_mismatches(installed: dict[str, str]) -> list[str]:
    """Why ``installed`` is not this checkout's code (empty when it is)."""
    files, modules = checkout_sources()
    problems = []
    for rel, digest in sorted(installed.items()):
        path = files.get(rel)
        if path is None:
            problems.append(f"{rel}: in the image, not in the checkout")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{rel}: differs from {path.relative_to(REPO)}")
    problems += [f"{rel}: in the checkout, not in the image" for rel in sorted(modules - set(installed))]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("build", "prune"))
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build(log=lambda m: print(m, file=sys.stderr)))
        else:
            prune(log=lambda m: print(m, file=sys.stderr))
    except ImageError as exc:
        print(f"docker/image.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
