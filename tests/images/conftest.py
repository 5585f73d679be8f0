"""Fixtures for the image tests: the image podman builds from this checkout, and containers of it.

``image`` builds with ``docker/image.py`` (reusing an image built from the same
files); every test that needs it skips, saying why, where podman is not
installed. ``run_container`` starts containers the way the chart runs its pods:
the chart's uid, CPU and memory limits, a read-only root with a tmpfs on /tmp
only, no capabilities, ports published on 127.0.0.1 alone. Every container is
removed by name at the end of the module.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from pathlib import Path

import pytest

from support import free_port, wait_until

if "image_support" not in sys.modules:  # tests/charts/test_image_contract.py may have loaded it first
    _spec = importlib.util.spec_from_file_location("image_support", Path(__file__).with_name("image_support.py"))
    sys.modules["image_support"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["image_support"])
from image_support import LIMITS, Container, cpus, image_tool, memory, podman_missing, restricted


@pytest.fixture(scope="session")
def image() -> str:
    reason = podman_missing()
    if reason:
        pytest.skip(reason)
    return image_tool.build(log=print)


@pytest.fixture(scope="module")
def run_container(image):
    """Factory: ``run_container(*args, env={...})`` -> a ready Container running ``image args``."""
    names: list[str] = []

    def start(*args: str, env: dict[str, str] | None = None, cpu: str = LIMITS["cpu"],
              mem: str = LIMITS["memory"]) -> Container:
        port, metrics_port = free_port(), free_port()
        container = Container(f"scalechat-test-{os.getpid()}-{secrets.token_hex(3)}", port, metrics_port)
        env_flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        image_tool.podman("run", "--detach", "--name", container.name, f"--cpus={cpus(cpu)}",
                          f"--memory={memory(mem)}", *restricted(),
                          "--publish", f"127.0.0.1:{port}:8080", "--publish", f"127.0.0.1:{metrics_port}:9000",
                          *env_flags, image, *args)
        names.append(container.name)

        def ready():
            if not container.state()["Running"]:
                raise AssertionError(f"container exited: {container.state()}\n{container.logs()}")
            try:
                return container.get("/readyz")[0] == 200
            except OSError:  # not listening yet
                return False

        wait_until(ready, 30, message=lambda: f"{container.name} to be ready:\n{container.logs()}",
                   interval=0.2)
        return container

    yield start
    if names:
        image_tool.podman("rm", "--force", "--time=0", *names, check=False)


@pytest.fixture
def world_writable(tmp_path) -> Path:
    """A host folder the image's non-root user may write (a bind-mounted volume)."""
    folder = tmp_path / "volume"
    folder.mkdir()
    folder.chmod(0o777)
    return folder
