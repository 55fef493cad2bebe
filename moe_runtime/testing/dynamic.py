"""SGLang 0.5.13's registry-driven AITER MoE path, re-implemented step by step on moe_runtime types.

This is the oracle the generated runners are proven against and the baseline they are timed
against, so it takes every per-call step SGLang takes, in SGLang's order, and nothing else:
the quant method builds its quant info (reading the dispatcher's expert mask; the standard
dispatcher rebuilt that mask on every dispatch), `MoeRunner.run` reads the dispatch output's
format, looks up the pre-permute function in a registry, builds a running-state dict, the
pre-permute sniffs MORI outputs with `hasattr`, reads `SGLANG_MORI_MOE_MAX_INPUT_TOKENS`, decides
the activation quant type from the weights and the wire dtype, reroutes -1 ids with a full-tensor
`torch.where`; the runner core imports the kernel, maps enums with `getattr`, calls it; the
post-permute function is looked up and builds the combine input. It shares no code with
`templates/` or `generated/`.

Where 0.5.13 is wrong it is wrong here too (a wrong result or the same kind of exception);
`known_wrong` says for which keys and why. Where moe_runtime's world differs from SGLang's:
- SGLang's dispatch outputs carry their format as a `format` property; moe_runtime's NamedTuples do
  not, so the format is read per call from a table keyed by the output's class.
- MORI outputs here have a `recv_cap` field (0.5.23); 0.5.13 had none and read the cap from the
  environment on every call, which is what this module does: the field is ignored.
- AITER's `gate_mode` keyword (passed with `swiglu_limit`) is passed only to kernels that accept it;
  it names a weight layout the reference kernel does not have.
- The unquantized method falls back to SGLang's Triton runner on a RuntimeError; there is no
  Triton runner here, so that error is raised with a note instead.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F

from moe_runtime import enums
from moe_runtime.types import (
    CombineInput,
    ConfigError,
    DeepEPLLCombineInput,
    DeepEPLLDispatchOutput,
    DeepEPNormalCombineInput,
    DeepEPNormalDispatchOutput,
    ExpertWeights,
    FusedMoeKernel,
    MoeLayerConfig,
    MoriEPLLCombineInput,
    MoriEPLLDispatchOutput,
    MoriEPNormalCombineInput,
    MoriEPNormalDispatchOutput,
    StandardCombineInput,
    StandardDispatchOutput,
)

__all__ = ["DynamicRunner", "known_wrong"]

MORI_MAX_INPUT_TOKENS_ENV = "SGLANG_MORI_MOE_MAX_INPUT_TOKENS"
GATE_UP_INTERLEAVE_ENV = "SGLANG_USE_AITER_MOE_GU_ITLV"
_RUNNER_BACKEND = "aiter"

# aiter.ops.flydsl.moe_common.GateMode values.
_GATE_MODE_INTERLEAVE = "interleave"
_GATE_MODE_SEPARATED = "separated"

_AITER_ACTIVATIONS = {"silu": "Silu", "swiglu": "Swiglu"}

_FP8_GROUP = 128
_MXFP4_GROUP = 32
# E2M1 nibble code -> value (bit 3 is the sign), as rocm_moe_utils.upscale_mxfp4 decodes it.
_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


@functools.cache
def _e2m1_table(device: torch.device) -> torch.Tensor:
    return torch.tensor(_E2M1_VALUES + tuple(-v for v in _E2M1_VALUES), device=device)


class AiterQuantType(StrEnum):
    """SGLang's quant-type names; mapped to AITER's `QuantType` by name on every call."""

    NONE = "No"
    PER_TOKEN = "per_Token"
    PER_128X128 = "per_128x128"
    PER_1X32 = "per_1x32"


@dataclass
class AiterMoeQuantInfo:
    """What a quant method hands the runner on every call (SGLang builds it per forward)."""

    w13_weight: torch.Tensor
    w2_weight: torch.Tensor
    quant_type: AiterQuantType = AiterQuantType.NONE
    w13_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None
    a13_scale: torch.Tensor | None = None
    a2_scale: torch.Tensor | None = None
    b13: torch.Tensor | None = None
    b2: torch.Tensor | None = None
    expert_mask: torch.Tensor | None = None
    doweight_stage1: bool = False
    hidden_pad: int = 0
    intermediate_pad: int = 0
    swiglu_limit: float = 0.0
    fused_moe_kwargs: dict[str, Any] | None = None


@dataclass
class AiterRunnerInput:
    hidden_states: torch.Tensor
    topk_ids: torch.Tensor  # int32
    topk_weights: torch.Tensor  # float32
    quant_type: AiterQuantType  # may differ from the quant info's after the MORI decision
    a1_scale: torch.Tensor | None = None  # the dispatcher's per-row scale (MORI)
    num_local_tokens: torch.Tensor | None = None  # MORI only
    output_dtype: torch.dtype | None = None  # MORI only


@dataclass
class AiterRunnerOutput:
    hidden_states: torch.Tensor


@dataclass(frozen=True)
class _RunnerConfig:
    """The fields of SGLang's MoeRunnerConfig that the AITER path reads."""

    num_local_experts: int
    activation: str
    apply_router_weight_on_input: bool


RunningState = dict[str, Any]
_PrePermute = Callable[[Any, AiterMoeQuantInfo, _RunnerConfig, RunningState], AiterRunnerInput]
_PostPermute = Callable[
    [AiterRunnerOutput, AiterMoeQuantInfo, _RunnerConfig, RunningState], CombineInput
]

_Permute = TypeVar("_Permute", _PrePermute, _PostPermute)


class _PermutePool(Generic[_Permute]):
    """SGLang's PermuteMethodPool, one direction of it: functions by (source, target) format."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._functions: dict[tuple[str, str], _Permute] = {}

    def register(self, source: str, target: str) -> Callable[[_Permute], _Permute]:
        def register(function: _Permute) -> _Permute:
            self._functions[(source, target)] = function
            return function

        return register

    def get(self, source: str, target: str) -> _Permute:
        function = self._functions.get((source, target))
        if function is None:
            raise LookupError(f"{self._kind} function for {source} to {target} is not registered")
        return function


# (dispatch format, runner backend) and (runner backend, combine format).
_PRE_PERMUTE = _PermutePool[_PrePermute]("Pre-permute")
_POST_PERMUTE = _PermutePool[_PostPermute]("Post-permute")

# SGLang's `dispatch_output.format.value`: MORI outputs claim DeepEP's formats.
_FORMAT_OF_OUTPUT: dict[type, str] = {
    StandardDispatchOutput: "standard",
    DeepEPNormalDispatchOutput: "deepep_normal",
    DeepEPLLDispatchOutput: "deepep_ll",
    MoriEPNormalDispatchOutput: "deepep_normal",
    MoriEPLLDispatchOutput: "deepep_ll",
}


def _dispatch_format(dispatch_output: object) -> str:
    format_name = _FORMAT_OF_OUTPUT.get(type(dispatch_output))
    if format_name is None:
        raise TypeError(
            f"{type(dispatch_output).__name__} is not a dispatch output; expected one of "
            f"{', '.join(t.__name__ for t in _FORMAT_OF_OUTPUT)}"
        )
    return format_name


def _get_int_env_var(name: str, default: int = 0) -> int:
    """sglang.srt.utils.get_int_env_var: unset, blank or unparsable values give the default."""
    value = os.getenv(name)
    if value is None or not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        return default


def _get_bool_env(name: str, default: bool) -> bool:
    """sglang.srt.environ.EnvBool.get: read on every call; an invalid value warns, gives default."""
    value = os.getenv(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    warnings.warn(
        f'Invalid value for {name}: "{value}" is not a valid boolean value, using default '
        f'"{default}"',
        stacklevel=2,
    )
    return default


# --------------------------------------------------------------------------- dispatchers' masks


class _StandardDispatcher:
    """StandardDispatcher under AITER: the local-expert mapping is built on the first dispatch
    with EP > 1, and 0.5.13 rebuilt the int32 mask from it on every dispatch."""

    def __init__(self, config: MoeLayerConfig, device: torch.device) -> None:
        self._config = config
        self._device = device
        self._local_expert_mapping: torch.Tensor | None = None
        self.expert_mask_gpu: torch.Tensor | None = None

    def on_dispatch(self) -> None:
        config = self._config
        if config.ep_size > 1 and self._local_expert_mapping is None:
            mapping = torch.full(
                (config.num_experts,), -1, dtype=torch.int32, device=self._device
            )
            first = config.ep_rank * config.num_local_experts
            mapping[first : first + config.num_local_experts] = torch.arange(
                0, config.num_local_experts, dtype=torch.int32, device=self._device
            )
            self._local_expert_mapping = mapping
        if self._local_expert_mapping is not None:
            mapping = self._local_expert_mapping
            self.expert_mask_gpu = (
                ((mapping >= 0) & (mapping < config.num_local_experts))
                .to(torch.int32)
                .to(device=self._device)
            )


class _DeepEPDispatcher:
    """DeepEP: int32 [L+1] mask built once, the sink id L off."""

    def __init__(self, config: MoeLayerConfig, device: torch.device) -> None:
        expert_mask = torch.zeros(config.num_local_experts + 1, device=device, dtype=torch.int)
        expert_mask[:-1] = 1
        self.expert_mask_gpu = expert_mask

    def on_dispatch(self) -> None:
        """Nothing per dispatch."""


class _MoriDispatcher:
    """MORI: int32 [E] mask built once, ones on this rank's experts."""

    def __init__(self, config: MoeLayerConfig, device: torch.device) -> None:
        expert_mask = torch.zeros(config.num_experts, device=device, dtype=torch.int32)
        start = config.ep_rank * config.num_local_experts
        expert_mask[start : start + config.num_local_experts] = 1
        self.expert_mask_gpu = expert_mask

    def on_dispatch(self) -> None:
        """Nothing per dispatch."""


class _MasklessDispatcher:
    """Mooncake and NIXL: no `expert_mask_gpu` at all, so quant methods that read it raise
    AttributeError, as in SGLang."""

    def __init__(self, config: MoeLayerConfig, device: torch.device) -> None:
        del config, device

    def on_dispatch(self) -> None:
        """Nothing per dispatch."""


_DISPATCHERS: dict[str, Callable[[MoeLayerConfig, torch.device], Any]] = {
    "none": _StandardDispatcher,
    "deepep": _DeepEPDispatcher,
    "mooncake": _MasklessDispatcher,
    "nixl": _MasklessDispatcher,
    "mori": _MoriDispatcher,
}
# The backend that produces each output class, when the caller does not name one.
_A2A_OF_OUTPUT: dict[type, str] = {
    StandardDispatchOutput: "none",
    DeepEPNormalDispatchOutput: "deepep",
    DeepEPLLDispatchOutput: "deepep",
    MoriEPNormalDispatchOutput: "mori",
    MoriEPLLDispatchOutput: "mori",
}


# --------------------------------------------------------------------------- pre-permute


@_PRE_PERMUTE.register("standard", _RUNNER_BACKEND)
def _pre_permute_standard_to_aiter(
    dispatch_output: Any,
    quant_info: AiterMoeQuantInfo,
    runner_config: _RunnerConfig,
    running_state: RunningState,
) -> AiterRunnerInput:
    hidden_states = dispatch_output.hidden_states
    topk_weights, topk_ids, _ = dispatch_output.topk_output
    topk_weights = topk_weights.to(torch.float32)

    if runner_config.apply_router_weight_on_input and not quant_info.doweight_stage1:
        # Pre-scale for kernels that do not honour doweight_stage1 (needs top-k 1).
        if not (topk_weights.dim() == 2 and topk_weights.shape[-1] == 1):
            raise ValueError(
                "apply_router_weight_on_input requires topk=1, got topk_weights of shape "
                f"{tuple(topk_weights.shape)}"
            )
        hidden_states = hidden_states * topk_weights.to(hidden_states.dtype)
        topk_weights = torch.ones_like(topk_weights)

    return AiterRunnerInput(
        hidden_states=hidden_states,
        topk_ids=topk_ids.to(torch.int32),
        topk_weights=topk_weights,
        quant_type=quant_info.quant_type,
    )


def _is_mori_dispatch_output(dispatch_output: Any) -> bool:
    # MORI outputs carry origin_topk_* tensors that DeepEP's lack.
    return hasattr(dispatch_output, "origin_topk_ids")


def _resolve_mori_quant_type(
    dispatch_a1_dtype: torch.dtype,
    dispatch_scale: torch.Tensor | None,
    weight_quant: AiterQuantType,
) -> AiterQuantType:
    """The activation quant type when the MORI wire may have pre-quantized hidden_states."""
    is_fp8_quant = weight_quant in (AiterQuantType.PER_128X128, AiterQuantType.PER_TOKEN)
    is_w4a4 = weight_quant == AiterQuantType.PER_1X32
    is_fp4_dispatch = dispatch_a1_dtype == torch.float4_e2m1fn_x2
    has_dispatch_scale = dispatch_scale is not None

    if is_w4a4:
        return AiterQuantType.PER_1X32
    if is_fp8_quant:
        return weight_quant
    # bf16 weights: lift to the wire's quant type when it carries scales.
    if has_dispatch_scale and is_fp4_dispatch:
        return AiterQuantType.PER_1X32
    if has_dispatch_scale and not is_fp4_dispatch:
        return AiterQuantType.PER_128X128
    return AiterQuantType.NONE


def _upscale(
    hidden_state: torch.Tensor, hidden_state_scale: torch.Tensor, output_dtype: torch.dtype
) -> torch.Tensor:
    """rocm_moe_utils.upscale: fp8 rows times their 1x128 fp32 scales, into `output_dtype`.

    SGLang's Triton kernel skips rows at or past total_recv (left as `torch.empty` garbage); here
    they are computed from stale data, equally never read.
    """
    columns = hidden_state.shape[1]
    per_column = hidden_state_scale.float().repeat_interleave(_FP8_GROUP, dim=1)
    if per_column.shape[1] < columns:
        # SGLang's kernel reads past the end of each scale row here (e.g. activations padded
        # after quantization); there is no defined result to reproduce.
        raise IndexError(
            f"upscale of {columns} columns reads scale column {(columns - 1) // _FP8_GROUP}, "
            f"but the scales have {hidden_state_scale.shape[1]} per row"
        )
    return (hidden_state.float() * per_column[:, :columns]).to(output_dtype)


def _upscale_mxfp4(
    hidden_state: torch.Tensor, hidden_state_scale: torch.Tensor, output_dtype: torch.dtype
) -> torch.Tensor:
    """rocm_moe_utils.upscale_mxfp4: E2M1 pairs (low nibble first) times e8m0 scales per 32
    elements (exponent byte 0 reads as 0, 255 as 254), into `output_dtype`. Rows past
    total_recv: see `_upscale`."""
    if hidden_state.dtype != torch.float4_e2m1fn_x2:
        raise TypeError(f"upscale_mxfp4 needs float4_e2m1fn_x2, got {hidden_state.dtype}")
    if hidden_state_scale.dtype != torch.float8_e8m0fnu:
        raise TypeError(
            f"upscale_mxfp4 needs float8_e8m0fnu scales, got {hidden_state_scale.dtype}"
        )
    rows, packed = hidden_state.shape
    if tuple(hidden_state_scale.shape) != (rows, packed * 2 // _MXFP4_GROUP):
        raise ValueError(
            f"upscale_mxfp4 needs scales [{rows}, {packed * 2 // _MXFP4_GROUP}], got "
            f"{tuple(hidden_state_scale.shape)}"
        )
    byte = hidden_state.view(torch.uint8).long()
    codes = torch.stack((byte & 0xF, byte >> 4), dim=-1).flatten(-2)
    values = _e2m1_table(hidden_state.device)[codes]
    exponent = hidden_state_scale.view(torch.uint8).long().clamp(max=254)
    scale = torch.where(exponent == 0, 0.0, torch.exp2((exponent - 127).float()))
    return (values * scale.repeat_interleave(_MXFP4_GROUP, dim=1)).to(output_dtype)


def _pre_permute_deepep_to_aiter(
    dispatch_output: Any,
    quant_info: AiterMoeQuantInfo,
    runner_config: _RunnerConfig,
    running_state: RunningState,
) -> AiterRunnerInput:
    """DeepEP normal, DeepEP low latency (wrongly: see `known_wrong`) and both MORI outputs."""
    is_mori = _is_mori_dispatch_output(dispatch_output)

    topk_ids = dispatch_output.topk_ids.to(torch.int32)
    topk_weights = dispatch_output.topk_weights.to(torch.float32)

    if is_mori:
        runner_input = _pre_permute_mori(
            dispatch_output, quant_info, topk_ids, topk_weights, running_state
        )
    else:
        # AITER cannot take -1 ids: reroute them to the sink slot L, masked off by the [L+1] mask.
        topk_ids = torch.where(
            topk_ids == -1,
            torch.full_like(topk_ids, runner_config.num_local_experts),
            topk_ids,
        )
        running_state["aiter_combine_topk_ids"] = dispatch_output.topk_ids
        running_state["aiter_combine_topk_weights"] = dispatch_output.topk_weights
        runner_input = AiterRunnerInput(
            hidden_states=dispatch_output.hidden_states,
            topk_ids=topk_ids,
            topk_weights=topk_weights,
            quant_type=quant_info.quant_type,
        )

    running_state["aiter_combine_is_mori"] = is_mori
    return runner_input


def _pre_permute_mori(
    dispatch_output: Any,
    quant_info: AiterMoeQuantInfo,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    running_state: RunningState,
) -> AiterRunnerInput:
    """The MORI branch of the DeepEP pre-permute: the environment's row cap, the wire upscale,
    the activation quant type, and the original routing for combine."""
    hidden_states = dispatch_output.hidden_states
    a1_scale = dispatch_output.hidden_states_scale
    output_dtype = dispatch_output.out_dtype

    # Truncate to the configured cap; MORI's combine only reads rows below total_recv.
    mori_max = _get_int_env_var(MORI_MAX_INPUT_TOKENS_ENV, 0)
    if mori_max > 0:
        hidden_states = hidden_states[:mori_max]
        if a1_scale is not None:
            a1_scale = a1_scale[:mori_max]
        topk_ids = topk_ids[:mori_max]
        topk_weights = topk_weights[:mori_max]

    # Upscale the wire when AITER has no kernel for the weight/activation dtype pair.
    weight_quant = quant_info.quant_type
    is_fp8_quant = weight_quant in (AiterQuantType.PER_128X128, AiterQuantType.PER_TOKEN)
    is_w4a4 = weight_quant == AiterQuantType.PER_1X32
    is_fp4_dispatch = hidden_states.dtype == torch.float4_e2m1fn_x2

    if is_w4a4 and a1_scale is not None and not is_fp4_dispatch:
        hidden_states = _upscale(hidden_states, a1_scale, output_dtype)
        a1_scale = None
    elif is_fp8_quant and is_fp4_dispatch and a1_scale is not None:
        hidden_states = _upscale_mxfp4(hidden_states, a1_scale, output_dtype)
        a1_scale = None

    quant_type = _resolve_mori_quant_type(hidden_states.dtype, a1_scale, weight_quant)

    running_state["aiter_combine_topk_ids"] = dispatch_output.origin_topk_ids
    running_state["aiter_combine_topk_weights"] = dispatch_output.origin_topk_weights
    return AiterRunnerInput(
        hidden_states=hidden_states,
        topk_ids=topk_ids,
        topk_weights=topk_weights,
        quant_type=quant_type,
        a1_scale=a1_scale,
        num_local_tokens=dispatch_output.num_recv_tokens_per_expert,
        output_dtype=output_dtype,
    )


_PRE_PERMUTE.register("deepep_normal", _RUNNER_BACKEND)(_pre_permute_deepep_to_aiter)
_PRE_PERMUTE.register("deepep_ll", _RUNNER_BACKEND)(_pre_permute_deepep_to_aiter)


# --------------------------------------------------------------------------- post-permute


@_POST_PERMUTE.register(_RUNNER_BACKEND, "standard")
def _post_permute_aiter_to_standard(
    runner_output: AiterRunnerOutput,
    quant_info: AiterMoeQuantInfo,
    runner_config: _RunnerConfig,
    running_state: RunningState,
) -> CombineInput:
    return StandardCombineInput(hidden_states=runner_output.hidden_states)


def _post_permute_aiter_to_deepep(
    runner_output: AiterRunnerOutput, running_state: RunningState, *, is_normal: bool
) -> CombineInput:
    combine_input_type: type[
        MoriEPNormalCombineInput
        | MoriEPLLCombineInput
        | DeepEPNormalCombineInput
        | DeepEPLLCombineInput
    ]
    if running_state.get("aiter_combine_is_mori"):
        combine_input_type = MoriEPNormalCombineInput if is_normal else MoriEPLLCombineInput
    else:
        combine_input_type = DeepEPNormalCombineInput if is_normal else DeepEPLLCombineInput
    return combine_input_type(
        hidden_states=runner_output.hidden_states,
        topk_ids=running_state["aiter_combine_topk_ids"],
        topk_weights=running_state["aiter_combine_topk_weights"],
    )


@_POST_PERMUTE.register(_RUNNER_BACKEND, "deepep_normal")
def _post_permute_aiter_to_deepep_normal(
    runner_output: AiterRunnerOutput,
    quant_info: AiterMoeQuantInfo,
    runner_config: _RunnerConfig,
    running_state: RunningState,
) -> CombineInput:
    return _post_permute_aiter_to_deepep(runner_output, running_state, is_normal=True)


@_POST_PERMUTE.register(_RUNNER_BACKEND, "deepep_ll")
def _post_permute_aiter_to_deepep_ll(
    runner_output: AiterRunnerOutput,
    quant_info: AiterMoeQuantInfo,
    runner_config: _RunnerConfig,
    running_state: RunningState,
) -> CombineInput:
    return _post_permute_aiter_to_deepep(runner_output, running_state, is_normal=False)


# --------------------------------------------------------------------------- runner


class _AiterRunnerCore:
    """AiterRunnerCore.run: zero-row guard, kernel import, enum lookups, keyword assembly, call."""

    def __init__(self, config: _RunnerConfig, kernel: FusedMoeKernel | None) -> None:
        self.config = config
        self._kernel = kernel
        # Probed once per kernel, like SGLang's cached probe of fused_moe's signature.
        self._gate_mode_probe: dict[int, bool] = {}

    def run(
        self,
        runner_input: AiterRunnerInput,
        quant_info: AiterMoeQuantInfo,
        running_state: RunningState,
    ) -> AiterRunnerOutput:
        if runner_input.hidden_states.shape[0] == 0:
            return AiterRunnerOutput(hidden_states=runner_input.hidden_states)

        fused_moe, quant_enum, activation_enum = self._kernel_and_enums()

        a1_scale = (
            runner_input.a1_scale if runner_input.a1_scale is not None else quant_info.a13_scale
        )
        extra = self._extra_keywords(fused_moe, runner_input, quant_info)

        output = fused_moe(
            hidden_states=runner_input.hidden_states,
            w1=quant_info.w13_weight,
            w2=quant_info.w2_weight,
            topk_weight=runner_input.topk_weights,
            topk_ids=runner_input.topk_ids,
            quant_type=getattr(quant_enum, runner_input.quant_type.value),
            activation=getattr(
                activation_enum, _AITER_ACTIVATIONS.get(self.config.activation, "Gelu")
            ),
            w1_scale=quant_info.w13_scale,
            w2_scale=quant_info.w2_scale,
            a1_scale=a1_scale,
            a2_scale=quant_info.a2_scale,
            bias1=quant_info.b13,
            bias2=quant_info.b2,
            expert_mask=quant_info.expert_mask,
            doweight_stage1=quant_info.doweight_stage1,
            hidden_pad=quant_info.hidden_pad,
            intermediate_pad=quant_info.intermediate_pad,
            **extra,
        )
        return AiterRunnerOutput(hidden_states=output)

    def _kernel_and_enums(self) -> tuple[FusedMoeKernel, Any, Any]:
        """The kernel with its QuantType and ActivationType: AITER's, imported on every call
        (SGLang imports inside the call), or the injected kernel with moe_runtime's enums."""
        if self._kernel is None:
            from moe_runtime import kernels

            return kernels.fused_moe, kernels.QuantType, kernels.ActivationType
        return self._kernel, enums.QuantType, enums.ActivationType

    def _extra_keywords(
        self,
        fused_moe: FusedMoeKernel,
        runner_input: AiterRunnerInput,
        quant_info: AiterMoeQuantInfo,
    ) -> dict[str, Any]:
        """The keywords passed only when set: the quant method's, MORI's token counts and output
        dtype, and swiglu_limit with the gate mode (probed on the kernel)."""
        extra: dict[str, Any] = {}
        if quant_info.fused_moe_kwargs:
            extra.update(quant_info.fused_moe_kwargs)
        if runner_input.num_local_tokens is not None:
            extra["num_local_tokens"] = runner_input.num_local_tokens
        if runner_input.output_dtype is not None:
            extra["dtype"] = runner_input.output_dtype
        if quant_info.swiglu_limit > 0:
            gate_mode = (
                _GATE_MODE_INTERLEAVE
                if _get_bool_env(GATE_UP_INTERLEAVE_ENV, True)
                else _GATE_MODE_SEPARATED
            )
            if self._accepts_gate_mode(fused_moe):
                extra["gate_mode"] = gate_mode
            extra["swiglu_limit"] = quant_info.swiglu_limit
        return extra

    def _accepts_gate_mode(self, kernel: FusedMoeKernel) -> bool:
        key = id(kernel)
        if key not in self._gate_mode_probe:
            from moe_runtime.kernels import accepts_keyword  # SGLang probes lazily too

            self._gate_mode_probe[key] = accepts_keyword(kernel, "gate_mode")
        return self._gate_mode_probe[key]


class _MoeRunner:
    """MoeRunner.run for the AITER backend: registries consulted on every call."""

    def __init__(self, config: _RunnerConfig, kernel: FusedMoeKernel | None) -> None:
        self.config = config
        self.runner_core = _AiterRunnerCore(config, kernel)

    def run(self, dispatch_output: Any, quant_info: AiterMoeQuantInfo) -> CombineInput:
        dispatch_format = _dispatch_format(dispatch_output)
        pre_permute_func = _PRE_PERMUTE.get(dispatch_format, _RUNNER_BACKEND)

        running_state: RunningState = {}
        runner_input = pre_permute_func(dispatch_output, quant_info, self.config, running_state)
        runner_output = self.runner_core.run(runner_input, quant_info, running_state)

        combine_format = _dispatch_format(dispatch_output)
        post_permute_func = _POST_PERMUTE.get(_RUNNER_BACKEND, combine_format)
        return post_permute_func(runner_output, quant_info, self.config, running_state)


# --------------------------------------------------------------------------- quant methods


@dataclass
class _Layer:
    """The FusedMoE layer attributes the quant methods read."""

    config: MoeLayerConfig
    weights: ExpertWeights
    dispatcher: Any  # Mooncake's and NIXL's lack `expert_mask_gpu`
    runner: _MoeRunner


def _fp4_views(
    weights: ExpertWeights, *, tag_when_present: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-call `.view(float4_e2m1fn_x2)` of the fp4 methods, re-tagging `is_shuffled`
    (a fresh view drops the attribute)."""
    if hasattr(torch, "float4_e2m1fn_x2"):
        w13_weight = weights.w13_weight.view(torch.float4_e2m1fn_x2)
        w2_weight = weights.w2_weight.view(torch.float4_e2m1fn_x2)
    else:
        w13_weight, w2_weight = weights.w13_weight, weights.w2_weight
    tagged = (
        hasattr(weights.w13_weight, "is_shuffled")
        if tag_when_present
        else getattr(weights.w13_weight, "is_shuffled", False)
    )
    if tagged:
        setattr(w13_weight, "is_shuffled", True)  # noqa: B010 (a tensor attribute AITER reads)
        setattr(w2_weight, "is_shuffled", True)  # noqa: B010
    return w13_weight, w2_weight


def _scaled_info(
    layer: _Layer,
    quant_type: AiterQuantType,
    views: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    expert_mask: bool,
    **fields: Any,
) -> AiterMoeQuantInfo:
    """The quant info every scaled method builds: its weights (the fp4 methods' `views` of them)
    with their scales, the dispatcher's expert mask where the method passes one (read per call,
    as SGLang does), and the method's own `fields`."""
    w13_weight, w2_weight = (
        (layer.weights.w13_weight, layer.weights.w2_weight) if views is None else views
    )
    return AiterMoeQuantInfo(
        w13_weight=w13_weight,
        w2_weight=w2_weight,
        quant_type=quant_type,
        w13_scale=layer.weights.w13_scale,
        w2_scale=layer.weights.w2_scale,
        expert_mask=layer.dispatcher.expert_mask_gpu if expert_mask else None,
        **fields,
    )


def _apply_unquant(layer: _Layer, dispatch_output: Any) -> CombineInput:
    try:
        quant_info = AiterMoeQuantInfo(
            w13_weight=layer.weights.w13_weight,
            w2_weight=layer.weights.w2_weight,
            expert_mask=layer.dispatcher.expert_mask_gpu,
        )
        return layer.runner.run(dispatch_output, quant_info)
    except RuntimeError as error:
        raise RuntimeError(
            f"the kernel raised RuntimeError ({error}); SGLang 0.5.13 silently falls back to its "
            "Triton MoE runner here, which this re-implementation does not have"
        ) from error


def _apply_fp8(quant_type: AiterQuantType) -> Callable[[_Layer, Any], CombineInput]:
    def apply(layer: _Layer, dispatch_output: Any) -> CombineInput:
        quant_info = _scaled_info(
            layer, quant_type, expert_mask=True, swiglu_limit=layer.config.swiglu_limit or 0.0
        )
        return layer.runner.run(dispatch_output, quant_info)

    return apply


def _apply_mxfp4(layer: _Layer, dispatch_output: Any) -> CombineInput:
    weights = layer.weights
    w13_weight, w2_weight = _fp4_views(weights, tag_when_present=False)
    # Pad the activations to the padded hidden size unless they already arrive padded.
    x = dispatch_output.hidden_states
    padded_hidden_size = weights.w2_weight.shape[1]
    if x.shape[-1] == padded_hidden_size:
        x_padded = x
    else:
        x_padded = F.pad(x, (0, weights.hidden_pad), mode="constant", value=0.0)
    quant_info = _scaled_info(
        layer,
        AiterQuantType.PER_1X32,
        (w13_weight, w2_weight),
        expert_mask=True,
        b13=weights.b13,
        b2=weights.b2,
        doweight_stage1=layer.config.apply_router_weight_on_input,
        hidden_pad=weights.hidden_pad,
        intermediate_pad=weights.intermediate_pad,
        swiglu_limit=layer.config.swiglu_limit or 0.0,
    )
    return layer.runner.run(dispatch_output._replace(hidden_states=x_padded), quant_info)


def _apply_quark_w4a4_mxfp4(layer: _Layer, dispatch_output: Any) -> CombineInput:
    views = _fp4_views(layer.weights, tag_when_present=True)
    quant_info = _scaled_info(layer, AiterQuantType.PER_1X32, views, expert_mask=True)
    return layer.runner.run(dispatch_output, quant_info)


def _apply_quark_int4fp8(layer: _Layer, dispatch_output: Any) -> CombineInput:
    # SGLang passes no expert mask here.
    quant_info = _scaled_info(layer, AiterQuantType.PER_TOKEN, expert_mask=False)
    return layer.runner.run(dispatch_output, quant_info)


def _apply_ct_w8a8_fp8(layer: _Layer, dispatch_output: Any) -> CombineInput:
    # SGLang reads `topk_output` before choosing its AITER branch: DeepEP and MORI outputs have
    # none, so they raise AttributeError here.
    _topk_output = dispatch_output.topk_output
    # No expert mask; static input scales as a13/a2.
    quant_info = _scaled_info(
        layer,
        AiterQuantType.PER_TOKEN,
        expert_mask=False,
        a13_scale=layer.weights.a13_scale,
        a2_scale=layer.weights.a2_scale,
    )
    return layer.runner.run(dispatch_output, quant_info)


@dataclass(frozen=True)
class _QuantMethod:
    quant_type: AiterQuantType  # what the weights are prepared for
    apply: Callable[[_Layer, Any], CombineInput]
    forced_activation: str | None = None  # mxfp4 builds its runner with activation="swiglu"


_QUANT_METHODS: Mapping[str, _QuantMethod] = {
    "unquant": _QuantMethod(AiterQuantType.NONE, _apply_unquant),
    "fp8_block": _QuantMethod(
        AiterQuantType.PER_128X128, _apply_fp8(AiterQuantType.PER_128X128)
    ),
    "fp8_channel": _QuantMethod(AiterQuantType.PER_TOKEN, _apply_fp8(AiterQuantType.PER_TOKEN)),
    "mxfp4": _QuantMethod(AiterQuantType.PER_1X32, _apply_mxfp4, forced_activation="swiglu"),
    "quark_w4a4_mxfp4": _QuantMethod(AiterQuantType.PER_1X32, _apply_quark_w4a4_mxfp4),
    "quark_int4fp8": _QuantMethod(AiterQuantType.PER_TOKEN, _apply_quark_int4fp8),
    "ct_w8a8_fp8": _QuantMethod(AiterQuantType.PER_TOKEN, _apply_ct_w8a8_fp8),
}
# The matrix's quant methods that SGLang 0.5.13's AITER path has (the matrix's newer ones, such as
# fp8_tensor, have no dynamic counterpart here).
QUANT_METHODS = tuple(_QUANT_METHODS)


class DynamicRunner:
    """One MoE layer on one rank through SGLang 0.5.13's dynamic AITER path.

    `kernel` is any callable with `fused_moe`'s keyword signature (a recorder, a stub); `None`
    means the kernel bound by `moe_runtime.kernels`, imported on every call as SGLang imports
    AITER, with the weights prepared for it once here. `a2a_backend` names the dispatcher whose
    expert mask the quant methods read (`none`, `deepep`, `mooncake`, `nixl`, `mori`); `None`
    takes the backend that produces the first dispatch output seen.
    """

    def __init__(
        self,
        config: MoeLayerConfig,
        weights: ExpertWeights,
        quant_method: str,
        *,
        kernel: FusedMoeKernel | None = None,
        a2a_backend: str | None = None,
    ) -> None:
        method = _QUANT_METHODS.get(quant_method)
        if method is None:
            raise ConfigError(
                f"unknown quant method {quant_method!r}; valid: {', '.join(_QUANT_METHODS)}"
            )
        if a2a_backend is not None and a2a_backend not in _DISPATCHERS:
            raise ConfigError(
                f"unknown a2a backend {a2a_backend!r}; valid: {', '.join(_DISPATCHERS)}"
            )
        activation = method.forced_activation or config.activation
        if kernel is None:
            from moe_runtime import kernels

            weights = kernels.prepare_weights(
                weights,
                getattr(kernels.QuantType, method.quant_type.value),
                activation=getattr(
                    kernels.ActivationType, _AITER_ACTIVATIONS.get(activation, "Gelu")
                ),
            )
        runner_config = _RunnerConfig(
            num_local_experts=config.num_local_experts,
            activation=activation,
            apply_router_weight_on_input=config.apply_router_weight_on_input,
        )
        self._method = method
        self._device = weights.w13_weight.device
        self._layer = _Layer(
            config=config,
            weights=weights,
            dispatcher=None,
            runner=_MoeRunner(runner_config, kernel),
        )
        if a2a_backend is not None:
            self._layer.dispatcher = _DISPATCHERS[a2a_backend](config, self._device)

    def __call__(self, dispatch_output: Any) -> CombineInput:
        layer = self._layer
        if layer.dispatcher is None:
            backend = _A2A_OF_OUTPUT.get(type(dispatch_output))
            if backend is None:
                raise TypeError(
                    f"{type(dispatch_output).__name__} is not a dispatch output of moe_runtime"
                )
            layer.dispatcher = _DISPATCHERS[backend](layer.config, self._device)
        layer.dispatcher.on_dispatch()
        return self._method.apply(layer, dispatch_output)


# --------------------------------------------------------------------------- known wrong

_A2A_FORMATS: Mapping[str, tuple[str, ...]] = {
    "none": ("standard",),
    "deepep": ("deepep_normal", "deepep_ll", "deepep_ll_fp8"),
    "mooncake": ("deepep_ll", "deepep_ll_fp8"),
    "nixl": ("deepep_ll", "deepep_ll_fp8"),
    "mori": (
        "mori_normal",
        "mori_ll",
        "mori_normal_fp8",
        "mori_normal_fp4",
        "mori_ll_fp8",
        "mori_ll_fp4",
    ),
}
_LOW_LATENCY = ("deepep_ll", "deepep_ll_fp8")
_FP8_WIRE = ("mori_normal_fp8", "mori_ll_fp8")
_FP4_WIRE = ("mori_normal_fp4", "mori_ll_fp4")

_WHY_LOW_LATENCY = (
    "SGLang feeds DeepEP's low-latency [L, C, H] slabs into the normal pre-permute: the kernel "
    "gets 3-D activations with the sender-side [T, K] global ids (M does not match), rows past "
    "masked_m are not masked, an fp8 wire's scales are dropped, and the kernel weights rows that "
    "the low-latency combine weights again"
)
_WHY_NO_DISPATCHER_MASK = (
    "the {a2a} dispatcher defines no expert_mask_gpu: every quant method that reads it raises "
    "AttributeError"
)
_WHY_NO_MASK = (
    "{quant} passes no expert mask: with EP > 1 the standard path's global ids are not "
    "localised, DeepEP's sink id L is out of range and MORI's global ids address other ranks' "
    "experts"
)
_WHY_TOPK_OUTPUT = (
    "ct_w8a8_fp8 reads dispatch_output.topk_output, which DeepEP and MORI outputs lack "
    "(AttributeError)"
)
_WHY_STATIC_SCALE = (
    "ct_w8a8_fp8 passes its static input scales (a13_scale as a1_scale, a2_scale) to a per_Token "
    "kernel with bf16 input, which AITER refuses (static per-token quant is unsupported)"
)
_WHY_BLOCK_SCALE_PER_TOKEN = (
    "{quant} runs per_Token and is handed the fp8 wire's [R, H/128] block scales as a1_scale "
    "where a per-row [R, 1] scale is expected"
)
_WHY_FP4_INTO_A16W4 = (
    "mxfp4 pads the packed fp4 wire [R, H/2] as if it were bf16 and hands fp4 activations to the "
    "Swiglu a16w4 kernel, which takes bf16 (0.5.14 upscales instead)"
)
_WHY_PAD_BEFORE_UPSCALE = (
    "with a padded hidden size, mxfp4 pads the fp8 wire before upscaling it, so the upscale "
    "reads scales past the end of each row"
)


def has_path(a2a: str, dispatch: str) -> bool:
    """Whether SGLang 0.5.13's path has this (a2a backend, dispatch format) at all: MORI EPv2
    (`mori_v2*`) came later (SGLang 0.5.23 token_dispatcher/moriep.py:1355), so 0.5.13 has no
    row to compare the EPv2 runners with."""
    return dispatch in _A2A_FORMATS.get(a2a, ())


def known_wrong(
    a2a: str,
    quant: str,
    dispatch: str,
    *,
    ep_size: int | None = None,
    hidden_pad: int | None = None,
) -> str | None:
    """Why SGLang 0.5.13's path is wrong or broken for (a2a, quant, dispatch); None when right.

    `ep_size` and `hidden_pad` narrow the answer; left as None, a key is wrong if it is wrong for
    some value of them. Unknown names, or a format the backend does not produce, raise ValueError.
    """
    formats = _A2A_FORMATS.get(a2a)
    if formats is None:
        raise ValueError(f"unknown a2a backend {a2a!r}; valid: {', '.join(_A2A_FORMATS)}")
    if quant not in _QUANT_METHODS:
        raise ValueError(f"unknown quant method {quant!r}; valid: {', '.join(_QUANT_METHODS)}")
    if dispatch not in formats:
        raise ValueError(
            f"a2a backend {a2a!r} produces no {dispatch!r} outputs; it produces "
            f"{', '.join(formats)}"
        )
    reasons = []
    if dispatch in _LOW_LATENCY:
        reasons.append(_WHY_LOW_LATENCY)
        if a2a in ("mooncake", "nixl"):
            reasons.append(_WHY_NO_DISPATCHER_MASK.format(a2a=a2a))
    if quant == "ct_w8a8_fp8":
        if dispatch != "standard":
            reasons.append(_WHY_TOPK_OUTPUT)
        reasons.append(_WHY_STATIC_SCALE)
    if quant in ("quark_int4fp8", "ct_w8a8_fp8") and ep_size != 1:
        reasons.append(_WHY_NO_MASK.format(quant=quant))
    if quant in ("fp8_channel", "quark_int4fp8") and dispatch in _FP8_WIRE:
        reasons.append(_WHY_BLOCK_SCALE_PER_TOKEN.format(quant=quant))
    if quant == "mxfp4" and dispatch in _FP4_WIRE:
        reasons.append(_WHY_FP4_INTO_A16W4)
    if quant == "mxfp4" and dispatch in _FP8_WIRE and hidden_pad != 0:
        reasons.append(_WHY_PAD_BEFORE_UPSCALE)
    return "; ".join(reasons) or None
