"""The AITER binding: `aiter.fused_moe` and the load-time weight preparation its kernels need.

Importing this module does not import `aiter`; `load()` does, once, when `moe_runtime.kernels` binds
AITER. Each preparation step mirrors what AITER's own tests (`op_tests/test_moe_2stage.py`) and
SGLang 0.5.13's quant methods do to weights before calling `fused_moe` (AITER v0.1.7.post2); the
comment on each step names the function or file it mirrors. `ExpertWeights` arrive in the logical
layout of docs/aiter_fused_moe.md and leave in the layout the bound AITER kernels read.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import cast

import torch

from moe_runtime import gate_up
from moe_runtime.enums import ActivationType, GateMode, QuantType
from moe_runtime.kernels import keywords, rounding
from moe_runtime.kernels.binding import KernelBinding
from moe_runtime.kernels.releases import Release, release_of, tag
from moe_runtime.types import ExpertWeights, FusedMoeKernel

# Distribution names AITER is installed under: the wheel on the package index, a source build.
_DISTRIBUTIONS = ("amd-aiter", "aiter")
# AITER's CK/asm MoE kernels read weights in 16x16 tiles (`shuffle_weight(w, (16, 16))`).
_LAYOUT = (16, 16)
# NLane of the cktile a16w4 kernels (`shuffle_weight_a16w4(w, 16, gate_up)`).
_A16W4_LANES = 16
# int4 values travel in int8 (the logical layout); anything outside this range is real int8.
_INT4_MIN, _INT4_MAX = -8, 7
# fp8 weights with per_1x32 e8m0 scales (mxfp8): `fused_moe_` first picks fp8 activations for
# them at v0.1.16.post1 (fused_moe.py:408-410); v0.1.16 treats every per_1x32 call as fp4.
MXFP8_WEIGHTS_SINCE: Release = (0, 1, 16, 1)

_Transform = Callable[..., torch.Tensor]


@dataclass(frozen=True, slots=True)
class AiterBinding(KernelBinding):
    """Everything `moe_runtime.kernels` takes from an imported AITER: the binding, and the
    release and path it came from (for `describe()`)."""

    version: str
    origin: str


@dataclass(frozen=True, slots=True)
class _AiterOps:
    """The AITER functions and constants weight preparation uses, looked up once by `load`."""

    shuffle_weight: _Transform
    shuffle_weight_a16w4: _Transform
    shuffle_scale_a16w4: _Transform
    e8m0_shuffle: _Transform
    convert_int8_to_uint32_int4: _Transform
    rearrange_4bit_elements: _Transform
    fp8_dtype: torch.dtype


def load() -> AiterBinding:
    """Import AITER and bind its `fused_moe`, enums and weight preparation.

    Raises whatever importing AITER raises (it fails without ROCm); `moe_runtime.kernels` turns
    that into a `KernelBindingError` that says what is missing.
    """
    import aiter
    from aiter.fused_moe import fused_moe
    from aiter.int4_utils import convert_int8_to_uint32_int4, rearrange_4bit_elements
    from aiter.ops.shuffle import shuffle_scale_a16w4, shuffle_weight, shuffle_weight_a16w4
    from aiter.utility import dtypes
    from aiter.utility.fp4_utils import e8m0_shuffle

    ops = _AiterOps(
        shuffle_weight=cast(_Transform, shuffle_weight),
        shuffle_weight_a16w4=cast(_Transform, shuffle_weight_a16w4),
        shuffle_scale_a16w4=cast(_Transform, shuffle_scale_a16w4),
        e8m0_shuffle=cast(_Transform, e8m0_shuffle),
        convert_int8_to_uint32_int4=cast(_Transform, convert_int8_to_uint32_int4),
        rearrange_4bit_elements=cast(_Transform, rearrange_4bit_elements),
        # e4m3fnuz on gfx942, e4m3fn on gfx950 (aiter/utility/dtypes.py).
        fp8_dtype=cast(torch.dtype, dtypes.fp8),
    )
    module = cast(ModuleType, aiter)
    version = _version(module)
    # AITER's fp8 is e4m3fnuz on gfx942 and e4m3fn on gfx950: it names the GPU the rule runs on.
    arch = "gfx950" if ops.fp8_dtype == torch.float8_e4m3fn else "gfx942"
    # Read once, here: the runners never probe the signature per call (SGLang 0.5.23 does).
    taken = keywords.of_signature(fused_moe, "read from aiter.fused_moe's signature")
    return AiterBinding(
        fused_moe=cast(FusedMoeKernel, fused_moe),
        # AITER's members have our mirrors' names and integer values (moe_runtime/enums.py).
        quant_type=cast(type[QuantType], aiter.QuantType),
        activation_type=cast(type[ActivationType], aiter.ActivationType),
        version=version,
        origin=_origin(module),
        prepare=partial(_prepare, ops, "gate_mode" in taken, version),
        keywords=taken,
        rounding=rounding.for_version(version, arch),
    )


def _version(module: ModuleType) -> str:
    """AITER's version: its `__version__` if it has one (v0.1.7.post2 has none), else the
    installed distribution's."""
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    for distribution in _DISTRIBUTIONS:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "(unknown version)"


def _origin(module: ModuleType) -> str:
    """The directory the imported `aiter` package was loaded from."""
    if module.__file__ is None:
        return ", ".join(str(path) for path in module.__path__)
    return os.path.dirname(module.__file__)


def _prepare(
    ops: _AiterOps,
    has_gate_mode: bool,
    version: str,
    weights: ExpertWeights,
    quant_type: QuantType,
    activation: ActivationType | None,
) -> ExpertWeights:
    """Weights in the layout AITER's kernels read for `quant_type` (and, for per_1x32, the
    activation, which picks between the a4w4 CK kernels and the a16w4 cktile kernels).

    Interleaved gate/up rows are separated first, as SGLang 0.5.23 does before every AITER shuffle
    (layers/quantization/mxfp4.py:957-983). The prepared weights' `gate_mode` is then the value the
    kernel must be told (runners bind it at load): SEPARATED, the default, except for the a16w4
    layout, which interleaves gate and up tiles; see `_prepare_a16w4`.
    """
    # int() accepts our mirrors and AITER's own (pybind11) members alike.
    quant = QuantType(int(quant_type))
    if quant == QuantType.per_1x32 and weights.w13_weight.dtype in (
        torch.float8_e4m3fn,
        torch.float8_e4m3fnuz,
    ):
        return _prepare_mxfp8(ops, gate_up.separated(weights), has_gate_mode, version)
    weights = _fp8_for_device(ops, gate_up.separated(weights))
    if quant == QuantType.per_1x32:
        if activation is not None and ActivationType(int(activation)) == ActivationType.Swiglu:
            return _prepare_a16w4(ops, weights, has_gate_mode)
        return _prepare_a4w4(ops, weights)
    if quant == QuantType.per_Token and weights.w13_weight.dtype == torch.int8:
        return _prepare_int4(ops, weights)
    # No, per_Tensor, per_Token (fp8), per_1x128, per_128x128: weights shuffled, fp32 scales as
    # they are. Mirrors SGLang's unquant.py, fp8.py and compressed_tensors_moe.py
    # process_weights_after_loading (`shuffle_weight(w, (16, 16))`) and test_moe_2stage.py.
    return dataclasses.replace(
        weights,
        w13_weight=ops.shuffle_weight(weights.w13_weight.contiguous(), _LAYOUT),
        w2_weight=ops.shuffle_weight(weights.w2_weight.contiguous(), _LAYOUT),
    )


def _fp8_for_device(ops: _AiterOps, weights: ExpertWeights) -> ExpertWeights:
    """e4m3fn weights re-encoded as e4m3fnuz where AITER computes in e4m3fnuz (gfx942).

    Mirrors SGLang's `normalize_e4m3fn_to_e4m3fnuz` (layers/quantization/fp8_utils.py): the same
    bits mean half the value in e4m3fnuz, so every scale doubles; the e4m3fn bit pattern of -0
    (0x80) is NaN in e4m3fnuz and becomes +0.
    """
    needs_fnuz = (
        ops.fp8_dtype == torch.float8_e4m3fnuz
        and weights.w13_weight.dtype == torch.float8_e4m3fn
        and weights.w2_weight.dtype == torch.float8_e4m3fn
    )
    if not needs_fnuz:
        return weights
    return dataclasses.replace(
        weights,
        w13_weight=_e4m3fn_bits_as_fnuz(weights.w13_weight),
        w2_weight=_e4m3fn_bits_as_fnuz(weights.w2_weight),
        w13_scale=_doubled(weights.w13_scale),
        w2_scale=_doubled(weights.w2_scale),
        a13_scale=_doubled(weights.a13_scale),
        a2_scale=_doubled(weights.a2_scale),
    )


def _e4m3fn_bits_as_fnuz(weight: torch.Tensor) -> torch.Tensor:
    bits = weight.view(torch.int8)
    negative_zero = torch.tensor(-128, dtype=torch.int8, device=weight.device)
    return torch.where(bits == negative_zero, 0, bits).view(torch.float8_e4m3fnuz)


def _doubled(scale: torch.Tensor | None) -> torch.Tensor | None:
    return None if scale is None else scale * 2.0


def _prepare_int4(ops: _AiterOps, weights: ExpertWeights) -> ExpertWeights:
    """int4 values (in int8) shuffled and packed eight per uint32 for the per_Token a8w4 kernels.

    Mirrors test_moe_2stage.py's int4 branch: `shuffle_weight(w, (16, 16), use_int4=True)`, then
    aiter/int4_utils.py's `convert_int8_to_uint32_int4` (eight nibbles per uint32) and
    `rearrange_4bit_elements` (nibble order 0,2,4,6,1,3,5,7). SGLang's quark_int4fp8_moe.py gets
    the same bytes by packing first (`pack_int4_to_int32`) and shuffling the uint32 tensor.
    `fused_moe` recognises int4 weights by their uint32 dtype; fp32 per-row scales stay as they are.
    """
    for name in ("w13_weight", "w2_weight"):
        weight: torch.Tensor = getattr(weights, name)
        if int(weight.min()) < _INT4_MIN or int(weight.max()) > _INT4_MAX:
            raise ValueError(
                f"per_Token weights in int8 are int4 values (quark_int4fp8's logical layout), but "
                f"{name} holds values in [{int(weight.min())}, {int(weight.max())}], outside "
                f"[{_INT4_MIN}, {_INT4_MAX}]; int8 weights are not a supported quant method"
            )
    return dataclasses.replace(
        weights,
        w13_weight=_packed_int4(ops, weights.w13_weight),
        w2_weight=_packed_int4(ops, weights.w2_weight),
    )


def _packed_int4(ops: _AiterOps, weight: torch.Tensor) -> torch.Tensor:
    shuffled = ops.shuffle_weight(weight.contiguous(), _LAYOUT, use_int4=True)
    return ops.rearrange_4bit_elements(ops.convert_int8_to_uint32_int4(shuffled))


def _prepare_a4w4(ops: _AiterOps, weights: ExpertWeights) -> ExpertWeights:
    """fp4 weights shuffled and their e8m0 scales shuffled, for the per_1x32 a4w4 CK kernels.

    Mirrors SGLang's quark_w4a4_mxfp4_moe.py process_weights_after_loading on gfx950 (the only
    target with per_1x32 kernels): `shuffle_weight(w, (16, 16))` and `e8m0_shuffle` of the scales
    viewed as [experts * rows, K/32]. The shuffled scales are passed on as `e8m0_shuffle` returns
    them (2-D, rows padded to 256 and columns to 8), as AITER's test_moe_2stage.py does.
    """
    return dataclasses.replace(
        weights,
        w13_weight=ops.shuffle_weight(weights.w13_weight.contiguous(), _LAYOUT),
        w2_weight=ops.shuffle_weight(weights.w2_weight.contiguous(), _LAYOUT),
        w13_scale=ops.e8m0_shuffle(_rows(_required_scale(weights.w13_scale, "w13_scale"))),
        w2_scale=ops.e8m0_shuffle(_rows(_required_scale(weights.w2_scale, "w2_scale"))),
    )


def _prepare_a16w4(
    ops: _AiterOps, weights: ExpertWeights, has_gate_mode: bool
) -> ExpertWeights:
    """fp4 weights and e8m0 scales in the cktile a16w4 layout (per_1x32 with Swiglu).

    AITER v0.1.7.post2 sends per_1x32 + Swiglu to `cktile_moe_stage1/2` (fused_moe.py,
    get_2stage_cfgs), whose weights test_moe_2stage.py prepares with aiter/ops/shuffle.py's
    `shuffle_weight_a16w4(w13, 16, gate_up=True)` (gate and up tiles interleaved),
    `shuffle_weight_a16w4(w2, 16, gate_up=False)` and `shuffle_scale_a16w4` of the scales viewed
    as [experts * rows, K/32]. Biases (fp32) are passed as they are.

    From v0.1.14 `fused_moe` defaults to `gate_mode` SEPARATED, which reads another layout; SGLang
    0.5.23 pairs this very shuffle with `GateMode.INTERLEAVE` (mxfp4.py:989-1009 shuffles,
    moe_runner/aiter.py:236-243 passes the mode). So where the keyword exists the prepared weights
    say INTERLEAVE and the runner passes it; before v0.1.14 the kernel knows only this layout.
    """
    gate_mode = GateMode.INTERLEAVE if has_gate_mode else GateMode.SEPARATED
    return _a16w4_shuffled(ops, weights, gate_mode, w2_scale_e8m0=False)


def _prepare_mxfp8(
    ops: _AiterOps, weights: ExpertWeights, has_gate_mode: bool, version: str
) -> ExpertWeights:
    """fp8 weights with e8m0 scales per 1x32 (mxfp8) in the layout of AITER's a8w8 kernels.

    Mirrors SGLang 0.5.23's Fp8MoEMethod for mxfp8 on gfx950 (fp8.py:2586-2608):
    `shuffle_weight_a16w4(w13, 16, True)`, `shuffle_scale_a16w4(w13_scale, experts, True)`,
    `shuffle_weight_a16w4(w2, 16, False)` and, unlike the mxfp4 method, `e8m0_shuffle(w2_scale)`;
    the runner passes `gate_mode=INTERLEAVE` (fp8.py:3448-3451). AITER has fp8 per_1x32 kernels
    from v0.1.16.post1 (`MXFP8_WEIGHTS_SINCE`) and on gfx950 only (SGLang converts mxfp8 to
    block fp8 on gfx942: fp8.py:2319-2325), so an older AITER, one without `gate_mode` or one
    computing in e4m3fnuz is refused here rather than handed a layout it does not read. A version
    that names no release (a source build) is taken at its word: its signature still decides.
    """
    release = release_of(version)
    too_old = release is not None and release < MXFP8_WEIGHTS_SINCE
    if too_old or not has_gate_mode or ops.fp8_dtype != torch.float8_e4m3fn:
        raise ValueError(
            f"mxfp8 weights (fp8 with per_1x32 e8m0 scales) need AITER {tag(MXFP8_WEIGHTS_SINCE)}"
            f" or later on gfx950 (installed: {version}; fused_moe with gate_mode: "
            f"{has_gate_mode}; AITER's fp8: {ops.fp8_dtype})"
        )
    return _a16w4_shuffled(ops, weights, GateMode.INTERLEAVE, w2_scale_e8m0=True)


def _a16w4_shuffled(
    ops: _AiterOps, weights: ExpertWeights, gate_mode: GateMode, *, w2_scale_e8m0: bool
) -> ExpertWeights:
    """The a16w4 shuffles of the weights and of w13's scales, which mxfp4 and mxfp8 share; w2's
    scales take `shuffle_scale_a16w4` (mxfp4) or, with `w2_scale_e8m0`, `e8m0_shuffle` (mxfp8)."""
    experts = weights.num_local_experts
    w13_scale = _rows(_required_scale(weights.w13_scale, "w13_scale"))
    w2_scale = _rows(_required_scale(weights.w2_scale, "w2_scale"))
    return dataclasses.replace(
        weights,
        w13_weight=ops.shuffle_weight_a16w4(weights.w13_weight.contiguous(), _A16W4_LANES, True),
        w2_weight=ops.shuffle_weight_a16w4(weights.w2_weight.contiguous(), _A16W4_LANES, False),
        w13_scale=ops.shuffle_scale_a16w4(w13_scale, experts, True),
        w2_scale=(
            ops.e8m0_shuffle(w2_scale)
            if w2_scale_e8m0
            else ops.shuffle_scale_a16w4(w2_scale, experts, False)
        ),
        gate_mode=gate_mode,
    )


def _required_scale(scale: torch.Tensor | None, name: str) -> torch.Tensor:
    if scale is None:
        raise ValueError(f"per_1x32 weights need {name} (e8m0, [experts, rows, K/32])")
    return scale


def _rows(scale: torch.Tensor) -> torch.Tensor:
    """A logical [experts, rows, K/32] scale as the [experts * rows, K/32] matrix AITER shuffles."""
    return scale.contiguous().view(-1, scale.shape[-1])
