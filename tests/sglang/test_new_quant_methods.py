"""`install(layer)` for the AITER quant methods SGLang 0.5.23 added or changed, each through
SGLang's own `create_moe_runner` and `apply` -> `MoeRunner.run`, natively and installed:

- `Fp8MoEMethod` with `use_mxfp8` -> `mxfp8` (0.5.23 only: 0.5.13 loads mxfp8 MoE weights on SM100
  only, and install refuses it there);
- `Fp8MoEMethod` with a per-tensor checkpoint (neither block nor int4 per-channel) -> `fp8_channel`:
  both releases fold the per-tensor scales into per-row ones at load and run per_Token, so the
  matrix's `fp8_tensor` (per_Tensor) is not what SGLang passes;
- Quark's `QuarkW8A8FP8MoE` -> `quark_w8a8_fp8` (0.5.23 AITER for per-channel weights; 0.5.13 and
  per-tensor weights run Triton, refused);
- Quark's `QuarkW4A8MXFp4MoE` -> `quark_w4a8_mxfp4` (0.5.23 only: 0.5.13 has no such class).

Layers are built as tests/sglang/test_quant_methods.py builds its own: the methods' own `__init__`
where it needs no server arguments, and the tensors under the names (and, for the fp8 methods
whose processing runs on a CPU, through the very `process_weights_after_loading`) SGLang leaves
them. AITER's shuffles are identities here, so a weight SGLang shuffles for AITER's a16w4 layout
(`gate_up=True`, read with `gate_mode` INTERLEAVE) is held with its gate and up rows interleaved,
which is what the fake kernel reads under that mode. Where SGLang is right the installed path makes
SGLang's kernel call and combine input exactly; where it is wrong (a static input scale handed to a
quantizer that refuses it) the installed path is the dense float64 MoE and SGLang's is not. Each
comparison has a negative control.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from sglang.srt.layers.moe import utils as moe_utils
from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
from sglang.srt.layers.moe.moe_runner import aiter as sglang_aiter
from sglang.srt.layers.quantization import fp8
from sglang.srt.layers.quantization.quark import quark
from sglang.srt.layers.quantization.quark.schemes import quark_w8a8_fp8_moe as quark_w8a8

import generated
from moe_runtime import gate_up
from moe_runtime import types as t
from moe_runtime.enums import GateMode
from moe_runtime.integrations import sglang as integration
from moe_runtime.testing import emulate
from moe_runtime.testing.dense import dense_layer
from moe_runtime.testing.weights import make_expert_weights, slice_experts
from tests.runners.harness import dense_mismatch
from tests.sglang import compare, harness, paths
from tests.sglang.conftest import COUNTS
from tests.sglang.paths import HIDDEN, INTERMEDIATE, NUM_EXPERTS, TOKENS, TOP_K
from tests.sglang.test_layer import _dispatcher
from tests.sglang.test_quant_methods import Case, _fp4_as_uint8, _native

NEW = harness.RELEASE == "0.5.23"
if NEW:
    from sglang.srt.layers.quantization.quark.schemes import quark_w4a8_mxfp4_moe as quark_w4a8

# gpt-oss's SwiGLU-OAI, the one activation SGLang's AITER mxfp8 path runs (fp8.py:3427-3432).
SWIGLU_OAI = {"is_gated": True, "gemm1_alpha": 1.702}
FORMATS = (("none", "standard"), ("deepep", "deepep_normal"), ("mori", "mori_normal"))
SHAPES = [
    (a2a, dispatch, ep) for a2a, dispatch in FORMATS for ep in ((1, 2) if a2a == "none" else (2,))
]
SHAPE_IDS = [f"{a}/{d}-ep{e}" for a, d, e in SHAPES]


def _no_shuffle(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return x


def _scaled_fp8_quant(
    x: torch.Tensor, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """sgl_kernel's static per-tensor fp8 quantization (a CUDA/HIP kernel), for a given scale."""
    assert scale is not None and scale.numel() == 1
    limit = torch.finfo(torch.float8_e4m3fn).max
    q = (x.float() / scale.float()).clamp(-limit, limit).to(torch.float8_e4m3fn)
    return q, scale


@pytest.fixture(autouse=True)
def sglang_on_rocm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """ROCm with SGLANG_USE_AITER=1 on gfx95 as SGLang's modules see it: their import-time flags,
    AITER's shuffle (imported only on ROCm; an identity here, as the fake AITER's) and the GPU
    the AITER runner asks for (its own small-M kernel, tried first on gfx95, stays off: these
    tests compare fused_moe calls)."""
    modules: list[Any] = [fp8, quark_w8a8] + ([quark_w4a8] if NEW else [])
    for module in modules:
        monkeypatch.setattr(module, "_is_hip", True)
        monkeypatch.setattr(module, "_use_aiter", True)
        monkeypatch.setattr(module, "shuffle_weight", _no_shuffle, raising=False)
    # Fusing the w13 shard scales re-quantizes with sgl_kernel, which has no CPU build here.
    monkeypatch.setattr(fp8, "scaled_fp8_quant", _scaled_fp8_quant)
    # 0.5.13's Fp8MoEMethod.create_weights asks the tensor-parallel group for its size.
    monkeypatch.setattr(fp8, "get_tensor_model_parallel_world_size", lambda: 1, raising=False)
    if NEW:
        monkeypatch.setattr(sglang_aiter, "is_gfx95_supported", lambda: True)
        monkeypatch.setattr(sglang_aiter, "_SMALLM_MOE_ON", False)
    harness.set_runner_backend(monkeypatch, moe_utils.MoeRunnerBackend.AITER)
    yield
    harness.set_a2a_backend("none")


def _param(tensor: torch.Tensor | None) -> torch.nn.Parameter | None:
    return None if tensor is None else torch.nn.Parameter(tensor, requires_grad=False)


class Layer(FusedMoE):
    """A FusedMoE with the attributes these quant methods read and their tensors (module doc)."""

    def __init__(
        self, config: t.MoeLayerConfig, method: Any, options: dict[str, Any], scheme: Any = None
    ) -> None:
        torch.nn.Module.__init__(self)
        paths.set_layer_placement(self, 11, config)
        self.moe_tp_size = 1
        if scheme is not None:
            self.scheme = scheme
        self.quant_method = method
        self.moe_runner_config = harness.runner_config(config, **options)
        method.create_moe_runner(self, self.moe_runner_config)


@dataclasses.dataclass(frozen=True)
class Method:
    """One SGLang quant method as a test builds it."""

    quant: str  # the matrix's name install must read
    name: str
    build: Any  # (config, rank weights, options) -> Layer
    options: dict[str, Any]
    gate_mode: str = "separated"  # how SGLang's processed weights hold gate and up


def _mxfp8_layer(config: t.MoeLayerConfig, w: t.ExpertWeights, options: dict[str, Any]) -> Layer:
    """Fp8MoEMethod(Fp8Config(use_mxfp8=True)) after `_process_mxfp8_moe_weights` on gfx95
    (fp8.py:2586-2608): fp8 weights, e8m0 scales held as uint8 (`scale_dtype`, fp8.py:1721),
    both tagged `is_shuffled`."""
    quant_config = fp8.Fp8Config(is_checkpoint_fp8_serialized=True, use_mxfp8=True)
    quant_config.convert_mxfp8_to_block_fp8 = False  # gfx95 keeps mxfp8 (fp8.py:145, 1496-1499)
    method = fp8.Fp8MoEMethod(quant_config)
    layer = Layer(config, method, options)
    layer.w13_weight, layer.w2_weight = _param(w.w13_weight), _param(w.w2_weight)
    layer.w13_weight.is_shuffled = layer.w2_weight.is_shuffled = True
    layer.w13_weight_scale_inv = _param(_required(w.w13_scale).view(torch.uint8))
    layer.w2_weight_scale_inv = _param(_required(w.w2_scale).view(torch.uint8))
    return layer


def _fp8_tensor_layer(
    config: t.MoeLayerConfig, w: t.ExpertWeights, options: dict[str, Any]
) -> Layer:
    """Fp8MoEMethod(Fp8Config(is_checkpoint_fp8_serialized=True)): SGLang's own create_weights,
    a per-tensor checkpoint loaded into it (one scale per w13 shard, one per w2), then its own
    process_weights_after_loading, which fuses the shard scales and folds them into the per-row
    `w13_weight_scale1` / `w2_weight_scale1` AITER's per_Token reads."""
    method = fp8.Fp8MoEMethod(fp8.Fp8Config(is_checkpoint_fp8_serialized=True))
    layer = Layer(config, method, options)
    local = config.num_local_experts
    method.create_weights(
        layer, local, config.hidden_size, config.intermediate_size, torch.bfloat16
    )
    with torch.no_grad():
        layer.w13_weight.copy_(w.w13_weight)
        layer.w2_weight.copy_(w.w2_weight)
        layer.w13_weight_scale.copy_(_required(w.w13_scale).expand(local, 2))
        layer.w2_weight_scale.copy_(_required(w.w2_scale).view(local))
    layer.dispatcher = _QuantConfigSink()
    method.process_weights_after_loading(layer)
    return layer


def _quark_w8a8_layer(
    config: t.MoeLayerConfig, w: t.ExpertWeights, options: dict[str, Any]
) -> Layer:
    """QuarkW8A8FP8MoE (per-channel weights; `options["static"]` picks static per-tensor input
    scales) through its own create_weights and process_weights_after_loading."""
    static = options.get("static", False)
    scheme = quark_w8a8.QuarkW8A8FP8MoE(
        {"qscheme": options.get("weights", "per_channel")},
        {"qscheme": "per_tensor", "is_dynamic": False}
        if static
        else {"qscheme": "per_channel", "is_dynamic": True},
    )
    method = quark.QuarkFusedMoEMethod.__new__(quark.QuarkFusedMoEMethod)
    layer = Layer(config, method, {}, scheme=scheme)
    local = config.num_local_experts
    scheme.create_weights(
        layer, local, config.hidden_size, config.intermediate_size, torch.bfloat16
    )
    if not scheme.is_weight_per_channel:
        return layer  # SGLang runs these on Triton: only the runner it built is looked at
    with torch.no_grad():
        layer.w13_weight.copy_(w.w13_weight)
        layer.w2_weight.copy_(w.w2_weight)
        layer.w13_weight_scale.copy_(_required(w.w13_scale).view(local, -1))
        layer.w2_weight_scale.copy_(_required(w.w2_scale).view(local, -1))
        if static:
            layer.w13_input_scale.copy_(_required(w.a13_scale).expand(local))
            layer.w2_input_scale.copy_(_required(w.a2_scale).expand(local))
    scheme.process_weights_after_loading(layer)
    return layer


def _quark_w4a8_layer(
    config: t.MoeLayerConfig, w: t.ExpertWeights, options: dict[str, Any]
) -> Layer:
    """QuarkW4A8MXFp4MoE's own __init__; the attributes its create_weights sets on ROCm (H and I
    here are already multiples of 256 and 128: no pad) and the tensors its
    process_weights_after_loading leaves: uint8-held fp4 tagged `is_shuffled`, e8m0 scales, fp32
    biases, the static input scales reduced to one each."""
    scheme = quark_w4a8.QuarkW4A8MXFp4MoE(
        {
            "dtype": "fp4",
            "qscheme": "per_group",
            "group_size": 32,
            "is_dynamic": False,
            "scale_format": "e8m0",
        },
        {"dtype": "fp8_e4m3", "qscheme": "per_tensor", "is_dynamic": False},
    )
    scheme.num_experts = config.num_local_experts
    scheme.hidden_size = config.hidden_size
    scheme.intermediate_size_per_partition = config.intermediate_size
    scheme.hidden_pad = scheme.intermediate_pad = 0
    method = quark.QuarkFusedMoEMethod.__new__(quark.QuarkFusedMoEMethod)
    layer = Layer(config, method, options, scheme=scheme)
    layer.w13_weight, layer.w2_weight = _fp4_as_uint8(w.w13_weight), _fp4_as_uint8(w.w2_weight)
    layer.w13_weight.is_shuffled = layer.w2_weight.is_shuffled = True
    layer.w13_weight_scale, layer.w2_weight_scale = _param(w.w13_scale), _param(w.w2_scale)
    layer.w13_weight_bias, layer.w2_weight_bias = _param(w.b13), _param(w.b2)
    layer.w13_input_scale = _param(_required(w.a13_scale).max())
    layer.w2_input_scale = _param(_required(w.a2_scale).max())
    return layer


class _QuantConfigSink:
    """Where Fp8MoEMethod.process_weights_after_loading reports its wire dtype (the layer's
    dispatcher; the test's own replaces it afterwards)."""

    def set_quant_config(self, config: dict[str, Any]) -> None:
        self.quant_config = config


def _required(tensor: torch.Tensor | None) -> torch.Tensor:
    assert tensor is not None
    return tensor


MXFP8 = Method("mxfp8", "mxfp8", _mxfp8_layer, SWIGLU_OAI, gate_mode="interleave")
MXFP8_CLAMP = Method(
    "mxfp8",
    "mxfp8-clamp",
    _mxfp8_layer,
    {**SWIGLU_OAI, "gemm1_clamp_limit": 7.0},
    gate_mode="interleave",
)
FP8_TENSOR = Method("fp8_channel", "fp8-per-tensor", _fp8_tensor_layer, {})
QUARK_W8A8 = Method("quark_w8a8_fp8", "quark_w8a8_fp8-dynamic", _quark_w8a8_layer, {})
QUARK_W8A8_STATIC = Method(
    "quark_w8a8_fp8", "quark_w8a8_fp8-static", _quark_w8a8_layer, {"static": True}
)
# gpt-oss: the clamp as gemm1_clamp_limit, gate and up rows interleaved by SGLang's a16w4 shuffle.
QUARK_W4A8 = Method(
    "quark_w4a8_mxfp4",
    "quark_w4a8_mxfp4",
    _quark_w4a8_layer,
    {"gemm1_clamp_limit": 7.0, "gate_up_interleaved": True},
    gate_mode="interleave",
)
# The weights each method's layer is built from (the matrix's layout of its checkpoint).
_CHECKPOINT = {"fp8_channel": "fp8_tensor"}


def _case(method: Method, a2a: str, dispatch: str, ep_size: int) -> Case:
    harness.set_a2a_backend(a2a)
    checkpoint = _CHECKPOINT.get(method.quant, method.quant)
    weights = make_expert_weights(checkpoint, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed=7)
    held = gate_up.interleaved(weights) if method.gate_mode == "interleave" else weights
    batch = emulate.make_batch(TOKENS, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=ep_size, seed=8)
    dispatched = emulate.dispatch(batch, dispatch)
    local = NUM_EXPERTS // ep_size
    layers, outputs = [], []
    for rank, ours in enumerate(dispatched.outputs):
        config = paths.rank_config(rank, ep_size)
        layer = method.build(
            config, slice_experts(held, rank * local, (rank + 1) * local), method.options
        )
        # SGLang has no per-token fp8 wire: such layers get its fp8 wire's dispatcher, and the
        # tests name the format at install.
        layer.dispatcher = _dispatcher(a2a, dispatch.removesuffix("_token"), config)
        layers.append(layer)
        outputs.append(harness.sglang_dispatch_output(ours))
    forced = method.quant in ("mxfp8", "quark_w4a8_mxfp4")
    expected = dense_layer(batch, weights, checkpoint, activation="swiglu" if forced else "silu")
    return Case(layers, outputs, dispatched, expected)


def _installed(case: Case) -> list[tuple[Any, dict[str, Any]]]:
    """Each rank through install(layer) and SGLang's own apply: combine input and kernel call."""
    out = []
    for layer, output in zip(case.layers, case.outputs, strict=True):
        done = integration.install(layer)
        ours = layer.quant_method.apply(layer, output)
        out.append((ours, harness.last_call()))
        assert integration.uninstall(layer)
        assert done.modules == tuple(generated.RUNNERS[key] for key in done.keys)
    return out


def _exact(case: Case, method: Method, key: tuple[str, str, str]) -> None:
    """SGLang's path and the installed runner: the same kernel call and combine input, and the
    installed output is the dense MoE; each with a negative control."""
    for layer, output in zip(case.layers, case.outputs, strict=True):
        native, native_call = _native(layer, output)
        assert native_call is not None, native
        done = integration.install(layer)
        assert done.keys == (key,)
        ours = layer.quant_method.apply(layer, output)
        ours_call = harness.last_call()
        assert ours_call is not native_call
        assert compare.call_differences(native_call, ours_call) == []
        assert compare.combine_differences(native, ours) == []
        assert compare.call_differences(native_call, compare.perturbed_call(ours_call))
        assert compare.combine_differences(native, compare.perturbed_combine(ours))
        assert integration.uninstall(layer)
    ours_out = harness.combined(case.dispatched, [o for o, _ in _installed(case)])
    assert dense_mismatch(ours_out, case.expected, method.quant, key[2]) is None
    assert dense_mismatch(torch.zeros_like(ours_out), case.expected, method.quant, key[2])


def _needs_new(method: Method) -> None:
    if not NEW and method.quant in ("mxfp8", "quark_w8a8_fp8", "quark_w4a8_mxfp4"):
        why = {
            "mxfp8": "SGLang 0.5.13 has no AITER path for Fp8MoEMethod's use_mxfp8 (SM100 only)",
            "quark_w8a8_fp8": "SGLang 0.5.13's QuarkW8A8FP8MoE runs Triton, never AITER",
            "quark_w4a8_mxfp4": "SGLang 0.5.13 has no QuarkW4A8MXFp4MoE",
        }[method.quant]
        pytest.skip(why)


@pytest.mark.parametrize("method", [MXFP8, MXFP8_CLAMP], ids=lambda m: m.name)
@pytest.mark.parametrize(("a2a", "dispatch", "ep_size"), SHAPES, ids=SHAPE_IDS)
def test_mxfp8_is_served_as_sglang_passes_it(
    method: Method, a2a: str, dispatch: str, ep_size: int
) -> None:
    """Fp8MoEMethod with use_mxfp8 (0.5.23 fp8.py:3426-3452): per_1x32, Swiglu and gate_mode
    INTERLEAVE from its fused_moe_kwargs, and its clamp as swiglu_limit (the runner gets them
    at install from the same quant info): exact; the installed output is the dense MoE of the
    separated weights, read through the interleaved layout SGLang's shuffle leaves."""
    _needs_new(method)
    case = _case(method, a2a, dispatch, ep_size)
    native, native_call = _native(case.layers[0], case.outputs[0])
    assert native_call is not None, native
    assert native_call["quant_type"] is harness.aiter.QuantType.per_1x32
    assert native_call["activation"] is harness.aiter.ActivationType.Swiglu
    assert native_call["gate_mode"] == GateMode.INTERLEAVE.value
    assert native_call["swiglu_limit"] == method.options.get("gemm1_clamp_limit")
    _exact(case, method, (a2a, "mxfp8", dispatch))
    COUNTS["exact via install(layer) + apply, new quant methods"] += 1


def test_mxfp8_refusals_name_sglang_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """0.5.13: no AITER mxfp8 path (its _process_mxfp8_moe_weights raises off SM100, so SGLang's
    own load fails on ROCm). 0.5.23: an activation other than SwiGLU-OAI (SGLang's path raises),
    and gfx942 (SGLang converts mxfp8 to block fp8 there)."""
    case = _case(MXFP8, "none", "standard", 1)
    layer = case.layers[0]
    if not NEW:
        with pytest.raises(integration.SGLangIntegrationError, match="SM100 only"):
            integration.install(layer)
        with pytest.raises(RuntimeError, match="SM100"):
            layer.quant_method._process_mxfp8_moe_weights(layer)
        assert integration.installed(layer) is None
        return
    layer.moe_runner_config.gemm1_alpha = 1.0
    with pytest.raises(integration.SGLangIntegrationError, match="SwiGLU-OAI"):
        integration.install(layer)
    with pytest.raises(NotImplementedError, match="swiglu-oai"):
        layer.quant_method.apply(layer, case.outputs[0])
    layer.moe_runner_config.gemm1_alpha = 1.702
    monkeypatch.setattr(sglang_aiter, "is_gfx95_supported", lambda: False)
    with pytest.raises(integration.SGLangIntegrationError, match="gfx95"):
        integration.install(layer)
    assert integration.installed(layer) is None
    monkeypatch.setattr(sglang_aiter, "is_gfx95_supported", lambda: True)
    integration.install(layer)  # the same layer on gfx95 with SwiGLU-OAI installs
    assert integration.uninstall(layer)


@pytest.mark.parametrize(("a2a", "dispatch", "ep_size"), SHAPES, ids=SHAPE_IDS)
def test_fp8_per_tensor_checkpoint_is_read_as_sglang_runs_it(
    a2a: str, dispatch: str, ep_size: int
) -> None:
    """Fp8MoEMethod's non-block experts are a per-tensor checkpoint (one scale per w13 shard and
    per w2: 0.5.13 fp8.py:1070-1103, 0.5.23 fp8.py:1748-1778); on ROCm SGLang's own
    process_weights_after_loading fuses the shard scales and folds them into the per-row
    `*_scale1` (process_weights_hip_scale_padding), and its quant info is PER_TOKEN with those.
    So install reads it as `fp8_channel` (the matrix's `fp8_tensor`, per_Tensor, is a call no
    SGLang release makes). SGLang passes `*_scale1` as created, `[E, N]`; AITER's per_Token
    takes `[L, N, 1]` (docs/aiter_fused_moe.md), which the reference kernel holds it to,
    so SGLang's call is refused there: install passes the same memory viewed `[E, N, 1]`. Every
    other argument is SGLang's exactly, and the installed output is the dense MoE."""
    case = _case(FP8_TENSOR, a2a, dispatch, ep_size)
    assert not any(layer.quant_method.block_quant for layer in case.layers)
    calls = _against_refused_native(
        case,
        (a2a, "fp8_channel", dispatch),
        r"w1_scale for per_Token must be \[\d+, 256, 1\]",
        ("w1_scale", "w2_scale"),
        dense_quant="fp8_tensor",
    )
    for (theirs, mine), layer in zip(calls, case.layers, strict=True):
        assert theirs["quant_type"] is harness.aiter.QuantType.per_Token
        for name in ("w1_scale", "w2_scale"):
            assert theirs[name].dim() == 2 and mine[name].shape == (*theirs[name].shape, 1)
            assert mine[name].data_ptr() == theirs[name].data_ptr()  # a view: no copy
        # The folded scales are the checkpoint's per-tensor ones, row for row.
        folded = layer.w13_weight_scale.view(-1, 1, 1).expand_as(mine["w1_scale"])
        assert torch.equal(mine["w1_scale"], folded)
    COUNTS["dense via install(layer) + apply, new quant methods (sglang wrong)"] += 1


def _against_refused_native(
    case: Case,
    key: tuple[str, str, str],
    refused: str,
    differing: tuple[str, ...],
    *,
    dense_quant: str | None = None,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Where the fake AITER's reference kernel refuses SGLang's call (`refused` matches its
    error, raised after the call is recorded): SGLang's call and the installed one differ in
    exactly the `differing` arguments, and the installed output is the dense MoE (of the
    checkpoint's `dense_quant` layout); each with a negative control. Returns the (SGLang's,
    installed) call of each rank, for the caller's checks of the differing arguments."""
    calls, installed = [], []
    for layer, output in zip(case.layers, case.outputs, strict=True):
        before = len(harness.aiter.CALLS)
        with pytest.raises(ValueError, match=refused):
            layer.quant_method.apply(layer, output)
        assert len(harness.aiter.CALLS) == before + 1
        native_call = harness.last_call()
        assert integration.install(layer).keys == (key,)
        ours = layer.quant_method.apply(layer, output)
        ours_call = harness.last_call()
        differences = compare.call_differences(native_call, ours_call)
        assert [d.split(":")[0] for d in differences] == list(differing), differences
        perturbed = compare.call_differences(native_call, compare.perturbed_call(ours_call))
        assert len(perturbed) == len(differing) + 1
        calls.append((native_call, ours_call))
        installed.append(ours)
        assert integration.uninstall(layer)
    quant = dense_quant or key[1]
    ours_out = harness.combined(case.dispatched, installed)
    assert dense_mismatch(ours_out, case.expected, quant, key[2]) is None
    assert dense_mismatch(torch.zeros_like(ours_out), case.expected, quant, key[2])
    return calls


def _static_scales_dropped(calls: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """SGLang passes its static input scales; the runner passes none."""
    for theirs, mine in calls:
        for name in ("a1_scale", "a2_scale"):
            assert theirs[name] is not None and mine[name] is None


@pytest.mark.parametrize("method", [QUARK_W8A8, QUARK_W8A8_STATIC], ids=lambda m: m.name)
@pytest.mark.parametrize(("a2a", "dispatch", "ep_size"), SHAPES, ids=SHAPE_IDS)
def test_quark_w8a8_fp8_is_served_as_sglang_passes_it(
    method: Method, a2a: str, dispatch: str, ep_size: int
) -> None:
    """QuarkW8A8FP8MoE's AITER branch (0.5.23 quark_w8a8_fp8_moe.py:286-307): per_Token with its
    per-channel scales, its input scales and the expert mask. Dynamic input: exact. Static
    input: SGLang hands its per-tensor input scales to AITER's per-token quantizer, which refuses
    a static scale for bf16 input (docs/aiter_fused_moe.md, the reference kernel): SGLang is
    wrong; the runner passes no input scale (its rows are quantized dynamically, within the
    calibrated range) and is the dense MoE; every other argument is SGLang's."""
    _needs_new(method)
    case = _case(method, a2a, dispatch, ep_size)
    key = (a2a, "quark_w8a8_fp8", dispatch)
    if method is QUARK_W8A8:
        _exact(case, method, key)
        COUNTS["exact via install(layer) + apply, new quant methods"] += 1
        return
    _static_scales_dropped(
        _against_refused_native(case, key, "refuse a static scale", ("a1_scale", "a2_scale"))
    )
    COUNTS["dense via install(layer) + apply, new quant methods (sglang wrong)"] += 1


@pytest.mark.parametrize(("a2a", "dispatch", "ep_size"), SHAPES, ids=SHAPE_IDS)
def test_quark_w4a8_mxfp4_is_served_where_sglang_is_refused(
    a2a: str, dispatch: str, ep_size: int
) -> None:
    """QuarkW4A8MXFp4MoE (0.5.23 quark_w4a8_mxfp4_moe.py:440-531), gpt-oss style: the clamp
    (`gemm1_clamp_limit`) and interleaved gate/up rows (SGLang's a16w4 shuffle), so SGLang's
    runner passes swiglu_limit and gate_mode INTERLEAVE (moe_runner/aiter.py:228-246), as the
    installed one does. SGLang also hands its static fp8 input scales to the per_1x32 Swiglu
    path, whose activations stay bf16 or are quantized with AITER's own e8m0 scales: AITER's
    per-group quantizers refuse a static scale (docs/aiter_fused_moe.md; the reference kernel
    raises), so SGLang is wrong there; the runner does not pass them and is the dense MoE."""
    _needs_new(QUARK_W4A8)
    case = _case(QUARK_W4A8, a2a, dispatch, ep_size)
    key = (a2a, "quark_w4a8_mxfp4", dispatch)
    _static_scales_dropped(
        _against_refused_native(case, key, "refuse a static scale", ("a1_scale", "a2_scale"))
    )
    call = harness.last_call()
    assert call["gate_mode"] == GateMode.INTERLEAVE.value and call["swiglu_limit"] == 7.0
    assert call["activation"] is harness.aiter.ActivationType.Swiglu
    COUNTS["dense via install(layer) + apply, new quant methods (sglang wrong)"] += 1


def _fp4_experts(layer: Layer) -> None:
    layer.quant_method.is_fp4_expert = True


def _padded_hidden(layer: Layer) -> None:
    layer.scheme.hidden_pad = 64


# (what, method, how its layer is changed, the refusal). Quark W8A8 fp8: SGLang 0.5.13 always
# builds a Triton runner (:264), 0.5.23 for per-tensor weights (:266-276): no AITER call to serve.
# Quark W4A8 with a padded H: its apply pads the activations before MoeRunner.run (:497-502), the
# runner pads them itself.
REFUSALS = [
    ("fp8-fp4-experts", FP8_TENSOR, _fp4_experts, "fp4 experts are not served"),
    (
        "quark_w8a8_fp8-triton",
        QUARK_W8A8
        if not NEW
        else dataclasses.replace(QUARK_W8A8, options={"weights": "per_tensor"}),
        None,
        "Triton",
    ),
    ("quark_w4a8_mxfp4-hidden_pad", QUARK_W4A8, _padded_hidden, "hidden_pad 64"),
]


@pytest.mark.parametrize(
    ("method", "change", "match"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_layers_the_runners_cannot_serve_are_refused_at_install(
    method: Method, change: Any, match: str
) -> None:
    if method is QUARK_W4A8:
        _needs_new(method)
    layer = _case(method, "none", "standard", 1).layers[0]
    if change is not None:
        change(layer)
    with pytest.raises(integration.SGLangIntegrationError, match=match):
        integration.install(layer)
    assert integration.installed(layer) is None
    if method.quant == "quark_w8a8_fp8":
        assert not layer.scheme.runner.runner_backend.is_aiter()
