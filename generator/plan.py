"""Planner: every specialization decision for one combination, made once, as a record.

`plan_combination` lists the records of one combination in order; each function below makes one
record (generator/decision.py): what was decided, the matrix fact behind it, and what the module
owes to it (fragments, kernel keywords, imports, values). This is the only place that looks at
axis properties: adding a property value is one record here (and, if it needs new code, one
fragment registered in generator/fragments.py). Templates substitute; they never decide
(STYLE.md guideline 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import assert_never

from generator.decision import Decision, Import, KernelArgument, Plan
from generator.fragments import ALWAYS, NAMES
from generator.model import (
    COMBINE_INPUTS,
    ActivationRule,
    Combination,
    DispatchFormat,
    IdSpace,
    KernelQuant,
    Layout,
    Matrix,
    QuantMethod,
    RowCount,
    Sink,
    Weighting,
    WeightKind,
    Wire,
)
from generator.naming import module_name

__all__ = ["Plan", "plan_combination"]


class MaskKind(Enum):
    STANDARD = "standard"  # None at ep_size 1, else the global mask [E]
    GLOBAL = "global"  # [E], ones on this rank's slice
    SINK = "sink"  # [L+1], the last id is the sink


class IdConversion(Enum):
    NONE = "none"  # int32 ids arrive ready for the kernel
    MINUS_ONE_TO_SINK = "minus_one_to_sink"  # int64 local ids with -1 -> int32, -1 -> L
    SLAB_SLOTS = "slab_slots"  # one row per slab slot: id = slab, or the sink past masked_m


class WireHandling(Enum):
    NONE = "none"  # bf16 activations
    PASS_THROUGH = "pass_through"  # quantized rows and their scales go to the kernel as they are
    UPSCALE = "upscale"  # dequantize to the output dtype first


class RouterWeight(Enum):
    """What `apply_router_weight_on_input` (a load-time config flag) turns into."""

    REFUSED = "refused"  # the format's combine or kernel weights; the flag is a config error
    INPUT_SCALING = "input_scaling"  # standard: scale the rows (K == 1), weight 1 in the kernel
    STAGE1 = "stage1"  # the method passes it as doweight_stage1


@dataclass(frozen=True, slots=True)
class WireFacts:
    """What a wire carries, as the checked prologue bounds it, and how it is dequantized."""

    hidden_dtypes: str  # a tuple expression of torch dtypes; bf16 stands for the layer's dtype
    hidden_width: str
    scale_dtypes: str  # "" on a bf16 wire (the scale must be None)
    scale_width: str
    upscaler: str  # loadtime.bind_upscaler's name ("" where nothing dequantizes)
    group: str  # the scale group, as comments name it


_FP8 = "(torch.float8_e4m3fn, torch.float8_e4m3fnuz)"
_E8M0 = "(torch.float8_e8m0fnu, torch.uint8)"
_H = "self._layer.hidden_size"
WIRES = {
    Wire.BF16: WireFacts("(torch.bfloat16, torch.float16)", _H, "", "", "", ""),
    Wire.FP8_1X128: WireFacts(
        _FP8, _H, "(torch.float32,)", f"{_H} // 128", "dequantize_fp8_1x128", "1x128"
    ),
    # Two fp4 values per byte.
    Wire.FP4_1X32: WireFacts(
        "(torch.float4_e2m1fn_x2,)", f"{_H} // 2", _E8M0, f"{_H} // 32", "dequantize_mxfp4", "1x32"
    ),
    Wire.MXFP8_1X32: WireFacts(_FP8, _H, _E8M0, f"{_H} // 32", "dequantize_mxfp8", "1x32"),
    Wire.FP8_PER_TOKEN: WireFacts(
        _FP8, _H, "(torch.float32,)", "1", "dequantize_fp8_per_row", "row"
    ),
}


def plan_combination(matrix: Matrix, combination: Combination) -> Plan:
    """Decide everything about one combination; pure, deterministic, no I/O."""
    fmt = matrix.dispatch_format(combination.dispatch)
    quant = matrix.quant_method(combination.quant)
    kernel_quant, wire, wire_reason = _wire(fmt, quant)
    interleaved_gate_up = _interleaved_gate_up(quant)
    records = (
        _frame(fmt),
        _mask(fmt),
        _ids(fmt),
        _wire_handling(fmt, wire, wire_reason),
        _kernel_quant(fmt, quant, kernel_quant),
        _activation(quant),
        _gate_mode(interleaved_gate_up),
        _router_weight(fmt, quant),
        *_recv_cap(fmt),
        _valid_rows(fmt),
        _zero_row_guard(fmt),
        _expert_output(fmt),
        _hidden_padding(quant),
        *_static_input_scales(quant),
        _weights(quant, interleaved_gate_up),
        _layout(fmt, wire),
        _combine(fmt),
    )
    return Plan(
        combination=combination,
        module_name=module_name(combination),
        a2a=matrix.a2a_backend(combination.a2a),
        dispatch=fmt,
        quant=quant,
        records=(*records, _checked(records)),
    )


def _carries_topk_output(fmt: DispatchFormat) -> bool:
    """Only the standard dispatch output wraps ids and weights in SGLang's TopKOutput."""
    return fmt.dispatch_output == "StandardDispatchOutput"


def _carries_expert_output(fmt: DispatchFormat) -> bool:
    """Only MORI EPv2's dispatch output carries combine's staging buffer (`expert_output`)."""
    return fmt.dispatch_output == "MoriEPV2DispatchOutput"


def _frame(fmt: DispatchFormat) -> Decision:
    """What every runner has: the class check, the kernel bound at load and called once."""
    types = ("ExpertWeights", "FusedMoeKernel", "MoeLayerConfig")
    return Decision(
        ALWAYS,
        "pre-permute, AITER fused_moe, post-permute",
        "the runner contract (shared/DESIGN.md)",
        explained=False,
        load=("dispatch_types", "bind_kernel", "bind_kernel_arguments"),
        call=("dispatch_type", "kernel_call"),
        check=("dispatch_type", "routing"),
        imports=(
            Import("functools"),
            Import("typing", "Final"),
            Import("torch"),
            *(Import("moe_runtime", name) for name in ("checks", "kernels", "loadtime")),
            *(
                Import("moe_runtime.types", name)
                for name in (*types, fmt.dispatch_output, fmt.combine_input)
            ),
        ),
    )


_MASK_STEPS = {
    MaskKind.STANDARD: "mask_standard",
    MaskKind.GLOBAL: "mask_global",
    MaskKind.SINK: "mask_sink",
}


def _mask(fmt: DispatchFormat) -> Decision:
    kind, reason = _mask_kind(fmt)
    return Decision(
        "expert mask",
        kind.value,
        reason,
        load=(_MASK_STEPS[kind],),
        bound_kernel_arguments=(KernelArgument("expert_mask", NAMES.expert_mask),),
    )


def _mask_kind(fmt: DispatchFormat) -> tuple[MaskKind, str]:
    """Keyed on the sink, not the id space: the loader refuses local ids without a sink, so
    every format without one hands the kernel global ids (whatever id space it converts from)."""
    match fmt.sink:
        case Sink.LOCAL:
            return MaskKind.SINK, "ids are local with a sink id L: mask [L+1], the sink off"
        case Sink.NONE if fmt.row_count is RowCount.SHAPE:
            return (
                MaskKind.STANDARD,
                "global ids: mask [E] with this rank's slice on; none at ep_size 1; built once",
            )
        case Sink.NONE:
            return MaskKind.GLOBAL, "global ids: mask [E] with this rank's slice on, built once"
        case _:
            assert_never(fmt.sink)


def _ids(fmt: DispatchFormat) -> Decision:
    """The ids and weights the kernel gets, and the range the checked variant holds them to."""
    weights = "topk_weights"
    match fmt.id_space:
        case IdSpace.GLOBAL:
            return Decision(
                "top-k ids",
                IdConversion.NONE.value,
                "int32 global ids and fp32 weights arrive ready: no launch",
                values=_id_values("topk_ids", weights, "(torch.int32,)", "0", "num_experts"),
                device_checks="ids int32 in [0, E)",
            )
        case IdSpace.LOCAL_WITH_MINUS_ONE:
            conversion, step, high = (
                IdConversion.MINUS_ONE_TO_SINK,
                "ids_minus_one_to_sink",
                "num_local_experts",
            )
            # Local ids with -1 come with per-expert receive counts (num_recv_tokens_per_expert).
            check: tuple[str, ...] = ("recv_counts",)
            reason = (
                "one remainder by L+1 into int32 maps -1 to the sink L and keeps 0..L-1 (AITER "
                "indexes memory with the raw id, so -1 must never reach it); combine gets the "
                "original ids and weights"
            )
            device = "local ids in [-1, L) (L + 1 or -2 would alias a real expert)"
        case IdSpace.SLAB_INDEX:
            conversion, step, high = IdConversion.SLAB_SLOTS, "ids_slab_slots", "num_experts"
            check = ()
            reason = (
                "flatten [L, C, H] to one row per slot with id = slab (sink past masked_m) and "
                "weight 1: the low-latency combine applies the top-k weights"
            )
            device = "the sender's ids in [-1, E), masked_m [L] in [0, C]"
            weights = NAMES.kernel_topk_weights  # ids_slab_slots makes the slots' unit weights
        case _:
            assert_never(fmt.id_space)
    local = "(torch.int64, torch.int32)"
    return Decision(
        "top-k ids",
        conversion.value,
        reason,
        load=(step,),
        call=(step,),
        check=check,
        values=_id_values(NAMES.kernel_topk_ids, weights, local, "-1", high),
        device_checks=device,
    )


def _id_values(ids: str, weights: str, dtypes: str, low: str, high: str) -> dict[str, str]:
    """The names the kernel call reads, and the checked prologue's id bounds (`high` an
    attribute of the layer config)."""
    return {
        "kernel_ids_name": ids,
        "kernel_weights_name": weights,
        "id_dtypes": dtypes,
        "id_low": low,
        "id_high": f"self._layer.{high}",
    }


def _wire_handling(fmt: DispatchFormat, handling: WireHandling, reason: str) -> Decision:
    """How the hot path hands the wire's rows and scales to the kernel."""
    facts = WIRES[fmt.wire]
    quantized = fmt.wire is not Wire.BF16
    slabs = fmt.layout is Layout.MASKED_SLABS
    scale = "scale_slabs" if slabs else "scale_flat"
    match handling:
        case WireHandling.NONE:
            call: tuple[str, ...] = ()
        case WireHandling.PASS_THROUGH:
            call = (scale,)
        case WireHandling.UPSCALE:
            # The slab upscaler reads DeepEP's column-major scales where they lie: no copy.
            call = ("wire_upscale_slabs",) if slabs else ("scale_flat", "wire_upscale")
        case _:
            assert_never(handling)
    passed = handling is WireHandling.PASS_THROUGH
    return Decision(
        "wire",
        f"{fmt.wire.value}, {handling.value}",
        reason,
        load=("wire_upscale",) if handling is WireHandling.UPSCALE else (),
        call=call,
        check=(scale if quantized else "no_scale",),
        kernel_arguments=(KernelArgument("a1_scale", "hidden_states_scale"),) if passed else (),
        imports=(Import("typing", "cast"),) if quantized else (),
        values={
            "upscaler": facts.upscaler if handling is WireHandling.UPSCALE else "",
            "wire_group": facts.group,
            "hidden_dtypes": facts.hidden_dtypes,
            "hidden_width": facts.hidden_width,
            "scale_dtypes": facts.scale_dtypes,
            "scale_width": facts.scale_width,
        },
    )


def _kernel_quant(fmt: DispatchFormat, quant: QuantMethod, kernel_quant: KernelQuant) -> Decision:
    return Decision(
        "AITER quant type",
        kernel_quant.value,
        "the method's own type"
        if kernel_quant is quant.kernel_quant
        else f"bf16 weights with a {fmt.wire.value} wire run the pre-quantized path "
        "(docs/formats.md, wire x weight table)",
        bound_kernel_arguments=(KernelArgument("quant_type", NAMES.quant_type),),
        values={"kernel_quant": kernel_quant},
    )


def _activation(quant: QuantMethod) -> Decision:
    match quant.activation:
        case ActivationRule.LAYER:
            reason = "the layer's activation, mapped once at load (unknown names are refused)"
            step = "activation_layer"
        case ActivationRule.SWIGLU:
            reason = (
                "the method forces Swiglu, except a situ layer, which its a16w4 kernels run as "
                "Situv2 (AITER v0.1.19; SGLang 0.5.23 mxfp4.py:1455-1458)"
            )
            step = "activation_swiglu"
        case _:
            assert_never(quant.activation)
    return Decision(
        "activation",
        quant.activation.value,
        reason,
        # AITER's weight preparation depends on the activation (per_1x32: a16w4 vs a4w4 layout).
        load=(step,),
        bound_kernel_arguments=(KernelArgument("activation", NAMES.activation),),
    )


def _interleaved_gate_up(quant: QuantMethod) -> bool:
    """Whether weights with gate_mode INTERLEAVE are served (else refused)."""
    return quant.kernel_quant is KernelQuant.PER_1X32


def _gate_mode(interleaved_gate_up: bool) -> Decision:
    """Which gate/up row layouts (`ExpertWeights.gate_mode`) the method's kernels read; the
    weights' rules (`_weights`) refuse the other."""
    if interleaved_gate_up:
        return Decision(
            "gate mode",
            "the weights' (SEPARATED or INTERLEAVE), bound into the kernel at load when not "
            "SEPARATED",
            "AITER's per_1x32 kernels read both layouts by fused_moe's gate_mode (v0.1.14; "
            "aiter/fused_moe.py v0.1.20.post1:745-751, 2422-2433), and SGLang 0.5.23 passes it "
            "for both of its per_1x32 methods (moe_runner/aiter.py:228-246; "
            "quark_w4a4_mxfp4_moe.py:1089-1098)",
        )
    return Decision(
        "gate mode",
        "SEPARATED only: weights with gate_mode INTERLEAVE are refused at load",
        "AITER reads gate_mode only on its per_1x32 paths and gfx1250's a8w4 kernel "
        "(aiter/fused_moe.py v0.1.20.post1:745-776, 2422-2433, 2568), so other kernels would "
        "read interleaved rows as gate then up; SGLang 0.5.23 passes none for them",
    )


def _router_weight(fmt: DispatchFormat, quant: QuantMethod) -> Decision:
    """`apply_router_weight_on_input`: refused here, bound into the kernel, or an adapter that
    wraps the kernel after the padding one (so that it scales the rows the caller passed)."""
    topic = "apply_router_weight_on_input"
    if fmt.weighting is Weighting.COMBINE:
        reason = "the low-latency combine weights; the expert side must not"
        return Decision(topic, RouterWeight.REFUSED.value, reason, load=("router_weight_refused",))
    if quant.router_weight_in_stage1:
        return Decision(
            topic,
            RouterWeight.STAGE1.value,
            "the method passes it to the kernel as doweight_stage1",
            load=("router_weight_stage1",),
            bound_kernel_arguments=(KernelArgument("doweight_stage1", NAMES.doweight_stage1),),
        )
    if _carries_topk_output(fmt):
        return Decision(
            topic,
            RouterWeight.INPUT_SCALING.value,
            "standard scales the input rows (K == 1) and passes weights of one: a kernel adapter "
            "bound at load, so layers without the flag pay nothing per call",
            load=("router_weight_input_scaling",),
        )
    reason = "only the standard format scales input rows"
    return Decision(topic, RouterWeight.REFUSED.value, reason, load=("router_weight_refused",))


def _recv_cap(fmt: DispatchFormat) -> tuple[Decision, ...]:
    if not fmt.truncate_to_recv_cap:
        return ()
    return (
        Decision(
            "recv_cap",
            "no slice: num_local_tokens bounds the rows the kernel reads",
            "MORI's combine reads only rows below total_recv, and SGLang's cap (0.5.13 and "
            "0.5.23) never falls below total_recv, so rows past the cap are never read or "
            "computed; slicing to it on every call would cost host time and change nothing "
            "combine sees",
        ),
    )


def _valid_rows(fmt: DispatchFormat) -> Decision:
    """Which rows are real, how the kernel learns it, and the dtype of what it computes."""
    # Without an out_dtype on the wire, the low-latency output is DeepEP's bf16.
    bf16 = {"upscale_dtype": "torch.bfloat16"}
    match fmt.row_count:
        case RowCount.SHAPE:
            reason = "every row of the dispatched tensor is real"
            return Decision(
                "valid rows", "all", reason, explained=False, check=("ids_in_range",), values=bf16
            )
        case RowCount.TOTAL_RECV:
            return Decision(
                "valid rows",
                "num_local_tokens = total_recv, dtype = out_dtype",
                "rows past MORI's total_recv are stale; the kernel skips them without a host sync",
                check=("total_recv", "origin_routing"),
                kernel_arguments=(
                    KernelArgument(
                        "num_local_tokens", "dispatch_output.num_recv_tokens_per_expert"
                    ),
                    KernelArgument("dtype", "dispatch_output.out_dtype"),
                ),
                values={"upscale_dtype": "dispatch_output.out_dtype"},
                device_checks="recv_cap >= 0, total_recv in [0, kept rows]",
            )
        case RowCount.MASKED_M:
            reason = (
                "slot c of slab e is real while c < masked_m[e]; the id conversion sinks the rest"
            )
            return Decision(
                "valid rows",
                "the first masked_m[e] slots",
                reason,
                explained=False,
                check=("masked_m", "ids_in_range"),
                values=bf16,
            )
        case _:
            assert_never(fmt.row_count)


def _zero_row_guard(fmt: DispatchFormat) -> Decision:
    flat = fmt.layout is Layout.FLAT
    return Decision(
        "zero-row guard",
        "yes" if flat else "no",
        "AITER rejects M == 0 and a flat dispatch may deliver no rows"
        if flat
        else "the slab layout always has L * C > 0 rows",
        call=("zero_row_guard",) if flat else (),
    )


def _expert_output(fmt: DispatchFormat) -> Decision:
    """MORI EPv2: where the kernel writes its output."""
    if not _carries_expert_output(fmt):
        return Decision(
            "expert output",
            "the kernel allocates it",
            "the dispatch output carries no buffer for combine",
            explained=False,
            values={"bound_kernel_name": "bound_kernel"},
        )
    return Decision(
        "expert output",
        "output = dispatch_output.expert_output, handed back to combine as the kernel "
        "returns it; the kernel must take AITER's `output` keyword (refused at load "
        "otherwise)",
        "MORI EPv2's combine skips staging its copy when it gets back its own combine view "
        "(SGLang 0.5.23 token_dispatcher/moriep.py:1552-1558, moe_runner/aiter.py:249-257); "
        "padded-H weights compute wider rows and leave the copy to combine",
        load=("writes_output",),
        check=("expert_output",),
        kernel_arguments=(KernelArgument("output", "dispatch_output.expert_output"),),
        values={"bound_kernel_name": "output_kernel"},
    )


def _hidden_padding(quant: QuantMethod) -> Decision:
    if not quant.pads_hidden:
        return Decision(
            "hidden padding",
            "unpadded weights only: padded ones are refused at load",
            "the method does not pad H",
            explained=False,
            load=("refuse_hidden_pad",),
        )
    return Decision(
        "hidden padding",
        "padded weights get a kernel that pads activations and crops its output, "
        "bound at load; unpadded weights pay nothing per call",
        "the method pads H and I to multiples of 256 at load",
        load=("pads",),
        bound_kernel_arguments=(
            KernelArgument("hidden_pad", NAMES.hidden_pad),
            KernelArgument("intermediate_pad", NAMES.intermediate_pad),
        ),
    )


def _static_input_scales(quant: QuantMethod) -> tuple[Decision, ...]:
    """Static input scales are never passed (the weights' rules refuse them where absent)."""
    if not quant.static_input_scales:
        return ()
    if quant.kernel_quant is KernelQuant.PER_1X32:
        # aiter/fused_moe.py v0.1.20.post1: the per_1x32 Swiglu path sets a1_scale to None for
        # bf16 activations and computes its own e8m0 scales for fp8 and fp4 ones (3005-3039).
        reason = (
            "AITER's per_1x32 Swiglu path never reads a static activation scale: it keeps bf16 "
            "activations or quantizes them to mxfp8 or mxfp4 with its own e8m0 scales"
        )
    else:
        reason = (
            f"AITER's {quant.kernel_quant.value} activation quantizer refuses a static scale "
            "for bf16 input; the kernel quantizes each row dynamically instead (a row's own "
            "amax never exceeds the calibrated range)"
        )
    return (Decision("static input scales", "not passed", reason),)


# The shapes of a method's weight scales, fixed by its own AITER quant type.
_SCALE_SHAPES = {
    KernelQuant.NO: "channel_scale_shapes",
    KernelQuant.PER_TENSOR: "tensor_scale_shapes",
    KernelQuant.PER_TOKEN: "channel_scale_shapes",
    KernelQuant.PER_1X32: "group_scale_shapes",
    KernelQuant.PER_1X128: "block_scale_shapes",
    KernelQuant.PER_128X128: "block_scale_shapes",
}


def _weights(quant: QuantMethod, interleaved_gate_up: bool) -> Decision:
    """The method's weights: their dtypes, loadtime.check_weights' rules (one per fact, in the
    order of its messages; a fact that allows anything adds none) and shapes, and the scales and
    biases bound into the kernel."""
    rules = [
        "scales_required" if quant.has_weight_scales else "scales_refused",
        "biases_required" if quant.has_biases else "biases_refused",
        *(() if quant.static_input_scales else ("input_scales_refused",)),
        "stage1_weight_needs_flag" if quant.router_weight_in_stage1 else "stage1_weight_refused",
        *(() if interleaved_gate_up else ("interleaved_gate_up_refused",)),
    ]
    shapes = [_SCALE_SHAPES[quant.kernel_quant]] if quant.has_weight_scales else []
    shapes += ["bias_shapes"] if quant.has_biases else []
    scales = (
        KernelArgument("w1_scale", NAMES.w13_scale),
        KernelArgument("w2_scale", NAMES.w2_scale),
    )
    biases = (KernelArgument("bias1", NAMES.b13), KernelArgument("bias2", NAMES.b2))
    return Decision(
        "weights",
        f"{quant.weight_kind.value} weights",
        "the quant method's facts",
        explained=False,
        load=(
            "check_weights",
            *(("weight_scales",) if quant.has_weight_scales else ()),
            *(("biases",) if quant.has_biases else ()),
        ),
        bound_kernel_arguments=(
            *(scales if quant.has_weight_scales else ()),
            *(biases if quant.has_biases else ()),
        ),
        values={
            "weight_dtypes": _weight_dtypes(quant),
            "weight_rules": tuple(f"loadtime.{rule}" for rule in rules),
            "shape_rules": tuple(f"loadtime.{rule}" for rule in shapes),
        },
    )


def _weight_dtypes(quant: QuantMethod) -> str:
    """The weight dtypes a runner accepts, as a tuple expression."""
    if quant.weight_kind is WeightKind.FP8:
        # gfx942 normalises checkpoints to e4m3fnuz at load; gfx950 and the reference use e4m3fn.
        return "(torch.float8_e4m3fn, torch.float8_e4m3fnuz)"
    return f"(torch.{quant.weight_dtype},)"


def _layout(fmt: DispatchFormat, wire: WireHandling) -> Decision:
    """How the dispatched rows are unpacked, and the shape the expert output goes back in."""
    flat = {"output_expression": "out", "routing_rows": "hidden_states.shape[0]"}
    match fmt.layout:
        case Layout.MASKED_SLABS:
            # An upscaled wire reads the slabs in place: only their shape is unpacked.
            upscaled = wire is WireHandling.UPSCALE
            return Decision(
                "dispatch layout",
                fmt.layout.value,
                "slab e of [L, C, H] holds the rows routed to local expert e",
                explained=False,
                call=("unpack_slab_shape" if upscaled else "unpack_slabs",),
                check=("unpack_slabs", "hidden_slabs"),
                values={
                    "output_expression": "out.view(num_slabs, capacity, -1)",
                    "routing_rows": "None",
                },
            )
        case Layout.FLAT if fmt.truncate_to_recv_cap:
            unpack = "unpack_recv_cap"
        case Layout.FLAT if _carries_topk_output(fmt):
            unpack = "unpack_standard"
        case Layout.FLAT:
            unpack = "unpack_flat"
        case _:
            assert_never(fmt.layout)
    reason = "one row per (token, destination rank)"
    return Decision(
        "dispatch layout",
        fmt.layout.value,
        reason,
        explained=False,
        call=(unpack,),
        check=(unpack, "hidden_flat"),
        values=flat,
    )


# What each combine input carries besides the expert output, and why: a fact of the combine that
# reads it, whichever dispatch format feeds it. DeepEP normal's ids are the unpacked locals.
_MORI_ROUTING = ("dispatch_output.origin_topk_ids", "dispatch_output.origin_topk_weights")
_MORI_WHY = "MORI's combine sums each token's rows unweighted, routed by the sender's ids."
_COMBINE_ROUTING: dict[str, tuple[tuple[str, ...], str]] = {
    "StandardCombineInput": ((), "Ranks' outputs are summed by the all-reduce after the layer."),
    "DeepEPNormalCombineInput": (
        ("topk_ids", "topk_weights"),
        "DeepEP's combine sums each token's rows unweighted; it needs the original ids.",
    ),
    "DeepEPLLCombineInput": (
        ("dispatch_output.topk_ids", "dispatch_output.topk_weights"),
        "The low-latency combine weights each slot with the sender's ids and weights.",
    ),
    "MoriEPNormalCombineInput": (_MORI_ROUTING, _MORI_WHY),
    "MoriEPLLCombineInput": (_MORI_ROUTING, _MORI_WHY),
}
if set(_COMBINE_ROUTING) != set(COMBINE_INPUTS):
    raise RuntimeError(
        "generator/plan.py: _COMBINE_ROUTING must name every combine input of generator/model.py "
        f"(COMBINE_INPUTS), got {sorted(_COMBINE_ROUTING)} for {sorted(COMBINE_INPUTS)}"
    )


def _combine(fmt: DispatchFormat) -> Decision:
    """What the combine input carries besides the expert output, and why."""
    routing, why = _COMBINE_ROUTING[fmt.combine_input]
    return Decision(
        "combine input",
        fmt.combine_input,
        why,
        explained=False,
        call=("combine",),
        values={"combine_routing": routing, "combine_comment": why},
    )


def _checked(records: tuple[Decision, ...]) -> Decision:
    """The checked variant, whose prologue the records above contributed (their `check`)."""
    device = ", ".join(record.device_checks for record in records if record.device_checks)
    return Decision(
        "checked variant",
        f"CheckedRunner: dtypes and shapes on the host, {device} on the device",
        "select(..., checked=True) validates each dispatch output before the plain hot path; "
        "the plain Runner pays only the dispatch-output class lookup",
    )


def _wire(fmt: DispatchFormat, quant: QuantMethod) -> tuple[KernelQuant, WireHandling, str]:
    """The wire x weight table of docs/formats.md, resolved for one combination."""
    match fmt.wire:
        case Wire.BF16:
            return quant.kernel_quant, WireHandling.NONE, "bf16 rows go to the kernel as they are"
        case Wire.FP8_1X128 | Wire.FP4_1X32:
            pass
        case Wire.MXFP8_1X32:
            return _mxfp8_wire(quant)
        case Wire.FP8_PER_TOKEN:
            return _per_token_wire(quant)
        case _:
            assert_never(fmt.wire)
    fp8 = fmt.wire is Wire.FP8_1X128
    match quant.weight_kind:
        case WeightKind.BF16:
            return (
                KernelQuant.PER_128X128 if fp8 else KernelQuant.PER_1X32,
                WireHandling.PASS_THROUGH,
                "bf16 weights: the quantized rows and their scales pass straight to the kernel",
            )
        case WeightKind.FP8 | WeightKind.INT4:
            blockwise = quant.kernel_quant in (KernelQuant.PER_128X128, KernelQuant.PER_1X128)
            if fp8 and blockwise:
                return (
                    quant.kernel_quant,
                    WireHandling.PASS_THROUGH,
                    "fp8 rows with 1x128 scales are what the block-scaled kernel quantizes to",
                )
            return (
                quant.kernel_quant,
                WireHandling.UPSCALE,
                _fp8_weight_upscale_reason(quant)
                if fp8
                else "no fp8-weight kernel takes fp4 activations",
            )
        case WeightKind.FP4:
            return _fp4_weight_wire(quant, fp8)
        case _:
            assert_never(quant.weight_kind)


def _fp4_weight_wire(quant: QuantMethod, fp8: bool) -> tuple[KernelQuant, WireHandling, str]:
    if fp8:
        return (
            quant.kernel_quant,
            WireHandling.UPSCALE,
            "no fp4-weight kernel takes fp8 activations: dequantize to out_dtype",
        )
    if quant.pads_hidden:
        return (
            quant.kernel_quant,
            WireHandling.UPSCALE,
            "the a16w4 Swiglu path takes bf16 activations padded to the weights' H; "
            "fp4 values times a power-of-two scale are exact in bf16",
        )
    return (
        quant.kernel_quant,
        WireHandling.PASS_THROUGH,
        "fp4 rows with e8m0 1x32 scales are what the a4w4 kernel quantizes to",
    )


def _mxfp8_wire(quant: QuantMethod) -> tuple[KernelQuant, WireHandling, str]:
    """MX fp8 rows (e4m3 + e8m0 per 32): upscaled for every method. Even fp8 per_1x32 (mxfp8)
    weights, whose kernels compute on exactly such rows, get bf16: AITER's mxfp8 path quantizes
    `hidden_states` itself and ignores `a1_scale` (aiter/fused_moe.py e4048607a5:3074-3099, with
    a bf16/fp16-only HIP quantizer, csrc/kernels/quant_kernels.cu:1881), in every release up to
    v0.1.20.post1. SGLang 0.5.23 hands the rows over as they are (moe_runner/aiter.py:476-480)."""
    return quant.kernel_quant, WireHandling.UPSCALE, _mxfp8_upscale_reason(quant)


def _mxfp8_upscale_reason(quant: QuantMethod) -> str:
    if quant.kernel_quant is KernelQuant.PER_1X32 and quant.weight_kind is WeightKind.FP8:
        # An e4m3 value times a power of two is a bf16 value: into bf16 the upscale loses nothing.
        return (
            "AITER's mxfp8 kernels quantize bf16 input to mxfp8 themselves and ignore a1_scale "
            "(fused_moe.py e4048607a5:3074-3099)"
        )
    if quant.weight_kind is WeightKind.FP4:
        # aiter/fused_moe.py e4048607a5:3058-3120: the a16w4 path casts its input to bf16
        # without a scale, the a4w4 and a8w4 paths quantize a bf16 input themselves.
        return (
            "AITER's fp4-weight per_1x32 paths take bf16 activations and choose their own "
            "activation rounding (bf16, mxfp4 or mxfp8 by M, activation and gate mode)"
        )
    return _EXPECTED_ACTIVATIONS[quant.kernel_quant]


# What each kernel quant type takes instead of a wire it cannot read as it is.
_EXPECTED_ACTIVATIONS = {
    KernelQuant.NO: "no bf16-weight kernel takes fp8 activations with these scales",
    KernelQuant.PER_TENSOR: "the per_Tensor kernel expects one activation scale for the whole "
    "tensor",
    KernelQuant.PER_TOKEN: "the per_Token kernel expects one fp32 activation scale per row",
    KernelQuant.PER_1X32: "the per_1x32 kernels take bf16 activations or their own mx roundings",
    KernelQuant.PER_1X128: "the block-scaled kernel expects fp32 1x128 scales",
    KernelQuant.PER_128X128: "the block-scaled kernel expects fp32 1x128 scales",
}


def _per_token_wire(quant: QuantMethod) -> tuple[KernelQuant, WireHandling, str]:
    """fp8 rows with one fp32 scale each ([R, 1]): what AITER's per_Token kernels quantize to."""
    per_token = quant.kernel_quant is KernelQuant.PER_TOKEN
    if per_token and quant.weight_kind in (WeightKind.FP8, WeightKind.INT4):
        # aiter/fused_moe.py e4048607a5:3128-3141: fp8 input equal to the activation dtype goes
        # in as it is with its a1_scale; vLLM's MORI dispatch sends per_Token rows for
        # non-block fp8 (mori_prepare_finalize.py 1dbff2c76f:102-133).
        return (
            quant.kernel_quant,
            WireHandling.PASS_THROUGH,
            "fp8 rows with one fp32 scale each are what the per_Token kernel quantizes to",
        )
    reason = _EXPECTED_ACTIVATIONS[quant.kernel_quant]
    return quant.kernel_quant, WireHandling.UPSCALE, reason


def _fp8_weight_upscale_reason(quant: QuantMethod) -> str:
    """Why an fp8 wire with 1x128 scales is upscaled for a per-row or per-tensor kernel."""
    if quant.kernel_quant is KernelQuant.PER_1X32:
        # mxfp8 weights: the kernel quantizes bf16 activations to fp8 with e8m0 scales per 32
        # (aiter/fused_moe.py v0.1.20.post1:728-730, 3028-3039); fp32 1x128 scales do not fit.
        return "the kernel quantizes activations to fp8 with e8m0 scales per 32 itself"
    if quant.kernel_quant is KernelQuant.PER_TENSOR:
        # AITER's per_Tensor path repeats one [1] a1_scale over the rows (aiter/fused_moe.py
        # e4048607a5:3404-3407); 1x128 groups have no such scale.
        return "the kernel expects one activation scale for the whole tensor"
    return "the kernel expects one activation scale per row"
