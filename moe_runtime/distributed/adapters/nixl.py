"""NIXL EP (ai-dynamo/nixl, `examples/device/ep/nixl_ep/buffer.py`).

`Buffer.dispatch(x, topk_idx, num_max_dispatch_tokens_per_rank, num_experts,
cumulative_local_expert_recv_stats=None, dispatch_wait_recv_cost_stats=None, use_fp8=True,
round_scale=False, use_ue8m0=False, async_finish=False, return_recv_hook=False)` returns DeepEP's
low-latency 5-tuple `(recv_x, packed_recv_count, handle, event, hook)`, with the same slab, scale
(column-major) and count layouts; `Buffer.combine(x, topk_idx, topk_weights, handle,
use_logfmt=False, zero_copy=False, async_finish=False, return_recv_hook=False, out=None,
combine_wait_recv_cost_stats=None)` -> `(combined_x, event, hook)`.
"""

from __future__ import annotations

from typing import Any

import torch

from moe_runtime.distributed.adapters._optional import require
from moe_runtime.distributed.adapters.deepep import ll_dispatch_output
from moe_runtime.types import DeepEPLLCombineInput, DeepEPLLDispatchOutput


def open_buffer(**kwargs: Any) -> Any:
    """A `nixl_ep.Buffer(**kwargs)` (imports nixl_ep)."""
    return require("nixl_ep").Buffer(**kwargs)


class NixlLowLatency:
    """`deepep_ll` / `deepep_ll_fp8` through a NIXL EP buffer."""

    def __init__(
        self,
        buffer: Any,
        *,
        num_experts: int,
        ep_size: int,
        max_tokens_per_rank: int,
        use_fp8: bool,
        round_scale: bool = False,
        use_ue8m0: bool = False,
    ) -> None:
        self.buffer = buffer
        self.num_experts, self.ep_size = num_experts, ep_size
        self.max_tokens_per_rank = max_tokens_per_rank
        self.use_fp8, self.round_scale, self.use_ue8m0 = use_fp8, round_scale, use_ue8m0

    def dispatch(
        self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[DeepEPLLDispatchOutput, Any]:
        raw = self.buffer.dispatch(
            hidden_states,
            topk_ids.long(),
            self.max_tokens_per_rank,
            self.num_experts,
            use_fp8=self.use_fp8,
            round_scale=self.round_scale,
            use_ue8m0=self.use_ue8m0,
        )
        return ll_dispatch_output(
            raw,
            topk_ids=topk_ids,
            topk_weights=topk_weights,
            num_experts=self.num_experts,
            ep_size=self.ep_size,
            source="nixl_ep Buffer.dispatch",
        )

    def combine(self, combine_input: DeepEPLLCombineInput, handle: Any) -> torch.Tensor:
        combined, _event, _hook = self.buffer.combine(
            combine_input.hidden_states,
            combine_input.topk_ids,
            combine_input.topk_weights,
            handle,
        )
        return combined  # type: ignore[no-any-return]
