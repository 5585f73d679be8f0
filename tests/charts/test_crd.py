"""The LoadTest CRD: a valid CustomResourceDefinition, generated from the LoadTest schema,
that accepts the example LoadTests and rejects wrong ones with the field named."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import jsonschema
import pytest
import yaml

from scalechat.loadtest.schema import openapi_schema
from scalechat.loadtest.spec import parse_manifest

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "charts" / "crds" / "loadtest.yaml"
EXAMPLES = sorted((REPO / "services" / "loadgen" / "examples").glob("*.yaml")) + sorted(
    (Path(__file__).parent / "fixtures").glob("loadtest*.yaml"))


def _generator():
    spec = importlib.util.spec_from_file_location("gen_loadtest_crd", REPO / "tools" / "gen_loadtest_crd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _version(crd: dict) -> dict:
    (version,) = crd["spec"]["versions"]
    return version


def test_the_crd_is_a_valid_custom_resource_definition(validate, crd):
    assert validate(crd) == "kubernetes-validate"


def test_the_crd_is_what_the_generator_writes_from_the_loadtest_schema():
    assert CRD_FILE.read_text() == _generator().render(), "run: python tools/gen_loadtest_crd.py"


def test_the_crd_spec_is_the_loadtest_schema_plus_the_operators_own_fields(crd):
    from scalechat.loadtest_operator.jobs import OPERATOR_FIELDS
    spec = _version(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]
    generator = _generator()
    loader = generator.crd_schema(openapi_schema())
    assert {k: v for k, v in spec["properties"].items() if k in loader["properties"]} == loader["properties"]
    assert set(spec["properties"]) - set(loader["properties"]) == set(OPERATOR_FIELDS)
    assert spec["required"] == ["target", "stages"]


def test_the_crd_names_the_loadtest_kind(crd):
    assert crd["metadata"]["name"] == "loadtests.scalechat.io"
    assert crd["spec"]["group"] == "scalechat.io" and crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"], names["shortNames"]) == (
        "LoadTest", "loadtests", "loadtest", ["lt"])
    version = _version(crd)
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_the_printer_columns_show_phase_stage_p99_delivery_and_age(crd):
    columns = {c["name"]: c["jsonPath"] for c in _version(crd)["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Stage"] == ".status.stage"
    assert columns["P99"] == ".status.p99" and columns["Delivery"] == ".status.deliveryRatio"
    assert columns["Age"] == ".metadata.creationTimestamp"
    status = _version(crd)["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for path in columns.values():
        top, field = path.split(".")[1:3]
        if top == "status":
            assert field in status, f"printer column {path} names no status field"
    assert status["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed"]


INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def _structural_problems(node: dict, path: str = "", in_junctor: bool = False) -> list[str]:
    """Kubernetes' structural-schema rules the API server enforces on a CRD (a practical subset)."""
    problems = []
    if node.get("x-kubernetes-int-or-string") and node.get("anyOf") == INT_OR_STRING:
        node = {k: v for k, v in node.items() if k != "anyOf"}  # the one allowed typed junctor
    if "$ref" in node:
        problems.append(f"{path}: $ref is not supported")
    if in_junctor:
        for key in ("type", "description", "default", "additionalProperties", "nullable"):
            if key in node:
                problems.append(f"{path}: {key} inside allOf/anyOf/oneOf/not")
    elif "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields") \
            and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path or '<root>'}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: additionalProperties beside properties")
    if node.get("uniqueItems"):
        problems.append(f"{path}: uniqueItems")
    if node.get("type") == "array" and "items" not in node:
        problems.append(f"{path}: array without items")
    for key, sub in node.get("properties", {}).items():
        problems += _structural_problems(sub, f"{path}.{key}", in_junctor)
    if isinstance(node.get("items"), dict):
        problems += _structural_problems(node["items"], f"{path}[]", in_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        problems += _structural_problems(node["additionalProperties"], f"{path}.*", in_junctor)
    for junctor in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(junctor, [])):
            problems += _structural_problems(sub, f"{path}.{junctor}[{i}]", True)
    if "not" in node:
        problems += _structural_problems(node["not"], f"{path}.not", True)
    return problems


def test_the_crd_schema_is_structural(crd):
    schema = _version(crd)["schema"]["openAPIV3Schema"]
    assert _structural_problems(schema) == []


def test_the_structural_check_catches_what_the_api_server_rejects():
    bad = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": False},
        "b": {"description": "no type"},
        "c": {"type": "integer", "oneOf": [{"type": "integer"}]}}}
    problems = _structural_problems(bad)
    assert any(".a: additionalProperties" in p for p in problems)
    assert any(".b: no type" in p for p in problems)
    assert any("type inside" in p for p in problems)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loadtests_are_valid_for_the_crd_and_the_contract(loadtest_schema, validate, path):
    doc = yaml.safe_load(path.read_text())
    loadtest_schema.validate(doc)
    assert validate(doc) == "validate_loadtest"
    parse_manifest(doc)  # the load generator and the operator accept what the API server accepts


def _wrong(mutate) -> dict:
    doc = yaml.safe_load(EXAMPLES[0].read_text())
    doc = copy.deepcopy(doc)
    mutate(doc)
    return doc


@pytest.mark.parametrize("mutate, field, message", [
    (lambda d: d["spec"]["stages"][0].__setitem__("rate", -1), "spec.stages[0].rate", "minimum"),
    (lambda d: d["spec"]["stages"][0].__setitem__("clientsPerRoom", 0), "spec.stages[0].clientsPerRoom", "minimum"),
    (lambda d: d["spec"]["stages"][0].__setitem__("rooms", 2.5), "spec.stages[0].rooms", "integer"),
    (lambda d: d["spec"]["stages"][0].__setitem__("arrival", "burst"), "spec.stages[0].arrival", "burst"),
    (lambda d: d["spec"].__setitem__("events", "json"), "spec.events", "json"),
    (lambda d: d["spec"].__setitem__("parallelism", 0), "spec.parallelism", "minimum"),
    (lambda d: d["spec"].__setitem__("stages", []), "spec.stages", "minItems"),
    (lambda d: d["spec"].pop("target"), "spec", "target"),
    (lambda d: d["spec"]["stages"][0].__setitem__("rooom", 3), "spec.stages[0]", "rooom"),
    (lambda d: d["spec"]["slo"].__setitem__("deliveryRatio", 1.5), "spec.slo.deliveryRatio", "maximum"),
    (lambda d: d.__setitem__("status", {"phase": "Exploded"}), "status.phase", "Exploded"),
], ids=["negative-rate", "no-clients", "fractional-rooms", "unknown-arrival", "unknown-events",
        "no-shards", "no-stages", "no-target", "typo", "ratio-above-one", "unknown-phase"])
def test_a_wrong_loadtest_fails_with_the_field_named(loadtest_schema, mutate, field, message):
    doc = _wrong(mutate)
    errors = list(loadtest_schema.iter_errors(doc))
    assert errors, "the CRD schema accepted a wrong LoadTest"
    error = jsonschema.exceptions.best_match(errors)
    where = error.json_path.removeprefix("$.")
    assert where == field, f"{where} != {field}: {error.message}"
    assert message in error.message or message in str(error.validator), error.message


def test_helm_installs_the_crd_from_the_crds_folder(render, validate, crd):
    assert not render().find("CustomResourceDefinition"), "crds/ are installed by helm, not templated"
    installed = render(include_crds=True).one("CustomResourceDefinition")
    assert validate(installed) == "kubernetes-validate"
    assert {k: v for k, v in installed.items() if k != "_source"} == crd
