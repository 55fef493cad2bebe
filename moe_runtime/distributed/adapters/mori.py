"""MORI (ROCm/mori, `python/mori/ops/dispatch_combine.py`, v1.2.2 and main).

`EpDispatchCombineOp.dispatch(input, weights, scales, indices, block_num=-1, rdma_block_num=-1,
warp_per_block=-1, call_local_expert_count=False, *, routing=None, return_routing=False)` returns
`(out [max_recv, H], out_weights fp32 [max_recv, K], out_scales [max_recv, scale_dim] or None,
out_indices int32 [max_recv, K], total_recv int32 [1])`, plus the routing handle with
`return_routing=True`. Rows past `total_recv` are stale. `input` is what goes on the wire: bf16,
or fp8 with fp32 1x128 scales, or fp4x2 with e8m0 1x32 scales, or fp8 with e8m0 1x32 scales, or
fp8 with one fp32 scale per row, quantized by the sender.
`EpDispatchCombineOp.combine(input, weights, indices, block_num=-1, rdma_block_num=-1,
warp_per_block=-1, use_external_inp_buf=-1, call_reset=False, *, routing=None)` -> `(out
[max_num_inp_token_per_rank, H], out_weights or None)`: `indices` is this rank's own routing
(the tensor handed to `dispatch`), rows are summed unweighted, and the first T rows are this
rank's tokens. Whether normal or low latency is the op's `kernel_type`, fixed at construction.
"""

from __future__ import annotations

from typing import Any

import torch

from moe_runtime.distributed.adapters._optional import require
from moe_runtime.distributed.adapters.deepep import AdapterError
from moe_runtime.formats import MORI_SENDERS
from moe_runtime.types import (
    MoriEPLLCombineInput,
    MoriEPLLDispatchOutput,
    MoriEPNormalCombineInput,
    MoriEPNormalDispatchOutput,
)

WIRES = tuple(MORI_SENDERS)


def open_op(config: Any) -> Any:
    """A `mori.ops.EpDispatchCombineOp(config)` (imports mori)."""
    return require("mori.ops").EpDispatchCombineOp(config)


class MoriDispatcher:
    """The `mori_*` formats through an `EpDispatchCombineOp`: `wire` one of `WIRES` (the
    sender quantizes), `low_latency` as the op's kernel type, `recv_cap` handed to the runner."""

    def __init__(self, op: Any, *, wire: str, low_latency: bool, recv_cap: int = 0) -> None:
        if wire not in WIRES:
            raise ValueError(f"wire must be one of {', '.join(WIRES)}, got {wire!r}")
        self.op, self.wire, self.low_latency, self.recv_cap = op, wire, low_latency, recv_cap
        self._send = MORI_SENDERS[wire]
        self._output_type = MoriEPLLDispatchOutput if low_latency else MoriEPNormalDispatchOutput

    def dispatch(
        self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[MoriEPNormalDispatchOutput | MoriEPLLDispatchOutput, int]:
        """The dispatch output, and the handle for `combine` (this rank's token count)."""
        wire_input, scales = self._send(hidden_states)
        indices = topk_ids.to(torch.int32)
        raw = self.op.dispatch(wire_input, topk_weights, scales, indices)
        output = self.dispatch_output(raw, indices, topk_weights, hidden_states.dtype)
        return output, int(hidden_states.shape[0])

    def dispatch_output(
        self,
        raw: tuple[Any, ...],
        topk_ids: torch.Tensor,
        topk_weights: torch.Tensor,
        out_dtype: torch.dtype,
    ) -> MoriEPNormalDispatchOutput | MoriEPLLDispatchOutput:
        """`dispatch`'s tuple as the project's output; `topk_ids`/`topk_weights` are this rank's own
        routing (MORI's combine takes it back), `out_dtype` the activations' dtype before the
        wire."""
        if not isinstance(raw, tuple) or len(raw) not in (5, 6):
            raise AdapterError(
                "EpDispatchCombineOp.dispatch returns (out, out_weights, out_scales, out_indices, "
                "total_recv), plus routing with return_routing=True"
            )
        out, out_weights, out_scales, out_indices, total_recv = raw[:5]
        if (
            out_indices.dtype != torch.int32
            or total_recv.dtype != torch.int32
            or (tuple(total_recv.shape) != (1,))
        ):
            raise AdapterError(
                f"expected int32 out_indices and an int32 [1] total_recv, got {out_indices.dtype} "
                f"and {total_recv.dtype} {tuple(total_recv.shape)}"
            )
        return self._output_type(
            hidden_states=out,
            hidden_states_scale=out_scales,
            topk_ids=out_indices,
            topk_weights=out_weights,
            # Despite its name, MORI's total_recv: an int32 device tensor of shape [1].
            num_recv_tokens_per_expert=total_recv,
            origin_topk_ids=topk_ids,
            origin_topk_weights=topk_weights,
            out_dtype=out_dtype,
            recv_cap=self.recv_cap,
        )

    def combine(
        self, combine_input: MoriEPNormalCombineInput | MoriEPLLCombineInput, num_tokens: int
    ) -> torch.Tensor:
        """The sender's `[T, H]`: MORI's combine output sliced to this rank's tokens."""
        out, _weights = self.op.combine(
            combine_input.hidden_states, combine_input.topk_weights, combine_input.topk_ids
        )
        return out[:num_tokens]  # type: ignore[no-any-return]
