"""The Helm chart, rendered and checked with real tools and no cluster.

helm (v4) lints and renders; every rendered object passes strict offline
validation (see conftest.validate_object); the chat container's environment is
fed to the server's own Settings; the `helm test` pod's script runs against a
real local server.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest
import yaml

from scalechat.chat.settings import Settings, env_var

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
SCENARIOS = [pytest.param((), id="defaults")] + [
    pytest.param((str(p),), id=p.name.removesuffix("-values.yaml")) for p in CI_VALUES]
MONITORING = ("monitoring.coreos.com/v1",)
SCALECHAT_CONTAINERS = ("chat", "operator", "websocket-echo")


def values_file(name: str) -> tuple[str, ...]:
    return (str(CHART / "ci" / f"{name}-values.yaml"),)


def pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def chat_container(objects) -> dict:
    return pod_spec(objects.one("Deployment", "scalechat"))["containers"][0]


def chat_env(objects) -> dict[str, str]:
    """The chat container's environment as the kubelet would build it (Secret values included)."""
    env = dict(objects.one("ConfigMap", "scalechat")["data"])
    for secret in objects.find("Secret", "scalechat"):
        env.update(secret.get("stringData", {}))
    for var in chat_container(objects).get("env", []):
        env[var["name"]] = var.get("value", f"<from {next(iter(var['valueFrom']))}>")
    return env


# --------------------------------------------------------------------------- tools


def test_the_fetched_tools_are_real_helm_4_and_kubectl_1_33(helm, k8s_tools):
    assert helm.run("version", "--short").stdout.startswith("v4.")
    kubectl = subprocess.run([str(k8s_tools / "kubectl"), "version", "--client", "-o", "yaml"],
                             capture_output=True, text=True, check=True)
    assert yaml.safe_load(kubectl.stdout)["clientVersion"]["minor"] == "33"


def test_fetching_the_tools_again_downloads_nothing(k8s_tools):
    before = {p.name: p.stat().st_mtime_ns for p in k8s_tools.iterdir() if p.is_file()}
    result = subprocess.run([sys.executable, str(REPO / "tools" / "fetch_k8s_tools.py"), "--dest", str(k8s_tools)],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == str(k8s_tools)
    assert {p.name: p.stat().st_mtime_ns for p in k8s_tools.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("values", SCENARIOS)
def test_the_chart_lints_strictly_in_every_scenario(helm, values):
    args = ["lint", "--strict", str(CHART), "--kube-version", "1.33.0"]
    for v in values:
        args += ["--values", v]
    result = helm.run(*args)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("api_versions", [(), MONITORING], ids=["plain-cluster", "with-prometheus-operator"])
@pytest.mark.parametrize("values", SCENARIOS)
def test_every_rendered_object_is_valid_for_kubernetes_1_33(render, validate, values, api_versions):
    objects = render(values=values, api_versions=api_versions)
    assert objects, "nothing rendered"
    used = {f"{o['kind']}": validate(o) for o in objects}
    assert "Deployment" in used and used["Deployment"] == "kubernetes-validate"


def test_a_kind_nobody_can_validate_fails_instead_of_passing(validate):
    with pytest.raises(AssertionError, match="no validator for example.com/v1 Widget"):
        validate({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


def test_strict_validation_catches_an_unknown_field(render, validate):
    deployment = copy.deepcopy(render().one("Deployment", "scalechat"))
    pod_spec(deployment)["containers"][0]["livenessProbes"] = {}
    with pytest.raises(Exception, match="livenessProbes"):
        validate(deployment)


def test_strict_validation_catches_an_unknown_field_in_a_service_monitor(render, validate):
    monitor = copy.deepcopy(render(api_versions=MONITORING).one("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["scrapeIntervall"] = "5s"
    with pytest.raises(AssertionError, match="scrapeIntervall"):
        validate(monitor)


def test_each_template_renders_the_kind_its_file_is_named_after(render):
    for values in [(), *[(str(p),) for p in CI_VALUES]]:
        for obj in render(values=values, api_versions=MONITORING):
            stem = Path(obj["_source"]).stem.split("-")[-1]
            assert obj["kind"].lower().endswith(stem), f"{obj['_source']} renders a {obj['kind']}"


def test_the_chart_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    assert chart["apiVersion"] == "v2" and chart["name"] == "scalechat"
    assert chart["appVersion"] == version


# --------------------------------------------------------------------------- brokers and Redis


def test_the_default_is_one_pod_with_the_memory_broker_and_no_redis(render):
    objects = render()
    assert objects.one("Deployment", "scalechat")["spec"]["replicas"] == 1
    assert chat_env(objects)["SCALECHAT_BROKER"] == "memory"
    assert not objects.find("StatefulSet") and not objects.find("Secret")


def test_several_pods_use_redis_and_get_the_in_chart_redis(render):
    objects = render(sets=("chat.replicas=3",))
    env = chat_env(objects)
    assert env["SCALECHAT_BROKER"] == "redis"
    redis = objects.one("StatefulSet", "scalechat-redis")
    service = objects.one("Service", "scalechat-redis")
    assert redis["spec"]["replicas"] == 1
    assert env["SCALECHAT_REDIS_URL"] == "redis://scalechat-redis-0.scalechat-redis.scalechat.svc:6379/0"
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]
    assert "volumeClaimTemplates" not in redis["spec"]


def shard_hosts(redis_url: str) -> list[str]:
    """The host of each shard in a comma-separated SCALECHAT_REDIS_URL, in order."""
    return [url.split("://", 1)[1].rsplit(":", 1)[0] for url in redis_url.split(",")]


def test_three_shards_render_three_standalone_redis_pods(render):
    redis = render(values=values_file("redis-shards")).one("StatefulSet", "scalechat-redis")
    assert redis["spec"]["replicas"] == 3
    args = pod_spec(redis)["containers"][0]["args"]
    assert not {"--replicaof", "--slaveof", "--cluster-enabled"} & set(args), args
    (claim,) = redis["spec"]["volumeClaimTemplates"]  # one claim per pod: a volume per shard
    assert claim["metadata"]["name"] == "data"


def test_three_shards_give_every_chat_pod_a_list_of_three_ordered_urls(render):
    objects = render(values=values_file("redis-shards"))
    urls = chat_env(objects)["SCALECHAT_REDIS_URL"].split(",")
    assert urls == [f"redis://scalechat-redis-{shard}.scalechat-redis.scalechat.svc:6379/0"
                    for shard in range(3)]


def test_each_shard_url_names_one_pod_through_the_headless_service(render):
    objects = render(values=values_file("redis-shards"))
    redis = objects.one("StatefulSet", "scalechat-redis")
    service = objects.one("Service", redis["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == redis["spec"]["template"]["metadata"]["labels"]
    hosts = shard_hosts(chat_env(objects)["SCALECHAT_REDIS_URL"])
    assert [host.split(".") for host in hosts] == [
        [f"{redis['metadata']['name']}-{ordinal}", service["metadata"]["name"], "scalechat", "svc"]
        for ordinal in range(redis["spec"]["replicas"])]


def test_the_operator_results_stay_on_one_redis_shard_0(render):
    objects = render(values=values_file("redis-shards"))
    assert objects.one("Secret", "scalechat-operator")["stringData"] == {
        "SCALECHAT_OPERATOR_REDIS_URL": "redis://scalechat-redis-0.scalechat-redis.scalechat.svc:6379/1"}


def test_chat_pods_restart_when_the_shard_count_changes(render):
    def checksum(*sets):
        return render(sets=("chat.replicas=2", *sets)).one("Deployment", "scalechat")["spec"]["template"][
            "metadata"]["annotations"]["checksum/config"]

    assert checksum() != checksum("redis.shards=2")


def test_an_external_redis_lists_its_shards_in_order(render):
    shards = ["redis://redis-a.example:6379/0", "redis://redis-b.example:6379/0", "redis://redis-c.example:6379/2"]
    objects = render(sets=("operator.enabled=true",), set_json=(f"redis.external.urls={json.dumps(shards)}",))
    assert chat_env(objects)["SCALECHAT_BROKER"] == "redis"
    assert chat_env(objects)["SCALECHAT_REDIS_URL"] == ",".join(shards)
    assert objects.one("Secret", "scalechat-operator")["stringData"] == {"SCALECHAT_OPERATOR_REDIS_URL": shards[0]}
    assert not objects.find("StatefulSet")


def test_zero_shards_are_refused_by_the_schema(helm):
    assert "at '/redis/shards': minimum: got 0, want 1" in helm.fails(sets=("redis.shards=0",))
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = _merge(yaml.safe_load((CHART / "values.yaml").read_text()), {"redis": {"shards": 0}})
    with pytest.raises(jsonschema.ValidationError, match="0 is less than the minimum of 1"):
        jsonschema.Draft7Validator(schema).validate(values)


def test_redis_persistence_adds_a_volume_claim_template(render):
    redis = render(sets=("chat.replicas=2", "redis.persistence.enabled=true")).one("StatefulSet")
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "--appendonly" in (args := pod_spec(redis)["containers"][0]["args"])
    assert args[args.index("--appendonly") + 1] == "yes"


def test_an_external_redis_url_replaces_the_in_chart_redis(render):
    objects = render(sets=("chat.replicas=2", "redis.external.url=redis://redis.example:6379/1"))
    assert chat_env(objects)["SCALECHAT_REDIS_URL"] == "redis://redis.example:6379/1"
    assert not objects.find("StatefulSet")


def test_an_external_redis_secret_is_referenced_not_copied(render):
    objects = render(values=values_file("gateway-api"))
    (var,) = [v for v in chat_container(objects)["env"] if v["name"] == "SCALECHAT_REDIS_URL"]
    assert var["valueFrom"]["secretKeyRef"] == {"name": "scalechat-redis", "key": "url"}
    assert not objects.find("Secret") and not objects.find("StatefulSet")


@pytest.mark.parametrize("sets", [
    ("chat.replicas=2", "chat.broker=memory"),
    ("autoscaling.enabled=true", "chat.broker=memory"),
], ids=["replicas", "autoscaler"])
def test_more_than_one_pod_with_the_memory_broker_is_refused(helm, sets):
    error = helm.fails(sets=sets)
    assert "chat.broker=memory keeps rooms inside one process" in error


def test_an_autoscaler_implies_redis_and_takes_over_replicas(render):
    objects = render(sets=("autoscaling.enabled=true",))
    assert "replicas" not in objects.one("Deployment", "scalechat")["spec"]
    hpa = objects.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "scalechat"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert chat_env(objects)["SCALECHAT_BROKER"] == "redis"


# --------------------------------------------------------------------------- the chat pods


@pytest.mark.parametrize("values", SCENARIOS)
def test_the_chat_environment_is_accepted_by_the_server_settings(render, values):
    env = chat_env(render(values=values))
    env["SCALECHAT_NODE_ID"] = "scalechat-5d8f7c9b4-x2x7q"
    for name, value in list(env.items()):
        if value.startswith("<from "):  # from an existing Secret the test cannot read
            env[name] = {"SCALECHAT_REDIS_URL": "redis://redis:6379/0", "SCALECHAT_AUTH_SECRET": "s3cret"}[name]
    settings = Settings.from_sources(environ=env)
    assert settings.host == "0.0.0.0"
    known = {env_var(f.name) for f in fields(Settings)}
    assert set(env) <= known, f"variables the server does not read: {set(env) - known}"


def test_chart_settings_are_server_settings_with_the_same_defaults_and_limits():
    values = yaml.safe_load((CHART / "values.yaml").read_text())["chat"]["settings"]
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    props = schema["properties"]["chat"]["properties"]["settings"]["properties"]
    by_env = {env_var(f.name): f for f in fields(Settings)}
    set_by_chart = {"host", "port", "metrics_port", "node_id", "broker", "redis_url", "auth_secret"}
    assert set(values) == set(props)
    for key, value in values.items():
        field = by_env[f"SCALECHAT_{re.sub(r'(?<!^)(?=[A-Z])', '_', key).upper()}"]
        default = ",".join(field.default) if isinstance(field.default, tuple) else field.default
        assert value == default, f"chat.settings.{key}: {value!r} but the server's default is {default!r}"
        assert props[key].get("minimum") == field.metadata["minimum"], key
        assert props[key].get("enum") == (list(field.metadata["choices"]) if field.metadata["choices"] else None), key
        kind = {bool: "boolean", int: "integer", float: "number", str: "string", tuple: "string"}[type(field.default)]
        assert props[key]["type"] == kind, key
    exposed = {f.name for f in by_env.values()} - set_by_chart
    named = {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower() for k in values}
    assert named == exposed, f"server settings missing from chat.settings: {exposed - named}"


def test_termination_grace_outlasts_the_server_grace_and_the_pre_stop_sleep(render):
    for set_json, grace, pre_stop in [((), 10, 5),
                                      (("chat.settings.graceSeconds=25.5", "chat.preStopSleepSeconds=7"), 25.5, 7)]:
        spec = pod_spec(render(set_json=set_json).one("Deployment", "scalechat"))
        container = spec["containers"][0]
        assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == pre_stop
        assert spec["terminationGracePeriodSeconds"] > grace + pre_stop
        assert spec["terminationGracePeriodSeconds"] == math.ceil(grace) + pre_stop + 5


def test_the_pre_stop_can_run_sleep_inside_the_image_instead(render):
    container = chat_container(render(sets=("chat.preStopSleepAction=false",)))
    assert container["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}


def test_chat_probes_use_healthz_for_liveness_and_readyz_for_readiness(render):
    container = chat_container(render())
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = chat_env(render())
    assert ports == {"http": int(env["SCALECHAT_PORT"]), "metrics": int(env["SCALECHAT_METRICS_PORT"])}


def test_chat_pods_get_one_cpu_and_512_mebibytes_by_default(render):
    resources = chat_container(render())["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "1", "memory": "512Mi"}


@pytest.mark.parametrize("values", SCENARIOS)
def test_every_pod_runs_as_non_root_on_a_read_only_root(render, values):
    for obj in render(values=values):
        if obj["kind"] not in ("Deployment", "StatefulSet", "Pod"):
            continue
        spec = pod_spec(obj)
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0, obj["metadata"]["name"]
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            if container["name"] in SCALECHAT_CONTAINERS:
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                volumes = {v["name"]: v for v in spec["volumes"]}
                assert "emptyDir" in volumes[mounts["/tmp"]], "the image writes only to /tmp"


def test_chat_pods_spread_over_nodes_and_zones(render):
    spec = pod_spec(render().one("Deployment", "scalechat"))
    keys = [c["topologyKey"] for c in spec["topologySpreadConstraints"]]
    assert keys == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    selector = spec["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "chat"


def test_the_pod_name_is_the_node_id(render):
    (var,) = [v for v in chat_container(render())["env"] if v["name"] == "SCALECHAT_NODE_ID"]
    assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_pods_restart_when_a_setting_changes(render):
    def checksum(*sets):
        return render(sets=sets).one("Deployment", "scalechat")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"]

    assert checksum() == checksum()
    assert checksum() != checksum("chat.settings.rateLimit=5")
    assert checksum() != checksum("chat.auth.secret=abc")


def test_the_service_selects_only_chat_pods_and_exposes_http_and_metrics(render):
    objects = render(sets=("chat.replicas=2", "operator.enabled=true"))
    service = objects.one("Service", "scalechat")
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "chat"
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http", "metrics": "metrics"}
    pdb = objects.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == objects.one("Deployment", "scalechat")["spec"]["selector"][
        "matchLabels"]


# --------------------------------------------------------------------------- routing


def test_the_ingress_hashes_rooms_on_the_path_without_the_query_string(render):
    ingress = render(values=values_file("multi-replica")).one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$uri"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "chat.example.test"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": "scalechat", "port": {"name": "http"}}


@pytest.mark.parametrize("values", SCENARIOS)
def test_nothing_rendered_hashes_on_the_request_uri(helm, values):
    text = helm.template_text(values=values, api_versions=MONITORING)
    assert "$request_uri" not in text


def test_values_cannot_override_the_room_hash(helm):
    error = helm.fails(sets=("routing.mode=ingress-nginx",
                             "routing.ingressNginx.annotations.nginx\\.ingress\\.kubernetes\\.io/upstream-hash-by=$request_uri"))
    assert "routing/ingressNginx/annotations" in error


def test_the_gateway_route_hashes_the_room_query_parameter(render):
    objects = render(values=values_file("gateway-api"))
    route = objects.one("HTTPRoute")
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg",
                                            "namespace": "envoy-gateway-system", "sectionName": "http"}]
    backend = route["spec"]["rules"][0]["backendRefs"][0]
    service = objects.one("Service", "scalechat")
    assert backend["name"] == "scalechat" and backend["port"] == service["spec"]["ports"][0]["port"]
    policy = objects.one("BackendTrafficPolicy")
    assert policy["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                             "name": route["metadata"]["name"]}]
    assert policy["spec"]["loadBalancer"] == {"type": "ConsistentHash", "consistentHash": {
        "type": "QueryParams", "queryParams": [{"name": "room"}]}}
    assert not objects.find("Ingress")


def test_the_gateway_subset_schemas_reject_what_upstream_rejects(render, validate):
    policy = copy.deepcopy(render(values=values_file("gateway-api")).one("BackendTrafficPolicy"))
    policy["spec"]["loadBalancer"]["consistentHash"] = {"type": "QueryParams"}
    with pytest.raises(jsonschema.ValidationError, match="queryParams"):
        validate(policy)
    route = copy.deepcopy(render(values=values_file("gateway-api")).one("HTTPRoute"))
    del route["spec"]["rules"][0]["backendRefs"][0]["port"]
    with pytest.raises(jsonschema.ValidationError, match="port"):
        validate(route)


def test_routing_none_renders_neither_ingress_nor_route(render):
    objects = render()
    assert not objects.find("Ingress") and not objects.find("HTTPRoute") and not objects.find("BackendTrafficPolicy")


# --------------------------------------------------------------------------- values and schema


@pytest.mark.parametrize("sets, key", [
    (("chat.replicas=-1",), "/chat/replicas"),
    (("routing.mode=foo",), "/routing/mode"),
    (("chat.broker=nats",), "/chat/broker"),
    (("chat.settings.rateLimit=0",), "/chat/settings/rateLimit"),
    (("chat.settings.logLevel=loud",), "/chat/settings/logLevel"),
    (("chat.settings.port=9999",), "/chat/settings"),
    (("service.port=70000",), "/service/port"),
    (("routing.timeoutSeconds=60",), "/routing/timeoutSeconds"),
    (("chat.replica=2",), "/chat"),
    (("redis.external.url=http://redis:6379",), "/redis/external/url"),
    (("redis.shards=0",), "/redis/shards"),
    (("redis.shards=1.5",), "/redis/shards"),
    (("redis.external.url=redis://a:6379/0\\,redis://b:6379/0",), "/redis/external/url"),
    (("redis.external.urls={redis://a:6379/0,redis://a:6379/0}",), "/redis/external/urls"),
    (("redis.external.urls={redis://a:6379/0,http://b:6379/0}",), "/redis/external/urls/1"),
])
def test_the_values_schema_rejects_bad_values(helm, sets, key):
    error = helm.fails(sets=sets)
    assert f"at '{key}'" in error, error


def test_lint_reports_a_bad_value_too(helm):
    result = helm.run("lint", "--strict", str(CHART), "--set", "chat.replicas=-1", check=False)
    assert result.returncode != 0 and "/chat/replicas" in result.stdout + result.stderr


@pytest.mark.parametrize("sets, message", [
    (("chat.settings.historyOnJoin=2000",), "historyOnJoin (2000) must be <= chat.settings.historySize"),
    (("chat.ports.metrics=8080",), "chat.ports.http and chat.ports.metrics must differ"),
    (("autoscaling.enabled=true", "autoscaling.minReplicas=5", "autoscaling.maxReplicas=3"), "minReplicas"),
    (("redis.external.url=redis://a:6379/0", "redis.external.urls={redis://b:6379/0}"),
     "set one of redis.external.url, redis.external.urls and redis.external.existingSecret"),
    (("redis.external.url=redis://a:6379/0", "redis.external.existingSecret=redis"),
     "set one of redis.external.url, redis.external.urls and redis.external.existingSecret"),
    (("redis.shards=2", "redis.external.urls={redis://a:6379/0,redis://b:6379/0}"),
     "redis.shards sizes the in-chart Redis; an external Redis lists its shards in redis.external.urls"),
])
def test_rules_across_values_fail_with_the_keys_named(helm, sets, message):
    assert message in helm.fails(sets=sets)


def test_every_values_key_has_a_comment():
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    for number, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z0-9_.\"-]+:", line):
            above = lines[number - 1].strip() if number else ""
            if not above.startswith("# --"):
                missing.append(f"line {number + 1}: {line.strip()}")
    assert not missing, "values keys without a '# --' comment right above:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", [CHART / "values.yaml", *CI_VALUES], ids=lambda p: p.name)
def test_values_files_satisfy_the_values_schema(path):
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    merged = _merge(defaults, yaml.safe_load(path.read_text()) or {})
    jsonschema.Draft7Validator(schema).validate(merged)


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_the_image_uid_is_the_dockerfiles_user():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    user = re.search(r"^USER\s+(\d+)", dockerfile, re.M).group(1)
    assert yaml.safe_load((CHART / "values.yaml").read_text())["image"]["uid"] == int(user)


# --------------------------------------------------------------------------- operator


def test_the_operator_is_off_by_default(render):
    objects = render()
    assert not [o for o in objects if o["metadata"]["name"].startswith("scalechat-operator")]


def test_the_operator_runs_standalone_with_least_privilege_in_its_namespace(render):
    objects = render(values=values_file("multi-replica"))
    deployment = objects.one("Deployment", "scalechat-operator")
    args = pod_spec(deployment)["containers"][0]["args"]
    assert args[:2] == ["operator", "--standalone"] and "--namespace=scalechat" in args
    role = objects.one("Role", "scalechat-operator")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("scalechat.io",), ("loadtests",)): {"get", "list", "watch", "patch", "update"},
        (("scalechat.io",), ("loadtests/status",)): {"get", "patch", "update"},
        (("scalechat.io",), ("loadtests/finalizers",)): {"update"},
        (("batch",), ("jobs",)): {"create", "get", "list", "watch", "delete", "patch"},
        (("",), ("configmaps",)): {"create", "get"},
        (("",), ("pods",)): {"get", "list", "watch"},
        (("",), ("events",)): {"create", "patch"},
    }
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in role["rules"])
    binding = objects.one("RoleBinding", "scalechat-operator")
    account = objects.one("ServiceAccount", "scalechat-operator")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "scalechat"}]
    assert pod_spec(deployment)["serviceAccountName"] == account["metadata"]["name"]


API_CALL = re.compile(r"\b(create|read|list|delete|patch|replace)_namespaced_([a-z_]+?)(_status)?\b")
VERBS = {"create": "create", "read": "get", "list": "list", "delete": "delete", "patch": "patch", "replace": "update"}
GROUPS = {"jobs": "batch", "configmaps": "", "pods": "", "events": ""}


def test_every_kubernetes_call_in_the_operator_is_granted_by_its_role(render):
    role = render(values=values_file("multi-replica")).one("Role", "scalechat-operator")
    granted = {(g, res, v) for r in role["rules"] for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    calls = set()
    for source in (REPO / "operator" / "scalechat" / "loadtest_operator").glob("*.py"):
        for verb, kind, status in API_CALL.findall(source.read_text()):
            resource = kind.replace("_", "") + "s" + ("/status" if status else "")
            calls.add((GROUPS[resource.split("/")[0]], resource, VERBS[verb]))
    assert calls, "found no API calls in operator/"
    assert calls <= granted, f"not granted: {calls - granted}"


def test_the_operator_environment_is_accepted_by_its_settings(render):
    from scalechat.loadtest_operator.settings import OperatorConfig
    for values in (values_file("multi-replica"), values_file("gateway-api")):
        objects = render(values=values)
        container = pod_spec(objects.one("Deployment", "scalechat-operator"))["containers"][0]
        secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in objects.find("Secret")}
        env = {}
        for var in container["env"]:
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = secrets.get(ref["name"], {}).get(ref["key"], "redis://existing-secret:6379/0")
        config = OperatorConfig.from_sources(environ=env)
        assert config.image == "scalechat:0.1.0" and config.redis_url.startswith("redis://")
        known = {OperatorConfig.env_var(f.name) for f in OperatorConfig.declared()}
        assert set(env) <= known, f"variables the operator does not read: {set(env) - known}"
    in_chart = render(values=values_file("multi-replica"))
    assert in_chart.one("Secret", "scalechat-operator")["stringData"] == {
        "SCALECHAT_OPERATOR_REDIS_URL": "redis://scalechat-redis-0.scalechat-redis.scalechat.svc:6379/1"}


@pytest.mark.parametrize("name, scope", [("multi-replica", {"namespaces": ["scalechat"], "all_namespaces": False}),
                                         ("gateway-api", {"namespaces": None, "all_namespaces": True})])
def test_the_operator_command_line_is_accepted_by_scalechat_operator(render, name, scope):
    import argparse

    from scalechat.loadtest_operator.operator_cli import add_arguments
    args = pod_spec(render(values=values_file(name)).one("Deployment", "scalechat-operator"))["containers"][0]["args"]
    assert args[0] == "operator"
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    parsed = parser.parse_args(args[1:])
    assert (parsed.namespaces, parsed.all_namespaces) == (scope["namespaces"], scope["all_namespaces"])
    assert parsed.standalone and parsed.liveness == "http://0.0.0.0:8080/healthz"


def test_the_operator_alone_brings_the_in_chart_redis_for_its_results(render):
    objects = render(sets=("operator.enabled=true",))
    assert chat_env(objects)["SCALECHAT_BROKER"] == "memory"
    assert objects.one("StatefulSet", "scalechat-redis")
    assert not render(sets=("operator.enabled=true", "operator.redisUrl=redis://results:6379/0")).find("StatefulSet")


def test_the_operator_watching_every_namespace_gets_a_cluster_role(render):
    objects = render(values=values_file("gateway-api"))
    assert objects.one("ClusterRole", "scalechat-operator")
    assert objects.one("ClusterRoleBinding", "scalechat-operator")["roleRef"]["kind"] == "ClusterRole"
    assert "--all-namespaces" in pod_spec(objects.one("Deployment", "scalechat-operator"))["containers"][0]["args"]


# --------------------------------------------------------------------------- NOTES and helm test


@pytest.mark.parametrize("values, expected", [
    ((), ["port-forward service/scalechat 8080:80", "ws://127.0.0.1:8080/ws/lobby", "broker: memory",
          "9000:9000", "helm test scalechat --namespace scalechat"]),
    (values_file("multi-replica"), ["https://chat.example.test/", "wss://chat.example.test/ws/lobby",
                                    "broker: redis (in-chart Redis: scalechat-redis-0.scalechat-redis.scalechat.svc:6379)",
                                    "$uri",
                                    "ServiceMonitor scalechat", "PrometheusRule scalechat", "kubectl --namespace scalechat get loadtests",
                                    "ws://scalechat.scalechat.svc:80/ws/{room}"]),
    (values_file("gateway-api"), ["http://chat.example.test/", "ws://chat.example.test/ws/lobby?room=lobby",
                                  "broker: redis (external Redis)", "Gateway eg"]),
    (values_file("redis-shards"), ["broker: redis (in-chart Redis, 3 shards: "
                                   "scalechat-redis-0.scalechat-redis.scalechat.svc:6379 to "
                                   "scalechat-redis-2.scalechat-redis.scalechat.svc:6379)"]),
], ids=["defaults", "multi-replica", "gateway-api", "redis-shards"])
def test_notes_give_commands_that_match_the_values(helm, tmp_path, values, expected):
    notes = helm.notes_with_api_versions(tmp_path, values=values, api_versions=MONITORING)
    for text in expected:
        assert text in notes, f"{text!r} not in NOTES:\n{notes}"
    assert "{{" not in notes and "<no value>" not in notes


@pytest.mark.parametrize("values", SCENARIOS)
def test_notes_render_on_a_dry_run_install(helm, values):
    notes = helm.notes(values=values)
    assert "helm test scalechat --namespace scalechat" in notes
    assert "{{" not in notes and "<no value>" not in notes


def test_notes_say_when_monitoring_objects_were_skipped(helm):
    assert "does not serve monitoring.coreos.com/v1" in helm.notes()


def _helm_test_pod(render) -> dict:
    (pod,) = [o for o in render() if o["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    return pod


def test_the_helm_test_pod_targets_the_service_port(render):
    pod = _helm_test_pod(render)
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    service = render().one("Service", "scalechat")
    assert env["ROOM_URL"] == f"ws://scalechat:{service['spec']['ports'][0]['port']}/ws/helm-test"


def _run_helm_test_script(pod: dict, room_url: str) -> subprocess.CompletedProcess:
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    env["ROOM_URL"] = room_url
    bin_dir = str(Path(sys.executable).parent)  # where the `scalechat` console script lives
    env["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
    command = container["command"] + container["args"]
    assert command[:2] == ["sh", "-c"], shlex.join(command)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_the_helm_test_script_gets_its_echo_from_a_real_server(render, chat_server):
    result = _run_helm_test_script(_helm_test_pod(render), chat_server.ws_url("helm-test"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\[\d\d:\d\d:\d\d\] helm-test: hello from helm test$", result.stdout, re.M), result.stdout


def test_the_helm_test_script_fails_when_nothing_answers(render):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _run_helm_test_script(_helm_test_pod(render), f"ws://127.0.0.1:{port}/ws/helm-test")
    assert result.returncode != 0
