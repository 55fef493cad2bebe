"""Graph-safe reference mode and a mask holding 2 or -1 (issue 15, "silent wrong answers").

Default mode refuses such a mask (a host check); graph-safe mode cannot look at values, and used
to count every entry in `cumsum(mask)`, so one bad entry shifted each later expert onto the
weights of another. It now selects with entries of exactly 1: a bad entry deselects its own id
and moves nothing else."""

from __future__ import annotations

import pytest
import torch

from moe_runtime.kernels.reference import fused_moe, fused_moe_graph_safe

EXPERTS, HIDDEN, INTER = 3, 16, 8


def call(kernel: object, mask: list[int]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[0, 1], [2, 3], [3, 0], [1, 2]], dtype=torch.int32)
    return kernel(  # type: ignore[operator, no-any-return]
        torch.randn(4, HIDDEN, generator=g).bfloat16(),
        (torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=g) / 4).bfloat16(),
        (torch.randn(EXPERTS, HIDDEN, INTER, generator=g) / 3).bfloat16(),
        torch.rand(4, 2, generator=g),
        ids,
        expert_mask=torch.tensor(mask, dtype=torch.int32),
    )


@pytest.mark.parametrize(
    ("bad", "meant"),
    [([1, 2, 1, 1], [1, 0, 1, 1]), ([-1, 1, 1, 1], [0, 1, 1, 1]), ([1, 1, -1, 1], [1, 1, 0, 1])],
    ids=str,
)
def test_a_bad_entry_deselects_its_id_and_moves_no_other(bad: list[int], meant: list[int]) -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        call(fused_moe, bad)
    expected = call(fused_moe, meant)
    assert torch.count_nonzero(expected) > 0
    assert torch.equal(call(fused_moe_graph_safe, bad), expected)
    # Negative control: the comparison tells routings apart (another mask, another result).
    assert not torch.equal(call(fused_moe, [1, 1, 1, 0]), expected)
