"""The LoadTest schema: the validator fills defaults, the OpenAPI export is structural."""

from __future__ import annotations

from scalechat.loadtest.schema import SPEC_SCHEMA, openapi_schema, validate


def test_openapi_schema_is_structural_with_required_enums_and_minimums():
    schema = openapi_schema()
    stage = schema["properties"]["stages"]["items"]
    assert schema["required"] == ["target", "stages"]
    assert stage["required"] == ["clientsPerRoom", "rate", "durationSeconds"]
    assert stage["properties"]["arrival"]["enum"] == ["constant", "poisson"]
    assert stage["properties"]["rate"] == {**stage["properties"]["rate"], "minimum": 0, "exclusiveMinimum": True}
    assert stage["properties"]["clientsPerRoom"]["minimum"] == 1
    size = stage["properties"]["size"]
    assert size["x-kubernetes-preserve-unknown-fields"] is True and "oneOf" not in size

    def walk(node, path="spec"):  # structural: every field typed (or explicitly preserved)
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for key, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{key}")
        if "items" in node:
            walk(node["items"], f"{path}[]")

    walk(schema)
    schema["properties"].clear()
    assert SPEC_SCHEMA["properties"], "openapi_schema() must return a copy"


def test_validate_fills_nested_defaults():
    out = validate({"clientsPerRoom": 1, "rate": 1, "durationSeconds": 1}, SPEC_SCHEMA["properties"]["stages"]["items"], "s")
    assert out["roomDistribution"] == {"type": "uniform", "exponent": 1.0}
