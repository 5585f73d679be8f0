"""Print the project's runtime requirements, one per line, from its pyproject.toml files.

Used by docker/Dockerfile to build the dependency wheels in a layer of their
own, before the source is copied (a source change then rebuilds nothing but
the scalechat wheels). Reads the root pyproject.toml and each member's
(``[tool.scalechat] members``); the members' names (scalechat, scalechat-chat,
...) are built from source, so they are left out; each requirement once.

Usage: python requirements.py PYPROJECT [EXTRAS]   (EXTRAS: comma-separated, e.g. "bench")
An unknown extra is an error, not a silent omission.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def _name(requirement: str) -> str:
    """The distribution name of a requirement, normalised (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise SystemExit(f"requirements.py: cannot read the requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: str, extras: str = "") -> list[str]:
    root = Path(pyproject)
    document = tomllib.loads(root.read_text())
    project = document["project"]
    wanted = [e.strip() for e in extras.split(",") if e.strip()]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in wanted if e not in optional]
    if unknown:
        raise SystemExit(f"requirements.py: unknown extra(s) {', '.join(unknown)}; "
                         f"pyproject.toml has {', '.join(optional) or 'none'}")
    own = {_name(project["name"])}
    found = list(project.get("dependencies", []))
    for member in document.get("tool", {}).get("scalechat", {}).get("members", []):
        path = root.parent / member / "pyproject.toml"
        if not path.is_file():
            raise SystemExit(f"requirements.py: {path} is missing ([tool.scalechat] members "
                             f"lists {member!r})")
        member_project = tomllib.loads(path.read_text())["project"]
        own.add(_name(member_project["name"]))
        found += member_project.get("dependencies", [])
    found += [req for e in wanted for req in optional[e]]
    out: list[str] = []
    for req in found:
        if _name(req) not in own and req not in out:
            out.append(req)
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__.strip().splitlines()[-2])
    print("\n".join(requirements(*sys.argv[1:])))
