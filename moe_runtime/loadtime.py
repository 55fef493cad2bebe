"""Load-time work shared by every generated runner: kernel binding, expert masks, enum values and
weight checks. Nothing here runs per forward; generated hot paths only read what these return."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch

from moe_runtime import kernels, quant
from moe_runtime.enums import GateMode
from moe_runtime.kernels import upscale
from moe_runtime.types import (
    ConfigError,
    ExpertWeights,
    FusedMoeKernel,
    MoeLayerConfig,
)

_ACTIVATIONS = {
    "silu": kernels.ActivationType.Silu,
    "gelu": kernels.ActivationType.Gelu,
    "swiglu": kernels.ActivationType.Swiglu,
}


def bind_kernel(
    kernel: FusedMoeKernel | None,
    weights: ExpertWeights,
    quant_type: kernels.QuantType,
    activation: kernels.ActivationType,
    config: MoeLayerConfig,
) -> tuple[FusedMoeKernel, ExpertWeights]:
    """The kernel a runner calls and the weights it passes.

    `None` means the binding of `moe_runtime.kernels`, whose weights are prepared (AITER shuffles
    them) once, here. An injected kernel (a recorder, a stub, the graph-safe reference) gets the
    logical layout as it is. `swiglu_limit`, `gate_mode` (v0.1.14) and `moe_sorting_dispatch_policy`
    are optional AITER keywords: each is bound into the kernel only when it differs from the
    kernel's default (a layer that sets a limit or a sorting policy; weights, as prepared for the
    kernel, whose gate and up rows are not SEPARATED), and a
    kernel without the keyword is refused, naming the AITER release that added it, rather than
    ignored. Which keywords the kernel takes was read when it was bound (`kernels.KEYWORDS`) or,
    for an injected kernel, is read here: the hot path never probes. A runner whose method pads H
    wraps the result in `pad_hidden`, one whose format scales input rows in
    `scale_rows_by_router_weight`; the others call neither.
    """
    bound: FusedMoeKernel
    if kernel is None and weights.kernel_layout:
        raise ConfigError(
            "weights in a kernel's layout (kernel_layout=True: already shuffled for it) need that "
            "kernel passed as kernel=; the bound kernel would prepare them again"
        )
    if kernel is None:
        bound = kernels.fused_moe
        weights = kernels.prepare_weights(weights, quant_type, activation=activation)
    else:
        bound = kernel
    taken = kernels.keywords_of(bound)
    named = kernels.describe() if kernel is None else repr(kernel)
    static: dict[str, object] = {}
    if config.swiglu_limit > 0:
        taken.require("swiglu_limit", f"swiglu_limit={config.swiglu_limit}", named)
        static["swiglu_limit"] = config.swiglu_limit
    if config.activation == "situ":
        # Always required: AITER from v0.1.19 has them, older AITER has no Situv2 at all. Bound
        # only where the layer sets them (unset, the kernel reads 1.0, and SGLang passes none).
        taken.require("beta", "the situ activation", named)
        taken.require("linear_beta", "the situ activation", named)
        betas = {"beta": config.situ_beta, "linear_beta": config.situ_linear_beta}
        static.update({name: value for name, value in betas.items() if value is not None})
    if config.moe_sorting_dispatch_policy != 0:
        policy = config.moe_sorting_dispatch_policy
        taken.require("moe_sorting_dispatch_policy", f"moe_sorting_dispatch_policy={policy}", named)
        static["moe_sorting_dispatch_policy"] = policy
    if weights.gate_mode != GateMode.SEPARATED:
        taken.require("gate_mode", f"weights with gate_mode {weights.gate_mode.name}", named)
        # The string value, as SGLang passes it (`GateMode.INTERLEAVE.value`).
        static["gate_mode"] = weights.gate_mode.value
    if static:
        untyped = cast(Callable[..., torch.Tensor], bound)
        bound = cast(FusedMoeKernel, functools.partial(untyped, **static))
    return bound, weights


def refuse_hidden_pad(weights: ExpertWeights) -> None:
    """For methods that do not pad H: padded weights would meet unpadded activations."""
    if weights.hidden_pad > 0:
        raise ConfigError(
            f"hidden_pad={weights.hidden_pad}: this runner's quant method does not pad H; "
            "only methods that pad at load (mxfp4) take padded weights"
        )


def pad_hidden(
    kernel: FusedMoeKernel, weights: ExpertWeights, config: MoeLayerConfig
) -> FusedMoeKernel:
    """For methods that pad H: weights with a padded H get a kernel that pads the activations and
    crops the output; unpadded weights get the kernel itself and pay nothing per call."""
    if weights.hidden_pad == 0:
        return kernel
    return cast(FusedMoeKernel, HiddenPaddedKernel(kernel, weights.hidden_pad, config))


def scale_rows_by_router_weight(kernel: FusedMoeKernel, config: MoeLayerConfig) -> FusedMoeKernel:
    """For the standard format: a layer with apply_router_weight_on_input (top_k 1 only) gets a
    kernel that scales the rows first; any other gets the kernel itself and pays nothing."""
    if not config.apply_router_weight_on_input:
        return kernel
    if config.top_k != 1:
        raise ConfigError(
            f"apply_router_weight_on_input needs top_k == 1 (one weight per row), "
            f"got {config.top_k}"
        )
    return cast(FusedMoeKernel, RouterWeightOnInputKernel(kernel))


class RouterWeightOnInputKernel:
    """apply_router_weight_on_input with top_k 1: each row is scaled by its router weight (in its
    own dtype, as SGLang does), then the kernel weighs the expert outputs with ones."""

    def __init__(self, kernel: FusedMoeKernel) -> None:
        self._kernel = cast(Callable[..., torch.Tensor], kernel)

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Runners pass fused_moe's first five arguments by position (types.FusedMoeKernel).
        w1, w2, topk_weight, *rest = args
        scaled = hidden_states * topk_weight.to(hidden_states.dtype)
        return self._kernel(scaled, w1, w2, torch.ones_like(topk_weight), *rest, **kwargs)


class HiddenPaddedKernel:
    """The kernel for weights whose H is padded with zeros (gpt-oss pads H to a multiple of 256):
    the activations get zero columns up to the padded H, the output is cropped back to H."""

    def __init__(self, kernel: FusedMoeKernel, hidden_pad: int, config: MoeLayerConfig) -> None:
        self._kernel = cast(Callable[..., torch.Tensor], kernel)
        self._hidden_pad = hidden_pad
        self._hidden_size = config.hidden_size

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        padded = torch.nn.functional.pad(hidden_states, (0, self._hidden_pad))
        return self._kernel(padded, *args, **kwargs)[:, : self._hidden_size]


def writes_output(kernel: FusedMoeKernel | None, bound: FusedMoeKernel) -> FusedMoeKernel:
    """For MORI EPv2: the kernel that writes the expert output into combine's staging buffer
    (`output=dispatch_output.expert_output`), so that MORI's combine stages no copy.

    The kernel that `bind_kernel` bound (`kernel`, else `moe_runtime.kernels`) must take AITER's
    `output` keyword, or the runner is refused here with the release that added it (the
    `FusedMoeKernel` protocol types every kernel with `output`: this check is what makes that true
    of the one kernel a runner passes it to). Padded weights
    (`pad_hidden` wrapped `bound`) compute `[R, H_pad]` rows, which cannot go into the `[R, H]`
    buffer: their kernel drops `output` and returns the cropped rows, which combine copies.
    """
    raw = kernels.fused_moe if kernel is None else kernel
    named = kernels.describe() if kernel is None else repr(kernel)
    kernels.keywords_of(raw).require(
        "output", "MORI EPv2's combine buffer (dispatch_output.expert_output)", named
    )
    if isinstance(bound, HiddenPaddedKernel):
        return cast(FusedMoeKernel, _OutputDropped(bound))
    return bound


class _OutputDropped:
    """A padded-H kernel called without the `[R, H]` buffer it cannot write (see writes_output)."""

    def __init__(self, kernel: HiddenPaddedKernel) -> None:
        self._kernel = kernel

    def __call__(
        self, *args: Any, output: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        return self._kernel(*args, **kwargs)


def bind_upscaler(name: upscale.UpscalerName, device: torch.device) -> upscale.Upscaler:
    """The wire upscaler for activations on `device`: one Triton launch on a GPU where the wire
    has a Triton kernel (fp8 1x128, mxfp4) and Triton imports, moe_runtime.quant's torch code
    otherwise (bit-identical; `kernels.describe()`)."""
    return upscale.bind(name, device)


class SlabShape(NamedTuple):
    """What the low-latency flattening needs that depends only on the slab shape [L, C, H]."""

    slot: torch.Tensor  # int32 [C]: 0..C-1, the slot index within a slab
    unit_weights: torch.Tensor  # fp32 [L * C, 1]: ones (the low-latency combine weights)


class SlabShapes(dict[int, SlabShape]):
    """`SlabShape`s by slab capacity C, each built on its first use and reused by every later
    call: DeepEP fixes C when its buffer is built, so a runner builds one, once.

    Reading a missing capacity while a CUDA graph is being captured is refused: the tensors
    would be filled only when the graph replays, and every eager call would read garbage. A
    warm-up call before the capture (which torch.cuda.graph's docs ask for anyway) builds them.
    """

    def __init__(self, num_local_experts: int, device: torch.device) -> None:
        super().__init__()
        self._num_local_experts = num_local_experts
        self._device = device

    def __missing__(self, capacity: int) -> SlabShape:
        if self._device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"the first low-latency call with slab capacity {capacity} is inside a CUDA "
                "graph capture; call the runner once before capturing (a warm-up call builds "
                "its slot index and unit weights, which a capture would leave unfilled)"
            )
        shape = SlabShape(
            slot=torch.arange(capacity, dtype=torch.int32, device=self._device),
            unit_weights=torch.ones(
                (self._num_local_experts * capacity, 1), dtype=torch.float32, device=self._device
            ),
        )
        self[capacity] = shape
        return shape


def activation_type(config: MoeLayerConfig) -> kernels.ActivationType:
    """The layer's activation as AITER's enum (the config already rejected unknown names)."""
    if config.activation == "situ":
        raise ConfigError(
            "activation situ (AITER's Situv2) runs on AITER's a16w4 kernels only: it is served by "
            "the mxfp4 runners"
        )
    return _ACTIVATIONS[config.activation]


def swiglu_family(config: MoeLayerConfig) -> kernels.ActivationType:
    """For methods whose kernels run Swiglu (mxfp4): Swiglu whatever the layer's activation, except
    situ, which the same a16w4 kernels run as Situv2 (SGLang 0.5.23 mxfp4.py:1455-1458)."""
    if config.activation != "situ":
        return kernels.ActivationType.Swiglu
    situv2 = getattr(kernels.ActivationType, "Situv2", None)
    if situv2 is None:
        raise ConfigError(
            "activation situ needs AITER's ActivationType.Situv2 (from v0.1.19); the bound kernel "
            f"({kernels.describe()}) has none"
        )
    return cast(kernels.ActivationType, situv2)


def global_expert_mask(config: MoeLayerConfig, device: torch.device) -> torch.Tensor:
    """int32 [E]: ones on this rank's experts [r*L, (r+1)*L), for formats with global ids."""
    mask = torch.zeros(config.num_experts, dtype=torch.int32, device=device)
    first = config.first_local_expert
    mask[first : first + config.num_local_experts] = 1
    return mask


def standard_expert_mask(config: MoeLayerConfig, device: torch.device) -> torch.Tensor | None:
    """The standard format's mask: none without expert parallelism (ids are already local)."""
    if config.ep_size == 1:
        return None
    return global_expert_mask(config, device)


def sink_expert_mask(config: MoeLayerConfig, device: torch.device) -> torch.Tensor:
    """int32 [L+1]: every local expert on, then the sink id L off (it is never computed)."""
    mask = torch.ones(config.num_local_experts + 1, dtype=torch.int32, device=device)
    mask[-1] = 0
    return mask


def refuse_router_weight_on_input(config: MoeLayerConfig, dispatch_format: str) -> None:
    """Formats whose kernel or combine already weights cannot also weight the input."""
    if config.apply_router_weight_on_input:
        raise ConfigError(
            f"apply_router_weight_on_input is not supported with dispatch format "
            f"{dispatch_format!r}: only 'standard' scales the input rows, and methods that apply "
            "the router weight in stage 1 (mxfp4) do it in the kernel"
        )


# A rule of a quant method's weights: what it finds wrong with them for a layer (nothing: []).
# The plan picks a method's rules (one small function per fact), so none branches on a flag.
WeightRule = Callable[[MoeLayerConfig, ExpertWeights, str], list[str]]


class Sizes(NamedTuple):
    """The weights' dimensions the config implies: L, and H and I with their padding."""

    experts: int
    hidden: int
    inter: int


# A tensor's expected shape, its layout in words, and the tensor itself (None: absent).
Expected = tuple[tuple[int, ...], str, torch.Tensor | None]
# The tensors a method adds to the shape check (scales, biases), by name.
ShapeRule = Callable[[Sizes, ExpertWeights], dict[str, Expected]]


def check_weights(
    config: MoeLayerConfig,
    weights: ExpertWeights,
    quant_method: str,
    weight_dtypes: tuple[torch.dtype, ...],
    *,
    rules: tuple[WeightRule, ...],
    shapes: tuple[ShapeRule, ...],
) -> None:
    """Refuse, at load, weights that the runner's quant method cannot use, saying what is wrong.

    Beyond dtypes and the method's `rules` (which tensors it needs or refuses: a tensor a method
    never passes would be silently ignored), every tensor's shape is compared with the one the
    config implies (the logical layout of `moe_runtime.weights`: `w13 [L, 2I, H]`, gate then up
    rows, since every activation here is gated), so a transposed or half-height `w13` fails here,
    not in the kernel; `shapes` add the method's scales and biases, whose layout its AITER quant
    type fixes. Shapes are compared only once everything else fits.
    """
    problems = _expert_count_problems(config, weights)
    problems += _dtype_problems(weights, quant_method, weight_dtypes)
    for rule in rules:
        problems += rule(config, weights, quant_method)
    if not problems:
        problems = _shape_problems(config, weights, shapes)
    if problems:
        raise ConfigError(f"weights do not fit a {quant_method} runner: " + "; ".join(problems))


def _expert_count_problems(config: MoeLayerConfig, weights: ExpertWeights) -> list[str]:
    if weights.num_local_experts == config.num_local_experts:
        return []
    return [
        f"weights hold {weights.num_local_experts} experts, the config says "
        f"num_local_experts={config.num_local_experts}"
    ]


def _dtype_problems(
    weights: ExpertWeights, quant_method: str, weight_dtypes: tuple[torch.dtype, ...]
) -> list[str]:
    problems = []
    for name in ("w13_weight", "w2_weight"):
        dtype = getattr(weights, name).dtype
        if dtype not in weight_dtypes:
            wanted = " or ".join(str(d) for d in weight_dtypes)
            problems.append(f"{name} is {dtype}, {quant_method} needs {wanted}")
    return problems


def scales_required(config: MoeLayerConfig, weights: ExpertWeights, method: str) -> list[str]:
    if weights.w13_scale is None or weights.w2_scale is None:
        return [f"{method} needs w13_scale and w2_scale"]
    return []


def scales_refused(config: MoeLayerConfig, weights: ExpertWeights, method: str) -> list[str]:
    if weights.w13_scale is not None or weights.w2_scale is not None:
        return [f"{method} has no weight scales, yet w13_scale or w2_scale is set"]
    return []


def biases_required(config: MoeLayerConfig, weights: ExpertWeights, method: str) -> list[str]:
    if weights.b13 is None or weights.b2 is None:
        return [f"{method} needs biases b13 and b2"]
    return []


def biases_refused(config: MoeLayerConfig, weights: ExpertWeights, method: str) -> list[str]:
    return _ignored(
        f"{method} passes no biases to the kernel", "b13 or b2", weights.b13, weights.b2
    )


def input_scales_refused(
    config: MoeLayerConfig, weights: ExpertWeights, method: str
) -> list[str]:
    """For methods without static input scales: set ones would be ignored."""
    return _ignored(
        f"{method} has no static input scales",
        "a13_scale or a2_scale",
        weights.a13_scale,
        weights.a2_scale,
    )


def _ignored(
    refusal: str, names: str, first: torch.Tensor | None, second: torch.Tensor | None
) -> list[str]:
    """A pair of weight tensors the runner never passes to the kernel: either one set is refused,
    since it would be ignored."""
    if first is None and second is None:
        return []
    return [f"{refusal}, yet {names} is set (they would be ignored)"]


def stage1_weight_needs_flag(
    config: MoeLayerConfig, weights: ExpertWeights, method: str
) -> list[str]:
    """For methods that apply the router weight in stage 1: only when the layer asks for it."""
    if weights.doweight_stage1 and not config.apply_router_weight_on_input:
        return [
            "doweight_stage1=True would be ignored: this method applies the router weight in "
            "stage 1 only with config.apply_router_weight_on_input=True"
        ]
    return []


def stage1_weight_refused(
    config: MoeLayerConfig, weights: ExpertWeights, method: str
) -> list[str]:
    if weights.doweight_stage1:
        return [
            f"doweight_stage1=True would be ignored: {method} never applies the router weight "
            "in stage 1"
        ]
    return []


def interleaved_gate_up_refused(
    config: MoeLayerConfig, weights: ExpertWeights, method: str
) -> list[str]:
    """For methods whose kernels read gate rows then up rows: interleaved rows would be misread."""
    if weights.gate_mode == GateMode.INTERLEAVE:
        return [
            f"weights have gate_mode INTERLEAVE (gate and up rows alternate), but {method}'s "
            "kernels read gate rows then up rows only (gate_mode SEPARATED)"
        ]
    return []


def _shape_problems(
    config: MoeLayerConfig, weights: ExpertWeights, shapes: tuple[ShapeRule, ...]
) -> list[str]:
    """Each tensor whose shape differs from the one the config implies, expected and actual."""
    sizes = Sizes(
        config.num_local_experts,
        config.hidden_size + weights.hidden_pad,
        config.intermediate_size + weights.intermediate_pad,
    )
    experts, hidden, inter = sizes
    # fp4x2 packs two values per byte along the last (input) dimension.
    pack = 2 if weights.w13_weight.dtype == quant.FP4X2 else 1
    expected: dict[str, Expected] = {
        "w13_weight": (
            (experts, 2 * inter, hidden // pack),
            "[L, 2I, H] (gate then up rows: the activation is gated)",
            weights.w13_weight,
        ),
        "w2_weight": ((experts, hidden, inter // pack), "[L, H, I]", weights.w2_weight),
    }
    for rule in shapes:
        expected.update(rule(sizes, weights))
    named = f"L={experts}, H={hidden}, I={inter}"
    problems = []
    for name, (shape, layout, tensor) in expected.items():
        if tensor is None or tuple(tensor.shape) == shape:
            continue
        # Weights already in the kernel's layout may hold a weight scale as AITER shuffled it.
        shuffled = weights.kernel_layout and name in ("w13_scale", "w2_scale")
        if shuffled and _fits_shuffled(tensor, shape):
            continue
        problems.append(
            f"{name} must be {layout} = {list(shape)} ({named}), got {list(tensor.shape)}"
            + (" (or, shuffled, [>= L*rows, >= groups])" if shuffled else "")
        )
    return problems


def _fits_shuffled(tensor: torch.Tensor, shape: tuple[int, ...]) -> bool:
    """A 3-D logical scale `[L, rows, groups]` as AITER's shuffles leave it: one 2-D matrix of
    `L * rows` rows (or more: `e8m0_shuffle` pads them to 256) and `groups` columns (or more:
    padded to 8) (aiter/utility/fp4_utils.py e8m0_shuffle; SGLang 0.5.23 mxfp4.py:998-1041)."""
    if tensor.dim() != 2 or len(shape) != 3:
        return False
    experts, rows, groups = shape
    return tensor.shape[0] >= experts * rows and tensor.shape[1] >= groups


def _scales(
    weights: ExpertWeights, scale13: tuple[int, ...], scale2: tuple[int, ...], layout: str
) -> dict[str, Expected]:
    """The weight scales' entries; `layout` has `{0}` the output and `{1}` the input dimension."""
    return {
        "w13_scale": (scale13, layout.format("2I", "H"), weights.w13_scale),
        "w2_scale": (scale2, layout.format("H", "I"), weights.w2_scale),
    }


def block_scale_shapes(sizes: Sizes, weights: ExpertWeights) -> dict[str, Expected]:
    """per_128x128 and per_1x128: one scale per 128x128 block of each weight."""
    experts, hidden, inter = sizes
    group = quant.FP8_GROUP
    return _scales(
        weights,
        (experts, 2 * inter // group, hidden // group),
        (experts, hidden // group, inter // group),
        f"[L, {{0}}/{group}, {{1}}/{group}]",
    )


def group_scale_shapes(sizes: Sizes, weights: ExpertWeights) -> dict[str, Expected]:
    """per_1x32: one e8m0 scale per 32 inputs of each output row."""
    experts, hidden, inter = sizes
    group = quant.MXFP4_GROUP
    return _scales(
        weights,
        (experts, 2 * inter, hidden // group),
        (experts, hidden, inter // group),
        f"[L, {{0}}, {{1}}/{group}]",
    )


def tensor_scale_shapes(sizes: Sizes, weights: ExpertWeights) -> dict[str, Expected]:
    """per_Tensor: one scale per expert weight."""
    return _scales(weights, (sizes.experts, 1), (sizes.experts, 1), "[L, 1]")


def channel_scale_shapes(sizes: Sizes, weights: ExpertWeights) -> dict[str, Expected]:
    """per_Token: one scale per output channel."""
    experts, hidden, inter = sizes
    return _scales(weights, (experts, 2 * inter, 1), (experts, hidden, 1), "[L, {0}, 1]")


def bias_shapes(sizes: Sizes, weights: ExpertWeights) -> dict[str, Expected]:
    experts, hidden, inter = sizes
    return {
        "b13": ((experts, 2 * inter), "[L, 2I]", weights.b13),
        "b2": ((experts, hidden), "[L, H]", weights.b2),
    }


# Our dispatch outputs that SGLang spells with another class name: 0.5.23's EPv2 dispatcher
# returns its MoriEPNormalDispatchOutput with an `expert_output` field (moriep.py:169-182); the
# field check below refuses 0.5.13's class of that name, which lacks it.
_SGLANG_NAMES: dict[str, tuple[str, ...]] = {
    "MoriEPV2DispatchOutput": ("MoriEPNormalDispatchOutput",),
}


class DispatchOutputTypes(dict[type, bool]):
    """The classes a runner accepts as its dispatch output, looked up once per call by the class.

    A class is accepted when its name and fields are those of the runner's own type: SGLang's
    NamedTuples of the same name fit without conversion. The first call with any other class gets
    a `TypeError` naming both (not an `AttributeError` from inside the runner); an accepted class
    is remembered, so the hot path pays one dictionary lookup and never branches.
    """

    def __init__(self, expected: type, dispatch_format: str) -> None:
        super().__init__({expected: True})
        self._name = expected.__name__
        self._names = (self._name, *_SGLANG_NAMES.get(self._name, ()))
        self._fields: tuple[str, ...] = getattr(expected, "_fields", ())
        self._dispatch_format = dispatch_format

    def __missing__(self, cls: type) -> bool:
        fields = getattr(cls, "_fields", None)
        if cls.__name__ in self._names and isinstance(fields, tuple):
            missing = [name for name in self._fields if name not in fields]
            if not missing:
                self[cls] = True
                return True
            detail = f"it lacks the fields {', '.join(missing)}"
        else:
            detail = "a runner for one format cannot serve another's output"
        raise TypeError(
            f"this runner serves dispatch format {self._dispatch_format!r}, whose dispatch output "
            f"is a {self._name}; got a {cls.__module__}.{cls.__qualname__}: {detail}"
        )
