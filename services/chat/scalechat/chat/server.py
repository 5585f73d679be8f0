"""Run the chat server: uvloop, one process, graceful shutdown on SIGTERM/SIGINT.

Shutdown: readiness turns false and new upgrades get 503 at once, every socket
is closed with 1001 "going away", and the process exits within
``grace_seconds``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal

import uvloop
from aiohttp import web

from scalechat.chat import native
from scalechat.chat.app import create_app, metrics_key, node_key, state_key
from scalechat.chat.listener import listen
from scalechat.chat.protocol import CloseCode
from scalechat.chat.settings import Settings

log = logging.getLogger("scalechat.chat")


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), then shut down gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    raise_open_file_limit(settings)
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=settings.grace_seconds)
    await runner.setup()
    try:
        listener, gate = await listen(runner, settings, app[metrics_key].registry)
    except BaseException:
        await runner.cleanup()
        raise
    tune_gc()
    log.info("scalechat %s listening on http://%s:%d (metrics on :%d, broker %s, %s)",
             app[node_key].name, settings.host, settings.port, settings.metrics_port,
             settings.broker, describe_native())
    if stale := native.stale():
        log.warning(native.stale_advice(stale))
    await stop.wait()
    log.info("shutting down: closing sockets with 1001 (grace %.1fs)", settings.grace_seconds)
    app[state_key]["draining"] = True
    try:
        await asyncio.wait_for(_drain(app, runner, listener, settings), settings.grace_seconds + 1)
    except TimeoutError:
        log.warning("grace period exceeded; exiting with sockets still open")
    gate.close()
    log.info("stopped")


def describe_native() -> str:
    """Whether the per-message modules run compiled (see :mod:`scalechat.chat.native`)."""
    count = len(native.compiled())
    if count == len(native.modules()):
        return "per-message modules compiled"
    return f"{count} of {len(native.modules())} per-message modules compiled"


def raise_open_file_limit(settings: Settings) -> None:
    """Raise the soft open-file limit to the hard one; warn if it is still too low.

    At the limit ``accept()`` fails before any check runs: neither upgrades nor
    ``/healthz`` get through. Each WebSocket and each pending handshake holds
    one descriptor; 64 more cover the listeners, Redis and files.
    """
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != infinity and (hard == infinity or soft < hard):
        target = 1 << 20 if hard == infinity else hard  # 1 << 20: Linux's default fs.nr_open
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    needed = settings.max_connections + settings.max_pending_handshakes + 64
    if soft != infinity and soft < needed:
        log.warning("open-file limit %d is below max_connections + max_pending_handshakes + 64 "
                    "= %d: at the limit new connections fail before any check", soft, needed)


def tune_gc() -> None:
    """Keep the cyclic garbage collector's pauses short on the message path.

    Everything alive after start-up is moved out of its reach (``freeze``), so
    the full collections walk only what connections and rooms add. Young
    collections keep Python's default threshold (700 allocations), whose
    pauses are short: docs/design/garbage-collector.md.
    """
    gc.collect()
    gc.freeze()


async def _drain(app: web.Application, runner: web.AppRunner, listener: asyncio.Server,
                 settings: Settings) -> None:
    await app[node_key].close_all(CloseCode.GOING_AWAY, "going away", settings.grace_seconds / 2)
    listener.close()
    await runner.cleanup()


def run(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(serve(settings))
