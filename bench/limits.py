"""The server in its container under a CPU quota, the load generator outside: capacity follows the quota.

The seed's authors measured a server that ran, without their knowing, under a
container CPU limit. Here the limit is set on purpose (``podman run --cpus Q``,
the chart's 512 Mi memory limit, its read-only restricted pod), read back from
the server's ``/info`` as ``scalechat load`` records it in run.json, and
printed next to each capacity found, with the cgroup's own count of the
periods the quota throttled the server.

Each quota gets a fresh container and one ``scalechat load --find-capacity
rooms`` from this machine (the venv's scalechat) through the port published on
127.0.0.1: ``--start`` rooms of ``--clients-per-room`` clients at ``--rate``
messages/s each, growing by ``--step`` rooms until the SLO breaks or
``--max-steps`` stages have run. Every stage is bounded (connecting,
``--warmup`` + ``--seconds`` + 2 s drain): a quota takes one to two minutes.
``--rounds`` repeats the quotas in turn, so that a busy minute on this machine
skews one cell rather than one quota. The server's CPU use and throttled
periods in each stage's window come from its cgroup, read on the host.

    .venv/bin/python bench/limits.py                       # --cpus 0.5,1,2, two rounds
    .venv/bin/python bench/limits.py --cpus 1 --rounds 1 --max-steps 4

Writes ``build/bench/limits/<stamp>/`` (each run's results directory with the
load generator's output, and report.json) and prints the table. The image is
built (or reused) first.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from scalechat.results import read_shard

REPO = Path(__file__).resolve().parent.parent
SCALECHAT = REPO / ".venv" / "bin" / "scalechat"
MEMORY = "512m"  # the chart's limit (charts/values.yaml chat.resources.limits.memory: 512Mi)


def _image_tool():
    spec = importlib.util.spec_from_file_location("scalechat_image_tool", REPO / "docker" / "image.py")
    module = sys.modules["scalechat_image_tool"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


image_tool = _image_tool()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chart_uid() -> int:
    import yaml
    return yaml.safe_load((REPO / "charts" / "values.yaml").read_text())["image"]["uid"]


class CgroupSampler(threading.Thread):
    """The container's CPU time and throttled periods, read from the host's cgroup files 5 times a second."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        paths = {}
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") or [""]:
                paths[controller] = path
        v1_cpu, v1_acct = paths.get("cpu"), paths.get("cpuacct")
        if v1_cpu is not None and v1_acct is not None:
            self.usage = Path(f"/sys/fs/cgroup/cpuacct{v1_acct}/cpuacct.usage")
            self.stat = Path(f"/sys/fs/cgroup/cpu{v1_cpu}/cpu.stat")
        else:  # cgroup v2: one tree, usage in cpu.stat
            self.usage, self.stat = None, Path(f"/sys/fs/cgroup{paths['']}/cpu.stat")
        self.interval, self.samples = interval, []
        self._stop_event = threading.Event()

    def read(self) -> tuple[float, float, int]:
        """(unix time, CPU seconds used, periods throttled so far)."""
        stat = dict((k, int(v)) for k, v in (line.split() for line in self.stat.read_text().splitlines()))
        used = int(self.usage.read_text()) / 1e9 if self.usage else stat["usage_usec"] / 1e6
        return time.time(), used, stat.get("nr_throttled", 0)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append(self.read())
            except OSError:  # the container is gone
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def window(self, start: float, end: float) -> dict[str, float] | None:
        """CPUs used on average and periods throttled between two unix times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (t0, u0, n0), (t1, u1, n1) = inside[0], inside[-1]
        return {"cpus_used": round((u1 - u0) / (t1 - t0), 2), "throttled_periods": n1 - n0}


def start_server(image: str, cpus: str) -> tuple[str, int, int]:
    name, port = f"scalechat-limits-{os.getpid()}-{secrets.token_hex(3)}", free_port()
    uid = chart_uid()
    image_tool.podman("run", "--detach", "--name", name, f"--cpus={cpus}", f"--memory={MEMORY}",
                      "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m", "--cap-drop=ALL",
                      "--security-opt", "no-new-privileges", f"--user={uid}:{uid}",
                      "--publish", f"127.0.0.1:{port}:8080", "--env", "SCALECHAT_HOST=0.0.0.0",
                      image, "serve")
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    pid = int(image_tool.podman("inspect", "--format", "{{.State.Pid}}", name).stdout)
                    return name, port, pid
        except OSError:
            pass
        if time.monotonic() > deadline:
            logs = image_tool.podman("logs", name, check=False)
            image_tool.podman("rm", "--force", "--time=0", name, check=False)
            raise SystemExit(f"limits.py: the server at --cpus {cpus} did not get ready:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.2)


def measure(image: str, cpus: str, args: argparse.Namespace, out: Path) -> dict:
    name, port, pid = start_server(image, cpus)
    loadavg = os.getloadavg()[0]  # other work on this machine skews every figure
    sampler = CgroupSampler(pid)
    sampler.start()
    try:
        started = time.monotonic()
        cmd = [str(SCALECHAT), "load", "--url", f"ws://127.0.0.1:{port}/ws/{{room}}",
               "--rooms", str(args.start), "--clients-per-room", str(args.clients_per_room),
               "--rate", str(args.rate), "--size", str(args.size), "--duration", str(args.seconds),
               "--warmup", str(args.warmup), "--drain", "2", "--workers", "1",
               "--find-capacity", "rooms", "--step", str(args.step), "--max-steps", str(args.max_steps),
               "--slo-p99", str(args.slo_p99), "--slo-delivery", str(args.slo_delivery),
               "--name", f"limits-cpus-{cpus}", "--out", str(out)]
        load = subprocess.run(cmd, capture_output=True, text=True, timeout=args.max_steps * 120 + 60)
        wall = time.monotonic() - started
        out.mkdir(parents=True, exist_ok=True)
        (out / "load.log").write_text(load.stdout + load.stderr)
    finally:
        sampler.stop()
        image_tool.podman("rm", "--force", "--time=0", name, check=False)
    if not (out / "run.json").exists():
        raise SystemExit(f"limits.py: scalechat load at --cpus {cpus} exited {load.returncode}:\n"
                         f"{load.stdout}{load.stderr}")
    run = json.loads((out / "run.json").read_text())
    _, _, stages = read_shard(next(out.glob("shard-*.json")))
    capacity = run["capacity"]
    host = (run.get("server") or {}).get("host") or {}
    by_name = {s.name: s for s in stages}
    held = by_name.get(capacity["stage"])
    broke = next((s for s in capacity["steps"] if not s["holds"]), None)
    broken = by_name.get(broke["stage"]) if broke else None
    return {
        "cpus_flag": float(cpus),
        "server_cpu_quota": host.get("cgroup_cpu_quota"),  # as the server's /info reported it
        "server_memory_limit_bytes": host.get("cgroup_memory_limit_bytes"),
        "capacity_rooms": capacity["value"],
        "capacity_bounded": capacity["bounded"],
        "deliveries_per_s": round(held.received / (held.ended_at - held.started_at)) if held else None,
        "p99_ms": round(held.delivery.percentile(99) * 1000, 1) if held else None,
        "server_at_capacity": sampler.window(held.started_at, held.ended_at) if held else None,
        "server_at_break": sampler.window(broken.started_at, broken.ended_at) if broken else None,
        "broke_at": f"{broke['value']} rooms: {broke['reason']}" if broke else None,
        # A stage whose generator worker died says nothing of the server: the capacity is a lower bound.
        "generator_failed": bool(broken and broken.errors.get("worker_unfinished")),
        "generator_behind": sorted(s.name for s in stages if s.errors.get("generator_overloaded")),
        "load_exit": load.returncode,
        "wall_seconds": round(wall, 1),
        "loadavg_before": round(loadavg, 2),
        "steps": capacity["steps"],
        "results": str(out),
    }


def table(rows: list[dict], args: argparse.Namespace) -> str:
    load = f"rooms of {args.clients_per_room} x {args.rate:g} msg/s"
    lines = [f"| round | `--cpus` | server's CPU quota (/info) | memory limit (/info) | capacity, {load} "
             "| deliveries/s held | p99 there | server CPUs used there (throttled periods) "
             "| next step | server CPUs used there |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        quota = "none" if r["server_cpu_quota"] is None else f"{r['server_cpu_quota']:g} CPU"
        memory = "none" if r["server_memory_limit_bytes"] is None else f"{r['server_memory_limit_bytes'] / 2**20:g} MiB"
        lower_bound = not r["capacity_bounded"] or r["generator_failed"]
        capacity = "-" if r["capacity_rooms"] is None else f"{r['capacity_rooms']}" + ("+" if lower_bound else "")
        deliveries = "-" if r["deliveries_per_s"] is None else f"{r['deliveries_per_s']:,}"
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:g} ms"
        at, brk = r["server_at_capacity"], r["server_at_break"]
        used = "-" if at is None else f"{at['cpus_used']:g} ({at['throttled_periods']})"
        used_break = "-" if brk is None else f"{brk['cpus_used']:g} ({brk['throttled_periods']})"
        behind = f"; generator behind in {', '.join(r['generator_behind'])}" if r["generator_behind"] else ""
        if r["generator_failed"]:
            behind += " (the generator's worker did not finish: not the server's limit)"
        lines.append(f"| {r['round']} | {r['cpus_flag']:g} | **{quota}** | {memory} | **{capacity}** | {deliveries} "
                     f"| {p99} | {used} | {r['broke_at'] or 'did not break'}{behind} | {used_break} |")
    return "\n".join(lines)


def _progress(r: dict) -> None:
    print(f"  /info quota {r['server_cpu_quota']}, capacity {r['capacity_rooms']} rooms "
          f"({r['deliveries_per_s']} deliveries/s), {r['wall_seconds']} s, load average before "
          f"{r['loadavg_before']}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpus", default="0.5,1,2", help="podman --cpus quotas, comma-separated [0.5,1,2]")
    parser.add_argument("--clients-per-room", type=int, default=10, help="clients per room [10]")
    parser.add_argument("--rate", type=float, default=2.0, help="messages/s per client [2]")
    parser.add_argument("--size", type=int, default=100, help="message bytes [100]")
    parser.add_argument("--start", type=int, default=40, help="rooms of the first stage [40]")
    parser.add_argument("--step", type=int, default=40, help="rooms added per step [40]")
    parser.add_argument("--max-steps", type=int, default=12, help="stages per quota at most [12]")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per stage [5]")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per stage [1]")
    parser.add_argument("--slo-p99", type=float, default=0.5, help="p99 delivery latency bound, s [0.5]")
    parser.add_argument("--slo-delivery", type=float, default=0.999, help="smallest delivery ratio [0.999]")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the quotas, in turn [2]")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench" / "limits")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl+C: the load generator is killed and the container removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    image = image_tool.build(log=lambda m: print(m, file=sys.stderr))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / stamp
    rows = []
    for round_ in range(1, args.rounds + 1):  # quotas in turn: a noisy minute skews one cell, not one quota
        for cpus in args.cpus.split(","):
            print(f"round {round_}, --cpus {cpus}: finding capacity ...", file=sys.stderr, flush=True)
            results = out / f"round-{round_}-cpus-{cpus}"
            rows.append({"round": round_, **measure(image, cpus, args, results)})
            rows[-1]["generator"] = json.loads((results / "run.json").read_text())["generator"]
            _progress(rows[-1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    report = {"date": stamp, "commit": commit + ("+changes" if dirty else ""), "image": image,
              "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(table(rows, args))
    print(f"\n{stamp}, commit {report['commit']}, image {image}; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
