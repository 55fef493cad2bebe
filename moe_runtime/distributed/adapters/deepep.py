"""DeepEP v1.2.1 (deepseek-ai/DeepEP, tag v1.2.1, `deep_ep/buffer.py`): normal and low latency.

`Buffer.dispatch(x, handle=None, num_tokens_per_rank=None, num_tokens_per_rdma_rank=None,
is_token_in_rank=None, num_tokens_per_expert=None, topk_idx=None, topk_weights=None,
expert_alignment=1, num_worst_tokens=0, config=None, previous_event=None, async_finish=False,
allocate_on_comm_stream=False)` returns `(recv_x, recv_topk_idx, recv_topk_weights,
num_recv_tokens_per_expert_list, handle, event)`: `recv_x` bf16 `[N, H]` (or an `(fp8 [N, H],
fp32 [N, H/128])` tuple when `x` was), ids int64 local to the rank or -1 (weight 0), the counts a
Python `list[int]` per local expert aligned to `expert_alignment`, empty when `num_worst_tokens`
is set; then `N = num_worst_tokens` and the padding rows carry -1 ids. The layout arguments come
from `Buffer.get_dispatch_layout(topk_idx, num_experts, ...)` -> `(num_tokens_per_rank,
num_tokens_per_rdma_rank, num_tokens_per_expert, is_token_in_rank, event)`.
`Buffer.combine(x, handle, topk_weights=None, bias=None, config=None, previous_event=None,
async_finish=False, allocate_on_comm_stream=False)` -> `(recv_x, recv_topk_weights, event)`
sums without weights.

`Buffer.low_latency_dispatch(x, topk_idx, num_max_dispatch_tokens_per_rank, num_experts,
cumulative_local_expert_recv_stats=None, dispatch_wait_recv_cost_stats=None, use_fp8=True,
round_scale=False, use_ue8m0=False, async_finish=False, return_recv_hook=False)` returns
`(recv_x, packed_recv_count, handle, event, hook)`: `recv_x` bf16 `[L, R*C, H]`, or fp8 with
scales fp32 `[L, R*C, H/128]` (int32 `[L, R*C, H/512]`, four UE8M0 bytes each, with
`use_ue8m0`), scales column-major in the last two dims; `packed_recv_count` int32 `[L]`.
`Buffer.low_latency_combine(x, topk_idx, topk_weights, handle, use_logfmt=False,
zero_copy=False, async_finish=False, return_recv_hook=False, out=None,
combine_wait_recv_cost_stats=None)` -> `(combined_x, event, hook)` reduces with the weights.

Checked against v1.2.1 built on an H200 (`benchmarks/deepep_buffer.py`, RESULTS.md): these five
signatures are the real Buffer's, and low latency on one rank, with the generated runners, is
within the dense layer's tolerance. Normal mode needs 2, 4 or 8 ranks, so its real run waits for
a host with several GPUs; the CPU tests drive both through a fake with these signatures.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

import torch

from moe_runtime.distributed.adapters._optional import require
from moe_runtime.formats import deepep_ll_expected_m
from moe_runtime.quant import E8M0
from moe_runtime.types import (
    DeepEPLLCombineInput,
    DeepEPLLDispatchOutput,
    DeepEPNormalCombineInput,
    DeepEPNormalDispatchOutput,
)


class AdapterError(ValueError):
    """A dispatcher returned something other than what its source documents."""


def open_buffer(group: Any, **kwargs: Any) -> Any:
    """A `deep_ep.Buffer(group, **kwargs)` (imports deep_ep; see `_optional`)."""
    return require("deep_ep").Buffer(group, **kwargs)


# What get_dispatch_layout returns before its event, in its order: dispatch's keywords of the same
# names take them.
_LAYOUT_KEYWORDS = (
    "num_tokens_per_rank",
    "num_tokens_per_rdma_rank",
    "num_tokens_per_expert",
    "is_token_in_rank",
)


def normal_dispatch_output(raw: tuple[Any, ...]) -> tuple[DeepEPNormalDispatchOutput, Any]:
    """`Buffer.dispatch`'s 6-tuple as the project's output, and DeepEP's combine handle.

    The count list is passed on as DeepEP gives it (empty under `num_worst_tokens`, whose
    padding rows carry -1 ids that the runner sends to its sink); runners do not read it.
    """
    if not isinstance(raw, tuple) or len(raw) != 6:
        raise AdapterError(
            "Buffer.dispatch returns (recv_x, recv_topk_idx, recv_topk_weights, "
            "num_recv_tokens_per_expert_list, handle, event)"
        )
    recv_x, ids, weights, counts, handle, _event = raw
    if isinstance(recv_x, tuple):
        raise AdapterError(
            "deepep_normal carries bf16 activations (docs/formats.md: SGLang never dispatches fp8 "
            "over DeepEP normal on ROCm); dispatch bf16 x, not an (fp8, scales) tuple"
        )
    if ids is None or weights is None:
        raise AdapterError("dispatch with topk_idx and topk_weights: the runner needs both")
    if ids.dtype != torch.int64 or not isinstance(counts, list):
        raise AdapterError(
            f"expected int64 recv_topk_idx and a list[int] of counts, got {ids.dtype} and "
            f"{type(counts).__name__}"
        )
    output = DeepEPNormalDispatchOutput(
        hidden_states=recv_x,
        hidden_states_scale=None,
        topk_ids=ids,
        topk_weights=weights,
        num_recv_tokens_per_expert=counts,
    )
    return output, handle


class DeepEPNormal:
    """`deepep_normal` through a `deep_ep.Buffer` (intranode or internode)."""

    def __init__(
        self,
        buffer: Any,
        *,
        num_experts: int,
        num_worst_tokens: int = 0,
        expert_alignment: int = 1,
    ) -> None:
        self.buffer = buffer
        self.num_experts = num_experts
        self.num_worst_tokens = num_worst_tokens
        self.expert_alignment = expert_alignment

    def dispatch(
        self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[DeepEPNormalDispatchOutput, Any]:
        topk_idx = topk_ids.long()  # DeepEP's topk_idx is int64
        *layout, _event = self.buffer.get_dispatch_layout(topk_idx, self.num_experts)
        raw = self.buffer.dispatch(
            hidden_states,
            topk_idx=topk_idx,
            topk_weights=topk_weights,
            expert_alignment=self.expert_alignment,
            num_worst_tokens=self.num_worst_tokens,
            **dict(zip(_LAYOUT_KEYWORDS, layout, strict=True)),
        )
        return normal_dispatch_output(raw)

    def combine(self, combine_input: DeepEPNormalCombineInput, handle: Any) -> torch.Tensor:
        """The sender's `[T, H]`: DeepEP sums each token's rows (the kernel applied weights)."""
        combined, _weights, _event = self.buffer.combine(combine_input.hidden_states, handle)
        return combined  # type: ignore[no-any-return]


def unpack_ue8m0(packed: torch.Tensor) -> torch.Tensor:
    """`int32 [..., C, G/4]` of four UE8M0 bytes (group 4j+i in byte i of word j, as DeepEP's
    kernel stores `uint8` scales into its `uint32` buffer) as fp32 `[..., C, G]` powers of two."""
    # Flattened first: a size-1 last dim may keep any stride, which `view` refuses.
    as_bytes = packed.contiguous().reshape(-1).view(torch.uint8)
    return as_bytes.view(E8M0).float().reshape(*packed.shape[:-1], -1)


@dataclass(eq=False, repr=False)
class LowLatencyAdapter:
    """What the low-latency adapters share (DeepEP, NIXL and Mooncake EP carry one layout): the
    buffer, the layer's sizes, and the reading of the 5-tuple their dispatch returns."""

    buffer: Any
    _: KW_ONLY
    num_experts: int
    ep_size: int
    max_tokens_per_rank: int
    use_fp8: bool
    # The buffer's dispatch call, as errors name it.
    source: ClassVar[str]

    def dispatch_output(
        self, raw: tuple[Any, ...], topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[DeepEPLLDispatchOutput, Any]:
        """The low-latency 5-tuple (DeepEP, Mooncake EP and NIXL EP return the same) as the
        project's output, and the combine handle. `topk_ids`/`topk_weights` are this rank's own
        routing (sender side), which the low-latency combine needs back."""
        if not isinstance(raw, tuple) or len(raw) != 5:
            raise AdapterError(
                f"{self.source} returns (recv_x, packed_recv_count, handle, event, hook)"
            )
        recv_x, count, handle, _event, _hook = raw
        scale: torch.Tensor | None = None
        if isinstance(recv_x, tuple):
            recv_x, scale = recv_x
            assert scale is not None
            if scale.dtype == torch.int32:  # use_ue8m0: four UE8M0 scales per int32
                scale = unpack_ue8m0(scale)
            if scale.dtype != torch.float32 or scale.shape[:2] != recv_x.shape[:2]:
                raise AdapterError(
                    f"expected scales [L, C, H/128] fp32 (or int32 UE8M0), got {scale.dtype} "
                    f"{tuple(scale.shape)} for activations {tuple(recv_x.shape)}"
                )
        if recv_x.dim() != 3 or count.dtype != torch.int32 or count.shape != recv_x.shape[:1]:
            raise AdapterError(
                f"expected slabs [L, C, H] and int32 counts [L], got {tuple(recv_x.shape)} and "
                f"{count.dtype} {tuple(count.shape)}"
            )
        sent, top_k = topk_ids.shape
        output = DeepEPLLDispatchOutput(
            hidden_states=recv_x,
            hidden_states_scale=scale,
            topk_ids=topk_ids.long(),
            topk_weights=topk_weights,
            masked_m=count,
            expected_m=deepep_ll_expected_m(sent, self.ep_size, top_k, self.num_experts),
        )
        return output, handle


@dataclass(eq=False, repr=False, kw_only=True)
class DeepEPLowLatency(LowLatencyAdapter):
    """`deepep_ll` (bf16 wire) or `deepep_ll_fp8` through a `deep_ep.Buffer` in low-latency
    mode."""

    round_scale: bool = False
    use_ue8m0: bool = False

    # The buffer's low-latency entry points; NIXL EP names the same calls differently.
    source = "deep_ep Buffer.low_latency_dispatch"
    _dispatch_call = "low_latency_dispatch"
    _combine_call = "low_latency_combine"

    def dispatch(
        self, hidden_states: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> tuple[DeepEPLLDispatchOutput, Any]:
        raw = getattr(self.buffer, self._dispatch_call)(
            hidden_states,
            topk_ids.long(),
            self.max_tokens_per_rank,
            self.num_experts,
            use_fp8=self.use_fp8,
            round_scale=self.round_scale,
            use_ue8m0=self.use_ue8m0,
        )
        return self.dispatch_output(raw, topk_ids, topk_weights)

    def combine(self, combine_input: DeepEPLLCombineInput, handle: Any) -> torch.Tensor:
        """The sender's `[T, H]`: DeepEP weights each slot by the sender's ids and weights."""
        combined, _event, _hook = getattr(self.buffer, self._combine_call)(
            combine_input.hidden_states,
            combine_input.topk_ids,
            combine_input.topk_weights,
            handle,
        )
        return combined  # type: ignore[no-any-return]
