"""The minimal hand-written runner of each dispatch format: variant (d) of benchmarks/host_overhead.

Each function is what a person would write for one combination, knowing it at the time of
writing: only the tensor operations the format needs (the id conversion, the low-latency
flattening with its shape-only tensors built once, an upscale where no kernel takes the wire, with
the same bound upscaler), then the kernel call and the combine input. Keyword arguments that never
change between calls (mask, enums, weight scales, biases, pads) are bound once and passed as one
mapping; per-call ones are passed by name.

The benchmark checks that each of these makes exactly the kernel call that the generated runner
makes, so the comparison is between two implementations of the same work.

The closures repeat each other's lines on purpose (the MORI ones most): each is one combination's
straight-line hot path, and a helper shared between them would put a Python call per invocation
into the baseline that `gen/hand` is measured against. What they share at build time (`Bound`,
`_Slabs`, `_upscaler`) is written once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from moe_runtime import loadtime
from moe_runtime.formats import MORI_LL_FORMATS, MORI_V2_FORMATS, MORI_WIRES, wire_of
from moe_runtime.kernels import upscale
from moe_runtime.testing import emulate
from moe_runtime.testing.recording import KernelCall
from moe_runtime.types import (
    DeepEPLLCombineInput,
    DeepEPLLDispatchOutput,
    DeepEPNormalCombineInput,
    DeepEPNormalDispatchOutput,
    ExpertWeights,
    MoeLayerConfig,
    MoriEPLLCombineInput,
    MoriEPNormalCombineInput,
    StandardCombineInput,
    StandardDispatchOutput,
)

Kernel = Callable[..., torch.Tensor]
HandWritten = Callable[[Any], Any]


class Bound(NamedTuple):
    """What every hand-written runner closes over: the kernel, the two weights as the generated
    runner passes them, and the keywords fixed at load (each builder unpacks it into locals, so
    its closure reads them as the hand-written code it stands for would)."""

    kernel: Kernel
    w13: torch.Tensor
    w2: torch.Tensor
    static: Mapping[str, Any]


# The upscaler a runner binds for each quantized wire (formats.wire_of) where its kernel cannot
# take the wire.
_WIRE_UPSCALERS: Mapping[str, upscale.UpscalerName] = {
    "fp8": "dequantize_fp8_1x128",
    "fp4": "dequantize_mxfp4",
    "mxfp8": "dequantize_mxfp8",
    "fp8_token": "dequantize_fp8_per_row",
}


def build(
    dispatch_format: str,
    kernel: Kernel,
    reference_call: KernelCall,
    config: MoeLayerConfig,
    weights: ExpertWeights,
) -> HandWritten:
    """The hand-written runner of `dispatch_format` around `kernel`.

    `reference_call` is the generated runner's kernel call on some input: the load-time keyword
    arguments are taken from it, and its activations' dtype says whether the combination
    upscales a quantized wire (a plan decision of the matrix, not something to re-derive here).
    """
    if weights.hidden_pad:
        raise ValueError(
            "the hand-written runners are written for weights without hidden padding, got "
            f"hidden_pad={weights.hidden_pad}"
        )
    quantized_wire = wire_of(dispatch_format) in _WIRE_UPSCALERS
    upscale = quantized_wire and reference_call.tensor("hidden_states").dtype in (
        torch.bfloat16,
        torch.float16,
    )
    per_call = {"num_local_tokens", "dtype"} if dispatch_format in MORI_WIRES else set()
    if dispatch_format in MORI_V2_FORMATS:
        per_call.add("output")
    if quantized_wire and not upscale:
        per_call.add("a1_scale")
    static = {k: v for k, v in reference_call.kwargs.items() if k not in per_call}
    w13, w2 = reference_call.tensor("w1"), reference_call.tensor("w2")
    bound = Bound(kernel, w13, w2, static)
    rows = reference_call.tensor("hidden_states").shape[0]
    if dispatch_format == emulate.STANDARD:
        return standard(bound)
    if dispatch_format == emulate.DEEPEP_NORMAL:
        return deepep_normal(bound, config.num_local_experts)
    slabs = _Slabs(config.num_local_experts, rows, w13.device)
    if dispatch_format == emulate.DEEPEP_LL:
        return deepep_ll(bound, slabs)
    if dispatch_format == emulate.DEEPEP_LL_FP8 and upscale:
        return deepep_ll_fp8_upscale(bound, slabs)
    if dispatch_format == emulate.DEEPEP_LL_FP8:
        return deepep_ll_fp8(bound, slabs)
    if dispatch_format in MORI_V2_FORMATS:
        return mori_v2(bound, dispatch_format, upscale)
    low_latency = dispatch_format in MORI_LL_FORMATS
    combine = MoriEPLLCombineInput if low_latency else MoriEPNormalCombineInput
    if not quantized_wire:
        return mori_bf16(bound, combine)
    if not upscale:
        return mori_pass_through(bound, combine)
    return mori_upscale(bound, combine, _upscaler(dispatch_format, w13.device))


def _upscaler(dispatch_format: str, device: torch.device) -> upscale.Upscaler:
    """The bound upscaler of a MORI quantized wire, the one the generated runner binds."""
    return loadtime.bind_upscaler(_WIRE_UPSCALERS[wire_of(dispatch_format)], device)


def standard(bound: Bound) -> HandWritten:
    kernel, w13, w2, static = bound

    def run(d: StandardDispatchOutput) -> StandardCombineInput:
        hidden_states = d.hidden_states
        if hidden_states.shape[0] == 0:
            return StandardCombineInput(hidden_states)
        topk = d.topk_output
        out = kernel(hidden_states, w13, w2, topk.topk_weights, topk.topk_ids, **static)
        return StandardCombineInput(out)

    return run


def deepep_normal(bound: Bound, num_local_experts: int) -> HandWritten:
    kernel, w13, w2, static = bound
    modulus = num_local_experts + 1  # -1 % (L + 1) == L, the sink

    def run(d: DeepEPNormalDispatchOutput) -> DeepEPNormalCombineInput:
        hidden_states = d.hidden_states
        if hidden_states.shape[0] == 0:
            return DeepEPNormalCombineInput(hidden_states, d.topk_ids, d.topk_weights)
        ids = torch.empty(d.topk_ids.shape, dtype=torch.int32, device=hidden_states.device)
        torch.remainder(d.topk_ids, modulus, out=ids)
        out = kernel(hidden_states, w13, w2, d.topk_weights, ids, **static)
        return DeepEPNormalCombineInput(out, d.topk_ids, d.topk_weights)

    return run


class _Slabs:
    """What the low-latency flattening needs that depends only on the slab shape, built once
    for the capacity the benchmark input has: [L, 1] int32 slab ids, the sink id L as a 0-dim
    device tensor (`torch.where` with a Python scalar would fill one on every call), the slot
    index [C] and the unit weights [L * C, 1]."""

    def __init__(self, num_local_experts: int, rows: int, device: torch.device) -> None:
        capacity = rows // num_local_experts
        self.ids = torch.arange(num_local_experts, dtype=torch.int32, device=device).unsqueeze(1)
        self.sink = torch.full((), num_local_experts, dtype=torch.int32, device=device)
        self.slot = torch.arange(capacity, dtype=torch.int32, device=device)
        self.unit_weights = torch.ones((rows, 1), dtype=torch.float32, device=device)


def deepep_ll(bound: Bound, s: _Slabs) -> HandWritten:
    kernel, w13, w2, static = bound

    def run(d: DeepEPLLDispatchOutput) -> DeepEPLLCombineInput:
        slabs, capacity, hidden = d.hidden_states.shape
        rows = slabs * capacity
        ids = torch.where(s.slot < d.masked_m.unsqueeze(1), s.ids, s.sink).view(rows, 1)
        out = kernel(d.hidden_states.view(rows, hidden), w13, w2, s.unit_weights, ids, **static)
        return DeepEPLLCombineInput(out.view(slabs, capacity, -1), d.topk_ids, d.topk_weights)

    return run


def deepep_ll_fp8(bound: Bound, s: _Slabs) -> HandWritten:
    kernel, w13, w2, static = bound

    def run(d: DeepEPLLDispatchOutput) -> DeepEPLLCombineInput:
        slabs, capacity, hidden = d.hidden_states.shape
        rows = slabs * capacity
        scale = d.hidden_states_scale.reshape(rows, -1)  # type: ignore[union-attr]
        ids = torch.where(s.slot < d.masked_m.unsqueeze(1), s.ids, s.sink).view(rows, 1)
        out = kernel(
            d.hidden_states.view(rows, hidden), w13, w2, s.unit_weights, ids, a1_scale=scale,
            **static,
        )
        return DeepEPLLCombineInput(out.view(slabs, capacity, -1), d.topk_ids, d.topk_weights)

    return run


def deepep_ll_fp8_upscale(bound: Bound, s: _Slabs) -> HandWritten:
    kernel, w13, w2, static = bound
    dequantize = loadtime.bind_upscaler("dequantize_fp8_1x128", w13.device)

    def run(d: DeepEPLLDispatchOutput) -> DeepEPLLCombineInput:
        slabs, capacity, hidden = d.hidden_states.shape
        rows = slabs * capacity
        # The scales stay column-major: the upscaler reads them in place.
        hidden_states = dequantize(
            d.hidden_states, d.hidden_states_scale, torch.bfloat16  # type: ignore[arg-type]
        ).view(rows, hidden)
        ids = torch.where(s.slot < d.masked_m.unsqueeze(1), s.ids, s.sink).view(rows, 1)
        out = kernel(hidden_states, w13, w2, s.unit_weights, ids, **static)
        return DeepEPLLCombineInput(out.view(slabs, capacity, -1), d.topk_ids, d.topk_weights)

    return run


MoriCombine = type[MoriEPNormalCombineInput] | type[MoriEPLLCombineInput]


def mori_bf16(bound: Bound, combine: MoriCombine) -> HandWritten:
    kernel, w13, w2, static = bound

    def run(d: Any) -> Any:
        hidden_states = d.hidden_states
        if hidden_states.shape[0] == 0:
            return combine(hidden_states, d.origin_topk_ids, d.origin_topk_weights)
        out = kernel(
            hidden_states, w13, w2, d.topk_weights, d.topk_ids,
            num_local_tokens=d.num_recv_tokens_per_expert, dtype=d.out_dtype, **static,
        )
        return combine(out, d.origin_topk_ids, d.origin_topk_weights)

    return run


def mori_pass_through(bound: Bound, combine: MoriCombine) -> HandWritten:
    kernel, w13, w2, static = bound

    def run(d: Any) -> Any:
        hidden_states = d.hidden_states
        if hidden_states.shape[0] == 0:
            return combine(hidden_states, d.origin_topk_ids, d.origin_topk_weights)
        out = kernel(
            hidden_states, w13, w2, d.topk_weights, d.topk_ids,
            a1_scale=d.hidden_states_scale, num_local_tokens=d.num_recv_tokens_per_expert,
            dtype=d.out_dtype, **static,
        )
        return combine(out, d.origin_topk_ids, d.origin_topk_weights)

    return run


def mori_upscale(
    bound: Bound,
    combine: MoriCombine,
    dequantize: upscale.Upscaler,
) -> HandWritten:
    kernel, w13, w2, static = bound

    def run(d: Any) -> Any:
        wire = d.hidden_states
        if wire.shape[0] == 0:
            return combine(wire, d.origin_topk_ids, d.origin_topk_weights)
        hidden_states = dequantize(wire, d.hidden_states_scale, d.out_dtype)
        out = kernel(
            hidden_states, w13, w2, d.topk_weights, d.topk_ids,
            num_local_tokens=d.num_recv_tokens_per_expert, dtype=d.out_dtype, **static,
        )
        return combine(out, d.origin_topk_ids, d.origin_topk_weights)

    return run


def mori_v2(bound: Bound, dispatch_format: str, upscale: bool) -> HandWritten:
    """MORI EPv2: the normal format's call with the expert output written into combine's buffer
    (`output=d.expert_output`); the wire as it arrives, its scales passed, or upscaled."""
    kernel, w13, w2, static = bound
    combine = MoriEPNormalCombineInput
    if dispatch_format == emulate.MORI_V2:

        def run_bf16(d: Any) -> Any:
            hidden_states = d.hidden_states
            if hidden_states.shape[0] == 0:
                return combine(hidden_states, d.origin_topk_ids, d.origin_topk_weights)
            out = kernel(
                hidden_states, w13, w2, d.topk_weights, d.topk_ids,
                num_local_tokens=d.num_recv_tokens_per_expert, dtype=d.out_dtype,
                output=d.expert_output, **static,
            )
            return combine(out, d.origin_topk_ids, d.origin_topk_weights)

        return run_bf16
    if not upscale:

        def run_pass_through(d: Any) -> Any:
            hidden_states = d.hidden_states
            if hidden_states.shape[0] == 0:
                return combine(hidden_states, d.origin_topk_ids, d.origin_topk_weights)
            out = kernel(
                hidden_states, w13, w2, d.topk_weights, d.topk_ids,
                a1_scale=d.hidden_states_scale, num_local_tokens=d.num_recv_tokens_per_expert,
                dtype=d.out_dtype, output=d.expert_output, **static,
            )
            return combine(out, d.origin_topk_ids, d.origin_topk_weights)

        return run_pass_through
    dequantize = _upscaler(dispatch_format, w13.device)

    def run_upscaled(d: Any) -> Any:
        wire = d.hidden_states
        if wire.shape[0] == 0:
            return combine(wire, d.origin_topk_ids, d.origin_topk_weights)
        hidden_states = dequantize(wire, d.hidden_states_scale, d.out_dtype)
        out = kernel(
            hidden_states, w13, w2, d.topk_weights, d.topk_ids,
            num_local_tokens=d.num_recv_tokens_per_expert, dtype=d.out_dtype,
            output=d.expert_output, **static,
        )
        return combine(out, d.origin_topk_ids, d.origin_topk_weights)

    return run_upscaled
