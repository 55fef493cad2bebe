"""The runtime contract: layer config, expert weights, dispatch outputs and combine inputs.

Field names and order follow SGLang's own classes, so SGLang's objects fit these types structurally.
Dispatch outputs and combine inputs are NamedTuples (cheap to build on the hot path); the config and
the weights are frozen dataclasses validated once, at construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from moe_runtime.enums import ActivationType, GateMode, QuantType

ACTIVATIONS = ("silu", "gelu", "swiglu", "situ")
SORTING_DISPATCH_POLICIES = (0, 1, 2)


class ConfigError(ValueError):
    """A layer config or a set of expert weights that no runner can serve."""


@dataclass(frozen=True, slots=True)
class MoeLayerConfig:
    """One MoE layer as the runner sees it on one expert-parallel rank."""

    num_experts: int
    num_local_experts: int
    ep_rank: int
    ep_size: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    activation: str
    apply_router_weight_on_input: bool = False
    swiglu_limit: float = 0.0
    # AITER's moe_sorting kernel choice (csrc/include/moe_sorting_opus.h:1398: 0 picks by size,
    # 1 always the single kernel, 2 always the multi-phase one); it never changes the result.
    moe_sorting_dispatch_policy: int = 0
    # The situ activation's (AITER's Situv2, v0.1.19): beta * tanh(gate / beta) * sigmoid(gate)
    # times linear_beta * tanh(up / linear_beta). None: not passed to the kernel, which reads 1.0
    # (fused_moe.py v0.1.20.post1:802-803, 3134-3137), as SGLang 0.5.23 leaves an unset
    # gemm1_alpha / gemm1_clamp_limit (moe_runner/aiter.py:222-225).
    situ_beta: float | None = None
    situ_linear_beta: float | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("num_experts", "num_local_experts", "ep_size", "top_k", "hidden_size",
                     "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if not problems:
            if self.num_experts != self.num_local_experts * self.ep_size:
                problems.append(
                    f"num_experts ({self.num_experts}) must equal num_local_experts "
                    f"({self.num_local_experts}) * ep_size ({self.ep_size})"
                )
            if not 0 <= self.ep_rank < self.ep_size:
                problems.append(f"ep_rank must be in [0, {self.ep_size}), got {self.ep_rank!r}")
            if self.top_k > self.num_experts:
                problems.append(
                    f"top_k ({self.top_k}) cannot exceed num_experts ({self.num_experts})"
                )
        if self.activation not in ACTIVATIONS:
            problems.append(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.swiglu_limit < 0:
            problems.append(f"swiglu_limit must be >= 0, got {self.swiglu_limit!r}")
        for name in ("situ_beta", "situ_linear_beta"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        policy = self.moe_sorting_dispatch_policy
        if type(policy) is not int or policy not in SORTING_DISPATCH_POLICIES:
            problems.append(
                "moe_sorting_dispatch_policy must be one of "
                f"{', '.join(map(str, SORTING_DISPATCH_POLICIES))}, got "
                f"{policy!r}"
            )
        if problems:
            raise ConfigError("invalid MoeLayerConfig: " + "; ".join(problems))

    @property
    def first_local_expert(self) -> int:
        """Global id of this rank's first expert: rank r owns [r*L, (r+1)*L)."""
        return self.ep_rank * self.num_local_experts


@dataclass(frozen=True, slots=True)
class ExpertWeights:
    """This rank's expert weights in the logical (unshuffled) layout of docs/aiter_fused_moe.md.

    `gate_mode` says how `w13` (and, row for row, `w13_scale` and `b13`) holds the gate and up
    rows: SEPARATED (gate rows, then up rows; the default) or INTERLEAVE (alternating, as gpt-oss
    checkpoints store them). It is a fact of the weights, fixed when they were laid out; a runner
    refuses a mode its quant method's kernels cannot read, and passes it to the kernel at load.

    `kernel_layout` says the tensors are already in the layout of the kernel they are passed to
    (SGLang's quant methods shuffled them for AITER): such weights need that kernel injected
    (`kernel=`, they are not prepared again), and a weight scale may be AITER's shuffled 2-D matrix
    (`[L * rows, K/32]`, rows and columns padded by `e8m0_shuffle`) instead of its logical shape.
    """

    w13_weight: torch.Tensor
    w2_weight: torch.Tensor
    w13_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None
    a13_scale: torch.Tensor | None = None
    a2_scale: torch.Tensor | None = None
    b13: torch.Tensor | None = None
    b2: torch.Tensor | None = None
    doweight_stage1: bool = False
    hidden_pad: int = 0
    intermediate_pad: int = 0
    gate_mode: GateMode = GateMode.SEPARATED
    kernel_layout: bool = False

    def __post_init__(self) -> None:
        if self.w13_weight.dim() != 3 or self.w2_weight.dim() != 3:
            raise ConfigError(
                "w13_weight and w2_weight must be 3-D [experts, rows, cols], got shapes "
                f"{tuple(self.w13_weight.shape)} and {tuple(self.w2_weight.shape)}"
            )
        if self.w13_weight.shape[0] != self.w2_weight.shape[0]:
            raise ConfigError(
                f"w13_weight has {self.w13_weight.shape[0]} experts but w2_weight has "
                f"{self.w2_weight.shape[0]}"
            )
        if self.hidden_pad < 0 or self.intermediate_pad < 0:
            raise ConfigError("hidden_pad and intermediate_pad must be >= 0")
        if not isinstance(self.gate_mode, GateMode):
            raise ConfigError(
                f"gate_mode must be a moe_runtime.enums.GateMode (SEPARATED or INTERLEAVE), got "
                f"{self.gate_mode!r}"
            )

    @property
    def num_local_experts(self) -> int:
        return int(self.w2_weight.shape[0])


class TopKOutput(NamedTuple):
    topk_weights: torch.Tensor
    topk_ids: torch.Tensor
    router_logits: torch.Tensor | None


class StandardDispatchOutput(NamedTuple):
    hidden_states: torch.Tensor
    hidden_states_scale: torch.Tensor | None
    topk_output: TopKOutput


class DeepEPNormalDispatchOutput(NamedTuple):
    hidden_states: torch.Tensor
    hidden_states_scale: torch.Tensor | None
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    num_recv_tokens_per_expert: list[int]


class DeepEPLLDispatchOutput(NamedTuple):
    hidden_states: torch.Tensor
    hidden_states_scale: torch.Tensor | None
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    masked_m: torch.Tensor
    expected_m: int


class _MoriDispatchFields(NamedTuple):
    """The fields of MORI's normal and low-latency dispatch outputs (SGLang's two classes of the
    same fields): each is its own subclass of this, so a runner of one format refuses the other."""

    hidden_states: torch.Tensor
    hidden_states_scale: torch.Tensor | None
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    num_recv_tokens_per_expert: torch.Tensor
    origin_topk_ids: torch.Tensor
    origin_topk_weights: torch.Tensor
    out_dtype: torch.dtype
    recv_cap: int


class MoriEPNormalDispatchOutput(_MoriDispatchFields):
    __slots__ = ()


class MoriEPLLDispatchOutput(_MoriDispatchFields):
    __slots__ = ()


class MoriEPV2DispatchOutput(NamedTuple):
    """MORI EPv2 (SGLang 0.5.23's default): MORI's normal output plus combine's staging buffer.

    SGLang 0.5.23 returns it as its own `MoriEPNormalDispatchOutput` with the extra field
    `expert_output` before `recv_cap` (token_dispatcher/moriep.py:169-182, :1555-1570); runners of
    the `mori_v2*` formats accept that class as it is. `hidden_states_scale` is a strided view
    (`[:, :H/128]` fp32 or `[:, :H/32]` e8m0) of MORI's wider scale rows (moriep.py:1536-1545);
    `expert_output` is `[R, H]` in `out_dtype`, the rows MORI's combine reads (None where MORI has
    no `combine_in_view`: the kernel then allocates and combine stages a copy).
    """

    hidden_states: torch.Tensor
    hidden_states_scale: torch.Tensor | None
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    num_recv_tokens_per_expert: torch.Tensor
    origin_topk_ids: torch.Tensor
    origin_topk_weights: torch.Tensor
    out_dtype: torch.dtype
    expert_output: torch.Tensor | None
    recv_cap: int


class StandardCombineInput(NamedTuple):
    hidden_states: torch.Tensor


class _RoutedCombineFields(NamedTuple):
    """The fields of every combine input but the standard one: the expert output and the routing
    the dispatcher's combine weighs it by (one subclass per format, as SGLang has)."""

    hidden_states: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor


class DeepEPNormalCombineInput(_RoutedCombineFields):
    __slots__ = ()


class DeepEPLLCombineInput(_RoutedCombineFields):
    __slots__ = ()


class MoriEPNormalCombineInput(_RoutedCombineFields):
    __slots__ = ()


class MoriEPLLCombineInput(_RoutedCombineFields):
    __slots__ = ()


DispatchOutput = (
    StandardDispatchOutput
    | DeepEPNormalDispatchOutput
    | DeepEPLLDispatchOutput
    | MoriEPNormalDispatchOutput
    | MoriEPLLDispatchOutput
    | MoriEPV2DispatchOutput
)
CombineInput = (
    StandardCombineInput
    | DeepEPNormalCombineInput
    | DeepEPLLCombineInput
    | MoriEPNormalCombineInput
    | MoriEPLLCombineInput
)


class FusedMoeKernel(Protocol):
    """AITER's `fused_moe` keyword signature: its parameters at v0.1.7.post2, then, keyword-only,
    the one newer keyword a runner passes per call.

    `output` (in no tagged release up to v0.1.20.post1: moe_runtime.kernels.keywords) is accepted
    only by kernels whose keywords include it: the result is written into `output`, `[M, H]` in
    the output dtype, and that same tensor is returned; with `output=None` the kernel allocates.
    Only the MORI EPv2 runners pass it (SGLang 0.5.23 passes MORI EPv2's combine view,
    layers/moe/moe_runner/aiter.py:249-257), to the kernel `loadtime.writes_output` returns, which
    refuses, at load, a kernel without it; no other runner passes it.
    """

    def __call__(
        self,
        hidden_states: torch.Tensor,
        w1: torch.Tensor,
        w2: torch.Tensor,
        topk_weight: torch.Tensor,
        topk_ids: torch.Tensor,
        expert_mask: torch.Tensor | None = None,
        activation: ActivationType = ActivationType.Silu,
        quant_type: QuantType = QuantType.No,
        doweight_stage1: bool = False,
        w1_scale: torch.Tensor | None = None,
        w2_scale: torch.Tensor | None = None,
        a1_scale: torch.Tensor | None = None,
        a2_scale: torch.Tensor | None = None,
        block_size_M: int | None = None,
        num_local_tokens: torch.Tensor | None = None,
        moe_sorting_dispatch_policy: int = 0,
        dtype: torch.dtype | None = None,
        hidden_pad: int = 0,
        intermediate_pad: int = 0,
        bias1: torch.Tensor | None = None,
        bias2: torch.Tensor | None = None,
        *,
        output: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class Runner(Protocol):
    """What every generated `Runner` class is: built once at load, called once per forward."""

    def __init__(
        self,
        config: MoeLayerConfig,
        weights: ExpertWeights,
        *,
        kernel: FusedMoeKernel | None = None,
    ) -> None: ...

    # Each generated runner narrows this to its own dispatch output and combine input types.
    def __call__(self, dispatch_output: Any) -> Any: ...
