"""``scalechat cluster up|down|status``: the local cluster from a terminal.

``scalechat.cli`` calls :func:`add_arguments` on the ``cluster`` subparser and
:func:`run` with the parsed arguments. Run alone: ``python -m scalechat.cluster.cluster_cli``.
"""

from __future__ import annotations

import argparse
import json
import sys

from scalechat.cluster.cluster import (DEFAULT_PORT, DEFAULT_RUN_DIR, MAX_REPLICAS,
                                       START_TIMEOUT, STOP_TIMEOUT, Cluster)
from scalechat.cluster.errors import ClusterError, UsageError
from scalechat.cluster.nginx import Routing
from scalechat.cluster.redis_server import DEFAULT_URL, MAX_SHARDS

PROG = "scalechat cluster"
DESCRIPTION = "Run N chat replicas behind nginx (rooms hashed to replicas), sharing one Redis " \
              "(or rooms sharded over several), scraped by Prometheus; all on 127.0.0.1."
EPILOG = """examples:
  scalechat cluster up --replicas 3            # shares the Redis on 127.0.0.1:6379
  scalechat cluster up --own-redis --port 8081 # a throwaway redis-server of its own
  scalechat cluster up --redis-shards 3        # rooms sharded over 3 throwaway redis-servers
  scalechat cluster up --redis-url redis://10.0.0.1:6379/0,redis://10.0.0.2:6379/0
                                               # rooms sharded over 2 existing Redis
  scalechat cluster up --routing random        # for comparison: a room's members on any replica
  scalechat cluster status --json
  scalechat cluster down

Needs Debian's nginx and prometheus (apt-get install nginx prometheus), and
redis-server for --own-redis and --redis-shards N > 1. State, configs and logs
live in --run-dir.

exit codes:
  0  done (status: every process runs)
  1  failed, e.g. a port is taken, a program is missing, a cluster already runs
     in the run folder, a process did not come up (status: no cluster)
  2  invalid arguments
  3  status: the cluster exists but some of its processes are not running
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")

    up = sub.add_parser("up", help="start a cluster and wait until it answers",
                        description="Start the processes detached, wait until every replica's "
                                    "/readyz, nginx and Prometheus answer, print the URLs.")
    _run_dir(up)
    up.add_argument("--replicas", type=int, default=2, metavar="N",
                    help=f"chat server processes, 1-{MAX_REPLICAS} (default: 2)")
    up.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help=f"the balancer's port on 127.0.0.1; 0 picks a free one "
                         f"(default: {DEFAULT_PORT})")
    redis = up.add_mutually_exclusive_group()
    redis.add_argument("--redis-url", metavar="URL[,URL...]",
                       help="Redis to share, under a key prefix of this run whose keys down "
                            "deletes; a comma-separated list shards rooms over those Redis, "
                            f"shard i on the i-th URL (default: {DEFAULT_URL})")
    redis.add_argument("--own-redis", action="store_true",
                       help="start throwaway redis-servers (no persistence) on free ports "
                            "instead: one, or --redis-shards of them")
    up.add_argument("--redis-shards", type=int, metavar="N",
                    help=f"shard rooms over N independent Redis, 1-{MAX_SHARDS}, every replica "
                         "getting the same ordered URL list; N > 1 starts N throwaway "
                         "redis-servers unless --redis-url lists N URLs (default: 1, or the "
                         "number of URLs in --redis-url)")
    up.add_argument("--redis-prefix", metavar="PREFIX",
                    help="key prefix in Redis, kept by down (default: scalechat-cluster-<random>)")
    up.add_argument("--routing", choices=[r.value for r in Routing],
                    default=Routing.ROOM_HASH.value,
                    help="how nginx places a new WebSocket: room-hash keeps a room's members on "
                         "one replica; random spreads them, for comparison (default: room-hash)")
    up.add_argument("--prometheus-port", type=int, default=0, metavar="PORT",
                    help="Prometheus's port (default: a free one)")
    up.add_argument("--no-prometheus", dest="with_prometheus", action="store_false",
                    help="do not start Prometheus")
    up.add_argument("--serve-arg", dest="serve_args", action="append", default=[], metavar="ARG",
                    help="extra argument for every replica's `scalechat serve`, repeatable; "
                         "write it with '=': --serve-arg=--rate-limit=100")
    up.add_argument("--timeout", type=float, default=START_TIMEOUT, metavar="SECONDS",
                    help=f"how long to wait for everything to answer (default: {START_TIMEOUT:g})")
    up.add_argument("--nginx-bin", metavar="PATH", help="nginx program (default: from PATH or /usr/sbin)")
    up.add_argument("--prometheus-bin", metavar="PATH", help="prometheus program (default: from PATH)")

    down = sub.add_parser("down", help="stop every process of the cluster",
                          description="SIGTERM the replicas and Prometheus, SIGQUIT nginx, then "
                                      "the cluster's own redis-servers; SIGKILL what is left after "
                                      "--timeout; remove the state file.")
    _run_dir(down)
    down.add_argument("--timeout", type=float, default=STOP_TIMEOUT, metavar="SECONDS",
                      help=f"grace period before SIGKILL (default: {STOP_TIMEOUT:g})")

    status = sub.add_parser("status", help="print the URLs and which processes run",
                            description="Print the cluster's URLs and whether each process runs.")
    _run_dir(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")


def _run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default=str(DEFAULT_RUN_DIR), metavar="DIR",
                        help=f"state file, configs and logs (default: {DEFAULT_RUN_DIR})")


def run(args: argparse.Namespace) -> int:
    action = args.cluster_command
    try:
        return ACTIONS[action](args)
    except UsageError as exc:
        print(f"{PROG} {action}: {exc}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"{PROG} {action}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {action}: interrupted", file=sys.stderr)
        return 130


def _up(args: argparse.Namespace) -> int:
    cluster = Cluster.up(args.run_dir, args.replicas, args.port, redis_url=args.redis_url,
                         own_redis=args.own_redis, redis_shards=args.redis_shards,
                         redis_prefix=args.redis_prefix,
                         with_prometheus=args.with_prometheus, prometheus_port=args.prometheus_port,
                         serve_args=args.serve_args, timeout=args.timeout,
                         nginx_bin=args.nginx_bin, prometheus_bin=args.prometheus_bin,
                         routing=args.routing)
    print(f"{PROG}: {len(cluster.replicas)} replica(s) up")
    print(format_status(cluster.status()))
    print(f"stop it with: {PROG} down --run-dir {args.run_dir}")
    return 0


def _down(args: argparse.Namespace) -> int:
    cluster = Cluster.load(args.run_dir)
    count = len(cluster.state.running())
    killed = cluster.down(args.timeout)
    note = f" ({', '.join(p.name for p in killed)} needed SIGKILL)" if killed else ""
    print(f"{PROG}: stopped {count} process(es) of {cluster.run_dir}{note}")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = Cluster.load(args.run_dir).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    every = [r["running"] for r in status["replicas"]]
    every += [p["running"] for p in status["processes"].values() if p is not None]
    return 0 if all(every) else 3


def format_status(status: dict) -> str:
    """The human view of :meth:`Cluster.status`: one line per component."""
    def state(running: bool) -> str:
        return "" if running else "  NOT RUNNING"

    procs = status["processes"]
    lines = [f"  balancer    {status['balancer']}  ({status['routing']}; {status['http']}, "
             f"nginx pid {procs['nginx']['pid'] if procs['nginx'] else '-'})"
             f"{state(procs['nginx'] is not None and procs['nginx']['running'])}"]
    for r in status["replicas"]:
        lines.append(f"  {r['node']:<10}  {r['url']}  metrics {r['metrics_url']}  pid {r['pid']}"
                     f"{state(r['running'])}")
    if status["prometheus"]:
        lines.append(f"  prometheus  {status['prometheus']}  pid {procs['prometheus']['pid']}"
                     f"{state(procs['prometheus']['running'])}")
    shards = status["redis_shards"]
    for shard in shards:
        label = "redis" if len(shards) == 1 else f"redis-{shard['shard']}"
        which = f"shard {shard['shard']} of {len(shards)}; " if len(shards) > 1 else ""
        proc = shard["process"]
        owner = (f"own redis-server, pid {proc['pid']}{state(proc['running'])}" if proc
                 else "shared")
        lines.append(f"  {label:<10}  {shard['url']}  ({which}key prefix "
                     f"{status['redis_prefix']}; {owner})")
    lines.append(f"  logs        {status['run_dir']}/logs")
    return "\n".join(lines)


ACTIONS = {"up": _up, "down": _down, "status": _status}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
