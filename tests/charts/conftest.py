"""Fixtures for the chart tests: real helm, offline validation of every rendered object.

``helm`` is the real binary (v4) fetched by ``tools/fetch_k8s_tools.py`` into
``build/tools``; its cache, config and data folders live under ``build/`` and
KUBECONFIG points nowhere, so no test can touch a cluster.

``validate_object`` is the one gate every rendered object passes:

* kinds Kubernetes 1.33 defines: ``kubernetes-validate`` with strict schemas
  (unknown fields are errors);
* ServiceMonitor, PrometheusRule: the prometheus-operator pydantic models
  (cloudcoil), plus a round-trip that reports fields the models do not know;
* HTTPRoute, BackendTrafficPolicy: hand-written strict subset schemas
  (``schemas/``) of the upstream APIs;
* LoadTest: the CRD's own openAPIV3Schema;
* any other kind: a failure, never a silent pass.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts"
BUILD = REPO / "build"
SCHEMAS = Path(__file__).parent / "schemas"
KUBE_VERSION = "1.33.0"
MONITORING_API = "monitoring.coreos.com/v1"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch_k8s_tools = _load_module("fetch_k8s_tools", REPO / "tools" / "fetch_k8s_tools.py")


# --------------------------------------------------------------------------- helm


class HelmError(AssertionError):
    def __init__(self, args: list[str], result: subprocess.CompletedProcess):
        super().__init__(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
        self.result = result
        self.stderr = result.stderr


@dataclass(eq=False)  # hashed by identity: the render cache's key
class Helm:
    binary: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.binary), *args], capture_output=True, text=True,
                                env=self.env, cwd=REPO, timeout=120)
        if check and result.returncode != 0:
            raise HelmError(list(args), result)
        return result

    def template_args(self, values: tuple[str, ...] = (), sets: tuple[str, ...] = (),
                      set_json: tuple[str, ...] = (), api_versions: tuple[str, ...] = (),
                      namespace: str = "scalechat", release: str = "scalechat",
                      chart: Path = CHART, include_crds: bool = False) -> list[str]:
        """Arguments of `helm template`; set_json for numbers --set would turn into strings (25.5)."""
        args = ["template", release, str(chart), "--namespace", namespace, "--kube-version", KUBE_VERSION]
        for v in values:
            args += ["--values", v]
        for s in sets:
            args += ["--set", s]
        for s in set_json:
            args += ["--set-json", s]
        for a in api_versions:
            args += ["--api-versions", a]
        if include_crds:
            args.append("--include-crds")
        return args

    def template_text(self, **kwargs: Any) -> str:
        return self.run(*self.template_args(**kwargs)).stdout

    def template(self, **kwargs: Any) -> Objects:
        """Rendered objects (empty documents dropped), each with its source template under '_source'."""
        return _render_cached(self, _freeze(kwargs))

    def notes(self, values: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> str:
        """NOTES.txt as `helm install` prints it, from a client-only dry run (no cluster)."""
        args = ["install", "scalechat", str(CHART), "--namespace", "scalechat", "--dry-run=client",
                "--output", "json"]
        for v in values:
            args += ["--values", v]
        for s in sets:
            args += ["--set", s]
        return json.loads(self.run(*args).stdout)["info"]["notes"]

    def notes_with_api_versions(self, tmp: Path, values: tuple[str, ...] = (),
                                api_versions: tuple[str, ...] = ()) -> str:
        """NOTES.txt rendered by `helm template` with capabilities, which `helm install` cannot fake.

        A copy of the chart renders NOTES.txt through `tpl` into a ConfigMap, with the
        same values and Capabilities as the rest of the templates.
        """
        copy = tmp / "chart"
        shutil.copytree(CHART, copy)
        (copy / "notes.tpl").write_text((CHART / "templates" / "NOTES.txt").read_text())
        (copy / "templates" / "zz-notes-configmap.yaml").write_text(
            'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rendered-notes\ndata:\n'
            '  notes: {{ tpl (.Files.Get "notes.tpl") . | toJson }}\n')
        text = self.run(*self.template_args(values=values, api_versions=api_versions, chart=copy)).stdout
        return split_manifest(text).one("ConfigMap", "rendered-notes")["data"]["notes"]

    def fails(self, **kwargs: Any) -> str:
        """Render expecting failure; return helm's error output."""
        result = self.run(*self.template_args(**kwargs), check=False)
        assert result.returncode != 0, f"helm template succeeded but should have failed: {kwargs}"
        return result.stderr


def _freeze(kwargs: dict[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in kwargs.items()))


@functools.cache
def _render_cached(helm: Helm, frozen: tuple) -> Objects:
    text = helm.template_text(**dict(frozen))
    return split_manifest(text)


class Objects(list):
    """Rendered objects; ``find``/``one`` pick them by kind and name."""

    def find(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        return [o for o in self if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = self.find(kind, name)
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}: {self.kinds()}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self)


def split_manifest(text: str) -> Objects:
    objects = Objects()
    for chunk in text.split("\n---"):
        source = next((line.split("Source: ", 1)[1] for line in chunk.splitlines()
                       if line.startswith("# Source: ")), "")
        doc = yaml.safe_load(chunk)
        if doc:
            doc["_source"] = source
            objects.append(doc)
    return objects


@pytest.fixture(scope="session")
def k8s_tools() -> Path:
    """Folder with real helm and kubectl binaries (downloaded once into build/tools)."""
    return fetch_k8s_tools.fetch(BUILD / "tools")


@pytest.fixture(scope="session")
def helm(k8s_tools: Path) -> Helm:
    home = BUILD / "helm"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-cluster-kubeconfig"),  # never a real cluster
    }
    for key in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return Helm(k8s_tools / "helm", env)


# --------------------------------------------------------------------------- validation


class NoValidator(AssertionError):
    """A rendered kind that nothing here can validate: a test failure by design."""


def _strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def validate_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(_strip(doc), KUBE_VERSION, strict=True)


def _unknown_paths(given: Any, known: Any, path: str = "") -> list[str]:
    """Keys present in ``given`` but dropped by the model round-trip (fields the model does not know)."""
    if isinstance(given, dict) and isinstance(known, dict):
        out = []
        for key, value in given.items():
            if key not in known:
                out.append(f"{path}.{key}".lstrip("."))
            else:
                out += _unknown_paths(value, known[key], f"{path}.{key}")
        return out
    if isinstance(given, list) and isinstance(known, list):
        return [p for i, (g, k) in enumerate(zip(given, known)) for p in _unknown_paths(g, k, f"{path}[{i}]")]
    return []


def _validate_prometheus_operator(doc: dict[str, Any]) -> None:
    from cloudcoil.models.prometheus_operator import v1
    model = {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}[doc["kind"]]
    obj = _strip(doc)
    dumped = model.model_validate(obj).model_dump(by_alias=True, exclude_unset=True, mode="json")
    unknown = _unknown_paths(obj, dumped)
    if unknown:
        raise AssertionError(f"{doc['kind']} has fields its API does not define: {unknown}")


@functools.cache
def subset_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def _validate_subset(name: str):
    def validate(doc: dict[str, Any]) -> None:
        jsonschema.Draft7Validator(subset_schema(name)).validate(_strip(doc))
    return validate


@functools.cache
def loadtest_crd() -> dict[str, Any]:
    return yaml.safe_load((CHART / "crds" / "loadtest.yaml").read_text())


def strict_crd_schema(node: Any) -> Any:
    """The CRD's openAPIV3Schema as the API server applies it with strict field validation.

    Kubernetes rejects unknown fields (kubectl's default --validate=strict) where
    the schema lists properties, unless x-kubernetes-preserve-unknown-fields;
    JSON Schema says that with additionalProperties: false.
    """
    if isinstance(node, dict):
        out = {k: strict_crd_schema(v) for k, v in node.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(node, list):
        return [strict_crd_schema(v) for v in node]
    return node


def loadtest_validator() -> jsonschema.Draft4Validator:
    schema = loadtest_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # OpenAPI 3.0 (exclusiveMinimum as a boolean) is JSON Schema draft 4's dialect.
    return jsonschema.Draft4Validator(strict_crd_schema(schema))


def validate_loadtest(doc: dict[str, Any]) -> None:
    obj = _strip(doc)
    assert obj.get("apiVersion") == "scalechat.io/v1alpha1", obj.get("apiVersion")
    loadtest_validator().validate(obj)


OTHER_VALIDATORS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _validate_prometheus_operator,
    ("monitoring.coreos.com/v1", "PrometheusRule"): _validate_prometheus_operator,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _validate_subset("httproute"),
    ("gateway.envoyproxy.io/v1alpha1", "BackendTrafficPolicy"): _validate_subset("backendtrafficpolicy"),
    ("scalechat.io/v1alpha1", "LoadTest"): validate_loadtest,
}


def validate_object(doc: dict[str, Any]) -> str:
    """Validate one object; return the validator's name. Raises on any problem."""
    try:
        validate_kubernetes(doc)
        return "kubernetes-validate"
    except kubernetes_validate.SchemaNotFoundError:
        pass
    validator = OTHER_VALIDATORS.get((doc.get("apiVersion"), doc.get("kind")))
    if validator is None:
        raise NoValidator(f"no validator for {doc.get('apiVersion')} {doc.get('kind')} "
                          f"({doc.get('_source')}): add one to OTHER_VALIDATORS")
    validator(doc)
    return validator.__name__


@pytest.fixture(scope="session")
def render(helm: Helm):
    """render(values=(...), sets=(...), api_versions=(...)) -> Objects (cached per arguments)."""
    return helm.template


@pytest.fixture(scope="session")
def validate():
    """validate(obj) -> name of the validator that passed it; raises on any problem."""
    return validate_object


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    return loadtest_crd()


@pytest.fixture(scope="session")
def loadtest_schema() -> jsonschema.Draft4Validator:
    return loadtest_validator()
