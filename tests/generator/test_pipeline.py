"""The library call generate(load(path), out, mode), and schema/matrix.schema.json as its output."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from generator import cli, json_schema
from generator.pipeline import Checked, Mode, Options, Rendered, Written, generate, load

REPO = Path(__file__).resolve().parents[2]
MATRIX = REPO / "schema" / "amd.yaml"


def test_the_committed_schema_is_the_generated_one() -> None:
    text = json_schema.SCHEMA_PATH.read_text(encoding="utf-8")
    assert text == json_schema.schema_text() and text.endswith("}\n")
    jsonschema.Draft202012Validator.check_schema(json.loads(text))


def test_a_dry_run_renders_what_a_check_compares_and_touches_nothing(tmp_path: Path) -> None:
    loaded = load(MATRIX)
    schema = tmp_path / "matrix.schema.json"
    options = Options(schema=schema)
    rendered = generate(loaded, tmp_path / "gen", Mode.DRY_RUN, options)
    assert isinstance(rendered, Rendered) and rendered.modules == len(loaded.enumeration.generated)
    checked = generate(loaded, REPO / "generated", Mode.CHECK, options)
    assert isinstance(checked, Checked) and checked.files == rendered.files
    assert not checked.report.changes and not checked.schema_current and not checked.up_to_date
    assert list(tmp_path.iterdir()) == []


def test_write_regenerates_a_hand_edited_schema_and_check_then_passes(tmp_path: Path) -> None:
    schema = tmp_path / "matrix.schema.json"
    schema.write_text(json_schema.schema_text().replace('"minItems": 1', '"minItems": 0'))
    options = Options(typecheck=False, cache_dir=tmp_path / "cache", schema=schema)
    loaded = load(REPO / "tests" / "generator" / "base_matrix.yaml")
    out = tmp_path / "gen"
    stale = generate(loaded, out, Mode.CHECK, options)
    assert isinstance(stale, Checked) and not stale.up_to_date
    written = generate(loaded, out, Mode.WRITE, options)
    assert isinstance(written, Written) and written.schema_written
    assert schema.read_text() == json_schema.schema_text()
    again = generate(loaded, out, Mode.WRITE, options)
    assert isinstance(again, Written) and not again.schema_written and not again.changes
    current = generate(loaded, out, Mode.CHECK, options)
    assert isinstance(current, Checked) and current.up_to_date


def test_check_names_a_stale_schema_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = tmp_path / "matrix.schema.json"
    schema.write_text(json_schema.schema_text().replace("Backend matrix", "Hand-edited matrix"))
    monkeypatch.setattr(cli, "SCHEMA_PATH", schema)
    assert cli.main(["--matrix", str(MATRIX), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{schema} is out of date: it is generated from generator/model.py" in err
    assert f"python -m generator --matrix {MATRIX}" in err
