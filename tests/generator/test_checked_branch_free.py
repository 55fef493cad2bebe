"""The checked variant's `__call__` obeys the branch-free rule too: generator/verify.py checks the
class named `Runner`, so each module is checked once more with `CheckedRunner` in that place."""

from __future__ import annotations

from pathlib import Path

import pytest

import generated
from generator.verify import check_branch_free

GENERATED = Path(__file__).resolve().parents[2] / "generated"
MODULES = sorted(p for p in GENERATED.glob("*.py") if p.name != "__init__.py")


def as_checked(source: str) -> str:
    """The module with CheckedRunner as `Runner` (its base renamed), so verify.py checks it."""
    assert source.count("\nclass Runner:\n") == 1
    assert source.count("\nclass CheckedRunner(Runner):\n") == 1
    return source.replace("\nclass Runner:\n", "\nclass PlainRunner:\n").replace(
        "\nclass CheckedRunner(Runner):\n", "\nclass Runner(PlainRunner):\n"
    )


def test_every_module_is_checked() -> None:
    assert {p.stem for p in MODULES} == set(generated.RUNNERS.values())


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_checked_call_is_branch_free(path: Path) -> None:
    assert check_branch_free(path.stem, as_checked(path.read_text())) == []


def test_a_branch_in_the_checked_prologue_is_found() -> None:
    """Negative control: the rewritten module is really the one checked."""
    source = as_checked((GENERATED / "deepep__unquant__deepep_normal.py").read_text())
    broken = source.replace(
        "        return super().__call__(dispatch_output)",
        "        if dispatch_output.topk_ids.dim() != 2:\n"
        "            raise ValueError('x')\n"
        "        return super().__call__(dispatch_output)",
    )
    assert broken != source
    assert check_branch_free("m", broken) != []
