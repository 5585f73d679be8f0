"""The chart's pods and the operator's Jobs against the image podman builds from this checkout.

Rendered with the real helm, then checked against ``podman image inspect`` of
the image (entrypoint, user, exposed ports, stop signal) and run as rendered:
the chat container with its ConfigMap's environment, its securityContext,
limits and /tmp volume, probed on its named ports; each role's arguments
parsed by the image's own ``scalechat``; a LoadTest Job's exact arguments as a
dry run over its mounted manifest. Skips, saying why, where podman is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from support import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
if "image_support" not in sys.modules:  # tests/images/conftest.py registers it when it ran first
    _spec = importlib.util.spec_from_file_location("image_support", REPO / "tests" / "images" / "image_support.py")
    sys.modules["image_support"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["image_support"])
image_support = sys.modules["image_support"]
image_tool = image_support.image_tool

pytestmark = pytest.mark.timeout(900)  # a build from nothing takes a few minutes
ROLES = {"serve", "load", "operator"}


@pytest.fixture(scope="module")
def image() -> str:
    reason = image_support.podman_missing()
    if reason:
        pytest.skip(reason)
    return image_tool.build(log=print)


@pytest.fixture(scope="module")
def config(image) -> dict:
    return image_tool.inspect(image)["Config"]


@pytest.fixture(scope="module")
def objects(render):
    return render(sets=("operator.enabled=true",))


def scalechat_pods(objects) -> dict[str, dict]:
    """Pod specs of the Deployments that run the scalechat image, by name."""
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"] for o in objects.find("Deployment")}


def loadtest_job(image: str) -> tuple[dict, dict]:
    """(Job, ConfigMap) the operator makes for the in-cluster example LoadTest."""
    from scalechat.loadtest_operator import jobs
    body = yaml.safe_load((REPO / "services" / "loadgen" / "examples" / "loadtest-in-cluster.yaml").read_text())
    body["metadata"].update(namespace="scalechat", uid="0f8e2c4a-1b2c-4d5e-8f90-a1b2c3d4e5f6")
    test = jobs.validated(body["spec"])
    options = jobs.JobOptions(image=image, redis_url="redis://scalechat-redis-0.scalechat-redis:6379/1")
    return jobs.job(body, test, options), jobs.configmap(body, test)


def image_user(config: dict) -> tuple[int, int]:
    user, _, group = config["User"].partition(":")
    assert user.isdigit() and group.isdigit(), f"USER {config['User']!r}: runAsNonRoot can verify numbers only"
    return int(user), int(group)


def test_every_scalechat_container_runs_the_images_entrypoint_with_a_role(objects, config, image):
    assert config["Entrypoint"] == ["scalechat"] and config["StopSignal"] == "SIGTERM"
    containers = [c for pod in scalechat_pods(objects).values() for c in pod["containers"]]
    containers += loadtest_job(image)[0]["spec"]["template"]["spec"]["containers"]
    assert {c["args"][0] for c in containers} == ROLES
    for container in containers:
        assert "command" not in container, f"{container['name']}: command would bypass the entrypoint"


def test_the_pods_user_is_the_images_user(objects, config, image):
    uid, gid = image_user(config)
    assert uid != 0
    for name, pod in scalechat_pods(objects).items():
        context = pod["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), name
    # The Jobs set no runAsUser: runAsNonRoot is checked against the image's numeric USER.
    job_pod = loadtest_job(image)[0]["spec"]["template"]["spec"]
    assert job_pod["securityContext"]["runAsNonRoot"] and "runAsUser" not in job_pod["securityContext"]


def test_the_container_ports_are_exposed_by_the_image_and_set_for_the_server(objects, config):
    exposed = {int(p.split("/")[0]) for p in config["ExposedPorts"]}
    for name, pod in scalechat_pods(objects).items():
        for container in pod["containers"]:
            ports = {p["containerPort"] for p in container.get("ports", [])}
            assert ports and ports <= exposed, (name, ports, exposed)
    chat = scalechat_pods(objects)["scalechat"]["containers"][0]
    env = objects.one("ConfigMap", "scalechat")["data"]
    by_name = {p["name"]: p["containerPort"] for p in chat["ports"]}
    assert (int(env["SCALECHAT_PORT"]), int(env["SCALECHAT_METRICS_PORT"])) == (by_name["http"], by_name["metrics"])


def test_the_only_writable_place_the_pods_mount_is_tmp_and_the_image_writes_there(objects, config):
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["MPLCONFIGDIR"].startswith("/tmp/") and env["PYTHONDONTWRITEBYTECODE"] == "1"
    for name, pod in scalechat_pods(objects).items():
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"], name


def test_each_rendered_command_line_is_accepted_by_the_images_scalechat(objects, image):
    """Parsed by the image's own argparse: a flag the image does not know fails here."""
    commands = [c["args"] for pod in scalechat_pods(objects).values() for c in pod["containers"]]
    commands.append([a.replace("$(JOB_COMPLETION_INDEX)", "0")
                     for a in loadtest_job(image)[0]["spec"]["template"]["spec"]["containers"][0]["args"]])
    probe = ("import json, sys\nfrom scalechat.cli import build_parser\n"
             "for argv in json.loads(sys.argv[1]):\n    build_parser(argv[0]).parse_args(argv)\n")
    result = image_tool.podman("run", "--rm", "--network=none", *image_support.restricted(), "--entrypoint",
                               "python", image, "-c", probe, json.dumps(commands), check=False)
    assert result.returncode == 0, result.stderr


def test_a_loadtest_jobs_pod_runs_its_arguments_from_the_image(image, tmp_path):
    job, configmap = loadtest_job(image)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    spec_dir, results = tmp_path / "spec", tmp_path / "results"
    spec_dir.mkdir()
    results.mkdir()
    results.chmod(0o777)  # an emptyDir the image's user writes
    for key, text in configmap["data"].items():
        (spec_dir / key).write_text(text)
    args = [a.replace("$(JOB_COMPLETION_INDEX)", "1") for a in container["args"]]
    # No --user: the pod sets none, so the image's USER runs it, as in the cluster.
    result = image_tool.podman(
        "run", "--rm", "--network=none", "--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL",
        "--security-opt", "no-new-privileges", "--tmpfs", mounts["tmp"]["mountPath"],
        "--volume", f"{spec_dir}:{mounts['spec']['mountPath']}:ro",
        "--volume", f"{results}:{mounts['results']['mountPath']}:rw",
        image, *args, "--dry-run", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# plan: run id" in result.stdout and "shard 1/2" in result.stdout


def test_the_chat_container_as_rendered_answers_its_probes(objects, image):
    pod = scalechat_pods(objects)["scalechat"]
    (container,) = pod["containers"]
    env = dict(objects.one("ConfigMap", "scalechat")["data"])
    env["SCALECHAT_NODE_ID"] = "scalechat-0"  # the pod name, from the downward API
    assert all("configMapRef" in source for source in container["envFrom"]), "memory broker: no Secret"
    published = {p["name"]: (free_port(), p["containerPort"]) for p in container["ports"]}
    limits, context = container["resources"]["limits"], pod["securityContext"]
    name = f"scalechat-chart-{os.getpid()}-{secrets.token_hex(3)}"
    image_tool.podman(
        "run", "--detach", "--name", name, f"--cpus={image_support.cpus(limits['cpu'])}",
        f"--memory={image_support.memory(limits['memory'])}",
        f"--user={context['runAsUser']}:{context['runAsGroup']}", "--read-only", "--read-only-tmpfs=false",
        "--cap-drop=ALL", "--security-opt", "no-new-privileges",
        *[f"--tmpfs={m['mountPath']}" for m in container["volumeMounts"]],
        *[f"--publish=127.0.0.1:{host}:{port}" for host, port in published.values()],
        *[f"--env={k}={v}" for k, v in env.items()], image, *container["args"])
    try:
        def status(probe: dict) -> int | None:
            port = published[probe["httpGet"]["port"]][0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['httpGet']['path']}", timeout=2) as r:
                    return r.status
            except OSError:
                return None

        for probe in ("readinessProbe", "livenessProbe"):
            wait_until(lambda probe=probe: status(container[probe]) == 200, 30, message=f"{probe} to pass", interval=0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{published['metrics'][0]}/metrics", timeout=5) as r:
            assert b"scalechat_" in r.read()
        grace = pod["terminationGracePeriodSeconds"]
        stopped = image_tool.podman("stop", f"--time={grace}", name, timeout=grace + 30)
        assert stopped.returncode == 0
        assert json.loads(image_tool.podman("container", "inspect", name).stdout)[0]["State"]["ExitCode"] == 0
    finally:
        image_tool.podman("rm", "--force", "--time=0", name, check=False)
