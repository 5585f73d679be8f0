"""One self-contained HTML page: figures as data URIs, tables, the runs' facts.

No scripts, no stylesheets or fonts from elsewhere: the file can be mailed,
archived or opened offline and shows the same. Every text from the inputs is
escaped.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scalechat.analysis.experiment import slo_text
from scalechat.analysis.load import Run
from scalechat.analysis.prometheus import ServerSide
from scalechat.analysis.summary import COLUMNS, REPLICA_COLUMNS, SERVER_COLUMNS
from scalechat.hostinfo import describe_server
from scalechat.loadtest.slo import GENERATOR_BEHIND_SECONDS

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; vertical-align: top;
         white-space: nowrap; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
td.wrap { white-space: normal; min-width: 14em; text-align: left; }
tr.behind td { background: #fff1e0; } tr.failed td.verdict { color: #c62828; }
td.verdict { font-weight: bold; text-align: center; } tr.passed td.verdict { color: #2a7d2a; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; }
.verdict-line { font-size: 1.1em; } .pass { color: #2a7d2a; } .fail { color: #c62828; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
pre { background: #f8f8f8; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
details { margin: 0.5em 0; } .scroll { overflow-x: auto; }
"""

# A run's table: the columns one reads first (summary.csv has them all). Latencies in ms.
TABLE = (("stage_name", "stage"), ("slo_passed", "SLO"), ("rooms", "rooms"), ("clients_per_room", "clients/room"),
         ("rate", "msg/s each"), ("sent", "sent"), ("received", "received"),
         ("delivery_ratio", "delivered"), ("delivery_p50_s", "p50 ms"), ("delivery_p90_s", "p90 ms"),
         ("delivery_p99_s", "p99 ms"), ("delivery_p99_9_s", "p99.9 ms"), ("delivery_max_s", "max ms"),
         ("errors", "errors"), ("send_lag_max_s", "generator behind"), ("slo_failures", "why not"))


@dataclass(frozen=True)
class Figure:
    file_name: str
    caption: str
    png: bytes


def render(*, title: str, runs: Sequence[Run], rows: Sequence[Mapping[str, Any]],
           figures: Mapping[str, Sequence[Figure]], server: ServerSide | None = None,
           server_rows: Sequence[Mapping[str, Any]] = (), replica_rows: Sequence[Mapping[str, Any]] = (),
           notes: Sequence[str] = ()) -> str:
    """The page: per run (experiment) its verdict, charts and table; then the server side and the facts."""
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f"<p>Generated {generated} by <code>scalechat analyze</code> from "
             f"{', '.join(f'<code>{_e(str(run.source))}</code>' for run in runs)}. Latencies in "
             f"milliseconds, from each message's scheduled send time; <em>delivery</em> counts every "
             f"receipt, <em>echo</em> only the sender's own copy. Stages where the load generator fell "
             f"more than {GENERATOR_BEHIND_SECONDS * 1000:.0f} ms behind its own timetable are hatched on "
             f"the charts and shaded in the tables: their latencies include the generator's delay.</p>"]
    for run in runs:
        if run.interrupted:
            parts.append(f"<p class=\"warning\">Run <b>{_e(run.label)}</b> was interrupted: its last "
                         f"stage may be partial.</p>")
    parts.extend(f"<p class=\"warning\">{_e(note)}</p>" for note in notes)
    for run in runs:
        mine = [r for r in rows if r["config"] == run.label]
        parts.append(f"<h2>{_e(run.label)}</h2>")
        parts.append(_verdict_line(run, mine))
        parts.append(f"<p class=\"server-line\">Measured against: "
                     f"<b>{_e(describe_server(run.info.get('server')))}</b>.</p>")
        parts.append(_table(mine, TABLE, "summary", row_class=_row_class))
        parts.extend(_figure(f) for f in figures.get(run.label, ()) if not f.file_name.endswith("-server.png"))
    parts.append("<h2>Server side</h2>")
    if server is None:
        parts.append("<p>No server-side series (run with <code>--prometheus URL</code> to add them).</p>")
    else:
        parts.append(f"<p>From <code>{_e(server.url)}</code>, {len(server.instances)} replica(s): "
                     f"{_e(', '.join(server.instances))}. <em>Imbalance</em> is the busiest replica over the "
                     f"average one (1.00: an even split; N: everything on one of N).</p>")
        for run in runs:
            parts.extend(_figure(f) for f in figures.get(run.label, ()) if f.file_name.endswith("-server.png"))
        parts.append(_table(server_rows, SERVER_TABLE, "server"))
        parts.append("<h3>Per replica</h3>")
        parts.append(_table(replica_rows, [(c, c.replace("_", " ")) for c in REPLICA_COLUMNS], "replicas"))
        parts.append("<details><summary>PromQL</summary><pre>"
                     + _e("\n".join(f"{k}: {q}" for k, q in server.queries.items())) + "</pre></details>")
    parts.append("<h2>Runs</h2>")
    parts.extend(_run(run) for run in runs)
    parts.append("<h2>Every statistic</h2><details><summary>All columns of summary.csv</summary>"
                 f"{_table(rows, [(c, c) for c in COLUMNS], 'all')}</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


SERVER_TABLE = [(c, c.replace("_", " ")) for c in SERVER_COLUMNS if c not in ("config",)]


def _verdict_line(run: Run, rows: Sequence[Mapping[str, Any]]) -> str:
    text = slo_text(run)
    behind = [r["stage_name"] for r in rows if r.get("generator_behind")]
    behind_html = (f" <span class=\"fail\">⚠</span> The generator fell behind in {len(behind)} stage(s): "
                   f"{_e(', '.join(behind))}." if behind else "")
    if text is None or all(r.get("slo_passed") is None for r in rows):
        return f"<p>No SLO verdict (an event log, or no SLO recorded).{behind_html}</p>"
    failed = [r["stage_name"] for r in rows if r.get("slo_passed") is False]
    if failed:
        verdict = (f"<span class=\"fail\">✗ {len(failed)} of {len(rows)} stage(s) missed it</span>: "
                   f"{_e(', '.join(failed))}")
    else:
        verdict = f"<span class=\"pass\">✓ all {len(rows)} stage(s) met it</span>"
    return f"<p class=\"verdict-line\">SLO <code>{_e(text)}</code>: {verdict}.{behind_html}</p>"


def _row_class(row: Mapping[str, Any]) -> str:
    classes = []
    if row.get("generator_behind"):
        classes.append("behind")
    if row.get("slo_passed") is True:
        classes.append("passed")
    elif row.get("slo_passed") is False:
        classes.append("failed")
    return " ".join(classes)


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (f"<figure><img alt=\"{_e(figure.caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{_e(figure.caption)} (<code>{_e(figure.file_name)}</code>)</figcaption></figure>")


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], name: str,
           row_class=None) -> str:
    if not rows:
        return "<p>No rows.</p>"
    head = "".join(f"<th class=\"{_align(key)}\">{_e(label)}</th>" for key, label in columns)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"{_align(key)}\">{_e(_format(key, row.get(key)))}</td>"
                        for key, _ in columns)
        css = row_class(row) if row_class else ""
        body.append(f"<tr class=\"{css}\">{cells}</tr>" if css else f"<tr>{cells}</tr>")
    return (f"<div class=\"scroll\"><table class=\"{name}\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


TEXT_COLUMNS = {"config", "stage_name", "source", "error_kinds", "replica"}
WRAP_COLUMNS = {"slo_failures", "error_kinds"}
SECONDS = re.compile(r"_(p\d+(_\d+)?|max|mean|std)_s(_mean|_max)?$")  # latencies: shown in ms


def _align(key: str) -> str:
    if key in WRAP_COLUMNS:
        return "wrap"
    if key == "slo_passed":
        return "verdict"
    return "text" if key in TEXT_COLUMNS else "num"


def _format(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key == "slo_passed":
        return "✓" if value else "✗"
    if key == "generator_behind":
        return "yes" if value else "no"
    if key == "send_lag_max_s":
        return f"⚠ {value * 1000:,.0f} ms" if value > GENERATOR_BEHIND_SECONDS else ""
    if SECONDS.search(key):
        ms = value * 1000  # seconds -> ms
        return f"{ms:,.0f}" if ms >= 100 else f"{ms:.3g}"
    if key in ("delivery_ratio",):
        return f"{value:.2%}"
    if key == "delivered_share":
        return f"{value:.1%}"
    if key.endswith("_imbalance"):
        return f"{value:.2f}"
    if key in ("started_at", "ended_at"):
        return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%H:%M:%S")
    if key.startswith("memory_bytes"):
        return f"{value / 2**20:.1f} MiB"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _run(run: Run) -> str:
    info = run.info
    facts = [("source", str(run.source)),
             ("kind", "results directory" if run.kind == "results" else "event log"),
             ("files", ", ".join(p.name for p in run.files)), ("interrupted", str(run.interrupted))]
    for key in ("shards", "workers", "started_at", "finished_at"):
        if key in info:
            value = info[key]
            if key.endswith("_at") and isinstance(value, (int, float)):
                value = datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            facts.append((key, str(value)))
    parts = [f"<h3>{_e(run.label)}</h3>", _pairs(facts)]
    for key, heading in (("generator", "Load generator host"), ("server", "Server (/info)")):
        if info.get(key):
            parts.append(f"<h4>{heading}</h4>" + _facts(info[key]))
        elif run.kind == "results":
            parts.append(f"<h4>{heading}</h4><p>not recorded</p>")
    if "spec" in info:
        parts.append("<h4>Spec</h4><pre>" + _e(json.dumps(info["spec"], indent=2, sort_keys=True,
                                                          default=str)) + "</pre>")
    kinds = sorted({k for stage in run.stages for k in stage.errors})
    if kinds:
        rows = [{"stage_name": s.name, **{k: s.errors.get(k, 0) for k in kinds}} for s in run.stages]
        parts.append("<h4>Errors by kind</h4>" + _table(
            rows, [("stage_name", "stage")] + [(k, k) for k in kinds], "errors"))
    elif run.kind == "results":
        parts.append("<h4>Errors by kind</h4><p>none</p>")
    parts.extend(_senders(run))
    return "\n".join(parts)


def _senders(run: Run) -> list[str]:
    """Event logs: the senders whose own messages came back slowest, per stage."""
    out = []
    for stage in run.stages:
        senders = stage.senders
        if senders is None or not senders.sender.size:
            continue
        order = senders.mean.argsort()[::-1][:5]
        rows = [{"sender": int(senders.sender[i]), "echoes": int(senders.count[i]),
                 "echo_mean_s": float(senders.mean[i]), "echo_max_s": float(senders.max[i])}
                for i in order]
        out.append(f"<h4>Slowest echoes, {_e(stage.name)} ({senders.sender.size} senders; ms)</h4>"
                   + _table(rows, [("sender", "sender"), ("echoes", "echoes"), ("echo_mean_s", "mean"),
                                   ("echo_max_s", "max")], "senders"))
    return out


def _facts(value: Any) -> str:
    if isinstance(value, Mapping):
        return _pairs([(str(k), v if isinstance(v, Mapping) else _scalar(str(k), v))
                       for k, v in value.items()])
    return f"<pre>{_e(json.dumps(value, indent=2, default=str))}</pre>"


def _pairs(pairs: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th class=\"text\">{_e(k)}</th><td class=\"text\">"
                   f"{_facts(v) if isinstance(v, Mapping) else _e(str(v))}</td></tr>" for k, v in pairs)
    return f"<div class=\"scroll\"><table class=\"facts\">{rows}</table></div>"


def _scalar(key: str, value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if "bytes" in key and isinstance(value, int) and not isinstance(value, bool) and value >= 2**20:
        unit, size = ("GiB", 2**30) if value >= 2**30 else ("MiB", 2**20)
        return f"{value:,} ({value / size:.1f} {unit})"
    return str(value)


def _e(text: str) -> str:
    return html.escape(text, quote=True)
