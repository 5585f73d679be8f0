"""Instructions per message on the server's hot path, counted by callgrind: noise-free.

Runs ``bench/hotpath.py`` (the real socket, node, broker, hub and outbox,
writes stubbed) under ``valgrind --tool=callgrind`` twice, with ``--small``
and ``--large`` messages, and reports the difference per message: start-up
and imports cancel out. Wall-clock figures on a shared 2-core VM vary by
10-20% from run to run; an instruction count is the same for the same code,
whatever else the machine does (it does not count cache misses or the
kernel's work: bench/fanout.py measures those).

By default both builds of the per-message modules are counted in one run:
compiled (mypyc, as installed) and their plain sources
(``SCALECHAT_PURE_PYTHON=1``), and their ratio.

    .venv/bin/python bench/instructions.py [--rooms 100 --members 4] [--small 2000 --large 12000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from document import Run

HERE = Path(__file__).resolve().parent
COLLECTED = re.compile(rb"Collected : (\d+)")
COMPILED = re.compile(rb"per-message modules compiled: (\d+) of (\d+)")


def instructions(messages: int, rooms: int, members: int, pure: bool) -> int:
    """Instructions callgrind counts for one hotpath.py run of ``messages`` messages."""
    env = {**os.environ, "SCALECHAT_PURE_PYTHON": "1" if pure else "0"}
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out",
             sys.executable, str(HERE / "hotpath.py"), "--messages", str(messages),
             "--rooms", str(rooms), "--members", str(members), "--repeat", "1"],
            capture_output=True, env=env, timeout=3600)
    found, built = COLLECTED.search(result.stderr), COMPILED.search(result.stdout)
    if result.returncode != 0 or found is None or built is None:
        raise SystemExit(f"hotpath.py under callgrind failed ({result.returncode}):\n"
                         f"{result.stderr.decode(errors='replace')[-2000:]}")
    compiled, listed = int(built.group(1)), int(built.group(2))
    if compiled != (0 if pure else listed):
        raise SystemExit(f"{compiled} of {listed} per-message modules ran compiled in the "
                         f"{'plain' if pure else 'compiled'} build (installed without a C "
                         "compiler? see docs/design/compiled-core.md)")
    return int(found.group(1))


def per_message(small: int, large: int, rooms: int, members: int, pure: bool) -> float:
    return (instructions(large, rooms, members, pure)
            - instructions(small, rooms, members, pure)) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--members", type=int, default=4, help="sockets per room")
    parser.add_argument("--small", type=int, default=2000, help="messages of the shorter run")
    parser.add_argument("--large", type=int, default=12000, help="messages of the longer run")
    parser.add_argument("--builds", nargs="+", default=["compiled", "plain"],
                        choices=["compiled", "plain"], help="plain: SCALECHAT_PURE_PYTHON=1")
    parser.add_argument("--json", type=Path, default=Path("build/bench/instructions.json"))
    args = parser.parse_args()
    for name in ("rooms", "members", "small"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1")
    if args.large <= args.small:
        raise SystemExit("--large must be more than --small")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    run = Run("instructions", __file__)
    counts = {}
    for build in args.builds:
        counts[build] = per_message(args.small, args.large, args.rooms, args.members,
                                    pure=build == "plain")
        print(f"{args.rooms} x {args.members}, {build}: {counts[build]:,.0f} instructions per "
              f"message, {counts[build] / args.members:,.0f} per delivery", flush=True)
    if len(counts) == 2:
        print(f"compiled / plain: {counts['compiled'] / counts['plain']:.2f}x")
    run.write(args.json, {"rooms": args.rooms, "members": args.members, "small": args.small,
                          "large": args.large, "builds": args.builds},
              {"instructions_per_message": counts})
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
