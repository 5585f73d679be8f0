"""Monitoring: the ServiceMonitor's gating, the alerts under promtool, the dashboards' PromQL.

The metric names the dashboards and alerts may use are listed here with their
source; a name outside the list fails, and the server's own names are checked
against a running server's /metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
ALERT_TESTS = Path(__file__).parent / "alerts_test.yaml"
MONITORING = ("monitoring.coreos.com/v1",)
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# The names queries may use, by who exports them.
SERVER_METRICS = {  # scalechat serve (services/chat/scalechat/chat/metrics.py) and prometheus_client's process collector
    "scalechat_connections", "scalechat_rooms", "scalechat_messages_received_total",
    "scalechat_messages_delivered_total", "scalechat_message_processing_seconds_bucket",
    "scalechat_message_processing_seconds_sum", "scalechat_message_processing_seconds_count",
    "scalechat_slow_consumer_disconnects_total", "scalechat_messages_rejected_total",
    "scalechat_connections_refused_total", "scalechat_host_info",
    "process_cpu_seconds_total", "process_resident_memory_bytes",
}
PROMETHEUS_METRICS = {"up"}  # written by Prometheus for every scrape target
KUBE_STATE_METRICS = {  # kube-state-metrics v2 (part of kube-prometheus-stack)
    "kube_pod_container_resource_limits", "kube_pod_status_ready",
    "kube_job_status_active", "kube_job_status_succeeded", "kube_job_status_failed",
}
CADVISOR_METRICS = {"container_cpu_usage_seconds_total"}  # the kubelet's cAdvisor endpoint
ALLOWED = SERVER_METRICS | PROMETHEUS_METRICS | KUBE_STATE_METRICS | CADVISOR_METRICS

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or labels."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "{}", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "[]", e)  # range and subquery selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[match.end():].lstrip().startswith("(") or match.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(match.group(0))
    return names


def test_the_metric_name_lexer_reads_promql_as_prometheus_does():
    expr = ('histogram_quantile(0.99, sum by (pod, le) (rate(scalechat_message_processing_seconds_bucket'
            '{namespace="$namespace", job=~"a|b"}[$__rate_interval]))) > on (pod) group_left () up{job="x"}'
            ' and max_over_time(sum(kube_job_status_active)[1h:])')
    assert metric_names(expr) == {"scalechat_message_processing_seconds_bucket", "up", "kube_job_status_active"}


# --------------------------------------------------------------------------- Prometheus Operator objects


@pytest.mark.parametrize("enabled, api, expected", [
    (True, MONITORING, True), (True, (), False), (False, MONITORING, False), (False, (), False),
], ids=["enabled-with-api", "enabled-without-api", "disabled-with-api", "disabled-without-api"])
def test_the_service_monitor_exists_only_when_enabled_and_the_api_is_served(render, enabled, api, expected):
    objects = render(sets=(f"monitoring.serviceMonitor.enabled={str(enabled).lower()}",), api_versions=api)
    assert bool(objects.find("ServiceMonitor")) is expected


def test_the_service_monitor_scrapes_each_pod_on_the_services_metrics_port(render):
    objects = render(sets=("chat.replicas=2", "monitoring.prometheusRelease=prom"), api_versions=MONITORING)
    monitor = objects.one("ServiceMonitor")
    service = objects.one("Service", "scalechat")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["scalechat"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert "metrics" in [p["name"] for p in service["spec"]["ports"]]


def test_the_prometheus_rule_needs_the_api_too(render):
    assert not render(sets=("monitoring.prometheusRule.enabled=true",)).find("PrometheusRule")
    rule = render(sets=("monitoring.prometheusRule.enabled=true",), api_versions=MONITORING).one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.fixture(scope="module")
def rule_groups(render) -> list[dict]:
    rule = render(sets=("monitoring.prometheusRule.enabled=true",), api_versions=MONITORING).one("PrometheusRule")
    return rule["spec"]["groups"]


@pytest.fixture
def rules_dir(tmp_path, rule_groups) -> Path:
    """A plain Prometheus rules file (the PrometheusRule's groups) beside the unit tests."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    return tmp_path


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_alert_rules_pass_promtool_check(rules_dir):
    result = _promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_the_alerts_pass_their_promtool_unit_tests(rules_dir):
    result = _promtool("test", "rules", ALERT_TESTS.name, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_catch_a_broken_threshold(rules_dir, rule_groups):
    broken = json.loads(json.dumps(rule_groups).replace("> 0.25", "> 1"))
    (rules_dir / "rules.yaml").write_text(yaml.safe_dump({"groups": broken}))
    result = _promtool("test", "rules", ALERT_TESTS.name, cwd=rules_dir)
    assert result.returncode != 0 and "ScalechatSlowProcessing" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test(rule_groups):
    alerts = {r["alert"] for g in rule_groups for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    assert alerts == tested
    assert len(alerts) == 6


def test_alerts_query_only_known_metrics_of_this_release(rule_groups):
    for rule in (r for g in rule_groups for r in g["rules"]):
        assert metric_names(rule["expr"]) <= ALLOWED, rule["alert"]
        assert 'namespace="scalechat"' in rule["expr"], f"{rule['alert']} is not scoped to the release"


# --------------------------------------------------------------------------- dashboards


def _dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def _panels(board: dict):
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _queries(board: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    out = [(f"panel {p['id']} {p['title']!r}", t["expr"]) for p in _panels(board) for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert match, f"variable {var['name']}: {query}"
            out.append((f"variable {var['name']}", match.group(1)))
    return out


def test_there_is_a_server_and_a_load_test_dashboard():
    assert [p.stem for p in DASHBOARDS] == ["loadtest", "server"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_a_dashboard_is_grafana_json_with_unique_panel_ids_and_a_datasource_variable(path):
    board = _dashboard(path)
    assert board["uid"] and board["title"].startswith("scalechat /")
    ids = [p["id"] for p in _panels(board)]
    assert len(ids) == len(set(ids))
    assert board["templating"]["list"][0]["type"] == "datasource"
    for panel in _panels(board):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_dashboard_query_is_valid_promql(tmp_path, path):
    rules = []
    for i, (where, expr) in enumerate(_queries(_dashboard(path))):
        concrete = re.sub(r"\$__(rate_interval|interval)", "1m", expr).replace("$__range", "1h")
        outside_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', concrete)
        assert "$" not in outside_strings, f"{where}: a variable outside a string: {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump({"groups": [{"name": path.stem, "rules": rules}]}))
    result = _promtool("check", "rules", "queries.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboards_query_only_the_documented_metrics(path):
    used = set()
    for where, expr in _queries(_dashboard(path)):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        assert names <= ALLOWED, f"{where}: unknown metrics {names - ALLOWED}"
        used |= names
    assert used & SERVER_METRICS


def test_the_server_dashboard_covers_what_operators_need():
    text = json.dumps(_dashboard(CHART / "dashboards" / "server.json"))
    for needed in ("scalechat_connections", "scalechat_rooms", "scalechat_messages_received_total",
                   "scalechat_messages_delivered_total", "histogram_quantile(0.99",
                   "process_cpu_seconds_total", "process_resident_memory_bytes", "kube_pod_container_resource_limits",
                   "scalechat_slow_consumer_disconnects_total", "sum by (reason) (rate(scalechat_messages_rejected_total"):
        assert needed in text, needed


def test_every_server_metric_queried_is_exported_by_a_running_server(chat_server):
    text = urllib.request.urlopen(chat_server.metrics_url, timeout=5).read().decode()
    exported = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            exported.add(name)
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            exported.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    assert SERVER_METRICS <= exported, f"not exported: {SERVER_METRICS - exported}"


def test_dashboards_ship_as_configmaps_the_grafana_sidecar_picks_up(render):
    objects = render(sets=("monitoring.dashboards.enabled=true", "monitoring.dashboards.namespace=monitoring"))
    maps = objects.find("ConfigMap")
    boards = {k: v for m in maps if m["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
              for k, v in m["data"].items()}
    assert set(boards) == {"scalechat-server.json", "scalechat-loadtest.json"}
    for name, content in boards.items():
        assert json.loads(content) == _dashboard(CHART / "dashboards" / f"{name.split('-')[1]}")
    assert {m["metadata"]["namespace"] for m in maps if "grafana_dashboard" in m["metadata"].get("labels", {})} == {
        "monitoring"}
    assert not render().find("ConfigMap", "scalechat-dashboard-server")
