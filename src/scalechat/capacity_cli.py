"""``scalechat capacity``: the flags and output of the capacity model (scalechat.capacity)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from scalechat import capacity
from scalechat.capacity import (CONNECTIONS_PER_REPLICA, HEARTBEAT_SECONDS, PATTERN, SHARD_MEMORY_BYTES,
                                CostsError,
                                load_costs, load_of, newest_results, plan, render_markdown,
                                render_text, to_json)


def _number(kind: type, low: float, what: str, *, inclusive: bool = False, high: float | None = None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if (not math.isfinite(value) or not (value >= low if inclusive else value > low)
                or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


EPILOG = """\
examples:
  scalechat capacity --connections 1000000 --room-size 10 --deliveries 500000
                      # Centrifugo's published 2020 test: 1,000,000 connections, rooms of 10,
                      # about 500,000 deliveries/s (20 pods x 2 CPUs and 5 Redis instances)
  scalechat capacity --connections 20000 --room-size 4 --rate-per-client 0.5 --cpu-target 0.5
  scalechat capacity --connections 20000 --room-size 4 --rate-per-client 0.5 \\
      --costs build/bench/scaleout.json --format json    # your own run of bench/scaleout.py
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = capacity.__doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    positive_int = _number(int, 0, "a whole number > 0")
    parser.add_argument("--connections", type=positive_int, required=True,
                        help="concurrent WebSocket connections")
    parser.add_argument("--room-size", type=positive_int, required=True,
                        help="members per room (every one receives every message of the room)")
    rate = parser.add_mutually_exclusive_group(required=True)
    rate.add_argument("--rate-per-client", type=_number(float, 0, "a number > 0"), metavar="MSG_S",
                      help="messages each client sends per second")
    rate.add_argument("--deliveries", type=_number(float, 0, "a number > 0"), metavar="PER_S",
                      help="total deliveries per second instead (messages x room size)")
    parser.add_argument("--costs", type=Path, metavar="JSON",
                        help=f"bench/scaleout.py's JSON (default: the newest measured "
                             f"{PATTERN} in bench/results)")
    parser.add_argument("--cpu-target", type=_number(float, 0, "a fraction in (0, 1]", high=1.0),
                        default=0.7, metavar="FRACTION",
                        help="plan every CPU to be this busy at most (default 0.7: 30%% headroom)")
    parser.add_argument("--connections-per-replica", type=positive_int,
                        default=CONNECTIONS_PER_REPLICA, metavar="N",
                        help="connections one replica may hold (its --max-connections; default "
                             f"{CONNECTIONS_PER_REPLICA:,}, the server's default)")
    parser.add_argument("--heartbeat-seconds", type=_number(float, 0, "a number >= 0", inclusive=True),
                        default=HEARTBEAT_SECONDS, metavar="S",
                        help="the server's ping interval (default 30, its default); 0 leaves "
                             "heartbeats out")
    parser.add_argument("--history-size", type=_number(int, 0, "a whole number >= 0", inclusive=True),
                        metavar="N", help="messages kept per room (the server's --history-size; "
                                          "default: the one the costs were measured with)")
    parser.add_argument("--shard-memory-gib", type=_number(float, 0, "a number > 0"),
                        default=SHARD_MEMORY_BYTES / 2**30, metavar="GIB",
                        help="history one Redis shard may hold (default "
                             f"{SHARD_MEMORY_BYTES / 2**30:g}); more shards when the rooms' history needs it")
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text")


def run(args: argparse.Namespace) -> int:
    if args.room_size > args.connections:
        print(f"scalechat capacity: --room-size ({args.room_size:,}) must not exceed "
              f"--connections ({args.connections:,})", file=sys.stderr)
        return 2
    try:
        costs = load_costs(args.costs if args.costs is not None else newest_results())
    except CostsError as exc:
        print(f"scalechat capacity: --costs: {exc}", file=sys.stderr)
        return 2
    if args.history_size is not None:
        costs = dataclasses.replace(costs, history_size=args.history_size)
    load = load_of(args.connections, args.room_size, rate_per_client=args.rate_per_client,
                   deliveries_per_s=args.deliveries)
    result = plan(load, costs, cpu_target=args.cpu_target,
                  connections_per_replica=args.connections_per_replica,
                  heartbeat_seconds=args.heartbeat_seconds,
                  shard_memory_bytes=args.shard_memory_gib * 2**30)
    if args.format == "json":
        print(json.dumps(to_json(result), indent=1))
    elif args.format == "markdown":
        print(render_markdown(result))
    else:
        print(render_text(result))
    return 0
