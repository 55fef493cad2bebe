"""Enumeration: every backend's formats times every quant method, minus the declared exclusions.

An exclusion that removes nothing is an error (it is stale or shadowed by an earlier one), and so
is a matrix that leaves nothing to generate: both are reported at the exclusion's location.
"""

from __future__ import annotations

from generator.diagnostics import Diagnostic, MatrixError
from generator.model import Combination, Exclusion, Matrix


def enumerate_combinations(matrix: Matrix) -> tuple[Combination, ...]:
    """The combinations to generate, sorted by (a2a, quant, dispatch); raises MatrixError."""
    _raise_on_problems(matrix)
    return tuple(c for c in _product(matrix) if _first_match(matrix, c) is None)


def excluded_combinations(matrix: Matrix) -> tuple[tuple[Combination, Exclusion], ...]:
    """Each excluded combination with the first exclusion (in file order) that matches it, sorted
    by combination; raises MatrixError like `enumerate_combinations`."""
    _raise_on_problems(matrix)
    pairs: list[tuple[Combination, Exclusion]] = []
    for combination in _product(matrix):
        exclusion = _first_match(matrix, combination)
        if exclusion is not None:
            pairs.append((combination, exclusion))
    return tuple(pairs)


def enumeration_problems(matrix: Matrix) -> tuple[Diagnostic, ...]:
    """Stale or shadowed exclusions, and an empty result, as diagnostics (empty when fine)."""
    product = _product(matrix)
    problems: list[Diagnostic] = []
    for index, exclusion in enumerate(matrix.exclusions):
        matched = [c for c in product if exclusion.matches(*c.key)]
        earlier = matrix.exclusions[:index]
        if not matched:
            problems.append(_at(matrix, exclusion, _why_nothing_matches(matrix, exclusion)))
        elif all(any(e.matches(*c.key) for e in earlier) for c in matched):
            lines = sorted(
                {e.location.line for e in earlier if any(e.matches(*c.key) for c in matched)}
            )
            problems.append(
                _at(
                    matrix,
                    exclusion,
                    f"exclusion {_pattern(exclusion)} removes nothing: every combination it "
                    f"matches is already excluded by the exclusion(s) at line(s) "
                    f"{', '.join(str(line) for line in lines)}",
                )
            )
    if product and all(_first_match(matrix, c) is not None for c in product):
        first = matrix.exclusions[0]
        problems.append(
            _at(
                matrix,
                first,
                f"the exclusions remove all {len(product)} combinations: nothing to generate",
            )
        )
    if not product:
        problems.append(Diagnostic(matrix.path, 1, 1, "the matrix defines no combinations"))
    return tuple(problems)


def _raise_on_problems(matrix: Matrix) -> None:
    problems = enumeration_problems(matrix)
    if problems:
        raise MatrixError(problems)


def _product(matrix: Matrix) -> tuple[Combination, ...]:
    combinations = (
        Combination(backend.name, quant.name, dispatch)
        for backend in matrix.a2a_backends
        for dispatch in backend.formats
        for quant in matrix.quant_methods
    )
    # dict.fromkeys drops duplicates deterministically (a hand-built matrix may repeat names).
    return tuple(sorted(dict.fromkeys(combinations)))


def _first_match(matrix: Matrix, combination: Combination) -> Exclusion | None:
    return next((e for e in matrix.exclusions if e.matches(*combination.key)), None)


def _pattern(exclusion: Exclusion) -> str:
    return f"{exclusion.a2a}/{exclusion.quant}/{exclusion.dispatch}"


def _why_nothing_matches(matrix: Matrix, exclusion: Exclusion) -> str:
    prefix = f"exclusion {_pattern(exclusion)} matches no combination"
    backends = [b for b in matrix.a2a_backends if exclusion.a2a in ("*", b.name)]
    if exclusion.dispatch != "*" and backends:
        produced_by = [b.name for b in matrix.a2a_backends if exclusion.dispatch in b.formats]
        if exclusion.a2a != "*":
            formats = ", ".join(backends[0].formats)
            return (
                f"{prefix}: a2a backend '{exclusion.a2a}' does not produce dispatch format "
                f"'{exclusion.dispatch}' (it produces: {formats})"
            )
        if not produced_by:
            return f"{prefix}: no a2a backend produces dispatch format '{exclusion.dispatch}'"
    return prefix


def _at(matrix: Matrix, exclusion: Exclusion, message: str) -> Diagnostic:
    return Diagnostic(matrix.path, exclusion.location.line, exclusion.location.column, message)
