"""nginx (Debian's package) in front of the replicas: a room sticks to one replica.

With :attr:`Routing.ROOM_HASH` (the default) the balancer hashes the room path
segment only (``/ws/<room>``), never ``$request_uri``: a query string
(``?name=``, ``?since=``) must not move a client of a room to another replica.
``consistent`` (ketama) hashing moves only a dead replica's rooms when it fails:
``max_fails=1`` marks it failed after one refused connection for
``fail_timeout``, and ``proxy_next_upstream`` retries the upgrade on the next
replica of the ring within the same request.

:attr:`Routing.RANDOM` exists for comparison (``bench/scaleout.py``): nginx's
``random`` balancing puts each connection on any replica, so a room's members
spread over replicas and every replica with a member receives all of the room's
messages from Redis.

Everything nginx writes (pid, logs, temp dirs) lives under its own prefix in the
run folder, so it runs without root; it runs with ``daemon off`` in a session
of its own and stops gracefully on SIGQUIT.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
import enum
from dataclasses import dataclass
from pathlib import Path

from scalechat.cluster.errors import ClusterError
from scalechat.cluster.processes import HOST, ProcessRecord, spawn

TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
FAIL_TIMEOUT = "5s"  # a failed replica gets no new connections for this long
CONNECT_TIMEOUT = "1s"  # loopback: a replica that does not accept within 1 s is failed
STREAM_TIMEOUT = "1h"  # idle WebSockets live this long (the default 60 s would cut them)
WORKER_SHUTDOWN_TIMEOUT = "5s"  # on SIGQUIT, open WebSockets are closed after this

CONFIG = """\
# Rendered by scalechat cluster; edits are lost on the next `scalechat cluster up`.
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {logs}/nginx-error.log notice;
worker_shutdown_timeout {worker_shutdown_timeout};

events {{
    worker_connections 4096;
}}

http {{
    client_body_temp_path {dir}/temp/client_body;
    proxy_temp_path {dir}/temp/proxy;
    fastcgi_temp_path {dir}/temp/fastcgi;
    uwsgi_temp_path {dir}/temp/uwsgi;
    scgi_temp_path {dir}/temp/scgi;

    log_format chat '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                    'room=$ws_room upstream=$upstream_addr node=$upstream_http_x_scalechat_node '
                    'time=$request_time';
    access_log {logs}/nginx-access.log chat;

    # The room segment of /ws/<room>; other paths hash by their path. Never
    # $request_uri: its query string would split one room over replicas.
    map $uri $ws_room {{
        ~^/ws/(?<room>[^/]+) $room;
        default $uri;
    }}

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}

    upstream chat {{
        {balancing}
{servers}
    }}

    server {{
        listen {host}:{port};

        location / {{
            proxy_pass http://chat;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout {connect_timeout};
            proxy_read_timeout {stream_timeout};
            proxy_send_timeout {stream_timeout};
            proxy_buffering off;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


class Routing(enum.StrEnum):
    """How the balancer picks a replica for a new WebSocket."""

    ROOM_HASH = "room-hash"  # every member of a room on the same replica
    RANDOM = "random"  # any replica: a room's members spread out (for comparison)


BALANCING = {
    Routing.ROOM_HASH: "hash $ws_room consistent;",
    Routing.RANDOM: "random;  # no hash: a room's members land on any replica",
}


@dataclass(frozen=True, slots=True)
class NginxLayout:
    """Where one nginx instance keeps its files (``dir`` is its ``-p`` prefix)."""

    dir: Path
    logs: Path

    @property
    def config(self) -> Path:
        return self.dir / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.logs / "nginx-error.log"

    @property
    def output(self) -> Path:
        return self.logs / "nginx.out"

    def argv(self, binary: str) -> list[str]:
        # -e: the error log nginx uses before it reads the config (the built-in
        # default /var/log/nginx/error.log is not writable without root).
        return [binary, "-p", str(self.dir), "-c", str(self.config), "-e", str(self.error_log)]


def render_config(layout: NginxLayout, port: int, backends: Sequence[int],
                  routing: Routing = Routing.ROOM_HASH) -> str:
    servers = "\n".join(f"        server {HOST}:{p} max_fails=1 fail_timeout={FAIL_TIMEOUT};"
                        for p in backends)
    return CONFIG.format(dir=layout.dir, logs=layout.logs, host=HOST, port=port, servers=servers,
                         balancing=BALANCING[Routing(routing)],
                         connect_timeout=CONNECT_TIMEOUT, stream_timeout=STREAM_TIMEOUT,
                         worker_shutdown_timeout=WORKER_SHUTDOWN_TIMEOUT)


def write_config(layout: NginxLayout, port: int, backends: Sequence[int],
                 routing: Routing = Routing.ROOM_HASH) -> None:
    for name in TEMP_DIRS:
        (layout.dir / "temp" / name).mkdir(parents=True, exist_ok=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(render_config(layout, port, backends, routing))


def check_config(binary: str, layout: NginxLayout) -> None:
    """``nginx -t``; ClusterError with nginx's own complaint if the config is refused."""
    result = subprocess.run([*layout.argv(binary), "-t", "-q"], capture_output=True, text=True,
                            timeout=30)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        problem = lines[0] if lines else f"exit status {result.returncode}"
        raise ClusterError(f"nginx -t refused {layout.config}: {problem}")


def start(binary: str, layout: NginxLayout) -> ProcessRecord:
    check_config(binary, layout)
    return spawn("nginx", layout.argv(binary), layout.output)
