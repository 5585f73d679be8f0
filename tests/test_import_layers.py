"""The import-layer contract: a module imports only from its own layer or lower ones.

Read from the source with ``ast`` (imports inside functions included), so a
lazy import cannot hide a dependency. Within the chat server, from the top:

    entry points   serve_cli, chat_cli
    transport      server, app, listener, client_socket
    node           node, metrics
    hub / broker   hub, broker, broker_memory, broker_redis, redis_shard
    room / outbox  room, outbox (sans-I/O: a room's state and policy, one socket's queue)
    protocol       protocol, errors, framing, deflate, ratelimit, budget, counters, settings,
                   redis_scripts, redis_link, link (sans-I/O rules, leaf helpers, the
                   socket interface)

Only the transport layer imports aiohttp (see test below). Across packages: the core (src/scalechat) imports no service; the load
generator, analysis and the operator import nothing from the chat server.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHAT = REPO / "services" / "chat" / "scalechat" / "chat"
LAYERS = [
    {"protocol", "errors", "framing", "deflate", "ratelimit", "budget", "settings", "redis_scripts",
     "redis_link", "link", "native", "counters"},
    {"room", "outbox"},
    {"hub", "broker", "broker_memory", "broker_redis", "redis_shard"},
    {"node", "metrics"},
    {"server", "app", "listener", "client_socket"},
    {"serve_cli", "chat_cli"},
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}
SERVICES = ("scalechat.chat", "scalechat.loadgen", "scalechat.analysis", "scalechat.loadtest_operator")


def imported(path: Path) -> set[str]:
    """Every module path ``path`` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def chat_modules() -> list[Path]:
    return sorted(p for p in CHAT.glob("*.py") if p.stem != "__init__")


def test_every_chat_module_has_a_layer():
    assert {p.stem for p in chat_modules()} == set(LAYER)


@pytest.mark.parametrize("path", chat_modules(), ids=lambda p: p.stem)
def test_a_chat_module_imports_nothing_above_its_layer(path):
    mine = LAYER[path.stem]
    for name in imported(path):
        parts = name.split(".")
        if parts[:2] == ["scalechat", "chat"] and len(parts) > 2 and parts[2] in LAYER:
            assert LAYER[parts[2]] <= mine, (f"{path.stem} (layer {mine}) imports {parts[2]} "
                                            f"(layer {LAYER[parts[2]]})")


def _package_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


@pytest.mark.parametrize("root, allowed", [
    (REPO / "src" / "scalechat", ()),
    (REPO / "services" / "loadgen" / "scalechat" / "loadgen", ("scalechat.loadgen",)),
    (REPO / "analysis" / "scalechat" / "analysis", ("scalechat.analysis",)),
    (REPO / "operator" / "scalechat" / "loadtest_operator", ("scalechat.loadtest_operator",)),
], ids=["core", "loadgen", "analysis", "operator"])
def test_packages_import_no_other_service(root, allowed):
    for path in _package_files(root):
        for name in imported(path):
            if name.startswith(SERVICES) and not name.startswith(allowed):
                raise AssertionError(f"{path.relative_to(REPO)} imports {name}")


def test_only_the_transport_layer_imports_aiohttp():
    for path in chat_modules():
        if any(name.split(".")[0] == "aiohttp" for name in imported(path)):
            assert LAYER[path.stem] >= LAYER["app"], f"{path.stem} imports aiohttp"
