"""The ``scalechat`` command: one entry point, a subcommand per tool.

Each subcommand's module is imported only when it runs, so ``scalechat chat``
does not pay for the server's imports.
"""

from __future__ import annotations

import argparse
import sys

from scalechat import __version__


def _serve(parser: argparse.ArgumentParser) -> None:
    from scalechat.chat.settings import add_arguments
    add_arguments(parser)
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from scalechat.chat.errors import SettingsError
    from scalechat.chat.settings import Settings
    try:
        settings = Settings.from_sources(args)
    except SettingsError as exc:
        print(f"scalechat serve: {exc}", file=sys.stderr)
        return 2
    from scalechat.chat.server import run
    try:
        run(settings)
    except OSError as exc:
        print(f"scalechat serve: cannot listen on {settings.host}:{settings.port} "
              f"or metrics port {settings.metrics_port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _chat(parser: argparse.ArgumentParser) -> None:
    from scalechat.chat.client import add_arguments, run
    add_arguments(parser)
    parser.set_defaults(run=run)


SUBCOMMANDS = {
    "serve": ("run the chat server", _serve),
    "chat": ("chat in a room from the terminal", _chat),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalechat", description="A WebSocket chat server built to be scaled.")
    parser.add_argument("--version", action="version", version=f"scalechat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure) in SUBCOMMANDS.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
