"""The operator's own settings, declared once (:mod:`scalechat.settings`): flag, env name, default, help.

``scalechat operator`` builds :class:`OperatorConfig` from its flags and the
environment (a flag wins) and hands it to the handlers through kopf's
``memo``; ``kopf run -m scalechat.loadtest_operator.handlers`` gets it from the
environment alone. The chart sets the ``SCALECHAT_OPERATOR_*`` variables;
README.md lists them (``python -m scalechat.loadtest_operator.settings --readme``
rewrites that table). An invalid value raises
:class:`~scalechat.settings.SettingsError` naming the setting.
"""

from __future__ import annotations

from dataclasses import dataclass

from scalechat.settings import DeclaredSettings, setting, update_readme

PULL_POLICIES = ("Always", "IfNotPresent", "Never")
README_MARKER = "operator-settings-table"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class OperatorConfig(DeclaredSettings):
    ENV_PREFIX = "SCALECHAT_OPERATOR_"

    redis_url: str = setting(
        "", "Redis where the load generator pods store shard results and progress (passed to them as "
            "--results-redis) and where the operator reads them.", required=True, metavar="URL")
    image: str = setting(
        "", "Image of the load generator Jobs (ENTRYPOINT scalechat); a LoadTest's spec.image overrides it.",
        metavar="IMAGE")
    image_pull_policy: str = setting(
        "IfNotPresent", "imagePullPolicy of the load generator pods: Always, IfNotPresent or Never.",
        choices=PULL_POLICIES)
    results_grace_seconds: float = setting(
        120.0, "How long after its Job completed a LoadTest waits for every shard's results before it fails.",
        flag="results-grace", metavar="SECONDS")

    def check(self) -> None:
        if not self.redis_url.startswith(REDIS_SCHEMES):
            raise self.ERROR("redis_url", f"must be a redis://, rediss:// or unix:// URL, got {self.redis_url!r}")
        if not self.results_grace_seconds > 0:
            raise self.ERROR("results_grace_seconds", f"must be > 0, got {self.results_grace_seconds!r}")


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] == ["--readme"]:
        update_readme(sys.argv[2] if len(sys.argv) > 2 else "README.md", README_MARKER, OperatorConfig.table())
    else:
        print(OperatorConfig.table())
