"""CI smoke test of benchmarks/checked_overhead.py: its `--quick` mode runs end to end and reports
finite, positive times for the plain and the checked runner (never asserted against a target)."""

from __future__ import annotations

import math

from benchmarks import checked_overhead

KEYS = ("deepep/unquant/deepep_normal", "deepep/fp8_block/deepep_ll_fp8", "mori/unquant/mori_ll")


def test_checked_overhead_quick_reports_positive_times() -> None:
    results = checked_overhead.main(["--quick", *(a for k in KEYS for a in ("--only", k))])
    assert [name for name, *_ in results] == list(KEYS)
    for _, tokens, plain, checked in results:
        assert tokens == 8
        assert math.isfinite(plain) and plain > 0
        assert math.isfinite(checked) and checked > 0
