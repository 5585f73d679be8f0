"""The local cluster under one real load: Prometheus, ``scalechat analyze`` and the dashboards.

One module-scoped fixture does everything that takes time, once:

1. ``Cluster.up``: 2 replicas on the Redis at 127.0.0.1:6379 under a fresh prefix,
   nginx in front, Prometheus scraping each replica every second.
2. Waits (polling) until Prometheus holds two scrapes of both replicas, then notes
   ``quiet_at``: a time before anything went wrong on purpose.
3. Sends one bad frame (rejected: ``bad_json``) and one bad upgrade (refused:
   ``bad_query``) through nginx, so the dashboards' error panels have something to
   show: their ``> 0`` filters hide zero rates by design.
4. Runs ``scalechat load`` through nginx (20 rooms x 4 clients x 3 msg/s, 2 s warm-up,
   20 s measured, 1 worker) and reads its results directory.
5. Waits until Prometheus has scraped both replicas after the measurement window.

Teardown always runs ``cluster.down()``. The tests then only query what was recorded.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from support import wait_until

from scalechat.cluster import Cluster
from scalechat.cluster import prometheus as cluster_prometheus
from scalechat.results import StageResult, read_results_dir

pytestmark = pytest.mark.timeout(150)

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "charts" / "dashboards").glob("*.json"))
SCALECHAT = [sys.executable, "-m", "scalechat.cli"]
ROOMS, CLIENTS_PER_ROOM, RATE, SIZE, WARMUP, DURATION = 20, 4, 3, 100, 2, 20
RATE_TOLERANCE = 0.05

# Grafana macros -> durations that make sense against a 1 s scrape interval.
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1m"}

# Metrics that come from components a local cluster does not have; a dashboard query
# may find no data only because of these. Anything else missing fails.
EXTERNAL_METRICS = {
    "kube_pod_container_resource_limits": "kube-state-metrics",
    "kube_job_status_active": "kube-state-metrics",
    "kube_job_status_succeeded": "kube-state-metrics",
    "kube_job_status_failed": "kube-state-metrics",
    "container_cpu_usage_seconds_total": "cAdvisor (kubelet)",
}


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}


# --- Prometheus's HTTP API -----------------------------------------------------------


class PromQLError(Exception):
    """Prometheus refused a query (it does not parse, or cannot be evaluated)."""


def prom_get(base: str, path: str, params: dict[str, str] | list[tuple[str, str]]) -> object:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        raise PromQLError(f"HTTP {exc.code}: {body.get('errorType')}: {body.get('error')}") from None
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, expr: str, at: float | None = None) -> list[dict]:
    """An instant query's result (a vector, or a one-element list for a scalar)."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    data = prom_get(base, "/api/v1/query", params)
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def scalar(base: str, expr: str, at: float | None = None) -> float | None:
    result = query(base, expr, at)
    return float(result[0]["value"][1]) if result else None


# --- the one load ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedCluster:
    cluster: Cluster
    status: dict
    prometheus: str
    results: Path
    stage: StageResult
    quiet_at: float  # unix s: both replicas scraped twice, nothing rejected or refused yet
    load_output: str

    @property
    def mid_load(self) -> float:
        return (self.stage.started_at + self.stage.ended_at) / 2


async def misbehave(balancer: str) -> None:
    """One frame the server rejects and one upgrade it refuses, through nginx."""
    room = f"integ-bad-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(balancer.format(room=room)) as ws:
            assert (await ws.receive_json(timeout=10))["type"] == "history"
            await ws.send_str("this is not JSON")
            frame = await ws.receive_json(timeout=10)
            while frame["type"] == "presence":  # our own join may come after the history
                frame = await ws.receive_json(timeout=10)
            assert frame["type"] == "error" and frame["code"] == "bad_json", frame
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(balancer.format(room=room) + "?since=not-a-number")
        assert refused.value.status == 400


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> LoadedCluster:
    work = tmp_path_factory.mktemp("under-load")
    cluster = Cluster.up(work / "cluster", replicas=2, port=0)
    try:
        status = cluster.status()
        prom = status["prometheus"]
        # Series appear ~6 s after start (file_sd updates are batched every 5 s).
        wait_until(lambda: scalar(prom, "count(count_over_time(scalechat_connections[1m]) >= 2)") == 2,
                 30, "two scrapes of both replicas")
        quiet_at = time.time()
        asyncio.run(misbehave(status["balancer"]))
        wait_until(lambda: scalar(prom, "sum(scalechat_messages_rejected_total)") == 1
                 and scalar(prom, "sum(scalechat_connections_refused_total)") == 1,
                 15, "Prometheus to scrape the rejection and the refusal")

        results = work / "results"
        done = subprocess.run(
            [*SCALECHAT, "load", "--url", status["balancer"], "--rooms", str(ROOMS),
             "--clients-per-room", str(CLIENTS_PER_ROOM), "--rate", str(RATE), "--size", str(SIZE),
             "--duration", str(DURATION), "--warmup", str(WARMUP), "--workers", "1",
             "--out", str(results)],
            capture_output=True, text=True, timeout=DURATION + WARMUP + 60, cwd=work)
        assert done.returncode in (0, 3), done.stdout + done.stderr  # 3: a busy host missed the default SLO
        _, (stage,) = read_results_dir(results)
        assert stage.connections == ROOMS * CLIENTS_PER_ROOM and stage.received > 0, stage.to_dict()

        wait_until(lambda: (scalar(prom, "min(timestamp(scalechat_messages_delivered_total))") or 0)
                 > stage.ended_at + 1, 15, "a scrape of both replicas after the measurement window")
        yield LoadedCluster(cluster, status, prom, results, stage, quiet_at,
                            done.stdout + done.stderr)
    finally:
        cluster.down()


# --- 1. Prometheus sees what the load generator saw --------------------------------------


def test_prometheus_scrapes_each_replica_and_counts_what_the_generator_received(loaded):
    """Prometheus's delivered rate matches the generator's received rate within 5 %.

    Windows: the generator counts a message as received when it was scheduled inside
    its measurement window [started_at, ended_at) (warm-up traffic is not counted), so
    the server side is taken over exactly that window: ``sum(increase(...[Ns]))``
    evaluated at ``ended_at`` with N the window's length in milliseconds. A ``[1m]``
    rate would mix in the connection ramp, the warm-up and idle time before the load
    (the load is 20 s), and make the comparison meaningless. Both sides count one
    delivery per recipient, the sender's own echo included; deliveries of messages
    scheduled near the window's edges shift by the delivery latency (milliseconds).
    """
    prom, stage = loaded.prometheus, loaded.stage
    targets = prom_get(prom, "/api/v1/targets", {"state": "active"})["activeTargets"]
    ours = [t for t in targets if t["labels"].get("job") == cluster_prometheus.JOB]
    wanted = {r["metrics_url"]: r["node"] for r in loaded.status["replicas"]}
    assert {t["scrapeUrl"] for t in ours} == set(wanted), ours
    for target in ours:
        assert target["health"] == "up", target
        assert target["labels"]["node"] == wanted[target["scrapeUrl"]], target
        assert target["scrapeInterval"] == "1s", target
        assert f":{loaded.cluster.state.port}/" not in target["scrapeUrl"], "scraped through nginx"

    window = stage.ended_at - stage.started_at
    generator_rate = stage.received / window
    delivered = scalar(prom, f"sum(increase(scalechat_messages_delivered_total[{round(window * 1000)}ms]))",
                       at=stage.ended_at)
    assert delivered is not None, "no delivered-total series at the end of the window"
    prometheus_rate = delivered / window
    print(f"window {window:.3f} s: generator received {stage.received} ({generator_rate:.1f}/s), "
          f"Prometheus delivered {delivered:.0f} ({prometheus_rate:.1f}/s), "
          f"difference {prometheus_rate / generator_rate - 1:+.2%}")
    assert generator_rate == pytest.approx(ROOMS * CLIENTS_PER_ROOM * RATE * CLIENTS_PER_ROOM, rel=0.05)
    assert prometheus_rate == pytest.approx(generator_rate, rel=RATE_TOLERANCE)


# --- 2. scalechat analyze reads the cluster's Prometheus -------------------------------


def test_analyze_adds_the_server_side_from_the_clusters_prometheus(loaded, tmp_path):
    out = tmp_path / "report"
    done = subprocess.run([*SCALECHAT, "analyze", str(loaded.results), "--prometheus",
                           loaded.prometheus, "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in done.stderr, done.stderr
    png = (out / "loadtest-server.png").read_bytes()  # one set of charts per run, named after it
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    (row,) = list(csv.DictReader((out / "server.csv").open()))
    print({k: row[k] for k in ("samples", "replicas_mean", "cpu_cores_mean", "delivered_per_s_mean",
                               "received_per_s_mean", "processing_p99_s_max")})
    assert row["stage"] == str(loaded.stage.index) and int(row["samples"]) >= DURATION - 2
    assert float(row["replicas_mean"]) == 2
    assert float(row["cpu_cores_mean"]) > 0
    assert float(row["memory_bytes_mean"]) > 0
    assert float(row["received_per_s_mean"]) > 0
    # analyze rates over 4 scrape intervals (4 s), longer than the 2 s warm-up: its first
    # samples in the window reach back to before the first send, so the mean runs ~4 % low.
    generator_rate = loaded.stage.received / (loaded.stage.ended_at - loaded.stage.started_at)
    assert float(row["delivered_per_s_mean"]) == pytest.approx(generator_rate, rel=0.1)
    assert "server.csv" in done.stdout and (out / "report.html").stat().st_size > 0


# --- 3. every dashboard query returns data --------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric names in PromQL: identifiers that are not functions, keywords or labels."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "{}", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "[]", e)  # range and subquery selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    return {m.group(0) for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", e)
            if not e[m.end():].lstrip().startswith("(") and m.group(0).lower() not in PROMQL_WORDS}


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_targets() -> list:
    params = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in _panels(board["panels"]):
            for target in panel.get("targets", []):
                params.append(pytest.param(path.stem, panel, target,
                                           id=f"{path.stem}-{panel['id']}{target['refId']}"))
    return params


def substitute(expr: str, variables: dict[str, str]) -> str:
    for macro, duration in MACROS.items():
        expr = expr.replace(macro, duration)
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return expr


@pytest.fixture(scope="module")
def variables(loaded) -> dict[str, str]:
    """Each dashboard variable as Grafana would resolve it against this Prometheus.

    ``label_values(selector, label)`` asks for the label's values on the selector's
    series; a multi-value variable with "All" takes its ``allValue``; a variable
    with no values is empty. Locally there is no ``namespace`` (or ``pod``) label,
    so ``namespace=""`` matches the series that lack it, and ``job`` is the
    cluster's scrape job.
    """
    resolved: dict[str, str] = {}
    for path in DASHBOARDS:
        for var in json.loads(path.read_text())["templating"]["list"]:
            if var["type"] != "query" or var["name"] in resolved:
                continue
            text = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            selector, label = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", text).groups()
            values = prom_get(loaded.prometheus, f"/api/v1/label/{label}/values",
                              [("match[]", substitute(selector, resolved))])
            if var.get("includeAll"):
                resolved[var["name"]] = var.get("allValue") or ".*"
            else:
                resolved[var["name"]] = sorted(values)[0] if values else ""
    print(f"dashboard variables: {resolved}")
    assert resolved["job"] == cluster_prometheus.JOB and resolved["namespace"] == ""
    return resolved


@pytest.fixture(scope="module")
def stored_metrics(loaded) -> set[str]:
    return set(prom_get(loaded.prometheus, "/api/v1/label/__name__/values", {}))


@pytest.mark.parametrize("board, panel, target", dashboard_targets())
def test_every_dashboard_query_returns_data_mid_load(loaded, variables, stored_metrics,
                                                     board, panel, target):
    """A query parses and returns data mid-load, or finds none only for want of a metric
    that comes from outside the cluster (:data:`EXTERNAL_METRICS`)."""
    expr = substitute(target["expr"], variables)
    where = f"{board} panel {panel['id']} {panel['title']!r} target {target['refId']}: {expr}"
    assert "$" not in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr), f"unresolved variable: {where}"
    try:
        result = query(loaded.prometheus, expr, at=loaded.mid_load)
    except PromQLError as exc:
        pytest.fail(f"{where}: {exc}")
    names = metric_names(expr)
    missing = names - stored_metrics
    assert missing <= set(EXTERNAL_METRICS), f"{where}: queries metrics nobody exports: " \
                                             f"{sorted(missing - set(EXTERNAL_METRICS))}"
    if missing:
        print(f"no data expected, external: {where} -> "
              + ", ".join(f"{m} ({EXTERNAL_METRICS[m]})" for m in sorted(missing)))
        assert not result, f"{where}: data although {sorted(missing)} are not scraped here"
    else:
        assert result, f"{where}: no data, although every metric it names ({sorted(names)}) exists"


def test_the_rejected_plus_refused_stat_shows_zero_before_anything_went_wrong(loaded, variables):
    """Before any rejection or refusal the stat should read 0, not "No data"."""
    board = json.loads((REPO / "charts" / "dashboards" / "loadtest.json").read_text())
    (panel,) = [p for p in _panels(board["panels"]) if p["title"] == "Rejected + refused"]
    expr = substitute(panel["targets"][0]["expr"], variables)
    result = query(loaded.prometheus, expr, at=loaded.quiet_at)
    assert result, f"no data at {loaded.quiet_at:.3f}: {expr}"
    assert float(result[0]["value"][1]) == 0
