"""Prometheus (Debian's package) scraping every replica directly, never through nginx.

Targets come from a ``file_sd_configs`` JSON file, one entry per replica with
a ``node`` label; through the balancer a scrape would reach whichever replica
the path hashes to. Prometheus batches target updates every 5 s, so the first
samples appear about 6 s after start even with ``scrape_interval: 1s``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scalechat.cluster.errors import ClusterError
from scalechat.cluster.processes import HOST, ProcessRecord, spawn

JOB = "scalechat"
CONFIG = """\
# Rendered by scalechat cluster; edits are lost on the next `scalechat cluster up`.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s

scrape_configs:
  - job_name: {job}
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 1s
"""


@dataclass(frozen=True, slots=True)
class PrometheusLayout:
    dir: Path
    logs: Path

    @property
    def config(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def targets(self) -> Path:
        return self.dir / "targets.json"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def output(self) -> Path:
        return self.logs / "prometheus.log"

    def argv(self, binary: str, port: int) -> list[str]:
        return [binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
                f"--web.listen-address={HOST}:{port}", "--storage.tsdb.retention.time=1d"]


def render_targets(replicas: Sequence[tuple[str, int]]) -> str:
    """file_sd JSON: one target group per replica ``(node, metrics_port)``."""
    groups = [{"targets": [f"{HOST}:{port}"], "labels": {"node": node}} for node, port in replicas]
    return json.dumps(groups, indent=2) + "\n"


def write_config(layout: PrometheusLayout, replicas: Sequence[tuple[str, int]]) -> None:
    """Write the config and targets; storage starts empty (series of an earlier run would mix in)."""
    layout.dir.mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(layout.data, ignore_errors=True)
    layout.targets.write_text(render_targets(replicas))
    layout.config.write_text(CONFIG.format(job=JOB, targets=json.dumps(str(layout.targets))))


def check_config(promtool: str | None, layout: PrometheusLayout) -> None:
    """``promtool check config`` when promtool is installed (it ships with Debian's package)."""
    if promtool is None:
        return
    result = subprocess.run([promtool, "check", "config", str(layout.config)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if "FAILED" in line]
        raise ClusterError(f"promtool refused {layout.config}: "
                           f"{lines[0].strip() if lines else result.stderr.strip()}")


def start(binary: str, promtool: str | None, layout: PrometheusLayout, port: int) -> ProcessRecord:
    check_config(promtool, layout)
    return spawn("prometheus", layout.argv(binary, port), layout.output)
