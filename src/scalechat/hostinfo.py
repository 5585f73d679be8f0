"""Facts about the machine under test: read them before reading a load test.

Everything here is read from /proc, /sys and the interpreter; missing files
give ``None`` rather than an error (e.g. no cgroup limit).
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any

from scalechat.version import __version__


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or None


def cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup (quota / period), or None when unlimited."""
    v2 = _read("/sys/fs/cgroup/cpu.max")
    if v2:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else round(int(quota) / int(period or 100000), 3)
    quota, period = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if quota and period and int(quota) > 0:
        return round(int(quota) / int(period), 3)
    return None


def cgroup_memory_limit() -> int | None:
    """Bytes allowed by the cgroup, or None when unlimited."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        raw = _read(path)
        if raw and raw != "max":
            value = int(raw)
            return None if value >= 1 << 60 else value
    return None


def host_facts() -> dict[str, object]:
    """JSON-safe facts: CPU model and count, cgroup limits, kernel, Python, scalechat."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cgroup_cpu_quota": cgroup_cpu_quota(),
        "cgroup_memory_limit_bytes": cgroup_memory_limit(),
        "memory_total_bytes": _mem_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "scalechat": __version__,
    }


def _mem_total() -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def describe_server(info: dict[str, Any] | None) -> str:
    """One line naming what a result was measured against, the server's limits first.

    ``info`` is the server's ``/info`` (None when it could not be read).
    """
    if not info:
        return "server: unknown (its /info could not be read): its CPU quota is not known"
    host = info.get("host") or {}
    quota, memory = host.get("cgroup_cpu_quota"), host.get("cgroup_memory_limit_bytes")
    cpu = (f"CPU quota {quota:g}" if quota else
           f"no CPU quota ({host.get('cpu_usable') or host.get('cpu_count') or '?'} CPUs usable)")
    limit = f"memory limit {memory / 2**20:.0f} MiB" if memory else "no memory limit"
    return f"server {info.get('node', '?')}: {cpu}, {limit}; {host.get('cpu_model') or '?'}"
