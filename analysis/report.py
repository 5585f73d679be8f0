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

from scalechat.analysis.load import Run
from scalechat.analysis.prometheus import ServerSide
from scalechat.analysis.summary import COLUMNS, SERVER_COLUMNS

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; overflow-wrap: anywhere; }
.warning { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
pre { background: #f8f8f8; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
details { margin: 0.5em 0; } .scroll { overflow-x: auto; }
"""

# The summary table: the columns one reads first (the CSV has them all).
TABLE = (("config", "config"), ("stage_name", "stage"), ("sent", "sent"), ("expected", "expected"),
         ("received", "received"), ("delivery_ratio", "received / expected"),
         ("delivery_p50_s", "p50"), ("delivery_p90_s", "p90"), ("delivery_p99_s", "p99"),
         ("delivery_p99_9_s", "p99.9"), ("delivery_max_s", "max"), ("delivery_mean_s", "mean"),
         ("delivery_std_s", "std"), ("echo_p50_s", "echo p50"), ("echo_p99_s", "echo p99"),
         ("duplicates", "dup."), ("errors", "errors"))


@dataclass(frozen=True)
class Figure:
    file_name: str
    caption: str
    png: bytes


def render(*, title: str, runs: Sequence[Run], rows: Sequence[Mapping[str, Any]],
           figures: Sequence[Figure], server: ServerSide | None = None,
           server_rows: Sequence[Mapping[str, Any]] = (), notes: Sequence[str] = ()) -> str:
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f"<p>Generated {generated} by <code>scalechat analyze</code> from "
             f"{', '.join(f'<code>{_e(str(run.source))}</code>' for run in runs)}. Latencies in "
             f"milliseconds, from each message's scheduled send time; <em>delivery</em> counts every "
             f"receipt, <em>echo</em> only the sender's own copy.</p>"]
    for run in runs:
        if run.interrupted:
            parts.append(f"<p class=\"warning\">Run <b>{_e(run.label)}</b> was interrupted: its last "
                         f"stage may be partial.</p>")
    parts.extend(f"<p class=\"warning\">{_e(note)}</p>" for note in notes)
    parts.append("<h2>Summary</h2>")
    parts.append(_table(rows, TABLE, "summary"))
    client = [f for f in figures if not f.file_name.startswith("server")]
    parts.append("<h2>Client side</h2>")
    parts.extend(_figure(f) for f in client)
    parts.append("<h2>Server side</h2>")
    if server is None:
        parts.append("<p>No server-side series (run with <code>--prometheus URL</code> to add them).</p>")
    else:
        parts.extend(_figure(f) for f in figures if f.file_name.startswith("server"))
        parts.append(_table(server_rows, [(c, c) for c in SERVER_COLUMNS], "server"))
        parts.append("<details><summary>PromQL</summary><pre>"
                     + _e("\n".join(f"{k}: {q}" for k, q in server.queries.items())) + "</pre></details>")
    parts.append("<h2>Runs</h2>")
    parts.extend(_run(run) for run in runs)
    parts.append("<h2>Every statistic</h2><details><summary>All columns of summary.csv</summary>"
                 f"{_table(rows, [(c, c) for c in COLUMNS], 'all')}</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (f"<figure><img alt=\"{_e(figure.caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{_e(figure.caption)} (<code>{_e(figure.file_name)}</code>)</figcaption></figure>")


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], name: str) -> str:
    if not rows:
        return "<p>No rows.</p>"
    head = "".join(f"<th class=\"{_align(key)}\">{_e(label)}</th>" for key, label in columns)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"{_align(key)}\">{_e(_format(key, row.get(key)))}</td>"
                        for key, _ in columns)
        body.append(f"<tr>{cells}</tr>")
    return (f"<div class=\"scroll\"><table class=\"{name}\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


TEXT_COLUMNS = {"config", "stage_name", "source", "error_kinds"}
SECONDS = re.compile(r"_(p\d+(_\d+)?|max|mean|std)_s(_mean|_max)?$")  # latencies: shown in ms


def _align(key: str) -> str:
    return "text" if key in TEXT_COLUMNS else "num"


def _format(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if SECONDS.search(key):
        return f"{value * 1000:.3g}"  # seconds -> ms
    if key in ("delivery_ratio",):
        return f"{value:.2%}"
    if key in ("started_at", "ended_at"):
        return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%H:%M:%S")
    if key == "memory_bytes_mean" or key == "memory_bytes_max":
        return f"{value / 2**20:.1f} MiB"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
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
