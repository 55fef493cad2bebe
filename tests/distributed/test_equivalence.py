"""Every dispatch format across real processes (gloo; NCCL on the GPU): per rank, the dispatch
output, the generated runner's combine input and the combined rows equal the single-process
emulation bit for bit, and the layer is within tolerance of the dense float64 MoE. Negative
controls: a rank that drops one token and a rank that swaps two ranks' rows are both caught."""

from __future__ import annotations

import pytest

import generated
from moe_runtime.testing import emulate
from moe_runtime.testing.weights import QUANT_METHODS
from tests.distributed.cases import differences, run_layer
from tests.distributed.pool import Pool, RemoteError
from tests.runners.harness import activation_rounding, run_combination

_QUANTS = QUANT_METHODS
_A2A = {
    "standard": "none",
    "deepep_normal": "deepep",
    "deepep_ll": "nixl",
    "deepep_ll_fp8": "mooncake",
}


def _two_methods(i: int, fmt: str) -> list[tuple[str, str, str]]:
    """Two generated quant methods for the i-th format, rotating so that every method runs over
    several formats (a method the matrix excludes for the format is skipped)."""
    a2a = _A2A.get(fmt, "deepep" if fmt.startswith("deepep") else "mori")
    order = [_QUANTS[(i * 3 + j) % len(_QUANTS)] for j in range(len(_QUANTS))]
    return [key for q in order if (key := (a2a, q, fmt)) in generated.RUNNERS][:2]


KEYS = [key for i, fmt in enumerate(emulate.FORMATS) for key in _two_methods(i, fmt)]
TOKENS = 13


def _check(pool: Pool, key: tuple[str, str, str], **kwargs: int) -> list[str]:
    run = run_combination(key, pool.world, device=pool.device, tokens=TOKENS, **kwargs)
    results = pool.run_ok(run_layer, key=key, seed=0, tokens=TOKENS, **kwargs)
    return differences(results, run, key[1], key[2])


@pytest.mark.parametrize("key", KEYS, ids="/".join)
def test_processes_equal_emulation(pool: Pool, key: tuple[str, str, str]) -> None:
    assert _check(pool, key) == []


@pytest.mark.parametrize("key", [k for k in KEYS if k[2] == "mori_normal_fp8"][:1], ids="/".join)
def test_mori_recv_cap_across_processes(pool: Pool, key: tuple[str, str, str]) -> None:
    # A cap below the capacity R (stale rows past it are cut before the kernel) and at least
    # total_recv (the kernel's num_local_tokens must fit in the rows it is given).
    assert _check(pool, key, recv_cap=TOKENS) == []


FAULT_KEYS = [
    ("deepep", "unquant", "deepep_normal"),
    ("deepep", "fp8_block", "deepep_ll_fp8"),
    ("mori", "quark_w4a4_mxfp4", "mori_ll_fp4"),
]


@pytest.mark.parametrize("fault", ["drop", "swap"])
@pytest.mark.parametrize("key", FAULT_KEYS, ids="/".join)
def test_faulty_rank_is_caught(pool: Pool, key: tuple[str, str, str], fault: str) -> None:
    run = run_combination(key, pool.world, device=pool.device, tokens=TOKENS)
    faulty = min(1, pool.world - 1)
    results = pool.run(run_layer, key=key, seed=0, tokens=TOKENS, fault=fault, fault_rank=faulty)
    if fault == "swap" and pool.world == 1:
        # One rank (NCCL on one GPU) hears from one rank only: there is nothing to swap.
        assert isinstance(results[0], RemoteError) and "rows from two ranks" in results[0].text
        return
    assert not any(isinstance(r, RemoteError) for r in results), results
    problems = differences(results, run, key[1], key[2])
    # The faulty rank's own rows, or the ones it sent, are wrong; so is the layer.
    assert any("dispatch output differs" in p for p in problems), problems
    assert any("combined rows differ" in p for p in problems), problems
    # The dense comparison sees a lost or misplaced row too, except under fp4 rounding: a token
    # losing one of its three experts stays inside the fp4 row bound (1.5e-1); the bit-for-bit
    # comparisons above are what catch it there.
    if activation_rounding(key[1], key[2]) != "fp4":
        assert any("dense float64" in p for p in problems), problems
