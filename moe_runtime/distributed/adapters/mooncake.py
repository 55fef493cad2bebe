"""Mooncake EP (kvcache-ai/Mooncake, `mooncake-wheel/mooncake/mooncake_ep_buffer.py`).

`Buffer.dispatch(x, topk_idx, active_ranks, num_max_dispatch_tokens_per_rank, num_experts,
timeout_us, use_fp8=True, async_finish=False, return_recv_hook=False)` returns DeepEP's
low-latency 5-tuple `(recv_x, packed_recv_count, handle, event, hook)` (bf16 input, int64
`topk_idx`, `H % 128 == 0`); `Buffer.combine(x, topk_idx, topk_weights, active_ranks, timeout_us,
handle, zero_copy=False, async_finish=False, return_recv_hook=False, out=None)` ->
`(combined_x, event, hook)`. `active_ranks` is an int32 `[num_ranks]` mask that Mooncake updates
when a rank fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from moe_runtime.distributed.adapters._optional import require
from moe_runtime.distributed.adapters.deepep import AdapterError, LowLatencyAdapter
from moe_runtime.types import DeepEPLLCombineInput, DeepEPLLDispatchOutput


def open_buffer(group: Any, **kwargs: Any) -> Any:
    """A `mooncake.mooncake_ep_buffer.Buffer(group, **kwargs)` (imports mooncake)."""
    return require("mooncake.mooncake_ep_buffer").Buffer(group, **kwargs)


@dataclass(eq=False, repr=False, kw_only=True)
class MooncakeLowLatency(LowLatencyAdapter):
    """`deepep_ll` / `deepep_ll_fp8` through a Mooncake EP buffer."""

    active_ranks: torch.Tensor
    timeout_us: int = -1
    source = "Mooncake Buffer.dispatch"

    def dispatch(
        self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[DeepEPLLDispatchOutput, Any]:
        if hidden_states.dtype != torch.bfloat16 or hidden_states.shape[1] % 128:
            raise AdapterError(
                f"Mooncake EP takes bf16 activations with H % 128 == 0, got "
                f"{hidden_states.dtype} H = {hidden_states.shape[1]}"
            )
        raw = self.buffer.dispatch(
            hidden_states,
            topk_ids.long(),
            self.active_ranks,
            self.max_tokens_per_rank,
            self.num_experts,
            self.timeout_us,
            use_fp8=self.use_fp8,
        )
        return self.dispatch_output(raw, topk_ids, topk_weights)

    def combine(self, combine_input: DeepEPLLCombineInput, handle: Any) -> torch.Tensor:
        combined, _event, _hook = self.buffer.combine(
            combine_input.hidden_states,
            combine_input.topk_ids,
            combine_input.topk_weights,
            self.active_ranks,
            self.timeout_us,
            handle,
        )
        return combined  # type: ignore[no-any-return]
