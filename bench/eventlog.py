"""Analysing a raw event log: the streaming reader vs ``wc -l`` and pandas.

    python bench/eventlog.py [--rows 10000000] [--dir /tmp] [--keep]

Writes a synthetic event log of ``--rows`` rows (a 5-stage run: 4000 clients in
rooms of 16, each send received by the 16 members, the sender's echo included,
latencies growing stage by stage, 0.01 % duplicated receipts) into a temporary
directory, then measures, each in its own subprocess so that peak memory is
that tool's alone (``os.wait4``'s ``ru_maxrss``):

* ``wc -l``: the floor for touching every byte (a line count);
* pandas, as the seed story did it: ``read_csv``, sends and receipts joined on
  (sender, msgno) for the send time, latency quantiles per stage;
* pandas without the join: the receipt rows already carry the scheduled time;
* ``scalechat.eventlog.read_event_log``: chunked, vectorised, duplicates checked;
  with one parsing thread, and with its default (one per CPU, at most 4).

Seconds are wall time inside the child (reading and computing, not interpreter
start-up); CPU is the child's user + system time, steadier than wall time on a
busy machine. Every tool reads the file from the page cache (it was just
written). The file is deleted at the end unless ``--keep``. Also measured: how
fast ``EventLogWriter`` takes events (its hot path and its encoding thread).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scalechat.eventlog import HEADER, RECEIPT, SEND, EventLogWriter, encode_rows

QUANTILES = (0.5, 0.99)
T0 = 1_732_700_000_000_000_000


def generate(path: Path, rows: int, *, seed: int = 1, clients: int = 4000, room: int = 16,
             stages: int = 5) -> int:
    """Write about ``rows`` rows; returns how many were written."""
    rng = np.random.default_rng(seed)
    per_send = room + 1
    sends = max(rows // per_send, 1)
    written = 0
    with open(path, "wb") as f:
        f.write(HEADER)
        for start in range(0, sends, 1 << 14):
            n = min(1 << 14, sends - start)
            i = np.arange(start, start + n)
            stage = i * stages // sends
            sender = (i * 7919) % clients  # every client in turn, in a scrambled order
            scheduled = T0 + i * 100_000
            block = np.empty((n, per_send, 7), dtype=np.int64)
            block[:, :, 0] = RECEIPT
            block[:, 0, 0] = SEND
            block[:, :, 1] = stage[:, None]
            block[:, :, 2] = sender[:, None]
            block[:, :, 3] = (i // clients)[:, None]  # msgno: the sender's n-th message
            block[:, :, 5] = scheduled[:, None]
            block[:, 0, 4] = 150
            block[:, 0, 6] = scheduled + rng.integers(5_000, 200_000, n)
            block[:, 1:, 4] = (sender - sender % room)[:, None] + np.arange(room)
            median = 0.002 * 4.0 ** stage  # 2 ms ... 0.5 s
            latency = rng.lognormal(np.log(median)[:, None], 0.7, (n, room)) * 1e9
            block[:, 1:, 6] = scheduled[:, None] + latency.astype(np.int64)
            flat = block.reshape(-1, 7)
            again = flat[(flat[:, 0] == RECEIPT) & (rng.random(flat.shape[0]) < 1e-4)]
            again[:, 6] += 1_000_000  # the same receipt once more, 1 ms later
            flat = np.concatenate([flat, again])
            f.write(encode_rows(flat))
            written += flat.shape[0]
    return written


# -- the measured tools, each run as a child -----------------------------------

def child_pandas(path: str, join: bool) -> dict:
    import pandas as pd
    df = pd.read_csv(path)
    sends = df[df["kind"] == "S"]
    receipts = df[df["kind"] == "R"]
    if join:  # the seed's way: a receipt row does not know when its message was sent
        sent = sends[["sender", "msgno", "scheduled_ns"]].rename(columns={"scheduled_ns": "sent_ns"})
        receipts = receipts.merge(sent, on=["sender", "msgno"], how="inner")
        latency = (receipts["event_ns"] - receipts["sent_ns"]) * 1e-9
    else:
        latency = (receipts["event_ns"] - receipts["scheduled_ns"]) * 1e-9
    by_stage = latency.groupby(receipts["stage"]).quantile(list(QUANTILES)).unstack()
    send_counts = sends.groupby("stage").size()
    receipt_counts = receipts.groupby("stage").size()
    return {str(stage): {"sends": int(send_counts.get(stage, 0)), "receipts": int(receipt_counts[stage]),
                         "p50": float(by_stage.loc[stage, 0.5]), "p99": float(by_stage.loc[stage, 0.99])}
            for stage in by_stage.index}


def child_stream(path: str, workers: int | None = None) -> dict:
    from scalechat.eventlog import read_event_log
    summary = read_event_log(path, workers=workers)
    return {str(i): {"sends": s.sends, "receipts": s.receipts, "duplicates": s.duplicates,
                     "p50": s.delivery.percentile(50), "p99": s.delivery.percentile(99)}
            for i, s in summary.stages.items()}


def run_child(tool: str, path: str) -> None:
    start = time.perf_counter()
    result = {"pandas-join": lambda: child_pandas(path, True),
              "pandas": lambda: child_pandas(path, False),
              "stream": lambda: child_stream(path),
              "stream-1": lambda: child_stream(path, workers=1),
              "generate": lambda: generate(Path(path.rsplit(":", 1)[0]), int(path.rsplit(":", 1)[1])),
              "writer": lambda: writer_rate(Path(path.rsplit(":", 1)[0]), int(path.rsplit(":", 1)[1])),
              }[tool]()
    print(json.dumps({"seconds": time.perf_counter() - start, "result": result}))


def measure(argv: list[str]) -> dict:
    """Run ``argv``: its stdout, wall seconds, CPU seconds and peak RSS.

    Under /usr/bin/time, a small process: a child forked from this one (numpy
    loaded) would count our pages in its ru_maxrss until it execs.
    """
    timed = ["/usr/bin/time", "-f", "%M %U %S"] if Path("/usr/bin/time").exists() else []
    start = time.perf_counter()
    result = subprocess.run([*timed, *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{argv} failed with {result.returncode}: {result.stderr}")
    if timed:
        rss_kib, user, system = result.stderr.strip().splitlines()[-1].split()
        return {"stdout": result.stdout, "wall": wall, "cpu": float(user) + float(system),
                "rss": int(rss_kib) * 1024}
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # a running maximum: an upper bound
    return {"stdout": result.stdout, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
            "rss": usage.ru_maxrss * 1024}


def writer_rate(directory: Path, events: int) -> tuple[float, float]:
    """Events per second through EventLogWriter.receipt (hot path), and until close()."""
    log = EventLogWriter(directory / "writer.csv")
    receipt = log.receipt
    start = time.perf_counter()
    for i in range(events):
        receipt(1, i & 4095, i, 7, T0 + i, T0 + i + 2_000_000)
    hot = time.perf_counter() - start
    log.close()
    return events / hot, events / (time.perf_counter() - start)


def agree(ours: dict, theirs: dict) -> bool:
    return ours.keys() == theirs.keys() and all(
        ours[k]["sends"] == theirs[k]["sends"] and ours[k]["receipts"] == theirs[k]["receipts"]
        and all(abs(ours[k][q] / theirs[k][q] - 1) < 0.02 for q in ("p50", "p99"))
        for k in ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the log (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated log")
    parser.add_argument("--writer-events", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(*args.child)
        return
    directory = Path(tempfile.mkdtemp(prefix="scalechat-bench-eventlog-", dir=args.dir))
    path = directory / "events.csv"
    try:
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
        me = [sys.executable, __file__, "--child"]
        # Generating (big arrays) and the writer (a list of a million tuples) run in children:
        # this process stays small.
        made = json.loads(measure([*me, "generate", f"{path}:{args.rows}"])["stdout"])
        size = path.stat().st_size
        print(f"generated {made['result']:,} rows, {size / 1e6:.0f} MB in {made['seconds']:.1f} s "
              f"(encode_rows, vectorised)")
        writer = measure([*me, "writer", f"{directory}:{args.writer_events}"])
        hot, total = json.loads(writer["stdout"])["result"]
        print(f"EventLogWriter: {hot:,.0f} events/s on the hot path, {total:,.0f} events/s until close()")
        runs = {"wc -l": measure(["wc", "-l", str(path)])}
        runs["wc -l"]["seconds"] = runs["wc -l"]["wall"]
        for label, tool in (("pandas (join, as the seed)", "pandas-join"), ("pandas (no join)", "pandas"),
                            ("scalechat stream, 1 thread", "stream-1"), ("scalechat stream", "stream")):
            runs[label] = measure([*me, tool, str(path)])
            runs[label].update(json.loads(runs[label]["stdout"]))
        base = runs["pandas (join, as the seed)"]
        print(f"\n{'tool':28} {'seconds':>8} {'MB/s':>7} {'CPU s':>7} {'peak MiB':>9} "
              f"{'vs pandas time':>15} {'memory':>7}")
        for label, r in runs.items():
            print(f"{label:28} {r['seconds']:8.2f} {size / 1e6 / r['seconds']:7.0f} {r['cpu']:7.2f} "
                  f"{r['rss'] / 2**20:9.0f} {base['seconds'] / r['seconds']:14.1f}x "
                  f"{r['rss'] / base['rss']:6.0%}")
        ours = runs["scalechat stream"]["result"]
        print(f"\nsame answers as pandas (counts exact, p50 and p99 within 2%: histogram buckets vs "
              f"interpolation): {agree(ours, base['result'])} (join), "
              f"{agree(ours, runs['pandas (no join)']['result'])} (no join)")
        print("duplicates found per stage:", {k: v["duplicates"] for k, v in ours.items()})
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
