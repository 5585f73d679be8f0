"""What the image tests share: docker/image.py, the chart's user and limits, podman flags, containers.

conftest.py registers this module as ``image_support`` (tests/images is not on
sys.path); tests/charts/test_image_contract.py loads it by path.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((REPO / "charts" / "values.yaml").read_text())
UID = VALUES["image"]["uid"]
LIMITS = VALUES["chat"]["resources"]["limits"]


def _load(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


image_tool = _load("scalechat_image_tool", REPO / "docker" / "image.py")


def podman_missing() -> str | None:
    """Why the image cannot be built here, or None."""
    missing = image_tool.missing_tools()
    if missing:
        return (f"{', '.join(missing)} not installed: `make image-test` installs them as root "
                f"(apt-get install {image_tool.DEBS})")
    return None


def cpus(quantity: str) -> str:
    """A Kubernetes CPU quantity ("1", "500m") as podman's --cpus."""
    return f"{int(quantity[:-1]) / 1000:g}" if quantity.endswith("m") else quantity


def memory(quantity: str) -> str:
    """A Kubernetes memory quantity in Mi or Gi as podman's --memory (m and g are binary there)."""
    for suffix, unit in (("Mi", "m"), ("Gi", "g")):
        if quantity.endswith(suffix):
            return quantity[: -len(suffix)] + unit
    raise ValueError(f"memory limit {quantity!r}: expected Mi or Gi")


def restricted(uid: int = UID) -> list[str]:
    """podman run flags for the chart's securityContext: what every container here runs under."""
    return ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m", "--cap-drop=ALL",
            "--security-opt", "no-new-privileges", f"--user={uid}:{uid}"]


@dataclass
class Container:
    name: str
    port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{room}" + (f"?{query}" if query else "")

    def get(self, path: str, port: int | None = None) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str) -> dict:
        status, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def state(self) -> dict:
        return json.loads(image_tool.podman("container", "inspect", self.name).stdout)[0]["State"]

    def logs(self) -> str:
        result = image_tool.podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *args: str) -> subprocess.CompletedProcess:
        return image_tool.podman("exec", self.name, *args, check=False)
