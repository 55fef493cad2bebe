"""Planner: every specialization decision for one combination, made once, with its reason.

The plan is the only place that looks at axis properties. Templates receive its fields and
substitute them; they never decide (STYLE.md guideline 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import assert_never

from generator.checked import CheckPlan, plan_checks
from generator.fragments import NAMES
from generator.model import (
    A2ABackend,
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
class Decision:
    """One specialization decision, as `--explain` prints it."""

    topic: str
    choice: str
    reason: str


@dataclass(frozen=True, slots=True)
class KernelArgument:
    keyword: str
    expression: str  # Python source in the generated hot path


@dataclass(frozen=True, slots=True)
class Plan:
    """Every decision for one combination, and the names and expressions its module is made of."""

    combination: Combination
    module_name: str
    a2a: A2ABackend
    dispatch: DispatchFormat
    quant: QuantMethod
    kernel_quant: KernelQuant
    mask: MaskKind
    ids: IdConversion
    wire: WireHandling
    router_weight: RouterWeight
    decisions: tuple[Decision, ...]
    # What the templates substitute, decided here.
    imports: tuple[str, ...]
    load_fragments: tuple[str, ...]
    call_fragments: tuple[str, ...]
    weight_rules: tuple[str, ...]  # loadtime.check_weights' rules of the method's weights
    shape_rules: tuple[str, ...]  # loadtime.check_weights' shapes of its scales and biases
    weight_dtypes: str  # a tuple expression of torch dtypes
    kernel_ids_name: str
    kernel_weights_name: str
    bound_kernel_name: str  # the load-time local the kernel arguments are bound into
    kernel_arguments: tuple[KernelArgument, ...]  # passed on every call
    bound_kernel_arguments: tuple[KernelArgument, ...]  # bound into the kernel at load
    upscaler: str  # the upscaler of an upscaled wire ("" otherwise): loadtime.bind_upscaler's name
    wire_group: str
    upscale_dtype: str
    output_expression: str
    combine_routing: tuple[str, ...]
    combine_comment: str
    checks: CheckPlan  # the checked variant's validation prologue (generator/checked.py)

    def combine_call(self, hidden_states: str, *, indent: int) -> str:
        """The combine input built around `hidden_states`, one argument a line when several."""
        arguments = (hidden_states, *self.combine_routing)
        if len(arguments) == 1:
            return f"{self.dispatch.combine_input}({hidden_states})"
        inner = " " * (indent + 4)
        lines = "".join(f"{inner}{argument},\n" for argument in arguments)
        return f"{self.dispatch.combine_input}(\n{lines}{' ' * indent})"


def _carries_topk_output(fmt: DispatchFormat) -> bool:
    """Only the standard dispatch output wraps ids and weights in SGLang's TopKOutput."""
    return fmt.dispatch_output == "StandardDispatchOutput"


def _carries_expert_output(fmt: DispatchFormat) -> bool:
    """Only MORI EPv2's dispatch output carries combine's staging buffer (`expert_output`)."""
    return fmt.dispatch_output == "MoriEPV2DispatchOutput"


# Per quantized wire: the runtime function that dequantizes it, and its scale group.
_UPSCALERS = {
    Wire.FP8_1X128: "dequantize_fp8_1x128",
    Wire.FP4_1X32: "dequantize_mxfp4",
    Wire.MXFP8_1X32: "dequantize_mxfp8",
    Wire.FP8_PER_TOKEN: "dequantize_fp8_per_row",
}
_WIRE_GROUPS = {
    Wire.BF16: "",
    Wire.FP8_1X128: "1x128",
    Wire.FP4_1X32: "1x32",
    Wire.MXFP8_1X32: "1x32",
    Wire.FP8_PER_TOKEN: "row",
}


def plan_combination(matrix: Matrix, combination: Combination) -> Plan:
    """Decide everything about one combination; pure, deterministic, no I/O."""
    fmt = matrix.dispatch_format(combination.dispatch)
    quant = matrix.quant_method(combination.quant)
    mask, mask_reason = _mask(fmt)
    ids, ids_reason = _ids(fmt)
    kernel_quant, wire, wire_reason = _wire(fmt, quant)
    router_weight, router_reason = _router_weight(fmt, quant)
    checks = plan_checks(fmt)
    decisions = (
        Decision("expert mask", mask.value, mask_reason),
        Decision("top-k ids", ids.value, ids_reason),
        Decision("wire", f"{fmt.wire.value}, {wire.value}", wire_reason),
        _kernel_quant_decision(fmt, quant, kernel_quant),
        Decision("activation", quant.activation.value, _activation_reason(quant)),
        _gate_mode_decision(_interleaved_gate_up(quant)),
        Decision("apply_router_weight_on_input", router_weight.value, router_reason),
        *_row_decisions(fmt),
        *_expert_output_decisions(fmt),
        *_method_decisions(quant),
        _checked_decision(checks),
    )
    num_local_tokens = fmt.row_count is RowCount.TOTAL_RECV
    slabs = fmt.layout is Layout.MASKED_SLABS
    return Plan(
        combination=combination,
        module_name=module_name(combination),
        a2a=matrix.a2a_backend(combination.a2a),
        dispatch=fmt,
        quant=quant,
        kernel_quant=kernel_quant,
        mask=mask,
        ids=ids,
        wire=wire,
        router_weight=router_weight,
        decisions=decisions,
        imports=_imports(fmt, wire),
        load_fragments=_load_fragments(
            quant, mask, ids, router_weight, wire, _carries_expert_output(fmt)
        ),
        call_fragments=_call_fragments(fmt, ids, wire),
        weight_rules=_weight_rules(quant),
        shape_rules=_shape_rules(quant),
        weight_dtypes=_weight_dtypes(quant),
        kernel_ids_name="topk_ids" if ids is IdConversion.NONE else NAMES.kernel_topk_ids,
        kernel_weights_name=NAMES.kernel_topk_weights if slabs else "topk_weights",
        bound_kernel_name="output_kernel" if _carries_expert_output(fmt) else "bound_kernel",
        kernel_arguments=_kernel_arguments(fmt, wire, num_local_tokens),
        bound_kernel_arguments=_bound_kernel_arguments(quant, router_weight),
        # Without an out_dtype on the wire, the low-latency output is DeepEP's bf16.
        upscaler=_UPSCALERS[fmt.wire] if wire is WireHandling.UPSCALE else "",
        wire_group=_WIRE_GROUPS[fmt.wire],
        upscale_dtype="dispatch_output.out_dtype" if num_local_tokens else "torch.bfloat16",
        output_expression="out.view(num_slabs, capacity, -1)" if slabs else "out",
        combine_routing=_combine_routing(fmt),
        combine_comment=_combine_comment(fmt),
        checks=checks,
    )


def _kernel_quant_decision(
    fmt: DispatchFormat, quant: QuantMethod, kernel_quant: KernelQuant
) -> Decision:
    return Decision(
        "AITER quant type",
        kernel_quant.value,
        "the method's own type"
        if kernel_quant is quant.kernel_quant
        else f"bf16 weights with a {fmt.wire.value} wire run the pre-quantized path "
        "(docs/formats.md, wire x weight table)",
    )


def _row_decisions(fmt: DispatchFormat) -> tuple[Decision, ...]:
    """Which rows the kernel reads: MORI's receive cap and valid rows, the zero-row guard."""
    decisions = []
    if fmt.truncate_to_recv_cap:
        decisions.append(
            Decision(
                "recv_cap",
                "no slice: num_local_tokens bounds the rows the kernel reads",
                "MORI's combine reads only rows below total_recv, and SGLang's cap (0.5.13 and "
                "0.5.23) never falls below total_recv, so rows past the cap are never read or "
                "computed; slicing to it on every call would cost host time and change nothing "
                "combine sees",
            )
        )
    if fmt.row_count is RowCount.TOTAL_RECV:
        decisions.append(
            Decision(
                "valid rows",
                "num_local_tokens = total_recv, dtype = out_dtype",
                "rows past MORI's total_recv are stale; the kernel skips them without a host sync",
            )
        )
    zero_row_guard = _zero_row_guard(fmt)
    decisions.append(
        Decision(
            "zero-row guard",
            "yes" if zero_row_guard else "no",
            "AITER rejects M == 0 and a flat dispatch may deliver no rows"
            if zero_row_guard
            else "the slab layout always has L * C > 0 rows",
        )
    )
    return tuple(decisions)


def _expert_output_decisions(fmt: DispatchFormat) -> tuple[Decision, ...]:
    """MORI EPv2: where the kernel writes its output."""
    if not _carries_expert_output(fmt):
        return ()
    return (
        Decision(
            "expert output",
            "output = dispatch_output.expert_output, handed back to combine as the kernel "
            "returns it; the kernel must take AITER's `output` keyword (refused at load "
            "otherwise)",
            "MORI EPv2's combine skips staging its copy when it gets back its own combine view "
            "(SGLang 0.5.23 token_dispatcher/moriep.py:1552-1558, moe_runner/aiter.py:249-257); "
            "padded-H weights compute wider rows and leave the copy to combine",
        ),
    )


def _method_decisions(quant: QuantMethod) -> tuple[Decision, ...]:
    """What the quant method's padding and static input scales turn into."""
    decisions = []
    if quant.pads_hidden:
        decisions.append(
            Decision(
                "hidden padding",
                "padded weights get a kernel that pads activations and crops its output, "
                "bound at load; unpadded weights pay nothing per call",
                "the method pads H and I to multiples of 256 at load",
            )
        )
    if quant.static_input_scales:
        decisions.append(
            Decision("static input scales", "not passed", _static_scales_reason(quant))
        )
    return tuple(decisions)


def _static_scales_reason(quant: QuantMethod) -> str:
    if quant.kernel_quant is KernelQuant.PER_1X32:
        # aiter/fused_moe.py v0.1.20.post1: the per_1x32 Swiglu path sets a1_scale to None for
        # bf16 activations and computes its own e8m0 scales for fp8 and fp4 ones (3005-3039).
        return (
            "AITER's per_1x32 Swiglu path never reads a static activation scale: it keeps bf16 "
            "activations or quantizes them to mxfp8 or mxfp4 with its own e8m0 scales"
        )
    return (
        f"AITER's {quant.kernel_quant.value} activation quantizer refuses a static scale "
        "for bf16 input; the kernel quantizes each row dynamically instead (a row's own "
        "amax never exceeds the calibrated range)"
    )


def _checked_decision(checks: CheckPlan) -> Decision:
    return Decision(
        "checked variant",
        checks.summary,
        "select(..., checked=True) validates each dispatch output before the plain hot path; "
        "the plain Runner pays only the dispatch-output class lookup",
    )


def _zero_row_guard(fmt: DispatchFormat) -> bool:
    return fmt.layout is Layout.FLAT


def _interleaved_gate_up(quant: QuantMethod) -> bool:
    """Whether weights with gate_mode INTERLEAVE are served (else refused)."""
    return quant.kernel_quant is KernelQuant.PER_1X32


def _imports(fmt: DispatchFormat, wire: WireHandling) -> tuple[str, ...]:
    typing_names = ["Final"] + (["cast"] if fmt.wire is not Wire.BF16 else [])
    lines = [
        "import functools",
        f"from typing import {', '.join(sorted(typing_names))}",
        "",
        "import torch",
        "",
        "from moe_runtime import checks, kernels, loadtime",
    ]
    type_names = sorted(
        {
            "ExpertWeights",
            "FusedMoeKernel",
            "MoeLayerConfig",
            fmt.dispatch_output,
            fmt.combine_input,
        }
    )
    lines.append("from moe_runtime.types import (")
    lines.extend(f"    {name}," for name in type_names)
    lines.append(")")
    return tuple(lines)


# Fragment names (generator/fragments.py registers each) by decision, spelled out rather than
# built from enum values, so that renaming a value cannot silently rename a file.
_ROUTER_WEIGHT_CHECKS: dict[RouterWeight, tuple[str, ...]] = {
    RouterWeight.REFUSED: ("router_weight_refused",),
    RouterWeight.INPUT_SCALING: (),
    RouterWeight.STAGE1: ("router_weight_stage1",),
}
_ACTIVATION_STEPS = {
    ActivationRule.LAYER: "activation_layer",
    ActivationRule.SWIGLU: "activation_swiglu",
}
_MASK_STEPS = {
    MaskKind.STANDARD: "mask_standard",
    MaskKind.GLOBAL: "mask_global",
    MaskKind.SINK: "mask_sink",
}
# The same names at load (what the conversion needs built once) and in the hot path.
_ID_STEPS: dict[IdConversion, tuple[str, ...]] = {
    IdConversion.NONE: (),
    IdConversion.MINUS_ONE_TO_SINK: ("ids_minus_one_to_sink",),
    IdConversion.SLAB_SLOTS: ("ids_slab_slots",),
}


def _load_fragments(
    quant: QuantMethod,
    mask: MaskKind,
    ids: IdConversion,
    router_weight: RouterWeight,
    wire: WireHandling,
    expert_output: bool,
) -> tuple[str, ...]:
    steps = [
        "check_weights",
        "dispatch_types",
        # Refused or bound into the kernel here; input scaling wraps the kernel further down.
        *_ROUTER_WEIGHT_CHECKS[router_weight],
        # AITER's weight preparation depends on the activation (per_1x32: a16w4 vs a4w4 layout).
        _ACTIVATION_STEPS[quant.activation],
        *(() if quant.pads_hidden else ("refuse_hidden_pad",)),
        "bind_kernel",
    ]
    if quant.has_weight_scales:
        steps.append("weight_scales")
    if quant.has_biases:
        steps.append("biases")
    if quant.pads_hidden:
        steps.append("pads")
    if router_weight is RouterWeight.INPUT_SCALING:
        # After the padding adapter, so that it scales the rows the caller passed.
        steps.append("router_weight_input_scaling")
    steps.append(_MASK_STEPS[mask])
    steps += _ID_STEPS[ids]
    if wire is WireHandling.UPSCALE:
        steps.append("wire_upscale")
    if expert_output:
        steps.append("writes_output")
    # Last: it binds what the steps above stored.
    steps.append("bind_kernel_arguments")
    return tuple(steps)


def _call_fragments(fmt: DispatchFormat, ids: IdConversion, wire: WireHandling) -> tuple[str, ...]:
    """The hot path, step by step: each name is a template under templates/fragments/call/, and
    each renders code (what the load time bound into the kernel is no step here)."""
    quantized_wire = fmt.wire is not Wire.BF16
    steps = ["dispatch_type"]
    match fmt.layout:
        case Layout.MASKED_SLABS if wire is WireHandling.UPSCALE:
            # The upscaler reads DeepEP's column-major scales where they lie: no copy.
            steps += ["unpack_slab_shape"]
        case Layout.MASKED_SLABS:
            steps += ["unpack_slabs"] + (["scale_slabs"] if quantized_wire else [])
        case Layout.FLAT if fmt.truncate_to_recv_cap:
            steps += ["unpack_recv_cap"] + (["scale_flat"] if quantized_wire else [])
        case Layout.FLAT:
            unpack = "unpack_standard" if _carries_topk_output(fmt) else "unpack_flat"
            steps += [unpack] + (["scale_flat"] if quantized_wire else [])
        case _:
            assert_never(fmt.layout)
    if _zero_row_guard(fmt):
        steps.append("zero_row_guard")
    steps += _ID_STEPS[ids]
    if wire is WireHandling.UPSCALE:
        slabs = fmt.layout is Layout.MASKED_SLABS
        steps.append("wire_upscale_slabs" if slabs else "wire_upscale")
    steps += ["kernel_call", "combine"]
    return tuple(steps)


def _weight_rules(quant: QuantMethod) -> tuple[str, ...]:
    """The method's weight rules (moe_runtime.loadtime), one per fact, in the order of its
    messages; a fact that allows anything (static input scales, interleaved rows) adds none."""
    rules = [
        "scales_required" if quant.has_weight_scales else "scales_refused",
        "biases_required" if quant.has_biases else "biases_refused",
    ]
    if not quant.static_input_scales:
        rules.append("input_scales_refused")
    rules.append(
        "stage1_weight_needs_flag" if quant.router_weight_in_stage1 else "stage1_weight_refused"
    )
    if not _interleaved_gate_up(quant):
        rules.append("interleaved_gate_up_refused")
    return tuple(f"loadtime.{rule}" for rule in rules)


# The shapes of a method's weight scales, fixed by its own AITER quant type.
_SCALE_SHAPES = {
    KernelQuant.NO: "channel_scale_shapes",
    KernelQuant.PER_TENSOR: "tensor_scale_shapes",
    KernelQuant.PER_TOKEN: "channel_scale_shapes",
    KernelQuant.PER_1X32: "group_scale_shapes",
    KernelQuant.PER_1X128: "block_scale_shapes",
    KernelQuant.PER_128X128: "block_scale_shapes",
}


def _shape_rules(quant: QuantMethod) -> tuple[str, ...]:
    """The tensors the method adds to the weights' shape check (moe_runtime.loadtime)."""
    rules = [_SCALE_SHAPES[quant.kernel_quant]] if quant.has_weight_scales else []
    if quant.has_biases:
        rules.append("bias_shapes")
    return tuple(f"loadtime.{rule}" for rule in rules)


def _weight_dtypes(quant: QuantMethod) -> str:
    """The weight dtypes a runner accepts, as a tuple expression."""
    if quant.weight_kind is WeightKind.FP8:
        # gfx942 normalises checkpoints to e4m3fnuz at load; gfx950 and the reference use e4m3fn.
        return "(torch.float8_e4m3fn, torch.float8_e4m3fnuz)"
    return f"(torch.{quant.weight_dtype},)"


def _combine_routing(fmt: DispatchFormat) -> tuple[str, ...]:
    """What the combine input carries besides the expert output."""
    match fmt.id_space:
        case IdSpace.GLOBAL if fmt.row_count is RowCount.TOTAL_RECV:
            return ("dispatch_output.origin_topk_ids", "dispatch_output.origin_topk_weights")
        case IdSpace.GLOBAL:
            return ()
        case IdSpace.LOCAL_WITH_MINUS_ONE:
            return ("topk_ids", "topk_weights")
        case IdSpace.SLAB_INDEX:
            return ("dispatch_output.topk_ids", "dispatch_output.topk_weights")
        case _:
            assert_never(fmt.id_space)


def _combine_comment(fmt: DispatchFormat) -> str:
    match fmt.id_space:
        case IdSpace.GLOBAL if fmt.row_count is RowCount.TOTAL_RECV:
            return "MORI's combine sums each token's rows unweighted, routed by the sender's ids."
        case IdSpace.GLOBAL:
            return "Ranks' outputs are summed by the all-reduce after the layer."
        case IdSpace.LOCAL_WITH_MINUS_ONE:
            return "DeepEP's combine sums each token's rows unweighted; it needs the original ids."
        case IdSpace.SLAB_INDEX:
            return "The low-latency combine weights each slot with the sender's ids and weights."
        case _:
            assert_never(fmt.id_space)


def _mask(fmt: DispatchFormat) -> tuple[MaskKind, str]:
    match fmt.sink:
        case Sink.LOCAL:
            return MaskKind.SINK, "ids are local with a sink id L: mask [L+1], the sink off"
        case Sink.NONE:
            pass
        case _:
            assert_never(fmt.sink)
    match fmt.id_space:
        case IdSpace.GLOBAL if fmt.row_count is RowCount.SHAPE:
            return (
                MaskKind.STANDARD,
                "global ids: mask [E] with this rank's slice on; none at ep_size 1; built once",
            )
        case IdSpace.GLOBAL:
            return MaskKind.GLOBAL, "global ids: mask [E] with this rank's slice on, built once"
        case IdSpace.LOCAL_WITH_MINUS_ONE | IdSpace.SLAB_INDEX:
            # The loader refuses these id spaces without a sink.
            return MaskKind.SINK, "local ids need a sink"
        case _:
            assert_never(fmt.id_space)


def _ids(fmt: DispatchFormat) -> tuple[IdConversion, str]:
    match fmt.id_space:
        case IdSpace.GLOBAL:
            return IdConversion.NONE, "int32 global ids and fp32 weights arrive ready: no launch"
        case IdSpace.LOCAL_WITH_MINUS_ONE:
            return (
                IdConversion.MINUS_ONE_TO_SINK,
                "one remainder by L+1 into int32 maps -1 to the sink L and keeps 0..L-1 (AITER "
                "indexes memory with the raw id, so -1 must never reach it); combine gets the "
                "original ids and weights",
            )
        case IdSpace.SLAB_INDEX:
            return (
                IdConversion.SLAB_SLOTS,
                "flatten [L, C, H] to one row per slot with id = slab (sink past masked_m) and "
                "weight 1: the low-latency combine applies the top-k weights",
            )
        case _:
            assert_never(fmt.id_space)


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
        case _:
            assert_never(quant.weight_kind)



def _mxfp8_wire(quant: QuantMethod) -> tuple[KernelQuant, WireHandling, str]:
    """MX fp8 rows (e4m3 + e8m0 per 32): what AITER's per_1x32 kernels read for fp8 weights."""
    if quant.kernel_quant is KernelQuant.PER_1X32 and quant.weight_kind is WeightKind.FP8:
        # aiter/fused_moe.py e4048607a5:772-774 (fp8 per_1x32 weights: fp8 activations with e8m0
        # scales per 32); SGLang 0.5.23 moe_runner/aiter.py:472-485 hands them straight over.
        return (
            quant.kernel_quant,
            WireHandling.PASS_THROUGH,
            "fp8 rows with e8m0 1x32 scales are what the mxfp8 kernel quantizes to",
        )
    return quant.kernel_quant, WireHandling.UPSCALE, _mxfp8_upscale_reason(quant)


def _mxfp8_upscale_reason(quant: QuantMethod) -> str:
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


def _activation_reason(quant: QuantMethod) -> str:
    match quant.activation:
        case ActivationRule.LAYER:
            return "the layer's activation, mapped once at load (unknown names are refused)"
        case ActivationRule.SWIGLU:
            return (
                "the method forces Swiglu, except a situ layer, which its a16w4 kernels run as "
                "Situv2 (AITER v0.1.19; SGLang 0.5.23 mxfp4.py:1455-1458)"
            )
        case _:
            assert_never(quant.activation)


def _gate_mode_decision(interleaved_gate_up: bool) -> Decision:
    """Which gate/up row layouts (`ExpertWeights.gate_mode`) the method's kernels read."""
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


def _router_weight(fmt: DispatchFormat, quant: QuantMethod) -> tuple[RouterWeight, str]:
    if fmt.weighting is Weighting.COMBINE:
        return RouterWeight.REFUSED, "the low-latency combine weights; the expert side must not"
    if quant.router_weight_in_stage1:
        return RouterWeight.STAGE1, "the method passes it to the kernel as doweight_stage1"
    if _carries_topk_output(fmt):
        return (
            RouterWeight.INPUT_SCALING,
            "standard scales the input rows (K == 1) and passes weights of one: a kernel adapter "
            "bound at load, so layers without the flag pay nothing per call",
        )
    return RouterWeight.REFUSED, "only the standard format scales input rows"


def _kernel_arguments(
    fmt: DispatchFormat, wire: WireHandling, num_local_tokens: bool
) -> tuple[KernelArgument, ...]:
    """Keywords the hot path passes because they arrive with the call."""
    args = []
    if wire is WireHandling.PASS_THROUGH:
        args.append(KernelArgument("a1_scale", "hidden_states_scale"))
    if num_local_tokens:
        args.append(
            KernelArgument("num_local_tokens", "dispatch_output.num_recv_tokens_per_expert")
        )
        args.append(KernelArgument("dtype", "dispatch_output.out_dtype"))
    if _carries_expert_output(fmt):
        args.append(KernelArgument("output", "dispatch_output.expert_output"))
    return tuple(args)


def _bound_kernel_arguments(
    quant: QuantMethod, router_weight: RouterWeight
) -> tuple[KernelArgument, ...]:
    """Keywords fixed at load, bound into the kernel once (functools.partial, which mypy checks
    against fused_moe's signature); everything left out is the kernel's default."""
    args = [
        KernelArgument("expert_mask", NAMES.expert_mask),
        KernelArgument("activation", NAMES.activation),
        KernelArgument("quant_type", NAMES.quant_type),
    ]
    if router_weight is RouterWeight.STAGE1:
        args.append(KernelArgument("doweight_stage1", NAMES.doweight_stage1))
    if quant.has_weight_scales:
        args.append(KernelArgument("w1_scale", NAMES.w13_scale))
        args.append(KernelArgument("w2_scale", NAMES.w2_scale))
    if quant.pads_hidden:
        args.append(KernelArgument("hidden_pad", NAMES.hidden_pad))
        args.append(KernelArgument("intermediate_pad", NAMES.intermediate_pad))
    if quant.has_biases:
        args.append(KernelArgument("bias1", NAMES.b13))
        args.append(KernelArgument("bias2", NAMES.b2))
    return tuple(args)
