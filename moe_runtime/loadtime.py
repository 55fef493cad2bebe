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
from moe_runtime.types import ConfigError, ExpertWeights, FusedMoeKernel, MoeLayerConfig

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
    *,
    pads_hidden: bool,
    router_weight_on_input: bool,
) -> tuple[FusedMoeKernel, ExpertWeights]:
    """The kernel a runner calls and the weights it passes.

    `None` means the binding of `moe_runtime.kernels`, whose weights are prepared (AITER shuffles
    them) once, here. An injected kernel (a recorder, a stub, the graph-safe reference) gets the
    logical layout as it is. `swiglu_limit` and `gate_mode` are newer AITER keywords (v0.1.14):
    each is bound into the kernel only when it differs from the kernel's default (a layer that sets
    a limit; weights, as prepared for the kernel, whose gate and up rows are not SEPARATED), and a
    kernel without the keyword is refused, naming the AITER release that added it, rather than
    ignored. Which keywords the kernel takes was read when it was bound (`kernels.KEYWORDS`) or,
    for an injected kernel, is read here: the hot path never probes.
    Weights with a padded H (`pads_hidden` methods only) get a kernel that pads the activations
    and crops the output, and `router_weight_on_input` a kernel that scales the rows first; every
    other layer gets the kernel itself, so it pays nothing per call for either option.
    """
    bound: FusedMoeKernel
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
    if weights.gate_mode != GateMode.SEPARATED:
        taken.require("gate_mode", f"weights with gate_mode {weights.gate_mode.name}", named)
        # The string value, as SGLang passes it (`GateMode.INTERLEAVE.value`).
        static["gate_mode"] = weights.gate_mode.value
    if static:
        untyped = cast(Callable[..., torch.Tensor], bound)
        bound = cast(FusedMoeKernel, functools.partial(untyped, **static))
    if weights.hidden_pad > 0:
        if not pads_hidden:
            raise ConfigError(
                f"hidden_pad={weights.hidden_pad}: this runner's quant method does not pad H; "
                "only methods that pad at load (mxfp4) take padded weights"
            )
        bound = cast(FusedMoeKernel, HiddenPaddedKernel(bound, weights.hidden_pad, config))
    if router_weight_on_input:
        bound = cast(FusedMoeKernel, RouterWeightOnInputKernel(bound))
    return bound, weights


class RouterWeightOnInputKernel:
    """apply_router_weight_on_input with top_k 1: each row is scaled by its router weight (in its
    own dtype, as SGLang does), then the kernel weighs the expert outputs with ones."""

    def __init__(self, kernel: FusedMoeKernel) -> None:
        self._kernel = cast(Callable[..., torch.Tensor], kernel)

    def __call__(
        self,
        hidden_states: torch.Tensor,
        w1: torch.Tensor,
        w2: torch.Tensor,
        topk_weight: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        scaled = hidden_states * topk_weight.to(hidden_states.dtype)
        return self._kernel(scaled, w1, w2, torch.ones_like(topk_weight), *args, **kwargs)


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


def bind_upscaler(name: upscale.UpscalerName, device: torch.device) -> upscale.Upscaler:
    """The wire upscaler for activations on `device`: one Triton launch on a GPU where Triton
    imports, moe_runtime.quant's torch code elsewhere (bit-identical; `kernels.describe()`)."""
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
    return _ACTIVATIONS[config.activation]


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


def router_weight_on_input(config: MoeLayerConfig) -> bool:
    """Whether the standard format scales the input rows by the router weight (needs top_k 1)."""
    if config.apply_router_weight_on_input and config.top_k != 1:
        raise ConfigError(
            f"apply_router_weight_on_input needs top_k == 1 (one weight per row), "
            f"got {config.top_k}"
        )
    return config.apply_router_weight_on_input


def refuse_router_weight_on_input(config: MoeLayerConfig, dispatch_format: str) -> None:
    """Formats whose kernel or combine already weights cannot also weight the input."""
    if config.apply_router_weight_on_input:
        raise ConfigError(
            f"apply_router_weight_on_input is not supported with dispatch format "
            f"{dispatch_format!r}: only 'standard' scales the input rows, and methods that apply "
            "the router weight in stage 1 (mxfp4) do it in the kernel"
        )


def check_weights(
    config: MoeLayerConfig,
    weights: ExpertWeights,
    *,
    quant_method: str,
    weight_dtypes: tuple[torch.dtype, ...],
    needs_scales: bool,
    needs_biases: bool,
    scale_layout: kernels.QuantType = kernels.QuantType.No,
    router_weight_in_stage1: bool = False,
    static_input_scales: bool = False,
    interleaved_gate_up: bool = False,
) -> None:
    """Refuse, at load, weights that the runner's quant method cannot use, saying what is wrong.

    Beyond dtypes and presence, every tensor's shape is compared with the one the config implies
    (the logical layout of `moe_runtime.weights`: `w13 [L, 2I, H]`, gate then up rows, since every
    activation here is gated), so a transposed or half-height `w13` fails here, not in the kernel.
    `scale_layout` is the method's own AITER quant type, which fixes the scales' shapes. Tensors a
    method never passes (biases, weight scales, static input scales of a method that has none) and
    a `doweight_stage1` it does not apply are refused rather than silently ignored, and so are
    interleaved gate/up rows (`gate_mode` INTERLEAVE) unless `interleaved_gate_up`: the method's
    kernels would read them as gate rows then up rows.
    """
    problems = []
    if weights.num_local_experts != config.num_local_experts:
        problems.append(
            f"weights hold {weights.num_local_experts} experts, the config says "
            f"num_local_experts={config.num_local_experts}"
        )
    for name in ("w13_weight", "w2_weight"):
        dtype = getattr(weights, name).dtype
        if dtype not in weight_dtypes:
            wanted = " or ".join(str(d) for d in weight_dtypes)
            problems.append(f"{name} is {dtype}, {quant_method} needs {wanted}")
    if needs_scales and (weights.w13_scale is None or weights.w2_scale is None):
        problems.append(f"{quant_method} needs w13_scale and w2_scale")
    if not needs_scales and (weights.w13_scale is not None or weights.w2_scale is not None):
        problems.append(f"{quant_method} has no weight scales, yet w13_scale or w2_scale is set")
    if needs_biases and (weights.b13 is None or weights.b2 is None):
        problems.append(f"{quant_method} needs biases b13 and b2")
    if not needs_biases and (weights.b13 is not None or weights.b2 is not None):
        problems.append(
            f"{quant_method} passes no biases to the kernel, yet b13 or b2 is set (they would be "
            "ignored)"
        )
    if not static_input_scales and (weights.a13_scale is not None or weights.a2_scale is not None):
        problems.append(
            f"{quant_method} has no static input scales, yet a13_scale or a2_scale is set (they "
            "would be ignored)"
        )
    if weights.doweight_stage1 and not (
        router_weight_in_stage1 and config.apply_router_weight_on_input
    ):
        problems.append(
            "doweight_stage1=True would be ignored: "
            + (
                "this method applies the router weight in stage 1 only with "
                "config.apply_router_weight_on_input=True"
                if router_weight_in_stage1
                else f"{quant_method} never applies the router weight in stage 1"
            )
        )
    if weights.gate_mode == GateMode.INTERLEAVE and not interleaved_gate_up:
        problems.append(
            f"weights have gate_mode INTERLEAVE (gate and up rows alternate), but {quant_method}'s "
            "kernels read gate rows then up rows only (gate_mode SEPARATED)"
        )
    if not problems:
        problems = _shape_problems(config, weights, scale_layout, needs_scales, needs_biases)
    if problems:
        raise ConfigError(f"weights do not fit a {quant_method} runner: " + "; ".join(problems))


def _shape_problems(
    config: MoeLayerConfig,
    weights: ExpertWeights,
    scale_layout: kernels.QuantType,
    needs_scales: bool,
    needs_biases: bool,
) -> list[str]:
    """Each tensor whose shape differs from the one the config implies, expected and actual."""
    experts = config.num_local_experts
    hidden = config.hidden_size + weights.hidden_pad
    inter = config.intermediate_size + weights.intermediate_pad
    # fp4x2 packs two values per byte along the last (input) dimension.
    pack = 2 if weights.w13_weight.dtype == quant.FP4X2 else 1
    sizes = f"L={experts}, H={hidden}, I={inter}"
    expected: dict[str, tuple[tuple[int, ...], str, torch.Tensor | None]] = {
        "w13_weight": (
            (experts, 2 * inter, hidden // pack),
            "[L, 2I, H] (gate then up rows: the activation is gated)",
            weights.w13_weight,
        ),
        "w2_weight": ((experts, hidden, inter // pack), "[L, H, I]", weights.w2_weight),
    }
    if needs_scales:
        scale13, scale2, layout = _scale_shapes(scale_layout, experts, hidden, inter)
        expected["w13_scale"] = (scale13, layout.format("2I", "H"), weights.w13_scale)
        expected["w2_scale"] = (scale2, layout.format("H", "I"), weights.w2_scale)
    if needs_biases:
        expected["b13"] = ((experts, 2 * inter), "[L, 2I]", weights.b13)
        expected["b2"] = ((experts, hidden), "[L, H]", weights.b2)
    problems = []
    for name, (shape, layout_text, tensor) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            problems.append(
                f"{name} must be {layout_text} = {list(shape)} ({sizes}), got "
                f"{list(tensor.shape)}"
            )
    return problems


def _scale_shapes(
    layout: kernels.QuantType, experts: int, hidden: int, inter: int
) -> tuple[tuple[int, ...], tuple[int, ...], str]:
    """Shapes of w13_scale and w2_scale for a method's quant type, and their layout with `{0}` the
    output and `{1}` the input dimension."""
    if layout in (kernels.QuantType.per_128x128, kernels.QuantType.per_1x128):
        group = quant.FP8_GROUP
        return (
            (experts, 2 * inter // group, hidden // group),
            (experts, hidden // group, inter // group),
            f"[L, {{0}}/{group}, {{1}}/{group}]",
        )
    if layout == kernels.QuantType.per_1x32:
        group = quant.MXFP4_GROUP
        return (
            (experts, 2 * inter, hidden // group),
            (experts, hidden, inter // group),
            f"[L, {{0}}, {{1}}/{group}]",
        )
    if layout == kernels.QuantType.per_Tensor:
        return (experts, 1), (experts, 1), "[L, 1]"
    return (experts, 2 * inter, 1), (experts, hidden, 1), "[L, {0}, 1]"


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
        self._fields: tuple[str, ...] = getattr(expected, "_fields", ())
        self._dispatch_format = dispatch_format

    def __missing__(self, cls: type) -> bool:
        fields = getattr(cls, "_fields", None)
        if cls.__name__ == self._name and isinstance(fields, tuple):
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
