"""`scalechat operator`: settings from flags and environment, and the command run against kmock,
which stands in for the Kubernetes API server."""

from __future__ import annotations

import argparse
import asyncio
import threading

import pytest

from scalechat.loadtest_operator import operator_cli
from scalechat.loadtest_operator.settings import OperatorConfig
from scalechat.settings import SettingsError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scalechat operator")
    operator_cli.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("REDIS_URL", "IMAGE", "IMAGE_PULL_POLICY", "RESULTS_GRACE_SECONDS"):
        monkeypatch.delenv(f"SCALECHAT_OPERATOR_{name}", raising=False)


def test_settings_come_from_flags_then_the_environment(monkeypatch):
    monkeypatch.setenv("SCALECHAT_OPERATOR_REDIS_URL", "redis://r:6379/1")
    monkeypatch.setenv("SCALECHAT_OPERATOR_RESULTS_GRACE_SECONDS", "30")
    monkeypatch.setenv("SCALECHAT_OPERATOR_IMAGE", "img:env")
    args = parse("--namespace", "a", "-n", "b", "--image", "img:1")
    assert args.namespaces == ["a", "b"]
    assert OperatorConfig.from_sources(args) == OperatorConfig(redis_url="redis://r:6379/1", image="img:1",
                                                               results_grace_seconds=30.0)
    assert OperatorConfig.from_sources(parse("--results-grace", "5")).results_grace_seconds == 5.0


def test_a_bad_value_names_the_setting_and_where_it_came_from():
    with pytest.raises(SettingsError, match="invalid setting results_grace_seconds: "
                                            "SCALECHAT_OPERATOR_RESULTS_GRACE_SECONDS: expected float, got 'soon'"):
        OperatorConfig.from_sources(environ={"SCALECHAT_OPERATOR_REDIS_URL": "redis://r",
                                             "SCALECHAT_OPERATOR_RESULTS_GRACE_SECONDS": "soon"})
    with pytest.raises(SettingsError, match="invalid setting results_grace_seconds: --results-grace: expected float"):
        OperatorConfig.from_sources(parse("--redis-url", "redis://r", "--results-grace", "soon"), environ={})
    with pytest.raises(SettingsError, match="image_pull_policy: must be one of Always, IfNotPresent, Never"):
        OperatorConfig.from_sources(environ={"SCALECHAT_OPERATOR_REDIS_URL": "redis://r",
                                             "SCALECHAT_OPERATOR_IMAGE_PULL_POLICY": "Sometimes"})


def test_every_setting_has_a_flag_an_environment_variable_and_help(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    help_text = " ".join(capsys.readouterr().out.split())
    for flag, env in (("--redis-url URL", "SCALECHAT_OPERATOR_REDIS_URL; required"),
                      ("--image IMAGE", "SCALECHAT_OPERATOR_IMAGE; default: (empty)"),
                      ("--image-pull-policy {Always,IfNotPresent,Never}",
                       "SCALECHAT_OPERATOR_IMAGE_PULL_POLICY; default: IfNotPresent"),
                      ("--results-grace SECONDS", "SCALECHAT_OPERATOR_RESULTS_GRACE_SECONDS; default: 120.0")):
        assert flag in help_text and f"[env {env}]" in help_text


def test_namespace_and_all_namespaces_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        parse("--namespace", "a", "--all-namespaces")
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "error"), [
    (["--all-namespaces"], "invalid setting redis_url: is required (--redis-url or SCALECHAT_OPERATOR_REDIS_URL)"),
    (["--redis-url", "redis://r:6379/0"], "--namespace NS or --all-namespaces: one is required"),
    (["-A", "--redis-url", "http://r"], "invalid setting redis_url: must be a redis://, rediss:// or unix:// URL"),
    (["-A", "--redis-url", "redis://r", "--results-grace", "0"], "invalid setting results_grace_seconds: must be > 0"),
])
def test_bad_settings_exit_2_with_one_line_naming_them(argv, error, capsys):
    assert operator_cli.run(parse(*argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scalechat operator: {error}") and err.count("\n") == 1


async def test_the_command_runs_the_handlers_with_its_flags(k8s, api):
    """`scalechat operator -n loadtests --image ...` against kmock: the flag's image reaches the Job."""
    stop = threading.Event()
    args = parse("--namespace", api.NAMESPACE, "--redis-url", api.REDIS_URL, "--image", "from-flag:7",
                 "--standalone")
    done = asyncio.ensure_future(asyncio.to_thread(operator_cli.run, args, stop_flag=stop))
    try:
        await api.create(api.LOADTESTS, api.loadtest("cli"))

        async def job():
            return await api.get(api.JOBS, "cli-load")

        created = await api.eventually(job, 20, "the Job of LoadTest cli")
        assert created["spec"]["template"]["spec"]["containers"][0]["image"] == "from-flag:7"
    finally:
        stop.set()
        assert await asyncio.wait_for(done, 30) == 0
