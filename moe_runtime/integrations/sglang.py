"""The generated runners inside SGLang's AITER MoE path (SGLang 0.5.13 and 0.5.23).

After the model's weights are loaded and processed (SGLang has run `process_weights_after_loading`,
so AITER's shuffles are done), one call puts every AITER MoE layer on its generated runner:

    from moe_runtime.integrations import sglang as moe_sglang
    moe_sglang.install_all(model)        # or moe_sglang.install(layer), one layer

For each layer it works out, once, the `(a2a, quant, dispatch)` key (from SGLang's a2a backend, the
layer's quant method, read from the method's own attributes, and its dispatcher), selects the
generated module (`generated.select`), builds its `Runner` from the tensors SGLang's own quant
method hands to AITER, and logs one line naming the module. A key the matrix excludes, or a layer
this integration cannot read, is refused here with the reason (`generated.UnsupportedCombination`,
`SGLangIntegrationError`), never at the first forward, and never by leaving the layer on SGLang's
path unless `install_all(..., fallback=True)`.

The hook is SGLang's fused-function slot: `MoeRunner.run` starts with
`if self.fused_func is not None and not self.lora_enabled: return self.fused_func(dispatch_output,
quant_info, self.config)`, the slot `FusedOpPool.register_fused_func` fills process-wide at
construction. `install` fills that slot of the layer's own AITER `MoeRunner` (one instance
attribute; SGLang's source is not touched), so `quant_method.apply` -> `MoeRunner.run` (and with it
`FusedMoE.forward` / `DeepEPMoE.forward`) calls the generated runner with SGLang's dispatch-output
object as it is, and hands SGLang's own combine-input class back to the dispatcher: the generated
runner's result tuple re-tagged (`_make`), no tensor copied. `uninstall` empties the slot again.
(The runner-core slot, `run_from_dispatch`, is not usable: 0.5.13's `MoeRunner.run` reads
`dispatch_output.topk_output` before calling it, which DeepEP and MORI outputs lack.)

Per call, nothing is looked up, except in DeepEP/MORI `auto` mode, where SGLang itself decides per
batch between the normal and the low-latency dispatcher: there the class of the dispatch output
picks one of the two runners (one dict lookup). MORI's receive cap is read where SGLang reads it:
0.5.23 carries it on the dispatch output (`recv_cap`, which the generated runner reads); 0.5.13
reads `SGLANG_MORI_MOE_MAX_INPUT_TOKENS` through `sglang.srt.utils.get_int_env_var`, which
`install` does once (the dispatch output is then passed on with the cap as its last field, a tuple
of the same tensors). 0.5.23's `SGLANG_AITER_MOE_SORTING_DISPATCH_POLICY` is read once, from
SGLang's `envs`, and bound into the kernel when it is not 0.

Layer options go to the kernel as SGLang's AITER runner passes them, decided once, at install: the
activation (0.5.23: SwiGLU-OAI on gfx95 as `Swiglu` with its clamp, situ as `Situv2` with `beta`
and `linear_beta`; `moe_runtime.layer_options`), the clamp the quant method puts in its quant info
(`swiglu_limit`), and the `gate_mode` SGLang's runner derives from that clamp, the method's
requested mode, the GPU and `SGLANG_USE_AITER_MOE_GU_ITLV` (`sglang_gate_mode`), which becomes the
weights' `ExpertWeights.gate_mode`. `Mxfp4MoEMethod` with a padded hidden size pads the
activations itself before `MoeRunner.run`: its runner is built for the padded size with its own
padding off, and hands combine the padded rows, as SGLang's path does.

SGLang names this module relies on (present in both releases):
- `sglang.srt.layers.moe.utils.get_moe_a2a_backend` (`.value`: none, deepep, mooncake, nixl, mori)
- `MoeRunner.fused_func`, `.lora_enabled`, `.runner_backend.is_aiter()`, `.config` (a
  `MoeRunnerConfig`: `num_experts`, `num_local_experts`, `top_k`, `hidden_size`,
  `intermediate_size_per_partition`, `activation`, `apply_router_weight_on_input`, `no_combine`,
  `num_fused_shared_experts`, `swiglu_limit`; 0.5.23: `is_gated`, `gemm1_alpha`, `gemm1_beta`,
  `gemm1_clamp_limit`, `gate_up_interleaved`)
- 0.5.23's `moe_runner.aiter.is_gfx95_supported` (called as its runner calls it) and
  `aiter_swiglu_oai_limit`; `envs.SGLANG_USE_AITER_MOE_GU_ITLV` (both releases)
- the layer's `quant_method`, `dispatcher`, `moe_ep_rank`, `moe_ep_size`, and, under
  `QuarkFusedMoEMethod` / `CompressedTensorsFusedMoEMethod`, its `scheme`; by class name:
  - `UnquantizedFusedMoEMethod` (`_aiter_runner`, `layer.w13_weight`, `layer.w2_weight`)
  - `Fp8MoEMethod` (`runner`, `block_quant`, `is_fp4_expert`, `use_mxfp8`,
    `convert_mxfp8_to_block` and `moe_runner_config` (0.5.23, mxfp8),
    `maybe_get_hip_aiter_quant_info(layer)`); per-tensor checkpoints read as `fp8_channel`, the
    per_Token call SGLang makes with the per-row `*_scale1` it folds them into
  - `QuarkW8A8FP8MoE` (0.5.23: `runner`, `weight_qscheme`; `layer.w13_weight`, `w2_weight`,
    `w13_weight_scale`, `w2_weight_scale`, `w13_input_scale`, `w2_input_scale`)
  - `QuarkW4A8MXFp4MoE` (0.5.23 only: `runner`, `moe_runner_config`, `hidden_pad`,
    `intermediate_pad`; `layer.w13_weight` / `w2_weight` (uint8-held fp4, `is_shuffled`),
    `w13_weight_scale`, `w2_weight_scale`, `w13_weight_bias`, `w2_weight_bias`,
    `w13_input_scale`, `w2_input_scale`)
  - `Mxfp4MoEMethod` (`runner`, `moe_runner_config`, `hidden_pad`, `intermediate_pad`,
    `with_bias` (0.5.23); `layer.w13_weight` / `w2_weight` (uint8-held fp4, `is_shuffled`),
    `w13_weight_scale`, `w2_weight_scale`, `w13_weight_bias`, `w2_weight_bias`)
  - `QuarkW4A4MXFp4MoE` (`runner`, `moe_runner_config`; its module's `_is_gfx1250` and
    `_is_gfx95` in 0.5.23; `layer.w13_weight` / `w2_weight`, `w13_weight_scale`,
    `w2_weight_scale`, `hidden_pad`, `intermediate_pad` (0.5.23))
  - `QuarkInt4Fp8MoEMethod` (`runner`; `layer.w13_weight`, `w2_weight`, `w13_int4_scale`,
    `w2_int4_scale`)
  - `CompressedTensorsW8A8Fp8MoE` (`runner`, `weight_quant.strategy`; `layer.w13_weight`,
    `w2_weight`, `w13_weight_scale`, `w2_weight_scale`, `w13_input_scale`, `w2_input_scale`)
- `AiterMoeQuantInfo`'s fields (`w13_weight` ... `intermediate_pad`, `swiglu_limit`,
  `fused_moe_kwargs`)
- the dispatcher's `_normal_dispatcher` / `_low_latency_dispatcher` (DeepEP: `use_fp8`; MORI:
  `dispatch_dtype.name`)
- the dispatch-output and combine-input classes of `token_dispatcher.standard`, `.deepep`, `.moriep`
- 0.5.13: `sglang.srt.utils.get_int_env_var`; 0.5.23: `sglang.srt.environ.envs`
- `aiter.fused_moe.fused_moe`, which SGLang calls too (the generated runner is given it as its
  kernel, so the weights SGLang already shuffled are not prepared again)

Not served (refused at install): LoRA, `no_combine`, a layer whose runner slot SGLang already fills,
fused shared experts, a `swiglu_limit` on a quant method other than `Mxfp4MoEMethod` and
`QuarkW4A4MXFp4MoE` (this integration does not read the clamp and gate_mode those methods hand
the runner), a clamp on SGLang 0.5.13's Quark W4A4 MXFP4 (its apply drops it), situ on any method
but `Mxfp4MoEMethod` (the runner refuses it: AITER's Situv2 runs on the a16w4 kernels only),
`fused_moe_kwargs` of `Fp8MoEMethod` (but its mxfp8 ones), fp4 experts of `Fp8MoEMethod`, its
mxfp8 experts on SGLang 0.5.13 (SM100 only there), off gfx95 or with an activation other than
SwiGLU-OAI, Quark W8A8 fp8 weights SGLang runs on Triton (0.5.13, per-tensor weights), Quark
W4A8 MXFP4 with a padded hidden size, compressed-tensors fp8 weights that are not channel-wise, a
method whose apply would raise before `MoeRunner.run` on the layer's formats (`topk_output` on
DeepEP/MORI outputs, `expert_mask_gpu` on Mooncake/NIXL dispatchers), DeepEP nvfp4, and quant
methods not listed above. MORI's mxfp8 wire (0.5.23, `DispatchDtype.mxfp8`) is served as
`mori_{normal,ll}_mxfp8`, and 0.5.23's MORI EPv2 dispatcher (`_MoriEPv2DispatcherImplNormal`, by
class name) as `mori_v2*`: the runner writes the expert output into the dispatch output's
`expert_output` (combine's buffer) where SGLang passes it as `output=`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import generated
from moe_runtime import layer_options, types
from moe_runtime.enums import GateMode
from moe_runtime.formats import MORI_LL_FORMATS, MORI_WIRES
from moe_runtime.types import ExpertWeights, FusedMoeKernel, MoeLayerConfig

__all__ = [
    "SUPPORTED_RELEASES",
    "Installed",
    "SGLangIntegrationError",
    "activation_options",
    "install",
    "install_all",
    "install_on_runner",
    "installed",
    "layer_config",
    "sglang_gate_mode",
    "sglang_release",
    "sorting_dispatch_policy",
    "uninstall",
    "weights_from_quant_info",
]

logger = logging.getLogger(__name__)

SUPPORTED_RELEASES: Final = ("0.5.13", "0.5.23")
MORI_MAX_INPUT_TOKENS_ENV: Final = "SGLANG_MORI_MOE_MAX_INPUT_TOKENS"

_A2A_BACKENDS = ("none", "deepep", "mooncake", "nixl", "mori")
# By SGLang's DispatchDtype member name; mxfp8 is 0.5.23's (token_dispatcher/moriep.py:250).
_MORI_WIRES = {"bf16": "", "fp8": "_fp8", "fp4": "_fp4", "mxfp8": "_mxfp8"}


class SGLangIntegrationError(RuntimeError):
    """SGLang is missing or unsupported, or a layer is one this integration cannot serve."""


def sglang_release() -> str:
    """The installed SGLang release; refuses a missing or unsupported one."""
    try:
        release = importlib.metadata.version("sglang")
    except importlib.metadata.PackageNotFoundError:
        raise SGLangIntegrationError(
            "moe_runtime.integrations.sglang needs SGLang, which is not installed "
            f"(supported releases: {', '.join(SUPPORTED_RELEASES)})"
        ) from None
    if release not in SUPPORTED_RELEASES:
        raise SGLangIntegrationError(
            f"SGLang {release} is not supported by moe_runtime.integrations.sglang; supported "
            f"releases: {', '.join(SUPPORTED_RELEASES)} (their MoE runner, dispatch outputs and "
            "environment reads are the ones this integration was tested against)"
        )
    return release


@dataclass
class Installed:
    """What `install` put in a layer's `MoeRunner.fused_func` slot."""

    name: str
    keys: tuple[tuple[str, str, str], ...]
    modules: tuple[str, ...]
    runners: tuple[Any, ...]
    fused_func: Callable[[Any, Any, Any], Any] = field(repr=False)
    moe_runner: Any = field(repr=False)


# MoeRunner -> what is installed in it (weak: a dropped model takes its entries with it).
_INSTALLED: weakref.WeakKeyDictionary[Any, Installed] = weakref.WeakKeyDictionary()


def installed(layer_or_runner: Any) -> Installed | None:
    """What serves this layer (or MoeRunner), or None when SGLang's own path does."""
    runner = _find_aiter_runner(layer_or_runner, refuse=False)
    return None if runner is None else _INSTALLED.get(runner)


# --------------------------------------------------------------------------- the hot path


class _Single:
    """One format: the generated runner, its result re-tagged as SGLang's combine input."""

    __slots__ = ("_make", "_runner")

    def __init__(self, runner: Callable[[Any], Any], combine_cls: Any) -> None:
        self._runner = runner
        self._make = combine_cls._make

    def __call__(self, dispatch_output: Any, quant_info: Any, runner_config: Any) -> Any:
        return self._make(self._runner(dispatch_output))


class _MoriRecvCap:
    """SGLang 0.5.13's MORI outputs have no `recv_cap`: the cap SGLang reads from the environment
    is appended (read once, at install), making the project's 9-field output of the same tensors."""

    __slots__ = ("_make", "_output", "_recv_cap", "_runner")

    def __init__(
        self, runner: Callable[[Any], Any], combine_cls: Any, output_cls: Any, recv_cap: int
    ) -> None:
        self._runner = runner
        self._make = combine_cls._make
        self._output = output_cls
        self._recv_cap = recv_cap

    def __call__(self, dispatch_output: Any, quant_info: Any, runner_config: Any) -> Any:
        return self._make(self._runner(self._output(*dispatch_output, self._recv_cap)))


class _ByOutputClass:
    """DeepEP/MORI auto mode: SGLang picks normal or low latency per batch; so does this."""

    __slots__ = ("_by_class",)

    def __init__(self, by_class: Mapping[type, Callable[[Any, Any, Any], Any]]) -> None:
        self._by_class = dict(by_class)

    def __call__(self, dispatch_output: Any, quant_info: Any, runner_config: Any) -> Any:
        return self._by_class[type(dispatch_output)](dispatch_output, quant_info, runner_config)


# --------------------------------------------------------------------------- load time


def weights_from_quant_info(quant_info: Any) -> ExpertWeights:
    """The tensors SGLang hands AITER (an `AiterMoeQuantInfo`), as the runner's `ExpertWeights`."""
    return ExpertWeights(
        w13_weight=quant_info.w13_weight,
        w2_weight=quant_info.w2_weight,
        w13_scale=quant_info.w13_scale,
        w2_scale=quant_info.w2_scale,
        a13_scale=quant_info.a13_scale,
        a2_scale=quant_info.a2_scale,
        b13=quant_info.b13,
        b2=quant_info.b2,
        doweight_stage1=quant_info.doweight_stage1,
        hidden_pad=quant_info.hidden_pad,
        intermediate_pad=quant_info.intermediate_pad,
    )


def layer_config(runner_config: Any, *, ep_rank: int, ep_size: int) -> MoeLayerConfig:
    """A `MoeRunnerConfig` (and the layer's EP placement) as the runner's `MoeLayerConfig`."""
    return MoeLayerConfig(
        num_experts=runner_config.num_experts,
        num_local_experts=runner_config.num_local_experts,
        ep_rank=ep_rank,
        ep_size=ep_size,
        top_k=runner_config.top_k,
        hidden_size=runner_config.hidden_size,
        intermediate_size=runner_config.intermediate_size_per_partition,
        apply_router_weight_on_input=runner_config.apply_router_weight_on_input,
        **activation_options(runner_config),
    )


def activation_options(runner_config: Any) -> dict[str, Any]:
    """The layer's activation fields: 0.5.23 reads SwiGLU-OAI (on gfx95) and situ's parameters
    from the `MoeRunnerConfig` (`moe_runtime.layer_options`); 0.5.13 passes the activation."""
    if sglang_release() == "0.5.13":
        return {"activation": runner_config.activation}
    return layer_options.RunnerActivation(
        runner_config.activation,
        bool(runner_config.is_gated),
        runner_config.gemm1_alpha,
        runner_config.gemm1_beta,
        runner_config.gemm1_clamp_limit,
        gfx95=_gfx95(),
    ).config_fields()


def _gfx95() -> bool:
    """Whether SGLang 0.5.23's AITER runner takes its gfx95 branches: it calls this very function
    of its own module (moe_runner/aiter.py:121, :210), so the answer is the one it acts on."""
    from sglang.srt.layers.moe.moe_runner import aiter as sglang_aiter

    return bool(sglang_aiter.is_gfx95_supported())


def sglang_gate_mode(
    release: str, runner_config: Any, swiglu_limit: float, requested: str | None
) -> GateMode:
    """The `gate_mode` SGLang's AITER runner passes for a layer (SEPARATED where it passes none,
    AITER's default from v0.1.14), from the same facts it reads: `requested` is the quant method's
    `fused_moe_kwargs["gate_mode"]`, `swiglu_limit` its quant info's.

    0.5.13 (moe_runner/aiter.py:159-177): a clamp sets INTERLEAVE (SEPARATED with
    SGLANG_USE_AITER_MOE_GU_ITLV=0) over any requested mode. 0.5.23 (aiter.py:218-246): situ is
    SEPARATED; with a clamp a requested mode wins, else gfx95 follows the config's
    `gate_up_interleaved` and other GPUs INTERLEAVE, both only while GU_ITLV is on.
    """
    from sglang.srt.environ import envs

    interleave = bool(envs.SGLANG_USE_AITER_MOE_GU_ITLV.get())
    mode = requested
    if release == "0.5.13":
        if swiglu_limit > 0:
            mode = GateMode.INTERLEAVE.value if interleave else GateMode.SEPARATED.value
    elif runner_config.activation == "situ":
        mode = GateMode.SEPARATED.value
    elif swiglu_limit > 0 and mode is None:
        layout = not _gfx95() or bool(runner_config.gate_up_interleaved)
        mode = GateMode.INTERLEAVE.value if layout and interleave else GateMode.SEPARATED.value
    return GateMode.SEPARATED if mode is None else GateMode(mode)


def a2a_backend() -> str:
    """SGLang's a2a backend (`--moe-a2a-backend`) in this project's names."""
    from sglang.srt.layers.moe.utils import get_moe_a2a_backend

    name = str(get_moe_a2a_backend().value)
    if name not in _A2A_BACKENDS:
        raise SGLangIntegrationError(
            f"SGLang's a2a backend {name!r} has no generated runners; served: "
            f"{', '.join(_A2A_BACKENDS)}"
        )
    return name


def dispatch_formats(a2a: str, dispatcher: Any) -> tuple[str, ...]:
    """The formats the layer's dispatcher produces: one, or two in DeepEP/MORI `auto` mode."""
    if a2a == "none":
        return ("standard",)
    formats = []
    normal = getattr(dispatcher, "_normal_dispatcher", None)
    low_latency = getattr(dispatcher, "_low_latency_dispatcher", None)
    if a2a == "mori":
        for impl, mode in ((normal, "normal"), (low_latency, "ll")):
            if impl is not None:
                if type(impl).__name__ == "_MoriEPv2DispatcherImplNormal":
                    # 0.5.23's EPv2 (SGLANG_MORI_EP_V2, its default; normal mode only): its
                    # output carries combine's buffer (`expert_output`), the mori_v2* formats.
                    mode = "v2"
                wire = impl.dispatch_dtype.name
                if wire not in _MORI_WIRES:
                    raise SGLangIntegrationError(
                        f"MORI's {wire} dispatch wire has no generated runners; served: "
                        f"{', '.join(_MORI_WIRES)}"
                    )
                formats.append(f"mori_{mode}{_MORI_WIRES[wire]}")
    else:
        if normal is not None:
            formats.append("deepep_normal")
        if low_latency is not None:
            if getattr(low_latency, "use_nvfp4", False):
                raise SGLangIntegrationError("DeepEP's nvfp4 low-latency wire has no runners")
            # Mooncake's low-latency dispatch is always fp8 and keeps no flag for it.
            fp8 = a2a == "mooncake" or bool(getattr(low_latency, "use_fp8", False))
            formats.append("deepep_ll_fp8" if fp8 else "deepep_ll")
    if not formats:
        raise SGLangIntegrationError(
            f"cannot tell which formats the {a2a} dispatcher {type(dispatcher).__name__} produces "
            "(no _normal_dispatcher or _low_latency_dispatcher); pass dispatch=..."
        )
    return tuple(formats)


def _classes(dispatch: str) -> tuple[Any, Any]:
    """SGLang's dispatch-output and combine-input classes of a format."""
    if dispatch == "standard":
        from sglang.srt.layers.moe.token_dispatcher import standard

        return standard.StandardDispatchOutput, standard.StandardCombineInput
    if dispatch in MORI_WIRES:
        from sglang.srt.layers.moe.token_dispatcher import moriep

        # EPv2's output is 0.5.23's MoriEPNormalDispatchOutput, with `expert_output`.
        if dispatch in MORI_LL_FORMATS:
            return moriep.MoriEPLLDispatchOutput, moriep.MoriEPLLCombineInput
        return moriep.MoriEPNormalDispatchOutput, moriep.MoriEPNormalCombineInput
    from sglang.srt.layers.moe.token_dispatcher import deepep

    if dispatch == "deepep_normal":
        return deepep.DeepEPNormalDispatchOutput, deepep.DeepEPNormalCombineInput
    return deepep.DeepEPLLDispatchOutput, deepep.DeepEPLLCombineInput


def _default_kernel() -> FusedMoeKernel:
    """The kernel SGLang calls."""
    from aiter.fused_moe import fused_moe

    kernel: FusedMoeKernel = fused_moe
    return kernel


def sorting_dispatch_policy(release: str) -> int:
    """The `moe_sorting_dispatch_policy` SGLang passes AITER: 0.5.23 reads it once from
    `SGLANG_AITER_MOE_SORTING_DISPATCH_POLICY` (environ.py, default 2) and passes it on every call
    (layers/moe/moe_runner/aiter.py); 0.5.13 never passes it (AITER's default, 0)."""
    if release == "0.5.13":
        return 0
    from sglang.srt.environ import envs

    return int(envs.SGLANG_AITER_MOE_SORTING_DISPATCH_POLICY.get())


def _refuse_runner(moe_runner: Any, name: str) -> None:
    problems = []
    if not moe_runner.runner_backend.is_aiter():
        problems.append(f"its MoeRunner runs {moe_runner.runner_backend.value}, not aiter")
    if moe_runner.lora_enabled:
        problems.append("LoRA is enabled (SGLang never calls a fused function with LoRA)")
    if moe_runner in _INSTALLED:
        problems.append(f"a generated runner is already installed ({_INSTALLED[moe_runner]})")
    elif moe_runner.fused_func is not None:
        problems.append(f"SGLang already routes it to the fused function {moe_runner.fused_func}")
    config = moe_runner.config
    if config.no_combine:
        problems.append("no_combine is set (the runners always combine the top-k outputs)")
    if config.num_fused_shared_experts:
        problems.append(f"{config.num_fused_shared_experts} fused shared experts")
    if problems:
        raise SGLangIntegrationError(
            f"{name}: cannot install a generated runner: " + "; ".join(problems)
        )


def install_on_runner(
    moe_runner: Any,
    *,
    a2a: str,
    quant: str,
    dispatch: Sequence[str],
    config: MoeLayerConfig,
    weights: ExpertWeights,
    kernel: FusedMoeKernel | None = None,
    name: str = "MoE layer",
) -> Installed:
    """Install the generated runners of `(a2a, quant, d)` for each format `d` in SGLang's
    `MoeRunner` (its `fused_func` slot). `weights` are the tensors SGLang passes to the kernel
    (already prepared for it); `kernel` defaults to `aiter.fused_moe.fused_moe`, as SGLang's."""
    release = sglang_release()
    _refuse_runner(moe_runner, name)
    if kernel is None:
        kernel = _default_kernel()
    # SGLang's weight processing already laid them out for AITER (on gfx95 the per_1x32 scales as
    # shuffled 2-D matrices): checked as such, and never prepared again.
    weights = replace(weights, kernel_layout=True)
    if config.moe_sorting_dispatch_policy == 0:
        # A layer config that leaves the policy at AITER's default gets the one SGLang passes.
        config = replace(config, moe_sorting_dispatch_policy=sorting_dispatch_policy(release))
    recv_cap = 0
    if release == "0.5.13" and a2a == "mori":
        from sglang.srt.utils import get_int_env_var

        recv_cap = int(get_int_env_var(MORI_MAX_INPUT_TOKENS_ENV, 0))
    keys, modules, runners = [], [], []
    by_class: dict[type, Callable[[Any, Any, Any], Any]] = {}
    for fmt in dispatch:
        key = (a2a, quant, fmt)
        runner = generated.select(*key)(config, weights, kernel=kernel)
        output_cls, combine_cls = _classes(fmt)
        if release == "0.5.13" and a2a == "mori":
            low_latency = fmt in MORI_LL_FORMATS
            ours = types.MoriEPLLDispatchOutput if low_latency else types.MoriEPNormalDispatchOutput
            by_class[output_cls] = _MoriRecvCap(runner, combine_cls, ours, recv_cap)
        else:
            by_class[output_cls] = _Single(runner, combine_cls)
        keys.append(key)
        modules.append(generated.RUNNERS[key])
        runners.append(runner)
    if len(by_class) != len(keys):
        raise SGLangIntegrationError(f"{name}: formats {list(dispatch)} share one output class")
    fused_func: Callable[[Any, Any, Any], Any] = (
        next(iter(by_class.values())) if len(by_class) == 1 else _ByOutputClass(by_class)
    )
    done = Installed(name, tuple(keys), tuple(modules), tuple(runners), fused_func, moe_runner)
    moe_runner.fused_func = fused_func
    _INSTALLED[moe_runner] = done
    for key, module in zip(keys, modules, strict=True):
        logger.info("%s: %s served by generated.%s", name, "/".join(key), module)
    return done


def _find_aiter_runner(layer_or_runner: Any, *, refuse: bool) -> Any:
    """The MoeRunner SGLang's quant method calls for AITER (or the argument, if it is one)."""
    if hasattr(layer_or_runner, "fused_func") and hasattr(layer_or_runner, "runner_backend"):
        return layer_or_runner
    method = getattr(layer_or_runner, "quant_method", None)
    if type(method).__name__ in _SCHEME_METHODS:
        method = getattr(layer_or_runner, "scheme", None)
    runner = getattr(method, "_aiter_runner", None) or getattr(method, "runner", None)
    if runner is None and refuse:
        raise SGLangIntegrationError(
            f"{type(layer_or_runner).__name__} has no AITER MoeRunner (SGLang creates one only "
            "on ROCm with SGLANG_USE_AITER=1 and an a2a backend that supports AITER)"
        )
    return runner


# The quant methods (or, under Quark's and compressed-tensors' method, the layer's scheme) whose
# apply reads layer.dispatcher.expert_mask_gpu before it calls MoeRunner.run.
_READS_EXPERT_MASK = (
    "UnquantizedFusedMoEMethod",
    "Fp8MoEMethod",
    "Mxfp4MoEMethod",
    "QuarkW4A4MXFp4MoE",
    "QuarkW8A8FP8MoE",
    "QuarkW4A8MXFp4MoE",
)
# The quant methods that delegate to a per-layer scheme (`layer.scheme`, which owns the runner).
_SCHEME_METHODS = ("QuarkFusedMoEMethod", "CompressedTensorsFusedMoEMethod")


def _serving_method(layer: Any) -> Any:
    """The object whose apply builds the AITER quant info: the quant method, or its scheme."""
    method = layer.quant_method
    if type(method).__name__ in _SCHEME_METHODS:
        return getattr(layer, "scheme", None)
    return method


def _read_quant_method(layer: Any, name: str, formats: Sequence[str]) -> tuple[str, ExpertWeights]:
    """The quant method's name in the matrix and the tensors it hands AITER, read once."""
    method = _serving_method(layer)
    kind = type(method).__name__
    if kind in _READS_EXPERT_MASK and not hasattr(layer.dispatcher, "expert_mask_gpu"):
        # Its apply reads the mask before it calls MoeRunner.run: it would raise there anyway.
        raise SGLangIntegrationError(
            f"{name}: {kind}.apply reads layer.dispatcher.expert_mask_gpu, which "
            f"{type(layer.dispatcher).__name__} does not have (SGLang's path raises before "
            "MoeRunner.run, installed or not)"
        )
    reader = _READERS.get(kind)
    if reader is None:
        raise SGLangIntegrationError(
            f"{name}: quant method {kind} is not read by this integration; served: "
            f"{', '.join(_READERS)} (install_on_runner takes any quant method's tensors "
            "explicitly)"
        )
    return reader(layer, method, _Context(name, sglang_release(), tuple(formats)))


@dataclass(frozen=True)
class _Context:
    name: str
    release: str
    formats: tuple[str, ...]

    def refuse(self, why: str) -> SGLangIntegrationError:
        return SGLangIntegrationError(f"{self.name}: {why}")


def _read_unquant(layer: Any, method: Any, ctx: _Context) -> tuple[str, ExpertWeights]:
    return "unquant", ExpertWeights(w13_weight=layer.w13_weight, w2_weight=layer.w2_weight)


def _read_fp8(layer: Any, method: Any, ctx: _Context) -> tuple[str, ExpertWeights]:
    """Fp8MoEMethod: block (128x128) or per-channel, from its own `block_quant`; the tensors of
    its `maybe_get_hip_aiter_quant_info` (fp8.py, both releases). A per-tensor checkpoint is
    per-channel here: SGLang folds its scales into the per-row `w13_weight_scale1` at load and
    runs per_Token (`process_weights_hip_scale_padding`, 0.5.13 fp8.py:1740-1741, 0.5.23
    :2926-2927), so it reads as `fp8_channel`, never as the matrix's `fp8_tensor`. mxfp8: see
    `_read_fp8_mxfp8`."""
    if getattr(method, "use_mxfp8", False):
        return _read_fp8_mxfp8(layer, method, ctx)
    if getattr(method, "is_fp4_expert", False):
        raise ctx.refuse("Fp8MoEMethod's fp4 experts are not served")
    quant_info = method.maybe_get_hip_aiter_quant_info(layer)
    if quant_info is None:
        raise ctx.refuse("Fp8MoEMethod builds no AITER quant info (SGLANG_USE_AITER is off)")
    if quant_info.fused_moe_kwargs:
        raise ctx.refuse(f"fused_moe_kwargs {sorted(quant_info.fused_moe_kwargs)} are not served")
    if method.block_quant:
        return "fp8_block", weights_from_quant_info(quant_info)
    return "fp8_channel", _per_row_scales(weights_from_quant_info(quant_info))


def _per_row_scales(weights: ExpertWeights) -> ExpertWeights:
    """Fp8MoEMethod's per-row `*_scale1` as it creates them, `[E, N]` (0.5.13 fp8.py:1088-1103,
    0.5.23 fp8.py:1763-1778), viewed as the `[E, N, 1]` AITER's per_Token takes
    (docs/aiter_fused_moe.md; the runners check it): the same memory, no copy."""
    w13, w2 = weights.w13_scale, weights.w2_scale
    if w13 is None or w2 is None or w13.dim() != 2:
        return weights
    return dataclasses.replace(weights, w13_scale=w13.unsqueeze(-1), w2_scale=w2.unsqueeze(-1))


def _read_fp8_mxfp8(layer: Any, method: Any, ctx: _Context) -> tuple[str, ExpertWeights]:
    """Fp8MoEMethod with `use_mxfp8` (0.5.23 fp8.py:1492-1501): fp8 weights with e8m0 1x32 scales
    (`w13_weight_scale_inv`), shuffled for AITER's a16w4 layout on gfx95 (fp8.py:2586-2608); its
    `maybe_get_hip_aiter_quant_info` (fp8.py:3426-3452) hands AITER PER_1X32 with
    `fused_moe_kwargs` `activation=Swiglu`, `gate_mode=INTERLEAVE` and its clamp as
    `swiglu_limit` (`_clamp_fp8`): the `mxfp8` runner, which forces Swiglu."""
    if ctx.release == "0.5.13":
        raise ctx.refuse(
            "SGLang 0.5.13 loads Fp8MoEMethod's mxfp8 weights on SM100 only "
            "(_process_mxfp8_moe_weights, fp8.py:1371-1374): it has no AITER mxfp8 path"
        )
    if getattr(method, "convert_mxfp8_to_block", False):
        raise ctx.refuse(
            "Fp8MoEMethod converts these mxfp8 weights to block fp8 when it processes them "
            "(fp8.py:2078-2084, gfx942): install after process_weights_after_loading"
        )
    if not _gfx95():
        raise ctx.refuse(
            "SGLang runs Fp8MoEMethod's mxfp8 weights on AITER only on gfx95 (fp8.py:2319-2325)"
        )
    config = method.moe_runner_config
    if config.activation == "situ" or config.gemm1_alpha != layer_options.SWIGLU_OAI_ALPHA:
        raise ctx.refuse(
            f"mxfp8 experts with activation {config.activation!r}, gemm1_alpha "
            f"{config.gemm1_alpha}: SGLang's AITER mxfp8 path runs SwiGLU-OAI (alpha "
            f"{layer_options.SWIGLU_OAI_ALPHA}) only and raises for any other (fp8.py:3427-3432)"
        )
    quant_info = method.maybe_get_hip_aiter_quant_info(layer)
    if quant_info is None:
        raise ctx.refuse("Fp8MoEMethod builds no AITER quant info (SGLANG_USE_AITER is off)")
    kwargs = dict(quant_info.fused_moe_kwargs or {})
    activation = getattr(kwargs.pop("activation", None), "name", None)
    if activation != "Swiglu" or kwargs != {"gate_mode": GateMode.INTERLEAVE.value}:
        raise ctx.refuse(
            f"Fp8MoEMethod's mxfp8 fused_moe_kwargs {quant_info.fused_moe_kwargs} are not the "
            "activation=Swiglu, gate_mode=INTERLEAVE this integration reads"
        )
    return "mxfp8", weights_from_quant_info(quant_info)


def _fp4_views(layer: Any) -> tuple[Any, Any]:
    """The uint8-held fp4 weights as `float4_e2m1fn_x2`, re-tagged `is_shuffled` as SGLang's
    apply does (AITER picks its preshuffled kernels by that attribute of `w1`)."""
    import torch

    w13 = layer.w13_weight.view(torch.float4_e2m1fn_x2)
    w2 = layer.w2_weight.view(torch.float4_e2m1fn_x2)
    if getattr(layer.w13_weight, "is_shuffled", False):
        w13.is_shuffled = True
        w2.is_shuffled = True
    return w13, w2


def _scaled_weights(
    layer: Any, w13: Any, w2: Any, *, input_scales: bool = False, **fields: Any
) -> ExpertWeights:
    """The weights (or the fp4 views of them) with the scales SGLang's quant methods keep beside
    them (`w13_weight_scale`, `w2_weight_scale`), the static `w*_input_scale`s (None when
    dynamic) where the method passes them (`input_scales`), and the method's own `fields`."""
    if input_scales:
        fields.update(a13_scale=layer.w13_input_scale, a2_scale=layer.w2_input_scale)
    return ExpertWeights(
        w13_weight=w13,
        w2_weight=w2,
        w13_scale=layer.w13_weight_scale,
        w2_scale=layer.w2_weight_scale,
        **fields,
    )


def _read_mxfp4(layer: Any, method: Any, ctx: _Context) -> tuple[str, ExpertWeights]:
    """Mxfp4MoEMethod's AITER branch of apply (0.5.13 mxfp4.py:1250-1302, 0.5.23 `_apply_aiter`,
    mxfp4.py:1743-1808)."""
    config = method.moe_runner_config
    if ctx.release == "0.5.13" and ctx.formats != ("standard",):
        raise ctx.refuse(
            "SGLang 0.5.13's Mxfp4MoEMethod.apply reads dispatch_output.topk_output, which "
            f"{', '.join(ctx.formats)} outputs lack (SGLang's path raises before MoeRunner.run)"
        )
    with_bias = ctx.release == "0.5.13" or method.with_bias
    w13, w2 = _fp4_views(layer)
    return "mxfp4", _scaled_weights(
        layer,
        w13,
        w2,
        b13=layer.w13_weight_bias if with_bias else None,
        b2=layer.w2_weight_bias if with_bias else None,
        doweight_stage1=bool(config.apply_router_weight_on_input),
        intermediate_pad=method.intermediate_pad,
    )


def _read_quark_w4a4_mxfp4(layer: Any, scheme: Any, ctx: _Context) -> tuple[str, ExpertWeights]:
    """QuarkW4A4MXFp4MoE.apply_weights (quark/schemes/quark_w4a4_mxfp4_moe.py: 0.5.13:266-295,
    0.5.23:1067-1118)."""
    weights = _scaled_weights(layer, *_fp4_views(layer))
    if ctx.release == "0.5.13":
        return "quark_w4a4_mxfp4", weights
    return "quark_w4a4_mxfp4", dataclasses.replace(
        weights,
        hidden_pad=getattr(layer, "hidden_pad", 0),
        intermediate_pad=getattr(layer, "intermediate_pad", 0),
    )


def _read_quark_int4fp8(layer: Any, method: Any, ctx: _Context) -> tuple[str, ExpertWeights]:
    """QuarkInt4Fp8MoEMethod.apply (quark_int4fp8_moe.py: 0.5.13:422-448, 0.5.23:420-446)."""
    return "quark_int4fp8", ExpertWeights(
        w13_weight=layer.w13_weight,
        w2_weight=layer.w2_weight,
        w13_scale=layer.w13_int4_scale,
        w2_scale=layer.w2_int4_scale,
    )


def _read_ct_w8a8_fp8(layer: Any, scheme: Any, ctx: _Context) -> tuple[str, ExpertWeights]:
    """CompressedTensorsW8A8Fp8MoE.apply_weights' AITER branch
    (compressed_tensors/schemes/compressed_tensors_w8a8_fp8_moe.py: 0.5.13:369-397,
    0.5.23:367-395); SGLang shuffles only channel-wise weights for AITER (0.5.13:316, :314)."""
    strategy = str(getattr(scheme.weight_quant.strategy, "value", scheme.weight_quant.strategy))
    if strategy != "channel":
        raise ctx.refuse(
            f"compressed-tensors fp8 weights with strategy {strategy!r}: SGLang prepares only "
            "channel-wise weights for AITER"
        )
    if ctx.formats != ("standard",):
        raise ctx.refuse(
            "CompressedTensorsW8A8Fp8MoE.apply_weights reads dispatch_output.topk_output, which "
            f"{', '.join(ctx.formats)} outputs lack (SGLang's path raises before MoeRunner.run)"
        )
    return "ct_w8a8_fp8", _scaled_weights(
        layer,
        layer.w13_weight,
        layer.w2_weight,
        a13_scale=getattr(layer, "w13_input_scale", None),
        a2_scale=getattr(layer, "w2_input_scale", None),
    )


def _read_quark_w8a8_fp8(layer: Any, scheme: Any, ctx: _Context) -> tuple[str, ExpertWeights]:
    """QuarkW8A8FP8MoE.apply_weights' AITER branch (0.5.23 quark/schemes/quark_w8a8_fp8_moe.py:
    286-307): per_Token with the per-channel scales `[E, N, 1]` its
    `process_weights_after_loading` leaves (:227-233), the static input scales (None when
    dynamic) and the expert mask. SGLang takes AITER for per-channel weights only (:266-276);
    0.5.13 always runs Triton (same file:264)."""
    if not scheme.runner.runner_backend.is_aiter():
        raise ctx.refuse(
            "SGLang 0.5.13's QuarkW8A8FP8MoE always runs Triton (quark_w8a8_fp8_moe.py:264)"
            if ctx.release == "0.5.13"
            else f"QuarkW8A8FP8MoE runs {scheme.weight_qscheme} weights on Triton: SGLang takes "
            "AITER for per-channel weights only (quark_w8a8_fp8_moe.py:266-276)"
        )
    return "quark_w8a8_fp8", _scaled_weights(
        layer, layer.w13_weight, layer.w2_weight, input_scales=True
    )


def _read_quark_w4a8_mxfp4(layer: Any, scheme: Any, ctx: _Context) -> tuple[str, ExpertWeights]:
    """QuarkW4A8MXFp4MoE.apply_weights' AITER branch (0.5.23 quark/schemes/
    quark_w4a8_mxfp4_moe.py:440-531; 0.5.13 has no such class): fp4 views, e8m0 scales, fp32
    biases, the static fp8 input scales, the router weight in stage 1 and the pads
    `create_weights` chose (:117-127); its clamp and gate_mode: `_clamp_quark_w4a8_mxfp4`."""
    if scheme.hidden_pad:
        raise ctx.refuse(
            f"hidden_pad {scheme.hidden_pad}: QuarkW4A8MXFp4MoE.apply_weights pads the "
            "activations before MoeRunner.run, and the runner pads them itself"
        )
    w13, w2 = _fp4_views(layer)
    return "quark_w4a8_mxfp4", _scaled_weights(
        layer,
        w13,
        w2,
        input_scales=True,
        b13=layer.w13_weight_bias,
        b2=layer.w2_weight_bias,
        doweight_stage1=bool(scheme.moe_runner_config.apply_router_weight_on_input),
        intermediate_pad=scheme.intermediate_pad,
    )


def _clamp_mxfp4(layer: Any, method: Any, ctx: _Context) -> tuple[float, str | None]:
    """The swiglu clamp Mxfp4MoEMethod puts in its quant info (gpt-oss's `gemm1_clamp_limit`, or
    `swiglu_limit`; none under situ, whose `gemm1_clamp_limit` is its linear_beta: 0.5.13
    mxfp4.py:1298-1302, 0.5.23 mxfp4.py:1792-1803); it requests no gate_mode."""
    config = method.moe_runner_config
    if method.runner.config.activation == "situ":
        return 0.0, None
    return float(config.gemm1_clamp_limit or config.swiglu_limit or 0.0), None


def _clamp_quark_w4a4_mxfp4(layer: Any, scheme: Any, ctx: _Context) -> tuple[float, str | None]:
    """QuarkW4A4MXFp4MoE's clamp and requested gate_mode (0.5.23 quark_w4a4_mxfp4_moe.py:
    1089-1116: INTERLEAVE on gfx1250, SEPARATED on other gfx95, from its module's flags; the
    clamp of SwiGLU-OAI, else `swiglu_limit`). 0.5.13's apply passes neither (266-295)."""
    config = scheme.moe_runner_config
    if ctx.release == "0.5.13":
        if config.swiglu_limit or getattr(config, "gemm1_clamp_limit", None):
            raise ctx.refuse(
                "a swiglu clamp is set, which SGLang 0.5.13's QuarkW4A4MXFp4MoE.apply_weights "
                "drops (it passes AITER no swiglu_limit)"
            )
        return 0.0, None
    import sys

    from sglang.srt.layers.moe.moe_runner.aiter import aiter_swiglu_oai_limit

    flags = sys.modules[type(scheme).__module__]
    requested = None
    if getattr(flags, "_is_gfx1250", False):
        requested = GateMode.INTERLEAVE.value
    elif getattr(flags, "_is_gfx95", False):
        requested = GateMode.SEPARATED.value
    limit = aiter_swiglu_oai_limit(config) or config.swiglu_limit or 0.0
    return float(limit), requested


def _clamp_fp8(layer: Any, method: Any, ctx: _Context) -> tuple[float, str | None]:
    """Fp8MoEMethod's clamp and requested gate_mode. mxfp8: `swiglu_limit or gemm1_clamp_limit`
    and INTERLEAVE (0.5.23 fp8.py:3436-3451). Its other experts get SGLang's `swiglu_limit` with a
    gate_mode from `_aiter_gate_up_interleaved` (fp8.py:3476-3490), not read here: refused; else
    SwiGLU-OAI's clamp from the layer config, as for a method without a clamp reader."""
    config = method.moe_runner_config
    if getattr(method, "use_mxfp8", False):
        limit = config.swiglu_limit or config.gemm1_clamp_limit or 0.0
        return float(limit), GateMode.INTERLEAVE.value
    if config.swiglu_limit:
        raise ctx.refuse(
            "swiglu_limit is set: SGLang then passes AITER a clamp and a gate_mode that this "
            "integration does not read for Fp8MoEMethod's block and per-channel experts"
        )
    return float(activation_options(config).get("swiglu_limit", 0.0)), None


def _clamp_quark_w4a8_mxfp4(layer: Any, scheme: Any, ctx: _Context) -> tuple[float, str | None]:
    """QuarkW4A8MXFp4MoE's clamp (gpt-oss's `gemm1_clamp_limit`, else `swiglu_limit`:
    quark_w4a8_mxfp4_moe.py:524-529); it requests no gate_mode, SGLang's runner picks it."""
    config = scheme.moe_runner_config
    return float(config.gemm1_clamp_limit or config.swiglu_limit or 0.0), None


# Quant methods whose clamp and gate_mode request this integration reads (else a clamp is refused).
_CLAMPS: Final[dict[str, Callable[[Any, Any, _Context], tuple[float, str | None]]]] = {
    "Mxfp4MoEMethod": _clamp_mxfp4,
    "QuarkW4A4MXFp4MoE": _clamp_quark_w4a4_mxfp4,
    "Fp8MoEMethod": _clamp_fp8,
    "QuarkW4A8MXFp4MoE": _clamp_quark_w4a8_mxfp4,
}


class _HiddenPadKeyword:
    """The kernel with `hidden_pad` fixed: for Mxfp4MoEMethod's padded H, whose apply pads the
    activations before `MoeRunner.run` (0.5.13 mxfp4.py:1270-1278, 0.5.23 mxfp4.py:1770-1777)
    and passes the pad to AITER. The runner is built for the padded H with unpadded weights (its
    own padding off: the rows arrive padded) and this restores the keyword SGLang passes; the
    output keeps the padded H, as SGLang's, which `FusedMoE.forward_impl` crops after combine."""

    def __init__(self, kernel: FusedMoeKernel, hidden_pad: int) -> None:
        self.__wrapped__ = kernel  # the keywords it takes are read through this (inspect)
        self._kernel: Callable[..., Any] = kernel
        self._hidden_pad = hidden_pad

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["hidden_pad"] = self._hidden_pad
        return self._kernel(*args, **kwargs)


def _padded_activations(
    layer: Any, config: MoeLayerConfig, kernel: FusedMoeKernel | None
) -> tuple[MoeLayerConfig, FusedMoeKernel | None]:
    """Mxfp4MoEMethod with a padded H: the runner's H is the padded one (see _HiddenPadKeyword)."""
    method = _serving_method(layer)
    pad = int(getattr(method, "hidden_pad", 0) or 0)
    if type(method).__name__ != "Mxfp4MoEMethod" or pad == 0:
        return config, kernel
    padded: Any = _HiddenPadKeyword(_default_kernel() if kernel is None else kernel, pad)
    return replace(config, hidden_size=config.hidden_size + pad), padded


def _read_kernel_options(
    layer: Any,
    runner_config: Any,
    config: MoeLayerConfig,
    weights: ExpertWeights,
    ctx: _Context,
) -> tuple[MoeLayerConfig, ExpertWeights]:
    """The clamp and the gate_mode SGLang passes AITER for this layer, into the runner's config
    and weights: the recorded kernel call then has SGLang's `swiglu_limit` and `gate_mode`."""
    method = _serving_method(layer)
    reader = _CLAMPS.get(type(method).__name__)
    if reader is None:
        if getattr(runner_config, "swiglu_limit", None):
            raise ctx.refuse(
                f"swiglu_limit is set: SGLang then passes AITER a clamp and a gate_mode that "
                f"this integration reads only for {', '.join(_CLAMPS)}"
            )
        # SwiGLU-OAI's clamp (activation_options): SGLang's runner picks the gate_mode itself.
        limit, requested = config.swiglu_limit, None
    else:
        limit, requested = reader(layer, method, ctx)
    mode = sglang_gate_mode(ctx.release, runner_config, limit, requested)
    return replace(config, swiglu_limit=limit), replace(weights, gate_mode=mode)


_READERS: Final[dict[str, Callable[[Any, Any, _Context], tuple[str, ExpertWeights]]]] = {
    "UnquantizedFusedMoEMethod": _read_unquant,
    "Fp8MoEMethod": _read_fp8,
    "Mxfp4MoEMethod": _read_mxfp4,
    "QuarkW4A4MXFp4MoE": _read_quark_w4a4_mxfp4,
    "QuarkInt4Fp8MoEMethod": _read_quark_int4fp8,
    "CompressedTensorsW8A8Fp8MoE": _read_ct_w8a8_fp8,
    "QuarkW8A8FP8MoE": _read_quark_w8a8_fp8,
    "QuarkW4A8MXFp4MoE": _read_quark_w4a8_mxfp4,
}


def install(
    layer: Any,
    *,
    dispatch: Sequence[str] | None = None,
    kernel: FusedMoeKernel | None = None,
    name: str | None = None,
) -> Installed:
    """Serve one SGLang MoE layer (after its weights are processed) by its generated runner(s).

    `dispatch` overrides the formats read from the layer's dispatcher.
    """
    name = name or f"{type(layer).__name__}(layer_id={getattr(layer, 'layer_id', '?')})"
    sglang_release()
    moe_runner = _find_aiter_runner(layer, refuse=True)
    a2a = a2a_backend()
    formats = tuple(dispatch) if dispatch is not None else dispatch_formats(a2a, layer.dispatcher)
    quant, weights = _read_quant_method(layer, name, formats)
    config = layer_config(moe_runner.config, ep_rank=layer.moe_ep_rank, ep_size=layer.moe_ep_size)
    config, weights = _read_kernel_options(
        layer, moe_runner.config, config, weights, _Context(name, sglang_release(), formats)
    )
    config, kernel = _padded_activations(layer, config, kernel)
    return install_on_runner(
        moe_runner,
        a2a=a2a,
        quant=quant,
        dispatch=formats,
        config=config,
        weights=weights,
        kernel=kernel,
        name=name,
    )


def install_all(model: Any, *, fallback: bool = False, **options: Any) -> list[Installed]:
    """Install on every MoE layer of `model` (SGLang's `FusedMoE` and subclasses).

    A layer that cannot be served raises, unless `fallback=True`: then it stays on SGLang's own
    path, with a warning that says why.
    """
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE

    done = []
    for module_name, module in _modules(model):
        if isinstance(module, FusedMoE):
            try:
                done.append(install(module, name=module_name or "model", **options))
            except (SGLangIntegrationError, LookupError, ValueError) as error:
                if not fallback:
                    raise
                logger.warning("%s stays on SGLang's MoE path: %s", module_name, error)
    return done


def _modules(model: Any) -> Iterable[tuple[str, Any]]:
    named: Iterable[tuple[str, Any]] = model.named_modules()
    return named


def uninstall(layer_or_runner: Any) -> bool:
    """Give the layer back to SGLang's own path; False when nothing was installed."""
    runner = _find_aiter_runner(layer_or_runner, refuse=False)
    done = None if runner is None else _INSTALLED.pop(runner, None)
    if done is None:
        return False
    runner.fused_func = None
    logger.info("%s: back on SGLang's MoE path", done.name)
    return True
