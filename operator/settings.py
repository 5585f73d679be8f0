"""The operator's own settings: one typed object, each field's flag, env name, default and help.

``scalechat operator`` builds :class:`OperatorConfig` from flags (whose defaults
come from the environment) and hands it to the handlers through kopf's
``memo``; ``kopf run -m scalechat.operator.handlers`` gets it from the
environment alone (:meth:`OperatorConfig.from_env`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def _setting(env: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class OperatorConfig:
    redis_url: str = _setting(
        "SCALECHAT_OPERATOR_REDIS_URL", "",
        "Redis where the load generator pods store shard results and progress (passed to them as "
        "--results-redis) and where the operator reads them; required")
    image: str = _setting(
        "SCALECHAT_OPERATOR_IMAGE", "",
        "image of the load generator Jobs (ENTRYPOINT scalechat); a LoadTest's spec.image overrides it")
    image_pull_policy: str = _setting(
        "SCALECHAT_OPERATOR_IMAGE_PULL_POLICY", "IfNotPresent",
        "imagePullPolicy of the load generator pods: Always, IfNotPresent or Never")
    results_grace_seconds: float = _setting(
        "SCALECHAT_OPERATOR_RESULTS_GRACE_SECONDS", 120.0,
        "how long after its Job completed a LoadTest waits for every shard's results before it fails")

    def __post_init__(self) -> None:
        if not self.redis_url:
            raise ValueError("redis_url (--redis-url / SCALECHAT_OPERATOR_REDIS_URL): is required")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url: must be a redis://, rediss:// or unix:// URL, got {self.redis_url!r}")
        if self.image_pull_policy not in PULL_POLICIES:
            raise ValueError(f"image_pull_policy: must be one of {', '.join(PULL_POLICIES)}, "
                             f"got {self.image_pull_policy!r}")
        if not self.results_grace_seconds > 0:
            raise ValueError(f"results_grace_seconds: must be > 0, got {self.results_grace_seconds!r}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "OperatorConfig":
        """Every field from its environment variable, or its default; ValueError names the field."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None:
                try:
                    values[f.name] = type(f.default)(raw)
                except ValueError:
                    raise ValueError(f"{f.metadata['env']}: must be a {type(f.default).__name__}, "
                                     f"got {raw!r}") from None
        return cls(**values)


def env_default(name: str) -> Any:
    """The default of field ``name``: its environment variable if set, else the declared default."""
    f = {f.name: f for f in fields(OperatorConfig)}[name]
    raw = os.environ.get(f.metadata["env"])
    return f.default if raw is None else type(f.default)(raw)


def help_text(name: str) -> str:
    f = {f.name: f for f in fields(OperatorConfig)}[name]
    return f"{f.metadata['help']} [env {f.metadata['env']}, default {f.default!r}]"
