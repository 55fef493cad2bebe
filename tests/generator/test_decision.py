"""The plan as projections of its decision records, and the contract its records are held to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from generator.combinations import enumerate_combinations
from generator.decision import Decision, Import, KernelArgument, Plan, import_lines
from generator.explain import explain_plan
from generator.fragments import ALWAYS, STEPS, TemplateProblem
from generator.loader import load_matrix
from generator.model import Combination, Matrix
from generator.plan import plan_combination

AMD = Path(__file__).resolve().parents[2] / "schema" / "amd.yaml"
STANDARD = Combination("none", "unquant", "standard")


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return load_matrix(AMD)


def _replan(plan: Plan, *records: Decision) -> Plan:
    """The plan of the same combination made of other records."""
    return Plan(plan.combination, plan.module_name, plan.a2a, plan.dispatch, plan.quant, records)


def _frame(plan: Plan) -> Decision:
    return next(record for record in plan.records if record.topic == ALWAYS)


def test_explain_lists_exactly_the_explained_records(matrix: Matrix) -> None:
    plan = plan_combination(matrix, STANDARD)
    text = explain_plan(plan)
    for record in plan.records:
        line = f"  {record.topic}: {record.choice}\n"
        assert (line in text) is record.explained, record.topic
    # Negative control: the frame is a record, but no decision worth a line.
    assert not _frame(plan).explained


def test_fragments_follow_the_registry_not_the_record_order(matrix: Matrix) -> None:
    plan = plan_combination(matrix, STANDARD)
    reversed_plan = _replan(plan, *reversed(plan.records))
    assert reversed_plan.load_fragments == plan.load_fragments
    assert reversed_plan.bound_kernel_arguments == plan.bound_kernel_arguments
    # Negative control: the explained decisions do keep the records' order.
    assert reversed_plan.decisions == tuple(reversed(plan.decisions))
    load_order = list(STEPS["load"])
    assert list(plan.load_fragments) == sorted(plan.load_fragments, key=load_order.index)


def test_every_fragment_of_every_plan_comes_from_the_record_its_registry_names(
    matrix: Matrix,
) -> None:
    for combination in enumerate_combinations(matrix):
        plan = plan_combination(matrix, combination)
        for kind, chosen in (("load", plan.load_fragments), ("call", plan.call_fragments)):
            owners = {
                name: record.topic for record in plan.records for name in record.fragments(kind)
            }
            assert sorted(owners) == sorted(chosen)
            assert all(STEPS[kind][name] == topic for name, topic in owners.items())


def test_a_record_choosing_an_unregistered_fragment_is_an_error_naming_both(
    matrix: Matrix,
) -> None:
    plan = plan_combination(matrix, STANDARD)
    stray = Decision("expert mask", "x", "y", call=("mask_sink",))
    with pytest.raises(TemplateProblem) as raised:
        _replan(plan, *plan.records, stray)
    assert str(raised.value) == (
        "none/unquant/standard: the record 'expert mask' chose the call step 'mask_sink', "
        "which generator/fragments.py does not register"
    )


def test_a_fragment_registered_under_another_topic_or_chosen_twice_is_an_error(
    matrix: Matrix,
) -> None:
    plan = plan_combination(matrix, STANDARD)
    with pytest.raises(TemplateProblem, match=r"registers under 'expert mask'"):
        _replan(plan, *plan.records, Decision("wire", "x", "y", load=("mask_global",)))
    with pytest.raises(TemplateProblem, match=r"the load step 'bind_kernel' is chosen twice"):
        _replan(plan, *plan.records, _frame(plan))
    # Negative control: the same records once each make a plan.
    assert _replan(plan, *plan.records).load_fragments == plan.load_fragments


def test_kernel_keywords_and_values_are_checked(matrix: Matrix) -> None:
    plan = plan_combination(matrix, STANDARD)
    unknown = Decision("wire", "x", "y", kernel_arguments=(KernelArgument("a3_scale", "s"),))
    with pytest.raises(TemplateProblem, match=r"'a3_scale' is not in"):
        _replan(plan, *plan.records, unknown)
    bound_again = Decision(
        "wire", "x", "y", kernel_arguments=(KernelArgument("expert_mask", "self._mask"),)
    )
    with pytest.raises(TemplateProblem, match=r"'expert_mask' is passed twice"):
        _replan(plan, *plan.records, bound_again)
    twice = Decision("wire", "x", "y", values={"upscaler": "dequantize"})
    with pytest.raises(TemplateProblem, match=r"'wire' and 'wire' both contribute 'upscaler'"):
        _replan(plan, *plan.records, twice)


def test_a_template_reads_a_value_by_name(matrix: Matrix) -> None:
    plan = plan_combination(matrix, STANDARD)
    assert plan["combine_comment"] == "Ranks' outputs are summed by the all-reduce after the layer."
    assert plan.checks["id_low"] == "0"
    # Negative control: no record contributes this name.
    with pytest.raises(KeyError):
        plan["nonexistent"]


def test_import_lines_are_laid_out_as_isort_keeps_them() -> None:
    imports = [
        Import("moe_runtime.types", "MoriEPNormalDispatchOutput"),
        Import("typing", "cast"),
        Import("torch"),
        Import("functools"),
        Import("moe_runtime", "loadtime"),
        Import("typing", "Final"),
        *(Import("moe_runtime.types", n) for n in ("MoeLayerConfig", "MoriEPNormalCombineInput")),
        *(Import("moe_runtime.types", n) for n in ("ExpertWeights", "FusedMoeKernel")),
        Import("moe_runtime", "checks"),
    ]
    assert import_lines(imports) == (
        "import functools",
        "from typing import Final, cast",
        "",
        "import torch",
        "",
        "from moe_runtime import checks, loadtime",
        "from moe_runtime.types import (",
        "    ExpertWeights,",
        "    FusedMoeKernel,",
        "    MoeLayerConfig,",
        "    MoriEPNormalCombineInput,",
        "    MoriEPNormalDispatchOutput,",
        ")",
    )
    # Negative control: a `from` line that fits stays on one line.
    assert import_lines([Import("moe_runtime.types", "A")]) == ("from moe_runtime.types import A",)


def test_records_are_frozen(matrix: Matrix) -> None:
    record = plan_combination(matrix, STANDARD).records[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.choice = "other"  # type: ignore[misc]


def test_a_runner_docstring_lists_exactly_the_explained_records(matrix: Matrix) -> None:
    lists = {}
    for combination in (STANDARD, Combination("mori", "unquant", "mori_normal")):
        plan = plan_combination(matrix, combination)
        source = (AMD.parents[1] / "generated" / f"{plan.module_name}.py").read_text()
        docstring = source.split('"""')[1]
        for record in plan.records:
            assert (f"\n- {record.topic} = " in docstring) is record.explained, record.topic
        lists[combination.dispatch] = docstring
    # Negative control: the valid rows are a decision worth a line for MORI's total_recv only.
    assert "\n- valid rows = " in lists["mori_normal"]
    assert "\n- valid rows = " not in lists["standard"]
