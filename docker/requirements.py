"""Print the project's runtime requirements, one per line, from pyproject.toml.

Used by docker/Dockerfile to build the dependency wheels in a layer of their
own, before the source is copied (a source change then rebuilds nothing but
the scalechat wheel).

Usage: python requirements.py PYPROJECT [EXTRAS]   (EXTRAS: comma-separated, e.g. "operator")
An unknown extra is an error, not a silent omission.
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: str = "") -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    wanted = [e.strip() for e in extras.split(",") if e.strip()]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in wanted if e not in optional]
    if unknown:
        raise SystemExit(f"requirements.py: unknown extra(s) {', '.join(unknown)}; "
                         f"pyproject.toml has {', '.join(optional) or 'none'}")
    return list(project.get("dependencies", [])) + [req for e in wanted for req in optional[e]]


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__.strip().splitlines()[-2])
    print("\n".join(requirements(*sys.argv[1:])))
