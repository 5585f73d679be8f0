"""``--prometheus``: the server side from a real Prometheus (Debian's binary) that
scrapes tiny exporters with known rates; a Prometheus that is not there."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scalechat.analysis import prometheus
from support import free_port, wait_until

MiB = 2**20


class Exporter:
    """A /metrics endpoint whose counters grow at fixed rates from its start."""

    def __init__(self, *, scalechat: bool, cpu: float, memory: int, received: float = 0.0) -> None:
        self.t0 = time.time()
        self.scalechat, self.cpu, self.memory, self.received = scalechat, cpu, memory, received
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = exporter.text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def text(self) -> str:
        t = time.time() - self.t0
        lines = ["# TYPE process_cpu_seconds_total counter", f"process_cpu_seconds_total {self.cpu * t}",
                 "# TYPE process_resident_memory_bytes gauge", f"process_resident_memory_bytes {self.memory}"]
        if self.scalechat:
            n = self.received * t
            lines += ["# TYPE scalechat_connections gauge", "scalechat_connections 5",
                      "# TYPE scalechat_messages_received_total counter",
                      f"scalechat_messages_received_total {n}",
                      "# TYPE scalechat_messages_delivered_total counter",
                      f"scalechat_messages_delivered_total {4 * n}",
                      "# TYPE scalechat_message_processing_seconds histogram",
                      'scalechat_message_processing_seconds_bucket{le="0.001"} 0',
                      f'scalechat_message_processing_seconds_bucket{{le="0.01"}} {n}',
                      f'scalechat_message_processing_seconds_bucket{{le="+Inf"}} {n}',
                      f"scalechat_message_processing_seconds_sum {0.005 * n}",
                      f"scalechat_message_processing_seconds_count {n}"]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def query(url: str, promql: str) -> list:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                                timeout=5) as response:
        return json.loads(response.read())["data"]["result"]


@pytest.fixture
def prometheus_scraping(tmp_path):
    """Prometheus scraping two chat replicas (0.5 cores and 50 MiB each; 100 and 300 msg/s: one
    busier) and a decoy exporter that is no chat server (5 cores, 1 GiB: must not be counted)."""
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus is not installed (make test installs it)"
    exporters = [Exporter(scalechat=True, cpu=0.5, memory=50 * MiB, received=100.0),
                 Exporter(scalechat=True, cpu=0.5, memory=50 * MiB, received=300.0),
                 Exporter(scalechat=False, cpu=5.0, memory=1024 * MiB)]
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{e.port}" for e in exporters]}]))
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
                      "scrape_configs:\n  - job_name: chat\n    file_sd_configs:\n"
                      f"      - files: [{json.dumps(str(targets))}]\n        refresh_interval: 1s\n")
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def all_up():
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                result = query(url, "count(up == 1)")
            except OSError:
                return False
            return bool(result) and result[0]["value"][1] == "3"

        wait_until(all_up, 30, "Prometheus to scrape the three exporters", interval=0.2)
        yield url, time.time()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for exporter in exporters:
            exporter.close()


def test_server_side_per_stage_from_a_real_prometheus(prometheus_scraping, results_dir, make_stages,
                                                      analyze, csv_rows, tmp_path):
    url, up = prometheus_scraping
    # Two 2 s stages after the first 4 s of scrapes: every rate in them has a full 4 s window
    # behind it (rate() underestimates while a series is younger than its window).
    wait_until(lambda: time.time() > up + 8.2, 30, "two stages' worth of samples", interval=0.2)
    run = results_dir("run", make_stages()[:2], t0=up + 4.0, stage_seconds=2.0)
    outcome = analyze(run, "--prometheus", url, "--out", tmp_path / "out")
    assert outcome.code == 0 and outcome.err == ""
    rows = csv_rows(tmp_path / "out" / "server.csv")
    assert [r["stage_name"] for r in rows] == ["clients=40", "clients=80"]
    for row in rows:
        assert int(row["samples"]) >= 2
        assert float(row["replicas_mean"]) == 2
        assert float(row["memory_bytes_max"]) == 100 * MiB  # the decoy's 1 GiB left out
        assert float(row["cpu_cores_mean"]) == pytest.approx(1.0, rel=0.1)
        assert float(row["received_per_s_mean"]) == pytest.approx(400, rel=0.1)
        assert float(row["delivered_per_s_mean"]) == pytest.approx(1600, rel=0.1)
        # The busier replica does 1200 of the 1600 deliveries/s: 1.5x the average replica's 800.
        assert float(row["delivered_imbalance"]) == pytest.approx(1.5, rel=0.1)
        assert float(row["cpu_imbalance"]) == pytest.approx(1.0, rel=0.1)
        # Every observation in the (1 ms, 10 ms] bucket: histogram_quantile interpolates linearly.
        assert float(row["processing_p50_s_mean"]) == pytest.approx(0.0055, rel=1e-6)
        assert float(row["processing_p99_s_max"]) == pytest.approx(0.00991, rel=1e-6)
    replicas = csv_rows(tmp_path / "out" / "server-replicas.csv")
    assert len(replicas) == 4 and len({r["replica"] for r in replicas}) == 2
    for row in replicas:
        share = float(row["delivered_share"])
        assert share == pytest.approx(0.25, rel=0.1) or share == pytest.approx(0.75, rel=0.1)
        assert float(row["cpu_cores_mean"]) == pytest.approx(0.5, rel=0.1)
        assert float(row["memory_bytes_max"]) == 50 * MiB
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<img ") == 4 and "run-server.png" in html and "table class=\"replicas\"" in html
    png = (tmp_path / "out" / "run-server.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png[16:24] == (1000).to_bytes(4, "big") + (700).to_bytes(4, "big")  # IHDR width, height


def test_unreachable_prometheus_is_a_warning_and_the_report_is_still_written(results_dir, make_stages,
                                                                             analyze, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    outcome = analyze(results_dir("run", make_stages()[:1]), "--prometheus", url, "--out", tmp_path / "out")
    assert outcome.code == 0
    assert outcome.err.startswith(f"scalechat analyze: warning: Prometheus not usable, the report has no "
                                  f"server side: {url}: unreachable") and outcome.err.count("\n") == 1
    assert not (tmp_path / "out" / "server.csv").exists()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Prometheus not usable" in html and html.count("<img ") == 3


def test_the_queries_name_metrics_the_chat_server_exports(chat_server):
    exported = urllib.request.urlopen(chat_server.metrics_url, timeout=5).read().decode()
    names = {name for query in prometheus.QUERIES.values()
             for name in re.findall(r"\b(?:scalechat|process)_\w+", query)}
    names |= {name for query in prometheus.PER_REPLICA.values()
              for name in re.findall(r"\b(?:scalechat|process)_\w+", query)}
    assert len(names) == 6
    for name in names:
        assert re.search(rf"^{name}(\{{|\s)", exported, re.M), f"the server does not export {name}"


@pytest.mark.parametrize("text, seconds", [("1s", 1), ("15s", 15), ("500ms", 0.5), ("1m30s", 90),
                                           ("", None), ("5x", None)])
def test_scrape_interval_durations(text, seconds):
    assert prometheus._duration(text) == seconds
