"""The generated tables' literals: an excluded combination's long reason is cut into implicitly
concatenated pieces that fit the line length and join back to the reason."""

from __future__ import annotations

import ast

from generator.render import LINE_LENGTH, frozen_dict

REASON = (
    "Rows past masked_m are garbage, and AITER's per_Tensor quantizer takes one amax over every "
    "one of the L*C slab rows (num_local_tokens bounds only a flat batch), so garbage would set "
    "the scale of the valid rows."
)


def _table(value: str) -> dict[tuple[str, ...], str]:
    tree = ast.parse(frozen_dict([(("deepep", "fp8_tensor", "deepep_ll"), value)]), mode="eval")
    call = tree.body
    assert isinstance(call, ast.Call)
    return ast.literal_eval(call.args[0])  # type: ignore[no-any-return]


def test_a_long_reason_fits_the_lines_and_joins_back() -> None:
    text = frozen_dict([(("deepep", "fp8_tensor", "deepep_ll"), REASON)])
    assert max(len(line) for line in text.splitlines()) <= LINE_LENGTH
    assert len(text.splitlines()) > 5  # cut: one line would be ~250 characters
    assert _table(REASON) == {("deepep", "fp8_tensor", "deepep_ll"): REASON}


def test_a_short_reason_stays_on_its_entry_line_and_spaces_survive() -> None:
    assert len(frozen_dict([(("a", "b", "c"), "short")]).splitlines()) == 5
    spaced = "two  spaces,  a trailing one " * 8
    assert _table(spaced) == {("deepep", "fp8_tensor", "deepep_ll"): spaced}
    assert _table(spaced) != {("deepep", "fp8_tensor", "deepep_ll"): spaced.strip()}
