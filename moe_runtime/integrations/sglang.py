"""The generated runners inside SGLang's AITER MoE path (SGLang 0.5.13 and 0.5.23).

After the model's weights are loaded and processed (SGLang has run `process_weights_after_loading`,
so AITER's shuffles are done), one call puts every AITER MoE layer on its generated runner:

    from moe_runtime.integrations import sglang as moe_sglang
    moe_sglang.install_all(model)        # or moe_sglang.install(layer), one layer

For each layer it works out, once, the `(a2a, quant, dispatch)` key (from SGLang's a2a backend, the
layer's quant method and its dispatcher), selects the generated module (`generated.select`), builds
its `Runner` from the tensors SGLang's own quant method hands to AITER, and logs one line naming
the module. A key the matrix excludes, or a layer this integration cannot read, is refused here
with the reason (`generated.UnsupportedCombination`, `SGLangIntegrationError`), never at the first
forward, and never by leaving the layer on SGLang's path unless `install_all(..., fallback=True)`.

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

SGLang names this module relies on (present in both releases):
- `sglang.srt.layers.moe.utils.get_moe_a2a_backend` (`.value`: none, deepep, mooncake, nixl, mori)
- `MoeRunner.fused_func`, `.lora_enabled`, `.runner_backend.is_aiter()`, `.config` (a
  `MoeRunnerConfig`: `num_experts`, `num_local_experts`, `top_k`, `hidden_size`,
  `intermediate_size_per_partition`, `activation`, `apply_router_weight_on_input`, `no_combine`,
  `num_fused_shared_experts`, `swiglu_limit`)
- the layer's `quant_method`, `dispatcher`, `moe_ep_rank`, `moe_ep_size`;
  `UnquantizedFusedMoEMethod` (`_aiter_runner`, `layer.w13_weight`, `layer.w2_weight`) and
  `Fp8MoEMethod` (`runner`, `block_quant`, `is_fp4_expert`,
  `maybe_get_hip_aiter_quant_info(layer)`), by class name
- `AiterMoeQuantInfo`'s fields (`w13_weight` ... `intermediate_pad`, `swiglu_limit`,
  `fused_moe_kwargs`)
- the dispatcher's `_normal_dispatcher` / `_low_latency_dispatcher` (DeepEP: `use_fp8`; MORI:
  `dispatch_dtype.name`)
- the dispatch-output and combine-input classes of `token_dispatcher.standard`, `.deepep`, `.moriep`
- 0.5.13: `sglang.srt.utils.get_int_env_var`; 0.5.23: `sglang.srt.environ.envs`
- `aiter.fused_moe.fused_moe`, which SGLang calls too (the generated runner is given it as its
  kernel, so the weights SGLang already shuffled are not prepared again)

Not served (refused at install): LoRA, `no_combine`, a layer whose runner slot SGLang already fills,
fused shared experts, `swiglu_limit` (SGLang adds a `gate_mode` the runners do not pass),
`fused_moe_kwargs`, fp4 experts of `Fp8MoEMethod`, MORI's mxfp8 wire, DeepEP nvfp4, and quant
methods other than the unquantized and fp8 ones (their tensors are not read yet).
"""

from __future__ import annotations

import importlib.metadata
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import generated
from moe_runtime import layer_options, types
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
    "sglang_release",
    "sorting_dispatch_policy",
    "uninstall",
    "weights_from_quant_info",
]

logger = logging.getLogger(__name__)

SUPPORTED_RELEASES: Final = ("0.5.13", "0.5.23")
MORI_MAX_INPUT_TOKENS_ENV: Final = "SGLANG_MORI_MOE_MAX_INPUT_TOKENS"

_A2A_BACKENDS = ("none", "deepep", "mooncake", "nixl", "mori")
_MORI_WIRES = {"bf16": "", "fp8": "_fp8", "fp4": "_fp4"}


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
    from sglang.srt.utils import is_gfx95_supported

    fields = layer_options.activation_fields(
        runner_config.activation,
        bool(runner_config.is_gated),
        runner_config.gemm1_alpha,
        runner_config.gemm1_beta,
        runner_config.gemm1_clamp_limit,
        gfx95=bool(is_gfx95_supported()),
    )
    if "swiglu_limit" in fields and getattr(runner_config, "gate_up_interleaved", False):
        # SGLang then passes gate_mode INTERLEAVE (aiter.py:238-245); the weights read here are
        # gate rows then up rows only.
        raise SGLangIntegrationError(
            "a SwiGLU-OAI layer with interleaved gate/up rows (gate_up_interleaved) is not read "
            "by this integration"
        )
    return fields


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
    if dispatch.startswith("mori_"):
        from sglang.srt.layers.moe.token_dispatcher import moriep

        if dispatch.startswith("mori_ll"):
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
    if getattr(config, "swiglu_limit", None):
        problems.append(
            "swiglu_limit is set: SGLang then passes AITER a gate_mode the runners do not pass"
        )
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
            ours = (
                types.MoriEPLLDispatchOutput if "_ll" in fmt else types.MoriEPNormalDispatchOutput
            )
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
    runner = getattr(method, "_aiter_runner", None) or getattr(method, "runner", None)
    if runner is None and refuse:
        raise SGLangIntegrationError(
            f"{type(layer_or_runner).__name__} has no AITER MoeRunner (SGLang creates one only "
            "on ROCm with SGLANG_USE_AITER=1 and an a2a backend that supports AITER)"
        )
    return runner


def _read_quant_method(layer: Any, name: str) -> tuple[str, ExpertWeights]:
    """The quant method's name in the matrix and the tensors it hands AITER."""
    method = layer.quant_method
    kind = type(method).__name__
    if kind in ("UnquantizedFusedMoEMethod", "Fp8MoEMethod") and not hasattr(
        layer.dispatcher, "expert_mask_gpu"
    ):
        # Its apply reads the mask before it calls MoeRunner.run: it would raise there anyway.
        raise SGLangIntegrationError(
            f"{name}: {kind}.apply reads layer.dispatcher.expert_mask_gpu, which "
            f"{type(layer.dispatcher).__name__} does not have (SGLang's path raises before "
            "MoeRunner.run, installed or not)"
        )
    if kind == "UnquantizedFusedMoEMethod":
        return "unquant", ExpertWeights(w13_weight=layer.w13_weight, w2_weight=layer.w2_weight)
    if kind == "Fp8MoEMethod":
        if getattr(method, "is_fp4_expert", False) or getattr(method, "use_mxfp8", False):
            raise SGLangIntegrationError(f"{name}: Fp8MoEMethod's fp4/mxfp8 experts are not served")
        quant_info = method.maybe_get_hip_aiter_quant_info(layer)
        if quant_info is None:
            raise SGLangIntegrationError(
                f"{name}: Fp8MoEMethod builds no AITER quant info (SGLANG_USE_AITER is off)"
            )
        if quant_info.fused_moe_kwargs:
            raise SGLangIntegrationError(
                f"{name}: fused_moe_kwargs {sorted(quant_info.fused_moe_kwargs)} are not served"
            )
        return ("fp8_block" if method.block_quant else "fp8_channel"), weights_from_quant_info(
            quant_info
        )
    raise SGLangIntegrationError(
        f"{name}: quant method {kind} is not read by this integration yet; served: "
        "UnquantizedFusedMoEMethod, Fp8MoEMethod (install_on_runner takes any quant method's "
        "tensors explicitly)"
    )


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
    quant, weights = _read_quant_method(layer, name)
    config = layer_config(moe_runner.config, ep_rank=layer.moe_ep_rank, ep_size=layer.moe_ep_size)
    formats = tuple(dispatch) if dispatch is not None else dispatch_formats(a2a, layer.dispatcher)
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
