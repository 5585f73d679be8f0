"""The ``scalechat`` command: one entry point, a subcommand per tool.

Only the chosen subcommand's module is imported (``scalechat chat`` does not
pay for the server's or the operator's imports). Each module offers
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from scalechat.version import __version__

# name: (module providing add_arguments/run, help)
SUBCOMMANDS = {
    "serve": ("scalechat.chat.serve_cli", "run the chat server"),
    "chat": ("scalechat.chat.chat_cli", "chat in a room from the terminal"),
    "load": ("scalechat.loadgen.load_cli", "run a load test against a chat server"),
    "analyze": ("scalechat.analysis.analyze_cli", "summarise, plot and report load-test results"),
    "cluster": ("scalechat.cluster.cluster_cli", "a local cluster: replicas, Redis, nginx, Prometheus"),
    "capacity": ("scalechat.capacity_cli", "replicas, Redis shards and CPUs for a load, from measured costs"),
    "operator": ("scalechat.loadtest_operator.operator_cli", "run the LoadTest Kubernetes operator (kopf)"),
}


QUICK_START = """\
quick start (README.md, "Quick start"):
  make run                                         # or: scalechat serve
  scalechat chat ws://127.0.0.1:8080/ws/lobby      # or open http://127.0.0.1:8080
  scalechat load --url 'ws://127.0.0.1:8080/ws/{room}' --clients-per-room 10,50 --rate 1 --duration 10
  scalechat analyze results/<run>

'scalechat COMMAND --help' shows a command's flags and examples."""

# Examples shown under a subcommand's flags, for modules whose --help has none of its own.
EPILOGS = {
    "serve": """\
examples:
  scalechat serve                                  # one process, memory broker, :8080 (metrics :9000)
  scalechat serve --broker redis --redis-url redis://127.0.0.1:6379/0 --port 8081 --node-id a
                                                   # a replica sharing rooms through Redis
  SCALECHAT_LOG_LEVEL=debug scalechat serve        # every flag has an environment variable""",
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``selected``'s module is imported to add its flags."""
    parser = argparse.ArgumentParser(prog="scalechat", description="A WebSocket chat server built to be scaled.",
                                     epilog=QUICK_START, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"scalechat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOGS.get(name),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == selected:
            module = importlib.import_module(module_name)
            module.add_arguments(child)
            child.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected if selected in SUBCOMMANDS else None).parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
