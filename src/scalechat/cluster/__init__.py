"""A local cluster of real components: chat replicas, Redis, nginx, Prometheus.

Modules, each one job: :mod:`.processes` (detached processes by PID, ports,
polling), :mod:`.nginx`, :mod:`.prometheus` and :mod:`.redis_server` (render a
config, start one program), :mod:`.state` (the state file), :mod:`.cluster`
(the :class:`Cluster` object that ties them together) and :mod:`.cli`
(``scalechat cluster up|down|status``).
"""

from scalechat.cluster.cluster import Cluster
from scalechat.cluster.errors import ClusterError, UsageError

__all__ = ["Cluster", "ClusterError", "UsageError"]
