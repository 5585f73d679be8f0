"""``scalechat serve``: flags from the Settings declarations, then run the server."""

from __future__ import annotations

import argparse
import sys

from scalechat.chat.errors import SettingsError
from scalechat.chat.settings import Settings, add_arguments  # noqa: F401  (add_arguments is the CLI hook)


def run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_sources(args)
    except SettingsError as exc:
        print(f"scalechat serve: {exc}", file=sys.stderr)
        return 2
    from scalechat.chat.server import run as serve
    try:
        serve(settings)
    except SettingsError as exc:  # found at start-up (a Redis Cluster node as a shard)
        print(f"scalechat serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"scalechat serve: cannot listen on {settings.host}:{settings.port} "
              f"or metrics port {settings.metrics_port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
