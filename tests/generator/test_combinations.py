"""Enumeration over hand-built matrices: product minus exclusions, sorted; stale, shadowed and
all-removing exclusions and an empty product are errors at the exclusion's location."""

from __future__ import annotations

import itertools

import pytest

from generator.combinations import (
    enumerate_combinations,
    enumerate_matrix,
    excluded_combinations,
)
from generator.diagnostics import MatrixError
from generator.model import (
    A2ABackend,
    ActivationRule,
    Combination,
    DispatchFormat,
    Exclusion,
    IdSpace,
    KernelQuant,
    Layout,
    Location,
    Matrix,
    QuantMethod,
    RowCount,
    Sink,
    Weighting,
    WeightKind,
    Wire,
)

HERE = Location(1, 1)


def backend(name: str, *formats: str) -> A2ABackend:
    return A2ABackend(name, name, formats, location=HERE)


def dispatch_format(name: str) -> DispatchFormat:
    return DispatchFormat(
        name, name, "StandardDispatchOutput", "StandardCombineInput", Layout.FLAT,
        IdSpace.GLOBAL, Sink.NONE, RowCount.SHAPE, Wire.BF16, Weighting.KERNEL, False,
        location=HERE,
    )  # fmt: skip


def quant(name: str) -> QuantMethod:
    return QuantMethod(
        name, name, KernelQuant.NO, ActivationRule.LAYER, WeightKind.BF16, "bfloat16",
        False, False, False, False, False, location=HERE,
    )  # fmt: skip


def exclusion(a2a: str, q: str, dispatch: str, line: int) -> Exclusion:
    return Exclusion(a2a, q, dispatch, f"reason at {line}", Location(line, 5))


# Backends deliberately out of alphabetical order: the result must still be sorted.
BACKENDS = (backend("mori", "mori_normal", "mori_ll"), backend("deepep", "deepep_ll"))
FORMATS = tuple(dispatch_format(n) for n in ("mori_normal", "mori_ll", "deepep_ll"))
QUANTS = (quant("unquant"), quant("fp8"))


def matrix(*exclusions: Exclusion, backends: tuple[A2ABackend, ...] = BACKENDS) -> Matrix:
    return Matrix("m.yaml", backends, FORMATS, QUANTS, exclusions)


def keys(combinations: tuple[Combination, ...]) -> list[str]:
    return [c.slash_name for c in combinations]


def test_product_of_each_backends_formats_with_every_quant_method_sorted() -> None:
    assert keys(enumerate_combinations(matrix())) == [
        "deepep/fp8/deepep_ll",
        "deepep/unquant/deepep_ll",
        "mori/fp8/mori_ll",
        "mori/fp8/mori_normal",
        "mori/unquant/mori_ll",
        "mori/unquant/mori_normal",
    ]
    assert excluded_combinations(matrix()) == ()


def test_order_of_the_file_does_not_change_the_result() -> None:
    forward = enumerate_combinations(matrix())
    for order in itertools.permutations(BACKENDS):
        assert enumerate_combinations(matrix(backends=order)) == forward


def test_exclusions_with_wildcards_remove_exactly_what_they_match() -> None:
    fp8_mori = exclusion("mori", "fp8", "*", 10)
    ll = exclusion("*", "*", "deepep_ll", 14)
    m = matrix(fp8_mori, ll)
    assert keys(enumerate_combinations(m)) == ["mori/unquant/mori_ll", "mori/unquant/mori_normal"]
    assert [(c.slash_name, e) for c, e in excluded_combinations(m)] == [
        ("deepep/fp8/deepep_ll", ll),
        ("deepep/unquant/deepep_ll", ll),
        ("mori/fp8/mori_ll", fp8_mori),
        ("mori/fp8/mori_normal", fp8_mori),
    ]


def test_a_combination_matched_twice_is_paired_with_the_first_exclusion() -> None:
    first = exclusion("mori", "fp8", "*", 10)
    second = exclusion("mori", "*", "mori_ll", 14)  # mori/fp8/mori_ll matches both
    pairs = dict((c.slash_name, e) for c, e in excluded_combinations(matrix(first, second)))
    assert pairs == {
        "mori/fp8/mori_ll": first,
        "mori/fp8/mori_normal": first,
        "mori/unquant/mori_ll": second,
    }


def test_stale_exclusion_is_an_error_at_its_location() -> None:
    stale = exclusion("deepep", "*", "mori_ll", 21)
    for call in (enumerate_combinations, excluded_combinations):
        with pytest.raises(MatrixError) as caught:
            call(matrix(stale))
        (diagnostic,) = caught.value.diagnostics
        assert (diagnostic.path, diagnostic.line, diagnostic.column) == ("m.yaml", 21, 5)
        assert diagnostic.message == (
            "exclusion deepep/*/mori_ll matches no combination: a2a backend 'deepep' does not "
            "produce dispatch format 'mori_ll' (it produces: deepep_ll)"
        )


def test_exclusion_of_a_format_no_backend_produces_is_stale() -> None:
    orphan = exclusion("*", "*", "standard", 8)
    (diagnostic,) = enumerate_matrix(matrix(orphan)).problems
    assert (diagnostic.line, diagnostic.message) == (
        8,
        "exclusion */*/standard matches no combination: "
        "no a2a backend produces dispatch format 'standard'",
    )


def test_exclusion_shadowed_by_earlier_ones_is_an_error() -> None:
    broad = exclusion("mori", "*", "*", 10)
    narrow = exclusion("mori", "fp8", "mori_ll", 14)
    (diagnostic,) = enumerate_matrix(matrix(broad, narrow)).problems
    assert (diagnostic.line, diagnostic.column) == (14, 5)
    assert "removes nothing" in diagnostic.message
    assert "line(s) 10" in diagnostic.message
    # The other order is fine: the narrow one removes one combination first.
    assert enumerate_matrix(matrix(narrow, broad)).problems == ()


def test_excluding_everything_is_an_error_at_the_first_exclusion() -> None:
    deepep = exclusion("deepep", "*", "*", 10)
    mori = exclusion("mori", "*", "*", 14)
    with pytest.raises(MatrixError) as caught:
        enumerate_combinations(matrix(deepep, mori))
    (diagnostic,) = caught.value.diagnostics
    assert (diagnostic.line, diagnostic.column) == (10, 5)
    assert diagnostic.message == "the exclusions remove all 6 combinations: nothing to generate"


def test_a_matrix_without_combinations_is_an_error() -> None:
    with pytest.raises(MatrixError) as caught:
        enumerate_combinations(matrix(backends=()))
    (diagnostic,) = caught.value.diagnostics
    assert str(diagnostic) == "m.yaml:1:1: error: the matrix defines no combinations"
