"""Tables of docs/benchmarks.md and the README's performance table, from bench/results/*.json.

Each table sits between ``<!-- bench-table: NAME -->`` and ``<!-- end bench-table -->``
and is rendered from the committed results of the benchmarks (the JSON each
writes with ``--json``, in the envelope of ``bench/document.py``): every figure
names the date, host and commit it was measured on. ``tests/bench/test_docs.py``
keeps the files in sync, as the settings table is kept.

    .venv/bin/python bench/docs.py           # rewrite the tables in place
    .venv/bin/python bench/docs.py --check   # exit 1 naming each stale table
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
FILES = [REPO / "README.md", REPO / "docs" / "benchmarks.md"]
BLOCK = re.compile(r"(<!-- bench-table: ([a-z0-9-]+) -->\n)(.*?)(<!-- end bench-table -->)", re.S)

Doc = dict[str, Any]


def results(kind: str) -> list[tuple[Path, Doc]]:
    """The committed results of one benchmark, oldest first."""
    found = [(p, json.loads(p.read_text())) for p in sorted(RESULTS.glob(f"{kind}-*.json"))]
    return sorted(found, key=lambda item: item[1]["time"])


def newest(kind: str) -> tuple[Path, Doc]:
    found = results(kind)
    if not found:
        raise SystemExit(f"bench/docs.py: no bench/results/{kind}-*.json")
    return found[-1]


def provenance(path: Path, doc: Doc) -> str:
    host = doc["host"]
    commit = (host.get("code") or {}).get("commit") or "?"
    return (f"{doc['date']}, {host['cpu_model']}, {host['cpu_usable']} cores, commit {commit[:7]} "
            f"(`{path.relative_to(REPO)}`)")


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# --- fan-out ----------------------------------------------------------------------------


def _fanout_rows(doc: Doc, round_index: int = 0) -> dict[tuple[str, str, bool], Doc]:
    """(scenario, server, saturation) -> one round's measurement (the first by default)."""
    out: dict[tuple[str, str, bool], Doc] = {}
    for m in doc["rounds"][round_index]:  # a saturation run's scenario is marked with a *
        out[(m["scenario"].rstrip("*"), m["server"], m["scenario"].endswith("*"))] = m
    return out


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _median_range(values: list[float], fmt: Callable[[float], str]) -> str:
    """One value, or the median over the rounds with their range."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(_median(values))} ({fmt(min(values))}-{fmt(max(values))}, {len(values)} rounds)"


def short_host(doc: Doc) -> str:
    """The CPU's maker and family, enough to tell hosts apart in one table."""
    model = doc["host"]["cpu_model"]
    for name in ("EPYC", "Xeon", "Ryzen", "Core"):
        if name in model:
            return ("AMD " if "AMD" in model else "Intel " if "Intel" in model else "") + name
    return model


def fanout_table() -> str:
    path, doc = newest("fanout")
    rows = _fanout_rows(doc)
    rounds = len(doc["rounds"])
    first = f" The first of {rounds} rounds:" if rounds > 1 else ""
    lines = [f"From {provenance(path, doc)}: `{doc['command']}`.{first}", "",
             "| scenario | server | offered/s | delivered/s | CPU µs per delivery (vs naive) | kernel share "
             "| writes per delivery | echo p50 / p99 | p99 from the actual send | server's p99 | steal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (scenario, server, saturated), m in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        naive = rows.get((scenario, "naive", saturated))
        ratio = (f" ({m['cpu_us_per_delivery'] / naive['cpu_us_per_delivery']:.2f}x)"
                 if naive and server != "naive" else "")
        lines.append(f"| {scenario}{' saturation' if saturated else ''} | {server} "
                     f"| {m['offered_deliveries_per_s']:,.0f} | {m['delivered_per_s']:,.0f} "
                     f"| {m['cpu_us_per_delivery']:.2f}{ratio} | {m['server_system_share']:.0%} "
                     f"| {m['server_writes_per_delivery']:.2f} "
                     f"| {m['echo_p50_ms']:.2f} / {m['echo_p99_ms']:.2f} ms "
                     f"| {_opt(m.get('round_trip_p99_ms'), '{:.2f} ms')} "
                     f"| {_opt(m.get('server_processing_p99_ms'), '≤ {:g} ms')} "
                     f"| {_opt(m.get('steal_percent'), '{:.1f}%')} |")
    return "\n".join(lines)


def _opt(value: float | None, fmt: str) -> str:
    """A figure a run may lack (older runs; the naive server has no histogram): '-'."""
    return "-" if value is None or value != value else fmt.format(value)


def fanout_ratios(doc: Doc, scenario: str) -> list[float]:
    """scalechat's CPU per delivery over the naive server's, each within one round."""
    out = []
    for index in range(len(doc["rounds"])):
        rows = _fanout_rows(doc, index)
        ours, naive = rows.get((scenario, "scalechat", False)), rows.get((scenario, "naive", False))
        if ours and naive:
            out.append(ours["cpu_us_per_delivery"] / naive["cpu_us_per_delivery"])
    return out


# --- scale-out --------------------------------------------------------------------------


def scaleout_table() -> str:
    runs = results("scaleout")
    head = ["", "target", *(f"{d['host']['code']['commit'][:7]} ({d['date']}, {short_host(d)})"
                            for _, d in runs)]
    rows: list[list[str]] = []

    def row(label: str, target: str, cell: Callable[[Doc], str]) -> None:
        rows.append([label, target, *(cell(d) for _, d in runs)])

    def ratio(scenario: str) -> Callable[[Doc], str]:
        return lambda d: _x(d["summary"]["replica_cpu_ratio_redis_vs_memory"].get(scenario))

    row("replica CPU per delivery, Redis / memory broker, 100 x 4 at 20,000/s", "≤ 1.5x", ratio("100x4"))
    row("the same, 1 x 100", "≤ 1.5x", ratio("1x100"))
    row("the same, 100 x 10", "", ratio("100x10"))
    row("Redis CPU per message at the fixed load, 100 x 4", "≤ 15 µs",
        lambda d: f"{d['summary']['redis_cpu_us_per_message']['100x4']:.1f} µs")
    row("Redis CPU per message, busy shard", "≤ 15 µs",
        lambda d: (f"{d['summary']['busy_shard']['redis_cpu_us_per_message']:.1f} µs at "
                   f"{d['summary']['busy_shard']['messages_per_s']:,}/s"
                   if d["summary"].get("busy_shard") else "-"))
    row("saturation in 100 x 4, Redis / memory replica (refused)", "≥ 0.5x, 0",
        lambda d: (f"{d['summary']['saturation']['ratio']:.2f}x: "
                   f"{d['summary']['saturation']['redis_deliveries_per_s']:,.0f} vs "
                   f"{d['summary']['saturation']['memory_deliveries_per_s']:,.0f}/s "
                   f"({d['summary']['saturation']['refused_unavailable']})"))
    row("deliveries per CPU-second, 2 replicas + 2 shards / 1 + 1", "",
        lambda d: _x(d["summary"]["scaleout"]["ratio"]) if d["summary"].get("scaleout") else "-")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "Runs: " + "; ".join(provenance(p, d) for p, d in runs) + "."]
    return "\n".join(lines)


# --- hostile traffic ----------------------------------------------------------------------


def hostile_table() -> str:
    path, doc = newest("hostile")
    lines = [f"From {provenance(path, doc)}: `{doc['command']}`.", "",
             "| attack | offered | peak RSS (pod) | up | normal client's echo p50 / p99 / max "
             "| history dropped | slow consumers closed | server CPU |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        lines.append(f"| {r['attack']} | {r['attack_note']} | {r['peak_rss_mib']:.0f} MiB ({r['pod_mib']} MiB) "
                     f"| {'yes' if r['server_up'] else '**no**'} "
                     f"| {r['echo_p50_ms']:.1f} / {r['echo_p99_ms']:.1f} / {r['echo_max_ms']:.1f} ms "
                     f"| {r['history_dropped']:,} | {r['slow_consumers']:,} | {r['server_cpu']:.0%} |")
    return "\n".join(lines)


# --- C100k ---------------------------------------------------------------------------------


def c100k_table() -> str:
    path, doc = newest("c100k")
    lines = [f"From {provenance(path, doc)}: `{doc['command']}`.", "",
             "| layout | connected (failed) | source addresses | connects/s | server RSS | per connection "
             "| one broadcast to everyone | `/healthz` p50 / p99 / max (failures) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        broadcast = ("not complete" if r["broadcast_seconds"] is None else
                     f"{r['broadcast_seconds'] * 1000:,.0f} ms ({r['broadcast_messages']:,} "
                     f"message{'s' * (r['broadcast_messages'] > 1)}, {r['delivered']:,} deliveries)")
        lines.append(f"| {r['layout']} | {r['connected']:,} ({r['failed']}) | {r['source_addresses']} "
                     f"| {r['connects_per_s']:,} | {r['server_rss_connected_mib']:,.0f} MiB "
                     f"| {r['rss_bytes_per_connection'] / 1000:.1f} KB | {broadcast} "
                     f"| {r['healthz_p50_ms']:.1f} / {r['healthz_p99_ms']:.1f} / {r['healthz_max_ms']:.1f} ms "
                     f"({r['healthz_failures']}) |")
    return "\n".join(lines)


# --- the README's performance table --------------------------------------------------------


def measured(doc: Doc) -> str:
    return f"{doc['date']}, {doc['host']['code']['commit'][:7]}, {short_host(doc)}"


def performance_table() -> str:
    lines = ["| what | target | latest | measured | reproduce |", "|---|---|---|---|---|"]
    fan_path, fan = newest("fanout")
    when = measured(fan)
    for scenario, target in (("1x100", "≤ 0.33x"), ("100x4", "≤ 0.9x")):
        ratios = fanout_ratios(fan, scenario)
        lines.append(f"| CPU per delivery vs a naive aiohttp server, {scenario.replace('x', ' x ')} "
                     f"at {fan['options']['loads'][scenario]:,}/s | {target} "
                     f"| {_median_range(ratios, _x) if ratios else '-'} | {when} | `bench/fanout.py` |")
    p99 = {server: [rows[("100x4", server, False)]["echo_p99_ms"]
                    for rows in (_fanout_rows(fan, i) for i in range(len(fan["rounds"])))
                    if ("100x4", server, False) in rows]
           for server in ("scalechat", "naive")}
    if p99["scalechat"] and p99["naive"]:
        rounds = len(p99["scalechat"])
        medians = " (medians)" if rounds > 1 else ""
        lines.append(f"| echo p99, 100 x 4 at {fan['options']['loads']['100x4']:,}/s (naive server's) "
                     f"| < 1 ms, ≤ naive | {_ms(_median(p99['scalechat']))} "
                     f"({_ms(_median(p99['naive']))}){medians} | {when} | `bench/fanout.py` |")
        sent = {server: [rows[("100x4", server, False)].get("round_trip_p99_ms")
                         for rows in (_fanout_rows(fan, i) for i in range(len(fan["rounds"])))
                         if ("100x4", server, False) in rows]
                for server in ("scalechat", "naive")}
        if None not in sent["scalechat"] + sent["naive"]:  # runs before e7f6865 lack it
            lines.append(f"| the same from the generator's actual send (its lateness left out) "
                         f"| | {_ms(_median(sent['scalechat']))} ({_ms(_median(sent['naive']))})"
                         f"{medians} | {when} | `bench/fanout.py` |")
    so_path, so = newest("scaleout")
    s, when = so["summary"], measured(so)
    cmd = "`bench/scaleout.py`"
    lines.append(f"| replica CPU per delivery, Redis / memory broker, 100 x 4 | ≤ 1.5x "
                 f"| {_x(s['replica_cpu_ratio_redis_vs_memory'].get('100x4'))} | {when} | {cmd} |")
    busy = s.get("busy_shard")
    lines.append(f"| Redis CPU per message: busy shard (fixed 5,000/s) | ≤ 15 µs "
                 f"| {busy['redis_cpu_us_per_message']:.1f} µs ({s['redis_cpu_us_per_message']['100x4']:.1f})"
                 f" | {when} | {cmd} |" if busy else
                 f"| Redis CPU per message, 100 x 4 | ≤ 15 µs "
                 f"| {s['redis_cpu_us_per_message']['100x4']:.1f} µs | {when} | {cmd} |")
    if s.get("saturation"):
        lines.append(f"| saturation, Redis / memory-broker replica, 0 refused | ≥ 0.5x "
                     f"| {s['saturation']['ratio']:.2f}x, {s['saturation']['refused_unavailable']} refused "
                     f"| {when} | {cmd} |")
    if s.get("scaleout"):
        lines.append(f"| deliveries per CPU-second at 10,000/s, 2 replicas + 2 shards / 1 + 1 | - "
                     f"| {s['scaleout']['ratio']:.2f}x | {when} | {cmd} |")
    ho_path, ho = newest("hostile")
    when = measured(ho)
    worst_rss = max(ho["results"], key=lambda r: r["peak_rss_mib"])
    worst_p99 = max(ho["results"], key=lambda r: r["echo_p99_ms"])
    lines.append(f"| peak RSS under the worst of {len(ho['results'])} attacks, "
                 f"{worst_rss['pod_mib']} MiB pod | stays up, < pod "
                 f"| {worst_rss['peak_rss_mib']:.0f} MiB ({worst_rss['attack']}), "
                 f"{'all up' if all(r['server_up'] for r in ho['results']) else '**a crash**'} "
                 f"| {when} | `bench/hostile.py` |")
    lines.append(f"| a normal client's echo p99 under attack (worst) | < 50 ms "
                 f"| {worst_p99['echo_p99_ms']:.1f} ms ({worst_p99['attack']}) | {when} "
                 f"| `bench/hostile.py` |")
    if results("c100k"):
        _, c = newest("c100k")
        when = measured(c)
        for r in c["results"]:
            lines.append(f"| {r['connections']:,} connections, {r['layout']}: server memory per "
                         f"connection | ≤ 10 KB | {r['rss_bytes_per_connection'] / 1000:.1f} KB "
                         f"({r['failed']} failed) | {when} | `bench/c100k.py` |")
    return "\n".join(lines)


TABLES: dict[str, Callable[[], str]] = {
    "performance": performance_table, "fanout": fanout_table, "scaleout": scaleout_table,
    "hostile": hostile_table, "c100k": c100k_table,
}


def render(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in TABLES:
            raise SystemExit(f"bench/docs.py: unknown table {name!r}; known: {', '.join(TABLES)}")
        return match.group(1) + TABLES[name]() + "\n" + match.group(4)
    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say which tables are stale")
    args = parser.parse_args(argv)
    stale = []
    for path in FILES:
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("stale benchmark tables in " + ", ".join(str(p.relative_to(REPO)) for p in stale)
              + ": run .venv/bin/python bench/docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
