"""Property tests: whatever bytes the loader is given, only MatrixError leaves it, every
diagnostic has a real position and a message, and a matrix that loads always enumerates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from generator.combinations import enumerate_combinations, excluded_combinations
from generator.diagnostics import MatrixError
from generator.loader import load_matrix
from tests.generator.malformed.expected import BASE_MATRIX

BASE_LINES = BASE_MATRIX.read_text().splitlines(keepends=True)
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Tokens that exercise YAML's surprises: booleans, nulls, dates, flow collections, tags, aliases.
TOKENS = (
    "yes", "No", "off", "~", "null", "", "[]", "{}", "[a, b]", "{a: 1}", '"*"', "*", "&x a",
    "*x", "!!python/object:os.system", "!!binary aGk=", "!custom x", "2024-01-01", "1e3", "0x1F",
    "<<: {a: 1}", "'", '"', "- a", "? a", ": a", "flat", "masked_slabs", "deepep_ll", "standard",
    "fp8_block", "unquant", "No", "per_Token", "true", "false", "|\n  block", "\t", "\x07",
)  # fmt: skip


YAML_CHARACTERS = "ab_:-[]{},#&*!|>'\"% \n\t\r\x00é"


def check(path: Path) -> None:
    """Load and enumerate `path`; anything but MatrixError propagates and fails the test."""
    try:
        matrix = load_matrix(path)
    except MatrixError as error:
        event("rejected")
        assert error.diagnostics
        for diagnostic in error.diagnostics:
            assert diagnostic.path == str(path)
            assert diagnostic.line >= 1 and diagnostic.column >= 1
            assert diagnostic.message.strip()
            # The loader turns its own bugs into diagnostics too; none may be seen here.
            assert "internal error" not in diagnostic.message, diagnostic
        return
    event("loaded")
    # A matrix that loaded has passed the enumeration checks: enumerating cannot fail.
    generated = enumerate_combinations(matrix)
    excluded = [c for c, _ in excluded_combinations(matrix)]
    assert generated
    assert not set(generated) & set(excluded)
    assert list(generated) == sorted(generated)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("matrices") / "matrix.yaml"


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes(target: Path, data: bytes) -> None:
    target.write_bytes(data)
    check(target)


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list(YAML_CHARACTERS)), max_size=200))
def test_random_yaml_like_text(target: Path, text: str) -> None:
    target.write_bytes(text.encode("utf-8"))
    check(target)


def _mutate(lines: list[str], op: str, index: int, token: str) -> list[str]:
    at = index % max(len(lines), 1)
    if not lines:
        return [token + "\n"]
    line = lines[at]
    before, after = lines[:at], lines[at + 1 :]
    if op == "delete":
        return [*before, *after]
    if op == "duplicate":
        return [*before, line, line, *after]
    if op == "revalue":
        key, colon, _ = line.partition(":")
        return [*before, f"{key}{colon or ':'} {token}\n", *after]
    if op == "rekey":
        indent = line[: len(line) - len(line.lstrip())]
        _, colon, value = line.partition(":")
        return [*before, f"{indent}{token}{colon}{value}", *after]
    if op == "indent":
        return [*before, " " * (index % 5) + line.lstrip(" "), *after]
    if op == "swap":
        other = (at * 7 + 3) % len(lines)
        swapped = list(lines)
        swapped[at], swapped[other] = lines[other], lines[at]
        return swapped
    return [*before, token + "\n", line, *after]  # insert


MUTATION = st.tuples(
    st.sampled_from(["delete", "duplicate", "revalue", "rekey", "indent", "swap", "insert"]),
    st.integers(min_value=0, max_value=10_000),
    st.sampled_from(TOKENS) | st.text(max_size=12),
)


@SETTINGS
@given(
    mutations=st.lists(MUTATION, min_size=1, max_size=4),
    cut=st.none() | st.integers(min_value=0, max_value=3000),
    noise=st.none() | st.tuples(st.integers(min_value=0, max_value=3000), st.binary(max_size=3)),
)
def test_mutated_valid_matrix(
    target: Path,
    mutations: list[tuple[str, int, str]],
    cut: int | None,
    noise: tuple[int, bytes] | None,
) -> None:
    lines = list(BASE_LINES)
    for op, index, token in mutations:
        lines = _mutate(lines, op, index, token)
    data = "".join(lines).encode("utf-8", "surrogatepass")
    if noise is not None:
        data = data[: noise[0]] + noise[1] + data[noise[0] :]
    if cut is not None:
        data = data[:cut]
    target.write_bytes(data)
    check(target)


AMD = yaml.safe_load((BASE_MATRIX.parents[2] / "schema" / "amd.yaml").read_text())


def rarely(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` nine times in ten, so that most drawn matrices get past the first error."""
    # Hypothesis favours small integers: the rare branch is the largest one.
    return st.integers(min_value=0, max_value=9).flatmap(lambda n: rare if n == 9 else usual)


NAMES = rarely(
    st.sampled_from(["none", "deepep", "mori", "std", "ll", "fp8", "x"]),
    st.sampled_from(["x__y", "X", "a_", "1"]),
)
# Values that are wrong somewhere: a wrong type, a wrong choice, or a valid value of another key.
WRONG = st.sampled_from([None, True, 3, "flatt", ["flat"], "", "yes", "false", *TOKENS[26:36]])


@st.composite
def entry(draw: st.DrawFn, section: str) -> dict[str, Any]:
    """A valid entry of amd.yaml, sometimes with one property replaced or removed."""
    entries = AMD[section]
    chosen: dict[str, Any] = dict(entries[draw(st.sampled_from(sorted(entries)))])
    if draw(st.integers(min_value=0, max_value=9)) == 9:
        key = draw(st.sampled_from(sorted(chosen)))
        if draw(st.booleans()):
            del chosen[key]
        else:
            chosen[key] = draw(WRONG)
    return chosen


@st.composite
def structured_matrix(draw: st.DrawFn) -> dict[str, Any]:
    formats = draw(st.dictionaries(NAMES, entry("dispatch_formats"), min_size=1, max_size=3))
    quants = draw(st.dictionaries(NAMES, entry("quant_methods"), min_size=1, max_size=3))
    format_names = rarely(st.sampled_from(list(formats)), st.just("nope"))
    listed = rarely(
        st.lists(format_names, min_size=1, max_size=3, unique=True),
        st.lists(format_names, max_size=3),
    )
    backend = st.fixed_dictionaries({"description": st.just("A backend."), "formats": listed})
    backends = draw(st.dictionaries(NAMES, backend, min_size=1, max_size=3))

    def pattern(names: Any) -> st.SearchStrategy[Any]:
        return rarely(st.sampled_from(["*", *names]), st.sampled_from(["nope", 7]))

    exclusion = st.fixed_dictionaries(
        {
            "a2a": pattern(backends),
            "quant": pattern(quants),
            "dispatch": pattern(formats),
            "reason": st.just("Because."),
        }
    )
    matrix: dict[str, Any] = {
        "a2a_backends": backends,
        "dispatch_formats": formats,
        "quant_methods": quants,
        "exclusions": draw(st.lists(exclusion, max_size=2)),
    }
    if draw(st.integers(min_value=0, max_value=9)) == 9:
        del matrix[draw(st.sampled_from(sorted(matrix)))]
    return matrix


@SETTINGS
@given(matrix=structured_matrix())
def test_structured_random_matrix(target: Path, matrix: dict[str, Any]) -> None:
    target.write_text(yaml.safe_dump(matrix, sort_keys=False))
    check(target)
