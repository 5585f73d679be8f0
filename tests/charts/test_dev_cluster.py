"""The local cluster's files: kind-config.yaml and the Tiltfile point at what exists.

Neither kind nor Tilt runs here; these checks keep the files in step with the
chart and the image (the cluster itself is exercised later, on a real machine).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TILTFILE = (REPO / "Tiltfile").read_text()


def test_kind_has_an_ingress_ready_node_with_ports_80_and_443_on_the_host():
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    (control,) = [n for n in config["nodes"] if n["role"] == "control-plane"]
    patches = [yaml.safe_load(p) for p in control["kubeadmConfigPatches"]]
    labels = [p["nodeRegistration"]["kubeletExtraArgs"]["node-labels"] for p in patches
              if p["kind"] == "InitConfiguration"]
    assert labels == ["ingress-ready=true"]
    mapped = {(m["containerPort"], m["hostPort"]) for m in control["extraPortMappings"]}
    assert mapped == {(80, 80), (443, 443)}
    assert sum(n["role"] == "worker" for n in config["nodes"]) >= 2, "room for the chat pods to spread"


def test_tilt_builds_the_image_the_chart_deploys():
    (name, dockerfile) = re.search(r"docker_build\(\s*'([^']+)',\s*'\.',\s*dockerfile='([^']+)'", TILTFILE).groups()
    values = yaml.safe_load((REPO / "charts" / "values.yaml").read_text())
    assert name == values["image"]["repository"]
    assert (REPO / dockerfile).is_file()


def test_tilt_rebuilds_on_exactly_the_build_context_allow_list():
    only = re.search(r"only=\[([^\]]*)\]", TILTFILE).group(1)
    watched = set(re.findall(r"'([^']+)'", only))
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text()
    allowed = {line[1:] for line in ignore.splitlines() if line.startswith("!")}
    assert watched == allowed


def test_tilt_installs_the_chart_with_the_dev_scenario_and_forwards_the_web_pages():
    values_file = re.search(r"--values (\S+)", TILTFILE).group(1)
    assert (REPO / values_file).is_file() and values_file.startswith("charts/ci/")
    dev = yaml.safe_load((REPO / values_file).read_text())
    assert dev["monitoring"]["prometheusRelease"] in TILTFILE  # the release name Tilt installs
    for port in ("8080", "9090", "3000"):
        assert port in TILTFILE
