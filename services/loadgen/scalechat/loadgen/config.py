"""The load generator's input: a LoadTest manifest file, read and validated.

The contract itself (schema, models, SLO) is :mod:`scalechat.loadtest`, shared
with the operator; this module reads the file ``scalechat load -f`` names and
puts the file's name in front of every error
(``lt.yaml: spec.stages[1].rate: must be > 0, got -3``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from scalechat.loadtest.schema import ConfigError
from scalechat.loadtest.spec import LoadTest, parse_manifest


def read_manifest(path: str | Path) -> Any:
    """The parsed YAML (or JSON) document of a manifest file; ConfigError names the file."""
    name = str(path)
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(name, f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(name, f"not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def load_manifest(path: str | Path, doc: Any = None) -> LoadTest:
    """Read and validate a LoadTest manifest; ConfigError names the file and the field.

    ``doc`` (from :func:`read_manifest`, possibly with overrides applied)
    skips reading the file again.
    """
    if doc is None:
        doc = read_manifest(path)
    try:
        return parse_manifest(doc)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.path}", exc.problem) from None
