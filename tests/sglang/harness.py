"""SGLang's own objects for the integration tests: its MoeRunner, dispatch outputs, quant infos.

Everything here is built from the real SGLang package of the venv `.ci/sglang` makes. The quant
infos are the ones SGLang's quant methods build in `apply` (for the unquantized and fp8 methods the
tests also run `apply` itself); the expert masks are its dispatchers' `expert_mask_gpu`.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import aiter
import torch
from sglang.srt.layers.moe import utils as moe_utils
from sglang.srt.layers.moe.moe_runner.aiter import AiterMoeQuantInfo, AiterQuantType
from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
from sglang.srt.layers.moe.moe_runner.runner import MoeRunner
from sglang.srt.layers.moe.token_dispatcher import deepep, moriep, standard
from sglang.srt.layers.moe.topk import StandardTopKOutput

from moe_runtime import types as t
from moe_runtime.integrations import sglang as integration
from moe_runtime.testing import emulate

RELEASE = importlib.metadata.version("sglang")
MORI_HAS_RECV_CAP = "recv_cap" in moriep.MoriEPNormalDispatchOutput._fields

_QUANT_TYPES = {
    "unquant": AiterQuantType.NONE,
    "fp8_block": AiterQuantType.PER_128X128,
    "fp8_channel": AiterQuantType.PER_TOKEN,
    "mxfp4": AiterQuantType.PER_1X32,
    "quark_w4a4_mxfp4": AiterQuantType.PER_1X32,
    "quark_int4fp8": AiterQuantType.PER_TOKEN,
    "ct_w8a8_fp8": AiterQuantType.PER_TOKEN,
}
# Quant methods whose apply passes no expert mask (SGLang's own code, 0.5.13 and 0.5.23).
_MASKLESS = ("quark_int4fp8", "ct_w8a8_fp8")

OUR_COMBINE = {
    standard.StandardCombineInput: t.StandardCombineInput,
    deepep.DeepEPNormalCombineInput: t.DeepEPNormalCombineInput,
    deepep.DeepEPLLCombineInput: t.DeepEPLLCombineInput,
    moriep.MoriEPNormalCombineInput: t.MoriEPNormalCombineInput,
    moriep.MoriEPLLCombineInput: t.MoriEPLLCombineInput,
}


def set_a2a_backend(a2a: str) -> None:
    """SGLang's process-wide a2a backend, where `initialize_moe_config(server_args)` sets it
    (a module global in 0.5.13, the runtime flags in 0.5.23)."""
    backend = moe_utils.MoeA2ABackend(a2a)
    if hasattr(moe_utils, "get_flags"):
        moe_utils.get_flags().moe.a2a_backend = backend
    else:
        moe_utils.MOE_A2A_BACKEND = backend
    assert moe_utils.get_moe_a2a_backend() is backend


def set_runner_backend(monkeypatch: Any, backend: Any) -> None:
    """SGLang's `--moe-runner-backend`, for one test."""
    if hasattr(moe_utils, "get_flags"):
        monkeypatch.setattr(moe_utils.get_flags().moe, "runner_backend", backend)
    else:
        monkeypatch.setattr(moe_utils, "MOE_RUNNER_BACKEND", backend)
    assert moe_utils.get_moe_runner_backend() is backend


def runner_config(config: t.MoeLayerConfig, **options: Any) -> MoeRunnerConfig:
    """SGLang's MoeRunnerConfig of a layer; `options` sets its other fields (the clamp, gemm1_*,
    is_gated, ...)."""
    fields: dict[str, Any] = {
        "activation": config.activation,
        "apply_router_weight_on_input": config.apply_router_weight_on_input,
        **options,
    }
    return MoeRunnerConfig(
        num_experts=config.num_experts,
        num_local_experts=config.num_local_experts,
        hidden_size=config.hidden_size,
        intermediate_size_per_partition=config.intermediate_size,
        top_k=config.top_k,
        params_dtype=torch.bfloat16,
        **fields,
    )


def moe_runner(config: t.MoeLayerConfig) -> MoeRunner:
    """The MoeRunner SGLang's quant methods create for AITER."""
    return MoeRunner(moe_utils.MoeRunnerBackend.AITER, runner_config(config))


class Dispatcher:
    """A dispatcher's `expert_mask_gpu` as SGLang's dispatchers build it under AITER (Mooncake's
    and NIXL's have none)."""

    def __init__(self, a2a: str, config: t.MoeLayerConfig) -> None:
        if a2a in ("mooncake", "nixl"):
            return
        local, first = config.num_local_experts, config.ep_rank * config.num_local_experts
        if a2a == "none":
            # StandardDispatcher: from the local-expert mapping, which exists only with EP > 1.
            self.expert_mask_gpu: torch.Tensor | None = None
            if config.ep_size > 1:
                mapping = torch.full((config.num_experts,), -1, dtype=torch.int32)
                mapping[first : first + local] = torch.arange(local, dtype=torch.int32)
                self.expert_mask_gpu = ((mapping >= 0) & (mapping < local)).to(torch.int32)
        elif a2a == "deepep":
            self.expert_mask_gpu = torch.zeros(local + 1, dtype=torch.int)
            self.expert_mask_gpu[:-1] = 1
        elif a2a == "mori":
            self.expert_mask_gpu = torch.zeros(config.num_experts, dtype=torch.int32)
            self.expert_mask_gpu[first : first + local] = 1


def quant_info(
    quant: str, weights: t.ExpertWeights, dispatcher: Any, dispatch_output: Any
) -> AiterMoeQuantInfo:
    """The AiterMoeQuantInfo SGLang's quant method for `quant` builds in `apply`."""
    if quant == "ct_w8a8_fp8":
        # CompressedTensorsW8A8Fp8MoEMethod.apply unpacks the top-k output first.
        _ = dispatch_output.topk_output
    w13, w2 = weights.w13_weight, weights.w2_weight
    if quant in ("mxfp4", "quark_w4a4_mxfp4"):
        w13, w2 = w13.view(torch.float4_e2m1fn_x2), w2.view(torch.float4_e2m1fn_x2)
    return AiterMoeQuantInfo(
        w13_weight=w13,
        w2_weight=w2,
        quant_type=_QUANT_TYPES[quant],
        w13_scale=weights.w13_scale,
        w2_scale=weights.w2_scale,
        a13_scale=weights.a13_scale if quant == "ct_w8a8_fp8" else None,
        a2_scale=weights.a2_scale if quant == "ct_w8a8_fp8" else None,
        b13=weights.b13,
        b2=weights.b2,
        expert_mask=None if quant in _MASKLESS else dispatcher.expert_mask_gpu,
        hidden_pad=weights.hidden_pad,
        intermediate_pad=weights.intermediate_pad,
    )


def sglang_dispatch_output(ours: Any) -> Any:
    """This project's emulated dispatch output as SGLang's own class (same tensors)."""
    if isinstance(ours, t.StandardDispatchOutput):
        topk = StandardTopKOutput(
            topk_weights=ours.topk_output.topk_weights,
            topk_ids=ours.topk_output.topk_ids,
            router_logits=ours.topk_output.router_logits,
        )
        return standard.StandardDispatchOutput(
            hidden_states=ours.hidden_states,
            hidden_states_scale=ours.hidden_states_scale,
            topk_output=topk,
        )
    if isinstance(ours, t.DeepEPNormalDispatchOutput):
        return deepep.DeepEPNormalDispatchOutput(**ours._asdict())
    if isinstance(ours, t.DeepEPLLDispatchOutput):
        return deepep.DeepEPLLDispatchOutput(**ours._asdict())
    fields = ours._asdict()
    if not MORI_HAS_RECV_CAP:
        del fields["recv_cap"]  # 0.5.13 reads the cap from the environment instead
    cls = (
        moriep.MoriEPLLDispatchOutput
        if isinstance(ours, t.MoriEPLLDispatchOutput)
        else moriep.MoriEPNormalDispatchOutput
    )
    return cls(**fields)


def as_ours(combine_input: Any) -> Any:
    """SGLang's combine input as this project's type, for `moe_runtime.testing.emulate.combine`."""
    return OUR_COMBINE[type(combine_input)](*combine_input)


def install(
    runner: MoeRunner, key: tuple[str, str, str], config: t.MoeLayerConfig, info: Any
) -> integration.Installed:
    a2a, quant, dispatch = key
    return integration.install_on_runner(
        runner,
        a2a=a2a,
        quant=quant,
        dispatch=[dispatch],
        config=config,
        weights=integration.weights_from_quant_info(info),
    )


def last_call() -> dict[str, Any]:
    """The fake AITER's last fused_moe call (every parameter, defaults filled in)."""
    return aiter.CALLS[-1]


def combined(dispatched: emulate.Dispatched, combine_inputs: list[Any]) -> torch.Tensor:
    return emulate.combine(dispatched, [as_ours(ci) for ci in combine_inputs])
