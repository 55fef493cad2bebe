"""Enumeration: every backend's formats times every quant method, minus the declared exclusions.

An exclusion that removes nothing is an error (it is stale or shadowed by an earlier one), and so
is a matrix that leaves nothing to generate: both are reported at the exclusion's location.
"""

from __future__ import annotations

from dataclasses import dataclass

from generator.diagnostics import Diagnostic, MatrixError
from generator.model import Combination, Exclusion, Matrix

WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class Enumeration:
    """One pass over a matrix: what is generated, what is excluded (with the first exclusion, in
    file order, that matches), both sorted by combination, and what is wrong with the exclusions."""

    generated: tuple[Combination, ...]
    excluded: tuple[tuple[Combination, Exclusion], ...]
    problems: tuple[Diagnostic, ...]


def enumerate_matrix(matrix: Matrix) -> Enumeration:
    """The product, the exclusion index and the problems, each computed once."""
    product = _product(matrix)
    index = _Index(matrix, product)
    first = index.first
    return Enumeration(
        generated=tuple(c for c in product if c not in first),
        excluded=tuple((c, matrix.exclusions[first[c]]) for c in product if c in first),
        problems=_problems(matrix, product, index),
    )


def enumerate_combinations(matrix: Matrix) -> tuple[Combination, ...]:
    """The combinations to generate, sorted by (a2a, quant, dispatch); raises MatrixError."""
    return _valid(matrix).generated


def excluded_combinations(matrix: Matrix) -> tuple[tuple[Combination, Exclusion], ...]:
    """Each excluded combination with the first exclusion (in file order) that matches it, sorted
    by combination; raises MatrixError like `enumerate_combinations`."""
    return _valid(matrix).excluded


def _problems(
    matrix: Matrix, product: tuple[Combination, ...], index: _Index
) -> tuple[Diagnostic, ...]:
    """Stale or shadowed exclusions, and an empty result, as diagnostics (empty when fine)."""
    used = set(index.first.values())
    problems: list[Diagnostic] = []
    for position, exclusion in enumerate(matrix.exclusions):
        if position in used:
            continue
        shadowing = index.shadowing.get(_key(exclusion))
        if not shadowing:
            problems.append(_at(matrix, exclusion, _why_nothing_matches(matrix, exclusion)))
            continue
        lines = sorted({matrix.exclusions[i].location.line for i in shadowing})
        problems.append(
            _at(
                matrix,
                exclusion,
                f"exclusion {_pattern(exclusion)} removes nothing: every combination it "
                f"matches is already excluded by the exclusion(s) at line(s) "
                f"{', '.join(str(line) for line in lines)}",
            )
        )
    if product and len(index.first) == len(product):
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


def _valid(matrix: Matrix) -> Enumeration:
    enumeration = enumerate_matrix(matrix)
    if enumeration.problems:
        raise MatrixError(enumeration.problems)
    return enumeration


def _product(matrix: Matrix) -> tuple[Combination, ...]:
    combinations = (
        Combination(backend.name, quant.name, dispatch)
        for backend in matrix.a2a_backends
        for dispatch in backend.formats
        for quant in matrix.quant_methods
    )
    # dict.fromkeys drops duplicates deterministically (a hand-built matrix may repeat names).
    return tuple(sorted(dict.fromkeys(combinations)))


_Key = tuple[str, str, str]


def _key(exclusion: Exclusion) -> _Key:
    return (exclusion.a2a, exclusion.quant, exclusion.dispatch)


class _Index:
    """Which exclusion excludes what, in time linear in combinations plus exclusions.

    A combination matches exactly the patterns that replace some of its three names by `*`,
    so each combination looks up its eight patterns instead of scanning every exclusion.
    """

    def __init__(self, matrix: Matrix, product: tuple[Combination, ...]) -> None:
        by_pattern: dict[_Key, int] = {}  # pattern -> position of its first exclusion
        for position, exclusion in enumerate(matrix.exclusions):
            by_pattern.setdefault(_key(exclusion), position)
        # The position of the first exclusion matching each excluded combination.
        self.first: dict[Combination, int] = {}
        # Per pattern that matches something: the first exclusions of the combinations it
        # matches (a later exclusion with that pattern is shadowed by exactly these).
        self.shadowing: dict[_Key, set[int]] = {}
        for combination in product:
            patterns = [p for p in _patterns(combination.key) if p in by_pattern]
            if not patterns:
                continue
            first = min(by_pattern[p] for p in patterns)
            self.first[combination] = first
            for pattern in patterns:
                self.shadowing.setdefault(pattern, set()).add(first)


def _patterns(key: _Key) -> list[_Key]:
    a2a, quant, dispatch = key
    return [
        (a, q, d) for a in (a2a, WILDCARD) for q in (quant, WILDCARD) for d in (dispatch, WILDCARD)
    ]


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
