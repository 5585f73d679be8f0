"""`scalechat operator`: settings from flags and environment, and the command run against kmock,
which stands in for the Kubernetes API server."""

from __future__ import annotations

import argparse
import asyncio
import threading

import pytest

from scalechat.operator import main
from scalechat.operator.settings import OperatorConfig


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scalechat operator")
    main.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("REDIS_URL", "IMAGE", "IMAGE_PULL_POLICY", "RESULTS_GRACE_SECONDS"):
        monkeypatch.delenv(f"SCALECHAT_OPERATOR_{name}", raising=False)


def test_flags_default_to_the_environment(monkeypatch):
    monkeypatch.setenv("SCALECHAT_OPERATOR_REDIS_URL", "redis://r:6379/1")
    monkeypatch.setenv("SCALECHAT_OPERATOR_RESULTS_GRACE_SECONDS", "30")
    args = parse("--namespace", "a", "-n", "b", "--image", "img:1")
    assert args.namespaces == ["a", "b"]
    assert main.config_from_args(args) == OperatorConfig(redis_url="redis://r:6379/1", image="img:1",
                                                         results_grace_seconds=30.0)


def test_from_env_names_the_variable_of_a_bad_value():
    with pytest.raises(ValueError, match="SCALECHAT_OPERATOR_RESULTS_GRACE_SECONDS: must be a float, got 'soon'"):
        OperatorConfig.from_env({"SCALECHAT_OPERATOR_REDIS_URL": "redis://r",
                                 "SCALECHAT_OPERATOR_RESULTS_GRACE_SECONDS": "soon"})
    with pytest.raises(ValueError, match="image_pull_policy: must be one of Always, IfNotPresent, Never"):
        OperatorConfig.from_env({"SCALECHAT_OPERATOR_REDIS_URL": "redis://r",
                                 "SCALECHAT_OPERATOR_IMAGE_PULL_POLICY": "Sometimes"})


def test_namespace_and_all_namespaces_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        parse("--namespace", "a", "--all-namespaces")
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "error"), [
    (["--all-namespaces"], "redis_url (--redis-url / SCALECHAT_OPERATOR_REDIS_URL): is required"),
    (["--redis-url", "redis://r:6379/0"], "--namespace NS or --all-namespaces: one is required"),
    (["-A", "--redis-url", "http://r"], "redis_url: must be a redis://, rediss:// or unix:// URL"),
])
def test_bad_settings_exit_2_with_one_line_naming_them(argv, error, capsys):
    assert main.run(parse(*argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"scalechat operator: {error}") and err.count("\n") == 1


async def test_the_command_runs_the_handlers_with_its_flags(k8s, api):
    """`scalechat operator -n loadtests --image ...` against kmock: the flag's image reaches the Job."""
    stop = threading.Event()
    args = parse("--namespace", api.NAMESPACE, "--redis-url", api.REDIS_URL, "--image", "from-flag:7",
                 "--standalone")
    done = asyncio.ensure_future(asyncio.to_thread(main.run, args, stop_flag=stop))
    try:
        await api.create(api.LOADTESTS, api.loadtest("cli"))

        async def job():
            return await api.get(api.JOBS, "cli-load")

        created = await api.eventually(job, 20, "the Job of LoadTest cli")
        assert created["spec"]["template"]["spec"]["containers"][0]["image"] == "from-flag:7"
    finally:
        stop.set()
        assert await asyncio.wait_for(done, 30) == 0
