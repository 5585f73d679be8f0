"""``scalechat operator``: run the LoadTest operator (kopf, standalone) until SIGTERM.

``add_arguments(parser)`` declares the flags: which namespaces to watch, kopf's
own, and one per setting of :class:`~scalechat.loadtest_operator.settings.OperatorConfig`
(each also read from its environment variable); ``run(args)`` checks them,
then runs kopf with the handlers of :mod:`scalechat.loadtest_operator.handlers`.
Exit codes: 0 stopped by a signal, 2 bad settings, 1 could not reach the API.
kopf and the Kubernetes client are imported by ``run`` only, so that other
``scalechat`` commands do not pay for them.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

from scalechat.loadtest_operator.settings import OperatorConfig

EXAMPLES = """\
examples:
  # LoadTests of one namespace; Jobs run the image the chart built
  scalechat operator --namespace loadtests --redis-url redis://redis:6379/0 --image scalechat:0.1.0
  # every namespace (needs a ClusterRole), settings from the environment
  SCALECHAT_OPERATOR_REDIS_URL=redis://redis:6379/0 scalechat operator --all-namespaces
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", dest="namespaces", metavar="NS",
                       help="watch LoadTests in this namespace; repeat for more (kopf patterns such as "
                            "'team-*' need namespace list/watch RBAC)")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch LoadTests in every namespace (needs a ClusterRole)")
    OperatorConfig.add_arguments(parser)
    parser.add_argument("--liveness", metavar="URL",
                        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz [default off]")
    parser.add_argument("--standalone", action="store_true",
                        help="accepted for kopf's sake: the operator always runs standalone "
                             "(one replica, no peering objects)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log kopf's and the handlers' details")


def run(args: argparse.Namespace, *, stop_flag: threading.Event | None = None) -> int:
    """Run until a signal (or ``stop_flag``, for tests); the exit code."""
    try:
        config = OperatorConfig.from_sources(args)
        if not args.namespaces and not args.all_namespaces:
            raise ValueError("--namespace NS or --all-namespaces: one is required")
    except ValueError as exc:
        print(f"scalechat operator: {exc}", file=sys.stderr)
        return 2
    import kopf

    from scalechat.loadtest_operator import handlers  # noqa: F401  (registers the handlers with kopf)

    kopf.configure(verbose=args.verbose)
    options: dict[str, Any] = {"namespaces": args.namespaces} if args.namespaces else {"clusterwide": True}
    try:
        kopf.run(standalone=True, liveness_endpoint=args.liveness, memo=kopf.Memo(config=config),
                 stop_flag=stop_flag, **options)
    except kopf.LoginError as exc:
        print(f"scalechat operator: cannot log in to the Kubernetes API: {exc}", file=sys.stderr)
        return 1
    return 0
