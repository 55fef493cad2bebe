"""The test support (`moe_runtime.testing`) states facts of the matrix's quant methods again, for
code that runs without the generator: which methods force Swiglu, which draw biases or static
input scales, each method's activation rounding; and the runtime's release gates. Each must
agree with schema/amd.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.loader import load_matrix
from generator.model import SGLANG_RELEASES, ActivationRule, QuantMethod
from moe_runtime.integrations import sglang as sglang_integration
from moe_runtime.kernels import aiter_binding
from moe_runtime.kernels.releases import tag
from moe_runtime.testing import dense
from moe_runtime.testing.weights import QUANT_METHODS, make_expert_weights

AMD = Path(__file__).resolve().parents[2] / "schema" / "amd.yaml"


@pytest.fixture(scope="module")
def methods() -> dict[str, QuantMethod]:
    return {method.name: method for method in load_matrix(AMD).quant_methods}


def _both_ways(facts: dict[str, bool]) -> dict[str, bool]:
    """`facts` after checking it can tell methods apart: a fact true of every method (or of
    none) would agree with a runtime list that ignored it."""
    assert len(set(facts.values())) == 2, facts
    return facts


def test_the_test_support_knows_exactly_the_matrix_methods(
    methods: dict[str, QuantMethod],
) -> None:
    assert sorted(QUANT_METHODS) == sorted(methods)
    assert sorted(dense.ACTIVATION_ROUNDING) == sorted(methods)


def test_the_forced_swiglu_methods_are_the_matrix_ones(methods: dict[str, QuantMethod]) -> None:
    matrix = _both_ways({n: m.activation is ActivationRule.SWIGLU for n, m in methods.items()})
    assert {n: n in dense.SWIGLU_METHODS for n in methods} == matrix


def test_drawn_weights_carry_biases_and_static_scales_as_the_matrix_says(
    methods: dict[str, QuantMethod],
) -> None:
    drawn = {name: make_expert_weights(name, 2, 256, 128, seed=0) for name in methods}
    biases = _both_ways({n: m.has_biases for n, m in methods.items()})
    static = _both_ways({n: m.static_input_scales for n, m in methods.items()})
    assert {n: w.b13 is not None and w.b2 is not None for n, w in drawn.items()} == biases
    assert {n: w.a13_scale is not None for n, w in drawn.items()} == static


def test_activation_rounding_takes_the_coarser_of_method_and_wire() -> None:
    assert dense.activation_rounding("unquant", "deepep_normal") == "bf16"
    assert dense.activation_rounding("unquant", "mori_v2_mxfp8") == "fp8"
    assert dense.activation_rounding("fp8_block", "mori_ll_fp4") == "fp4"
    assert dense.activation_rounding("quark_w4a4_mxfp4", "deepep_ll_fp8") == "fp4"
    assert dense.activation_rounding("mxfp8", "standard") == "fp8"


def test_the_runtime_release_gates_are_the_matrix_support_facts(
    methods: dict[str, QuantMethod],
) -> None:
    """The matrix's support facts (generated/FEATURES.md) and the gates the runtime applies at
    load name the same releases: the SGLang releases the integration serves, and the AITER
    release from which the binding lets mxfp8 weights through."""
    assert sglang_integration.SUPPORTED_RELEASES == SGLANG_RELEASES
    assert methods["mxfp8"].min_aiter == tag(aiter_binding.MXFP8_WEIGHTS_SINCE)
    # Control: the other methods' minimum is older, so the comparison above tells them apart.
    assert methods["fp8_block"].min_aiter != methods["mxfp8"].min_aiter
