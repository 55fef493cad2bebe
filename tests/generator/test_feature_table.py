"""generated/FEATURES.md: the support facts of the matrix (optional keys) and their projection."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from generator.diagnostics import MatrixError
from generator.feature_table import features_text
from generator.loader import load_matrix
from generator.model import AITER_RELEASES, SGLANG_RELEASES
from generator.pipeline import load
from generator.plan import plan_combination

BASE = Path(__file__).with_name("base_matrix.yaml")
AMD = Path(__file__).resolve().parents[2] / "schema" / "amd.yaml"


def _with_facts(tmp_path: Path, facts: dict[tuple[str, str], dict[str, object]]) -> Path:
    data = yaml.safe_load(BASE.read_text())
    for (section, name), keys in facts.items():
        data[section][name].update(keys)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _rows(path: Path) -> dict[str, tuple[str, str]]:
    """combination -> (SGLang cell, AITER cell), read from the rendered table."""
    loaded = load(path)
    plans = [plan_combination(loaded.matrix, c) for c in loaded.enumeration.generated]
    text = features_text(plans, loaded.enumeration.excluded, "m.yaml")
    rows = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\| `([^`]+)` \| `[^`]+` \| ([^|]+) \| ([^|]+) \|", line)
        if match:
            rows[match[1]] = (match[2].strip(), match[3].strip())
    return rows


def _facts(sglang: list[str], aiter: str) -> dict[str, object]:
    return {"sglang": sglang, "min_aiter": aiter, "support_source": "test fact"}


def test_a_combination_is_served_where_all_three_entries_are(tmp_path: Path) -> None:
    both, newest = list(SGLANG_RELEASES), SGLANG_RELEASES[-1]
    facts = {
        ("a2a_backends", "none"): _facts(both, AITER_RELEASES[0]),
        ("a2a_backends", "deepep"): _facts([newest], AITER_RELEASES[0]),
        ("dispatch_formats", "standard"): _facts(both, AITER_RELEASES[0]),
        ("dispatch_formats", "deepep_normal"): _facts(both, AITER_RELEASES[1]),
        ("dispatch_formats", "deepep_ll"): _facts([], AITER_RELEASES[0]),
        ("quant_methods", "unquant"): _facts(both, AITER_RELEASES[0]),
        ("quant_methods", "fp8_block"): _facts(both, AITER_RELEASES[2]),
    }
    rows = _rows(_with_facts(tmp_path, facts))
    assert rows["none/unquant/standard"] == (", ".join(both), AITER_RELEASES[0])
    # The backend's releases narrow the row; the newest minimum of the three wins.
    assert rows["deepep/unquant/deepep_normal"] == (newest, AITER_RELEASES[1])
    assert rows["deepep/fp8_block/deepep_normal"] == (newest, AITER_RELEASES[2])
    assert rows["deepep/unquant/deepep_ll"] == ("none", AITER_RELEASES[0])
    # Negative control: the same matrix with the backend serving both releases widens the row.
    facts[("a2a_backends", "deepep")] = _facts(both, AITER_RELEASES[0])
    assert _rows(_with_facts(tmp_path, facts))["deepep/unquant/deepep_normal"][0] == ", ".join(
        both
    )


def test_an_entry_without_facts_makes_its_rows_not_stated(tmp_path: Path) -> None:
    rows = _rows(BASE)
    assert rows and set(rows.values()) == {("not stated", "not stated")}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"sglang": ["0.5.99"]}, "unknown value '0.5.99'"),
        ({"sglang": ["0.5.23", "0.5.23"]}, "listed twice '0.5.23'"),
        ({"sglang": "0.5.23"}, "expected a list of"),
        ({"min_aiter": "v9"}, "unknown value 'v9'"),
        ({"support_source": ""}, "must not be empty"),
    ],
)
def test_malformed_facts_are_diagnostics(
    tmp_path: Path, keys: dict[str, object], message: str
) -> None:
    path = _with_facts(tmp_path, {("quant_methods", "unquant"): keys})
    with pytest.raises(MatrixError) as raised:
        load_matrix(path)
    assert message in str(raised.value)
    assert "quant_methods.unquant" in str(raised.value)


def test_the_amd_matrix_states_the_facts_for_every_entry() -> None:
    matrix = load_matrix(AMD)
    for entry in (*matrix.a2a_backends, *matrix.dispatch_formats, *matrix.quant_methods):
        assert entry.min_aiter and entry.support_source, entry.name
    assert "not stated" not in (AMD.parent.parent / "generated" / "FEATURES.md").read_text()


def test_the_mxfp8_wire_needs_only_its_entries_aiter() -> None:
    """The mxfp8 wire is upscaled for every method, mxfp8 weights included (AITER quantizes
    their bf16 input itself and ignores a1_scale), so no combination on it needs a newer AITER
    than its method: mxfp8's v0.1.16.post1, the others' v0.1.7.post2."""
    rows = _rows(AMD)
    assert rows["mori/mxfp8/mori_normal_mxfp8"][1] == "v0.1.16.post1"
    assert rows["mori/mxfp8/mori_ll_mxfp8"][1] == "v0.1.16.post1"
    assert rows["mori/fp8_block/mori_normal_mxfp8"][1] == "v0.1.7.post2"
    assert rows["mori/mxfp4/mori_ll_mxfp8"][1] == "v0.1.7.post2"
    # Control: EPv2's format itself needs AITER's output keyword, in no release yet.
    assert rows["mori/mxfp8/mori_v2_mxfp8"][1] == "after v0.1.20.post1"
