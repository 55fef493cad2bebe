"""The plan-template contract: every registered step has its fragment, every fragment a step."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from generator import render
from generator.combinations import enumerate_combinations
from generator.fragments import STEPS
from generator.loader import load_matrix
from generator.plan import plan_combination

AMD = Path(__file__).resolve().parents[2] / "schema" / "amd.yaml"


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "templates"
    shutil.copytree(render.TEMPLATES_DIR, copy)
    return copy


def test_the_templates_match_the_registry() -> None:
    # Negative control for the two tests below: the committed templates pass.
    render.check_fragments(render.TEMPLATES_DIR)


def test_a_missing_fragment_names_its_step_and_decision(tmp_path: Path) -> None:
    templates = _copy(tmp_path)
    (templates / "fragments" / "load" / "mask_sink.py.j2").unlink()
    with pytest.raises(render.TemplateProblem) as raised:
        render.check_fragments(templates)
    assert str(raised.value) == (
        "templates/fragments/load/mask_sink.py.j2 is missing: the load step 'mask_sink' "
        "(expert mask) is registered in generator/fragments.py"
    )


def test_an_unused_fragment_names_the_file_and_the_registry(tmp_path: Path) -> None:
    templates = _copy(tmp_path)
    (templates / "fragments" / "call" / "mask_sink.py.j2").write_text("        pass\n")
    with pytest.raises(render.TemplateProblem) as raised:
        render.check_fragments(templates)
    assert str(raised.value) == (
        "templates/fragments/call/mask_sink.py.j2 is unused: generator/fragments.py registers "
        "no call step 'mask_sink'"
    )


def test_rendering_checks_the_registry_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    templates = _copy(tmp_path)
    (templates / "fragments" / "check" / "routing.py.j2").unlink()
    monkeypatch.setattr(render, "TEMPLATES_DIR", templates)
    with pytest.raises(render.TemplateProblem, match=r"check step 'routing' \(every runner\)"):
        render.render_all([], [], render.Inputs("m", b""))


def test_every_step_a_plan_chooses_is_registered_and_every_registered_step_is_chosen() -> None:
    matrix = load_matrix(AMD)
    chosen: dict[str, set[str]] = {kind: set() for kind in STEPS}
    for combination in enumerate_combinations(matrix):
        plan = plan_combination(matrix, combination)
        chosen["load"].update(plan.load_fragments)
        chosen["call"].update(plan.call_fragments)
        chosen["check"].update(plan.checks.fragments)
    assert chosen == {kind: set(steps) for kind, steps in STEPS.items()}
