"""Declared settings: each setting written once, with its default, environment variable, flag and help.

A settings class is a frozen dataclass deriving from :class:`DeclaredSettings`
whose fields are made with :func:`setting`::

    @dataclass(frozen=True)
    class Settings(DeclaredSettings):
        ENV_PREFIX: ClassVar[str] = "SCALECHAT_"

        port: int = setting(8080, "Port of the server.", minimum=0)

From the declarations alone come the command line (:meth:`~DeclaredSettings.add_arguments`:
``--port INT``, its help ending in ``[env SCALECHAT_PORT; default: 8080]``),
the values (:meth:`~DeclaredSettings.from_sources`; precedence flag >
environment > default), the checks of minimums, choices and required settings,
and the Markdown table a README shows (:meth:`~DeclaredSettings.table`, kept
in place by :func:`marked_block` and :func:`update_readme`). A chart's ``env:``
block uses the names :meth:`~DeclaredSettings.env_var` gives.

Strings (every environment value, and flags) are converted by the type of the
default: ``int``, ``float``, ``str``, ``bool`` (``1 true yes on`` or ``0
false no off`` and empty) and ``tuple`` (comma-separated). An invalid value
raises the class's :attr:`~DeclaredSettings.ERROR` (by default
:class:`SettingsError`) naming the setting; rules across settings go in
:meth:`~DeclaredSettings.check`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


class SettingsError(ValueError):
    """An invalid setting; ``str()`` names it: ``invalid setting port: must be >= 0, got -1``."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"invalid setting {name}: {problem}")
        self.name = name
        self.problem = problem


def setting(default: Any, help: str, *, minimum: float | None = None, choices: Sequence[str] | None = None,
            secret: bool = False, required: bool = False, flag: str | None = None,
            metavar: str | None = None) -> Any:
    """A declared setting: a dataclass field whose metadata says how to set, check and show it.

    ``minimum`` and ``choices`` are checked on every instance; ``required``
    refuses the default (an empty placeholder such as ``""``); ``secret``
    hides the value in tables and help;
    ``flag`` (without ``--``) and ``metavar`` replace the ones derived from
    the name and the default's type.
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "minimum": minimum, "choices": choices, "secret": secret, "required": required,
        "flag": flag, "metavar": metavar})


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


class DeclaredSettings:
    """Base of a frozen settings dataclass whose fields are :func:`setting` declarations."""

    __slots__ = ()

    ENV_PREFIX: ClassVar[str] = "SCALECHAT_"
    """Environment variable of setting ``name``: ``ENV_PREFIX + NAME``."""
    ERROR: ClassVar[type[Exception]] = SettingsError
    """Raised as ``ERROR(name, problem)`` for an invalid value."""

    def __post_init__(self) -> None:
        for f in self.declared():
            value, meta = getattr(self, f.name), f.metadata
            if meta["required"] and value == f.default:
                raise self.ERROR(f.name, f"is required (--{self.flag(f.name)} or {self.env_var(f.name)})")
            if meta["minimum"] is not None and value < meta["minimum"]:
                raise self.ERROR(f.name, f"must be >= {meta['minimum']}, got {value!r}")
            if meta["choices"] is not None and value not in meta["choices"]:
                raise self.ERROR(f.name, f"must be one of {', '.join(meta['choices'])}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Rules beyond each setting's own minimum, choices and required-ness; raise :attr:`ERROR`."""

    # --- names ----------------------------------------------------------------------

    @classmethod
    def declared(cls) -> tuple[dataclasses.Field, ...]:
        """The settings' fields, in the order they are declared."""
        return dataclasses.fields(cls)

    @classmethod
    def env_var(cls, name: str) -> str:
        return cls.ENV_PREFIX + name.upper()

    @classmethod
    def flag(cls, name: str) -> str:
        """The flag of setting ``name``, without the leading ``--``."""
        f = next(f for f in cls.declared() if f.name == name)
        return f.metadata["flag"] or name.replace("_", "-")

    # --- construction ---------------------------------------------------------------

    @classmethod
    def from_sources(cls, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Any:
        """An instance from parsed flags and the environment (``os.environ`` by default); flags win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in cls.declared():
            flag_value = getattr(args, f.name, None) if args is not None else None
            env_name = cls.env_var(f.name)
            if flag_value is not None:
                raw, source = flag_value, f"--{cls.flag(f.name)}"
            elif env_name in environ:
                raw, source = environ[env_name], env_name
            else:
                continue
            values[f.name] = cls._convert(f, raw, source)
        return cls(**values)

    @classmethod
    def _convert(cls, f: dataclasses.Field, raw: Any, source: str) -> Any:
        kind = type(f.default)
        if not isinstance(raw, str):
            return raw
        try:
            if kind is bool:
                lowered = raw.strip().lower()
                if lowered in TRUE:
                    return True
                if lowered in FALSE:
                    return False
                raise ValueError(raw)
            if kind is tuple:
                return _split_list(raw)
            return kind(raw)
        except ValueError:
            raise cls.ERROR(f.name, f"{source}: expected {kind.__name__}, got {raw!r}") from None

    # --- what people read -----------------------------------------------------------

    @classmethod
    def shown_default(cls, f: dataclasses.Field) -> str:
        """The default as help and tables show it: ``(empty)`` for nothing or a secret, ``(required)``."""
        if f.metadata["required"]:
            return "(required)"
        default = f.default
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        return "(empty)" if f.metadata["secret"] or shown == "" else shown

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per setting; defaults stay None so that the environment can apply."""
        for f in cls.declared():
            default, meta = f.default, f.metadata
            shown = "required" if meta["required"] else f"default: {cls.shown_default(f)}"
            help_text = f"{meta['help']} [env {cls.env_var(f.name)}; {shown}]"
            kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
            if isinstance(default, bool):
                kwargs["action"] = argparse.BooleanOptionalAction
            elif meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
            elif not meta["choices"]:  # with choices, argparse shows them: {memory,redis}
                kwargs["metavar"] = "LIST" if isinstance(default, tuple) else type(default).__name__.upper()
            parser.add_argument(f"--{cls.flag(f.name)}", **kwargs)

    @classmethod
    def table(cls) -> str:
        """The settings as a Markdown table: flag, environment variable, default, meaning."""
        rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
        for f in cls.declared():
            rows.append(f"| `--{cls.flag(f.name)}` | `{cls.env_var(f.name)}` | `{cls.shown_default(f)}` | "
                        f"{f.metadata['help']} |")
        return "\n".join(rows)


def _marked(marker: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {re.escape(marker)}\b.*?-->\n)(.*?)(<!-- end {re.escape(marker)} -->)", re.S)


def marked_block(text: str, marker: str) -> str | None:
    """What ``text`` holds between ``<!-- MARKER ... -->`` and ``<!-- end MARKER -->`` (None: no markers)."""
    match = _marked(marker).search(text)
    return match.group(2) if match else None


def update_readme(path: str | Path, marker: str, table: str) -> None:
    """Put ``table`` between the ``marker`` comments of the file at ``path``."""
    readme = Path(path)
    readme.write_text(_marked(marker).sub(lambda m: m.group(1) + table + "\n" + m.group(3), readme.read_text()))
