"""Declared settings: one declaration gives the flag, the environment variable, the checks and the table."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from scalechat.settings import DeclaredSettings, SettingsError, marked_block, setting, update_readme


class ToyError(ValueError):
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"toy {name}: {problem}")


@dataclass(frozen=True, slots=True)
class Toy(DeclaredSettings):
    ENV_PREFIX = "TOY_"

    port: int = setting(8080, "Port.", minimum=0)
    mode: str = setting("fast", "Mode.", choices=("fast", "safe"))
    verbose: bool = setting(False, "Say more.")
    origins: tuple[str, ...] = setting((), "Comma-separated origins.")
    token: str = setting("", "A secret.", secret=True)
    grace_seconds: float = setting(1.5, "Grace.", flag="grace", metavar="SECONDS")

    def check(self) -> None:
        if self.mode == "safe" and self.port == 0:
            raise self.ERROR("port", "must be set in safe mode")


@dataclass(frozen=True)
class Needy(DeclaredSettings):
    ENV_PREFIX = "NEEDY_"
    ERROR = ToyError

    url: str = setting("", "Where to go.", required=True)


def parse(cls: type[DeclaredSettings], *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    return parser.parse_args(argv)


def test_a_flag_wins_over_the_environment_which_wins_over_the_default():
    env = {"TOY_PORT": "9000", "TOY_MODE": "safe", "TOY_GRACE_SECONDS": "3"}
    toy = Toy.from_sources(parse(Toy, "--port", "7000"), environ=env)
    assert (toy.port, toy.mode, toy.grace_seconds, toy.verbose) == (7000, "safe", 3.0, False)
    assert Toy.from_sources(environ={}) == Toy()


def test_strings_are_converted_by_the_type_of_the_default():
    env = {"TOY_VERBOSE": "yes", "TOY_ORIGINS": " a, ,b ", "TOY_GRACE_SECONDS": "0.25"}
    toy = Toy.from_sources(environ=env)
    assert (toy.verbose, toy.origins, toy.grace_seconds) == (True, ("a", "b"), 0.25)
    assert Toy.from_sources(parse(Toy, "--no-verbose"), environ={"TOY_VERBOSE": "on"}).verbose is False


@pytest.mark.parametrize("argv, env, message", [
    ((), {"TOY_PORT": "many"}, "invalid setting port: TOY_PORT: expected int, got 'many'"),
    (("--grace", "soon"), {}, "invalid setting grace_seconds: --grace: expected float, got 'soon'"),
    ((), {"TOY_VERBOSE": "maybe"}, "invalid setting verbose: TOY_VERBOSE: expected bool, got 'maybe'"),
    ((), {"TOY_PORT": "-1"}, "invalid setting port: must be >= 0, got -1"),
    ((), {"TOY_MODE": "slow"}, "invalid setting mode: must be one of fast, safe, got 'slow'"),
    ((), {"TOY_MODE": "safe", "TOY_PORT": "0"}, "invalid setting port: must be set in safe mode"),
])
def test_an_invalid_value_names_the_setting(argv, env, message):
    with pytest.raises(SettingsError) as info:
        Toy.from_sources(parse(Toy, *argv), environ=env)
    assert str(info.value) == message


def test_a_required_setting_names_its_flag_and_variable_in_the_class_error():
    with pytest.raises(ToyError, match=r"^toy url: is required \(--url or NEEDY_URL\)$"):
        Needy.from_sources(environ={})
    assert Needy.from_sources(environ={"NEEDY_URL": "x"}).url == "x"


def test_help_shows_the_variable_and_the_default_of_every_flag(capsys):
    with pytest.raises(SystemExit):
        parse(Toy, "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--port INT Port. [env TOY_PORT; default: 8080]" in text
    assert "--mode {fast,safe} Mode. [env TOY_MODE; default: fast]" in text
    assert "--verbose, --no-verbose Say more. [env TOY_VERBOSE; default: False]" in text
    assert "--origins LIST" in text and "--token STR A secret. [env TOY_TOKEN; default: (empty)]" in text
    assert "--grace SECONDS Grace. [env TOY_GRACE_SECONDS; default: 1.5]" in text
    with pytest.raises(SystemExit):
        parse(Needy, "--help")
    assert "[env NEEDY_URL; required]" in " ".join(capsys.readouterr().out.split())


def test_the_table_has_one_row_per_setting_with_secrets_hidden():
    rows = Toy.table().splitlines()
    assert rows[:2] == ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    assert rows[2] == "| `--port` | `TOY_PORT` | `8080` | Port. |"
    assert "| `--token` | `TOY_TOKEN` | `(empty)` | A secret. |" in rows
    assert "| `--grace` | `TOY_GRACE_SECONDS` | `1.5` | Grace. |" in rows
    assert len(rows) == 2 + len(Toy.declared())
    assert Needy.table().splitlines()[2] == "| `--url` | `NEEDY_URL` | `(required)` | Where to go. |"


def test_a_readme_table_is_replaced_between_its_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- toy-table: generated -->\nstale\n<!-- end toy-table -->\n"
                      "<!-- other-table -->\nkept\n<!-- end other-table -->\n")
    update_readme(readme, "toy-table", Toy.table())
    text = readme.read_text()
    assert marked_block(text, "toy-table").strip() == Toy.table()
    assert marked_block(text, "other-table") == "kept\n" and text.startswith("intro\n")
    assert marked_block(text, "missing-table") is None
