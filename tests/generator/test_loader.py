"""The matrix loader: the real matrix, the malformed corpus, files that cannot be read, and the
JSON Schema kept in step with the loader."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import generator.loader as loader_module
import generator.model as model_module
from generator.combinations import Enumeration, enumerate_combinations, excluded_combinations
from generator.diagnostics import Diagnostic, MatrixError, closest
from generator.loader import (
    FORMAT_RULES,
    MAX_NESTING,
    NAME_PATTERN,
    QUANT_RULES,
    Rule,
    load_matrix,
)
from generator.model import (
    A2ABackend,
    Combination,
    DispatchFormat,
    Exclusion,
    Matrix,
    QuantMethod,
)
from tests.generator.malformed.expected import BASE_MATRIX, CORPUS_DIR, EXPECTED

REPO = Path(__file__).resolve().parents[2]
AMD = REPO / "schema" / "amd.yaml"
SCHEMA = REPO / "schema" / "matrix.schema.json"


def diagnostics_of(path: Path | str) -> tuple[Diagnostic, ...]:
    with pytest.raises(MatrixError) as caught:
        load_matrix(path)
    return caught.value.diagnostics


def raw(path: Path) -> dict[str, Any]:
    """The file as plain data, read without the code under test."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# -- the real matrix ---------------------------------------------------------------------------


def test_amd_matrix_enumerates_every_backend_format_with_every_quant_method() -> None:
    data = raw(AMD)
    formats_per_backend = {name: b["formats"] for name, b in data["a2a_backends"].items()}
    assert [len(f) for f in formats_per_backend.values()] == [1, 3, 2, 2, 14]
    assert len(data["quant_methods"]) == 11
    # fp8_tensor's per-tensor amax would include the masked slabs' garbage rows.
    excluded = {("fp8_tensor", "deepep_ll"), ("fp8_tensor", "deepep_ll_fp8")}
    assert {(e["quant"], e["dispatch"]) for e in data["exclusions"]} == excluded
    assert {e["a2a"] for e in data["exclusions"]} == {"*"}
    every = sorted(
        (a2a, quant, dispatch)
        for a2a, formats in formats_per_backend.items()
        for dispatch in formats
        for quant in data["quant_methods"]
    )
    expected = [key for key in every if key[1:] not in excluded]
    assert len(every) == 242 and len(expected) == 236

    matrix = load_matrix(AMD)
    combinations = enumerate_combinations(matrix)
    assert [c.key for c in combinations] == expected
    assert sorted(c.key for c, _ in excluded_combinations(matrix)) == [
        key for key in every if key[1:] in excluded
    ]


def test_amd_matrix_model_carries_every_property_of_the_file() -> None:
    data = raw(AMD)
    matrix = load_matrix(AMD)
    assert matrix.path == str(AMD)
    sections: list[tuple[str, tuple[Any, ...]]] = [
        ("a2a_backends", matrix.a2a_backends),
        ("dispatch_formats", matrix.dispatch_formats),
        ("quant_methods", matrix.quant_methods),
    ]
    for section, entries in sections:
        assert [e.name for e in entries] == list(data[section])  # file order kept
        for entry in entries:
            for key, value in data[section][entry.name].items():
                got = getattr(entry, key)
                got = got.value if isinstance(got, Enum) else got
                got = list(got) if isinstance(got, tuple) else got
                assert got == value, (section, entry.name, key)


def test_locations_point_at_the_names() -> None:
    matrix = load_matrix(BASE_MATRIX)
    lines = BASE_MATRIX.read_text().splitlines()
    entries: list[A2ABackend | DispatchFormat | QuantMethod] = [
        *matrix.a2a_backends,
        *matrix.dispatch_formats,
        *matrix.quant_methods,
    ]
    for entry in entries:
        line = lines[entry.location.line - 1]
        assert line[entry.location.column - 1 :] == f"{entry.name}:"
    (exclusion,) = matrix.exclusions
    assert lines[exclusion.location.line - 1][exclusion.location.column - 1 :] == "a2a: deepep"


# -- the malformed corpus ----------------------------------------------------------------------


def test_base_of_the_corpus_is_valid() -> None:
    # The control for every corpus case: the unedited base has no diagnostic at all.
    matrix = load_matrix(BASE_MATRIX)
    assert [c.slash_name for c in enumerate_combinations(matrix)] == [
        "deepep/fp8_block/deepep_normal",
        "deepep/unquant/deepep_ll",
        "deepep/unquant/deepep_normal",
        "none/fp8_block/standard",
        "none/unquant/standard",
    ]
    ((combination, exclusion),) = excluded_combinations(matrix)
    assert combination == Combination("deepep", "fp8_block", "deepep_ll")
    assert exclusion.reason == "An example exclusion."


def test_corpus_is_large_and_every_file_has_expectations() -> None:
    assert len(EXPECTED) >= 30
    assert sorted(p.name for p in CORPUS_DIR.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_matrix_reports_every_problem_at_its_position(name: str) -> None:
    path = CORPUS_DIR / name
    diagnostics = diagnostics_of(path)
    got = [(d.line, d.column) for d in diagnostics]
    assert got == [(line, column) for line, column, _ in EXPECTED[name]], diagnostics
    for diagnostic, (line, column, message) in zip(diagnostics, EXPECTED[name], strict=True):
        assert message in diagnostic.message
        assert diagnostic.path == str(path)
        assert str(diagnostic) == f"{path}:{line}:{column}: error: {diagnostic.message}"


def test_matrix_error_lists_every_diagnostic_in_its_text() -> None:
    with pytest.raises(MatrixError) as caught:
        load_matrix(CORPUS_DIR / "many_problems.yaml")
    lines = str(caught.value).splitlines()
    assert lines == [str(d) for d in caught.value.diagnostics]
    assert len(lines) == 4


def test_a_path_object_and_a_string_are_reported_the_same_way() -> None:
    by_path = diagnostics_of(CORPUS_DIR / "unknown_layout.yaml")
    by_text = diagnostics_of(str(CORPUS_DIR / "unknown_layout.yaml"))
    assert by_path == by_text


def test_every_yaml_boolean_spelling_of_true_and_false_is_accepted(tmp_path: Path) -> None:
    text = BASE_MATRIX.read_text()
    path = tmp_path / "m.yaml"
    path.write_text(text.replace(": false\n", ": False\n").replace(": true\n", ": TRUE\n"))
    matrix = load_matrix(path)
    assert matrix.quant_method("fp8_block").has_weight_scales is True
    assert matrix.quant_method("unquant").has_weight_scales is False


def test_anchors_and_aliases_are_plain_yaml_and_load(tmp_path: Path) -> None:
    text = BASE_MATRIX.read_text().replace(
        "formats: [deepep_normal, deepep_ll]", "formats: &deepep [deepep_normal, deepep_ll]"
    )
    nixl = "  nixl:\n    description: x\n    formats: *deepep\n"
    text = text.replace("dispatch_formats:\n", nixl + "dispatch_formats:\n")
    path = tmp_path / "m.yaml"
    path.write_text(text)
    matrix = load_matrix(path)
    assert matrix.a2a_backend("nixl").formats == ("deepep_normal", "deepep_ll")


# -- files that cannot be read -----------------------------------------------------------------


def test_missing_file_is_reported_at_line_one(tmp_path: Path) -> None:
    (diagnostic,) = diagnostics_of(tmp_path / "absent.yaml")
    assert (diagnostic.line, diagnostic.column) == (1, 1)
    assert "cannot read the matrix: No such file or directory" in diagnostic.message


def test_directory_is_reported_at_line_one(tmp_path: Path) -> None:
    (diagnostic,) = diagnostics_of(tmp_path)
    assert (diagnostic.line, diagnostic.column) == (1, 1)
    assert "it is a directory, not a file" in diagnostic.message


def test_unreadable_file_is_reported_at_line_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(BASE_MATRIX.read_text())

    def refuse(*args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(path))

    # Tests often run as root, where chmod cannot make a file unreadable: refuse the open instead.
    monkeypatch.setattr(loader_module, "open", refuse, raising=False)
    (diagnostic,) = diagnostics_of(path)
    assert (diagnostic.line, diagnostic.column) == (1, 1)
    assert "cannot read the matrix: Permission denied" in diagnostic.message


@pytest.mark.parametrize("libyaml", [True, False], ids=["libyaml", "pure-python"])
@pytest.mark.parametrize("depth", [65, 5000])
def test_nesting_too_deep_is_a_diagnostic_at_the_first_level_too_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, libyaml: bool, depth: int
) -> None:
    # The same refusal, at the same place, whether libyaml reads 5000 levels (some builds do),
    # refuses them, or is not there and the recursive pure-Python composer would overflow.
    if not libyaml:
        monkeypatch.delattr(yaml, "CSafeLoader", raising=False)
    path = tmp_path / "deep.yaml"
    path.write_text("[" * depth + "]" * depth + "\n")
    (diagnostic,) = diagnostics_of(path)
    assert (diagnostic.line, diagnostic.column) == (1, MAX_NESTING + 1)
    assert f"nested too deeply: more than {MAX_NESTING}" in diagnostic.message


def test_nesting_at_the_limit_reaches_the_matrix_checks(tmp_path: Path) -> None:
    # Negative control: MAX_NESTING levels are read; the matrix is then refused for what it is.
    path = tmp_path / "deep.yaml"
    path.write_text("[" * MAX_NESTING + "]" * MAX_NESTING + "\n")
    (diagnostic,) = diagnostics_of(path)
    assert "the matrix must be a mapping" in diagnostic.message


def test_an_internal_failure_still_leaves_as_matrix_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(matrix: Matrix) -> Enumeration:
        raise KeyError("bug")

    monkeypatch.setattr(loader_module, "enumerate_matrix", broken)
    (diagnostic,) = diagnostics_of(BASE_MATRIX)
    assert diagnostic.message == "internal error while loading the matrix: KeyError: 'bug'"


# -- diagnostics -------------------------------------------------------------------------------


def test_diagnostic_text_and_order() -> None:
    late = Diagnostic("m.yaml", 9, 2, "b")
    early = Diagnostic("m.yaml", 3, 7, "a")
    assert str(early) == "m.yaml:3:7: error: a"
    error = MatrixError([late, early, late])
    assert error.diagnostics == (early, late)


def test_closest_finds_a_close_name_and_nothing_for_a_far_one() -> None:
    formats = ("standard", "deepep_normal", "deepep_ll")
    assert closest("deepep_lll", formats) == "deepep_ll"
    assert closest("standrd", formats) == "standard"
    assert closest("mooncake", formats) is None


# -- the generator stays free of torch ---------------------------------------------------------


def test_loading_a_matrix_imports_no_torch() -> None:
    code = (
        "import sys, generator.loader, generator.combinations;"
        f"generator.loader.load_matrix({str(AMD)!r});"
        "sys.exit('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False)
    assert result.returncode == 0


# -- the JSON Schema ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_amd_yaml_points_editors_at_the_schema() -> None:
    assert AMD.read_text().splitlines()[0] == "# yaml-language-server: $schema=./matrix.schema.json"


@pytest.mark.parametrize("path", [AMD, BASE_MATRIX], ids=["amd", "base"])
def test_valid_matrices_satisfy_the_schema(
    validator: jsonschema.Draft202012Validator, path: Path
) -> None:
    assert [e.message for e in validator.iter_errors(raw(path))] == []


# Corpus files whose problem a schema can see (not YAML syntax, cross-references or enumeration).
SCHEMA_REJECTS = (
    "unknown_top_key.yaml",
    "missing_top_key.yaml",
    "unknown_backend_key.yaml",
    "unknown_key_no_match.yaml",
    "missing_property.yaml",
    "uppercase_name.yaml",
    "double_underscore_name.yaml",
    "null_description.yaml",
    "quoted_bool.yaml",
    "unquoted_no.yaml",
    "list_for_mapping.yaml",
    "exclusions_mapping.yaml",
    "exclusion_not_mapping.yaml",
    "unknown_layout.yaml",
    "unknown_dispatch_output.yaml",
    "unknown_weight_dtype.yaml",
    "format_listed_twice.yaml",
    "exclusion_missing_reason.yaml",
    "exclusion_empty_reason.yaml",
    "masked_slabs_global_ids.yaml",
    "local_ids_without_sink.yaml",
    "truncate_without_total_recv.yaml",
    "combine_input_mismatch.yaml",
    "quant_rule.yaml",
    "empty_backends.yaml",
    "empty_quant_methods.yaml",
    "empty_formats_list.yaml",
    "list_document.yaml",
    "scalar_document.yaml",
)


@pytest.mark.parametrize("name", SCHEMA_REJECTS)
def test_schema_rejects_malformed_matrices(
    validator: jsonschema.Draft202012Validator, name: str
) -> None:
    assert not validator.is_valid(yaml.safe_load((CORPUS_DIR / name).read_text()))


MODEL_SECTIONS = {
    "a2a_backend": A2ABackend,
    "dispatch_format": DispatchFormat,
    "quant_method": QuantMethod,
    "exclusion": Exclusion,
}


@pytest.mark.parametrize("definition", sorted(MODEL_SECTIONS))
def test_schema_keys_and_enums_match_the_model(
    validator: jsonschema.Draft202012Validator, definition: str
) -> None:
    schema = validator.schema["$defs"][definition]
    fields = dataclasses.fields(MODEL_SECTIONS[definition])
    # The support facts of generated/FEATURES.md may be left out, and come after the required keys
    # (each in the order the model declares them); every other key is required.
    optional = ["sglang", "min_aiter", "support_source"] if definition != "exclusion" else []
    declared = [f.name for f in fields if f.name not in ("name", "location")]
    keys = [key for key in declared if key not in optional] + optional
    assert schema["required"] == [key for key in keys if key not in optional]
    assert list(schema["properties"]) == keys
    assert schema["additionalProperties"] is False
    for field in fields:
        enum = getattr(model_module, str(field.type), None)
        if isinstance(enum, type) and issubclass(enum, Enum):
            assert schema["properties"][field.name]["enum"] == [m.value for m in enum]


def test_schema_name_pattern_is_the_loaders(validator: jsonschema.Draft202012Validator) -> None:
    defs = validator.schema["$defs"]
    assert defs["name"]["pattern"] == NAME_PATTERN
    names = jsonschema.Draft202012Validator({"$defs": defs, "$ref": "#/$defs/name"})
    for good in ("none", "fp8_block", "mori_ll_fp4", "a2"):
        assert re.match(NAME_PATTERN, good) and names.is_valid(good)
    for bad in ("Deepep", "fp8__block", "fp8_", "_fp8", "8bit", "mori-ll", ""):
        assert not re.match(NAME_PATTERN, bad) and not names.is_valid(bad)


def _break_rule(rule: Rule) -> tuple[dict[str, Any], str, str]:
    """amd.yaml with one entry edited to break `rule`: its key keeps a value the rule is about
    and `other` gets a value the rule does not allow."""
    data = copy.deepcopy(raw(AMD))
    section = "dispatch_formats" if rule in FORMAT_RULES else "quant_methods"
    schema = json.loads(SCHEMA.read_text())
    definition = "dispatch_format" if section == "dispatch_formats" else "quant_method"
    other_schema = schema["$defs"][definition]["properties"][rule.other]
    choices = other_schema.get("enum", [True, False])
    as_text = {True: "true", False: "false"}
    for name, entry in data[section].items():
        value = entry[rule.key]
        if as_text.get(value, value) in rule.values:
            bad = next(c for c in choices if as_text.get(c, c) not in rule.allowed)
            entry[rule.other] = bad
            return data, section, name
    raise AssertionError(f"amd.yaml has no entry with {rule.key} in {rule.values}")


@pytest.mark.parametrize("rule", FORMAT_RULES + QUANT_RULES, ids=lambda r: f"{r.key}-{r.other}")
def test_each_consistency_rule_is_enforced_by_loader_and_schema(
    validator: jsonschema.Draft202012Validator, rule: Rule, tmp_path: Path
) -> None:
    data, section, name = _break_rule(rule)
    assert not validator.is_valid(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    messages = [d.message for d in diagnostics_of(path)]
    assert any(m.startswith(f"{section}.{name}.{rule.key}: ") and rule.why in m for m in messages)
