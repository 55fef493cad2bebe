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


def _headers(matrix: Path, text: str) -> dict[str, str]:
    """Each rendered file's `# inputs sha256:` line, for `matrix` holding `text`."""
    matrix.write_text(text, encoding="utf-8")
    rendered = generate(load(matrix), matrix.parent / "gen", Mode.DRY_RUN)
    assert isinstance(rendered, Rendered)
    return {
        name: next(line for line in body.splitlines() if line.startswith("# inputs sha256: "))
        for name, body in rendered.files.items()
        if name.endswith(".py")
    }


def test_a_new_matrix_entry_leaves_the_other_modules_headers_as_they_are(tmp_path: Path) -> None:
    """A runner's hash covers what it is rendered from, not the whole matrix: adding a format
    (and listing it under a backend) changes only the dispatch table's header among the files
    that were there; changing a fact a module follows changes that module's header."""
    base = (REPO / "tests" / "generator" / "base_matrix.yaml").read_text(encoding="utf-8")
    matrix = tmp_path / "matrix.yaml"
    before = _headers(matrix, base)
    copied = base[base.index("  deepep_normal:\n") : base.index("  deepep_ll:\n")]
    added = base.replace(
        "formats: [deepep_normal, deepep_ll]", "formats: [deepep_normal, deepep_ll, deepep_copy]"
    ).replace("  deepep_ll:\n", copied.replace("deepep_normal:", "deepep_copy:") + "  deepep_ll:\n")
    after = _headers(matrix, added)
    new = sorted(set(after) - set(before))
    assert new == ["deepep__fp8_block__deepep_copy.py", "deepep__unquant__deepep_copy.py"]
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == ["__init__.py"]
    # Control: a fact deepep_normal's modules follow (here their description) changes them.
    described = base.replace("Local ids with -1.", "Local ids, -1 elsewhere.")
    again = _headers(matrix, described)
    changed = sorted(name for name in before if before[name] != again[name])
    assert changed == [
        "__init__.py",
        "deepep__fp8_block__deepep_normal.py",
        "deepep__unquant__deepep_normal.py",
    ]
