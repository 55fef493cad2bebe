"""`install(layer)` for SGLang's other AITER quant methods: `Mxfp4MoEMethod`, Quark's
`QuarkW4A4MXFp4MoE` scheme and `QuarkInt4Fp8MoEMethod`, compressed-tensors'
`CompressedTensorsW8A8Fp8MoE` scheme, each through SGLang's own `create_moe_runner` and `apply`.

The methods' constructors need server arguments or a tensor-parallel group (Mxfp4MoEMethod,
QuarkInt4Fp8MoEMethod), so those are made without `__init__`, with the attributes their `apply`
reads set as `__init__` / `create_weights` set them on ROCm with SGLANG_USE_AITER=1; the Quark
W4A4 and compressed-tensors schemes run their own `__init__`. The layer holds the tensors under
the names each method's `process_weights_after_loading` leaves (fp4 weights held as uint8, as
SGLang holds them). Where SGLang is right the installed path makes SGLang's kernel call and
combine input exactly; where it is `known_wrong` (no expert mask) the installed path is the dense
MoE and SGLang's is not. Each comparison has a negative control.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs
from sglang.srt.layers.moe import utils as moe_utils
from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
from sglang.srt.layers.moe.moe_runner import aiter as sglang_aiter
from sglang.srt.layers.quantization import mxfp4, quark_int4fp8_moe
from sglang.srt.layers.quantization.compressed_tensors import compressed_tensors as ct
from sglang.srt.layers.quantization.compressed_tensors.schemes import (
    compressed_tensors_w8a8_fp8_moe as ct_fp8,
)
from sglang.srt.layers.quantization.quark import quark
from sglang.srt.layers.quantization.quark.schemes import quark_w4a4_mxfp4_moe as quark_w4a4

import generated
from moe_runtime import types as t
from moe_runtime.enums import GateMode
from moe_runtime.integrations import sglang as integration
from moe_runtime.testing import emulate
from moe_runtime.testing.dense import dense_layer
from moe_runtime.testing.dynamic import known_wrong
from moe_runtime.testing.weights import make_expert_weights, slice_experts
from tests.runners.harness import dense_mismatch
from tests.sglang import compare, harness, paths
from tests.sglang.conftest import COUNTS
from tests.sglang.paths import HIDDEN, INTERMEDIATE, NUM_EXPERTS, TOKENS, TOP_K
from tests.sglang.test_layer import _dispatcher

EP_SIZE = 2


@pytest.fixture(autouse=True)
def sglang_on_rocm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for module in (mxfp4, quark_w4a4, ct_fp8, quark_int4fp8_moe):
        if hasattr(module, "_is_hip"):
            monkeypatch.setattr(module, "_is_hip", True)
        if hasattr(module, "_use_aiter"):
            monkeypatch.setattr(module, "_use_aiter", True)
    if hasattr(mxfp4, "_is_cpu"):
        monkeypatch.setattr(mxfp4, "_is_cpu", False)
    harness.set_runner_backend(monkeypatch, moe_utils.MoeRunnerBackend.AITER)
    yield
    harness.set_a2a_backend("none")


def _fp4_as_uint8(tensor: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(tensor.view(torch.uint8), requires_grad=False)


def _mxfp4_method() -> Any:
    method = mxfp4.Mxfp4MoEMethod.__new__(mxfp4.Mxfp4MoEMethod)
    # Mxfp4MoEMethod.__init__ / create_weights on ROCm with AITER and no flashinfer or marlin.
    method.use_triton_kernels = method.use_flashinfer = method.use_marlin = False
    method.use_deep_gemm = method.use_mega_moe = False  # the latter 0.5.23's
    method._fi_kernel = None
    method.with_bias = True
    method.hidden_size = HIDDEN  # already a multiple of 256: no pad
    method.hidden_pad = method.intermediate_pad = 0
    return method


def _quark_w4a4_scheme() -> Any:
    return quark_w4a4.QuarkW4A4MXFp4MoE(
        {"qscheme": "per_group"}, {"qscheme": "per_group", "is_dynamic": True}
    )


def _ct_scheme(strategy: str = "channel") -> Any:
    return ct_fp8.CompressedTensorsW8A8Fp8MoE(
        QuantizationArgs(num_bits=8, type="float", strategy=strategy, dynamic=False),
        QuantizationArgs(num_bits=8, type="float", strategy="token", dynamic=True),
    )


class Layer(FusedMoE):
    """A FusedMoE holding the processed weights of `quant` under SGLang's names."""

    def __init__(
        self,
        quant: str,
        config: t.MoeLayerConfig,
        weights: t.ExpertWeights,
        options: dict[str, Any] | None = None,
    ) -> None:
        torch.nn.Module.__init__(self)
        paths.set_layer_placement(self, 3, config)
        fp4 = quant in ("mxfp4", "quark_w4a4_mxfp4")
        wrap = _fp4_as_uint8 if fp4 else (lambda w: torch.nn.Parameter(w, requires_grad=False))
        self.w13_weight, self.w2_weight = wrap(weights.w13_weight), wrap(weights.w2_weight)
        if fp4:
            # SGLang's shuffle tags the weights; apply re-tags its views from them.
            self.w13_weight.is_shuffled = self.w2_weight.is_shuffled = True
        method: Any
        if quant == "quark_int4fp8":
            self.w13_int4_scale, self.w2_int4_scale = weights.w13_scale, weights.w2_scale
            method = quark_int4fp8_moe.QuarkInt4Fp8MoEMethod.__new__(
                quark_int4fp8_moe.QuarkInt4Fp8MoEMethod
            )
        else:
            self.w13_weight_scale, self.w2_weight_scale = weights.w13_scale, weights.w2_scale
        if quant == "mxfp4":
            self.w13_weight_bias, self.w2_weight_bias = weights.b13, weights.b2
            method = _mxfp4_method()
        elif quant == "quark_w4a4_mxfp4":
            self.scheme = _quark_w4a4_scheme()
            method = quark.QuarkFusedMoEMethod.__new__(quark.QuarkFusedMoEMethod)
        elif quant == "ct_w8a8_fp8":
            # Channel-wise weights with dynamic per-token activations: no input scales.
            self.w13_input_scale = self.w2_input_scale = None
            self.scheme = _ct_scheme()
            method = ct.CompressedTensorsFusedMoEMethod.__new__(ct.CompressedTensorsFusedMoEMethod)
        self.quant_method = method
        self.moe_runner_config = harness.runner_config(config, **(options or {}))
        method.create_moe_runner(self, self.moe_runner_config)


@dataclasses.dataclass
class Case:
    layers: list[Layer]
    outputs: list[Any]  # SGLang dispatch outputs, one per rank
    dispatched: emulate.Dispatched
    expected: torch.Tensor


def _case(
    quant: str,
    a2a: str,
    dispatch: str,
    ep_size: int = EP_SIZE,
    options: dict[str, Any] | None = None,
    hidden_pad: int = 0,
) -> Case:
    harness.set_a2a_backend(a2a)
    weights = make_expert_weights(
        quant, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed=5, hidden_pad=hidden_pad
    )
    batch = emulate.make_batch(TOKENS, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=ep_size, seed=6)
    dispatched = emulate.dispatch(batch, dispatch)
    local = NUM_EXPERTS // ep_size
    activation = "swiglu" if quant == "mxfp4" else "silu"
    layers, outputs = [], []
    for rank, ours in enumerate(dispatched.outputs):
        config = paths.rank_config(rank, ep_size)
        rank_weights = slice_experts(weights, rank * local, (rank + 1) * local)
        layer = Layer(quant, config, rank_weights, options)
        if hidden_pad:
            # Mxfp4MoEMethod.create_weights: H rounded up to 256, the pad kept (mxfp4.py).
            layer.quant_method.hidden_pad = hidden_pad
            layer.quant_method.hidden_size = HIDDEN + hidden_pad
        layer.dispatcher = _dispatcher(a2a, dispatch, config)
        layers.append(layer)
        outputs.append(harness.sglang_dispatch_output(ours))
    expected = dense_layer(batch, weights, quant, activation=activation)
    return Case(layers, outputs, dispatched, expected)


def _native(layer: Layer, output: Any) -> tuple[Any, dict[str, Any] | None]:
    """SGLang's own apply: its combine input and kernel call, or the error its path raised."""
    before = len(harness.aiter.CALLS)
    try:
        result = layer.quant_method.apply(layer, output)
    except ValueError as error:
        return error, None
    assert len(harness.aiter.CALLS) == before + 1
    return result, harness.last_call()


def _sglang_wrong(quant: str, a2a: str, dispatch: str, ep_size: int) -> bool:
    """`known_wrong`, except for ct_w8a8_fp8: its static-input-scale flaw needs static scales,
    which CompressedTensorsW8A8Fp8MoE.__init__ refuses for channel-wise weights (the only ones
    SGLang prepares for AITER), so there only its missing expert mask (EP > 1) counts."""
    if quant == "ct_w8a8_fp8":
        return ep_size > 1
    return known_wrong(a2a, quant, dispatch, ep_size=ep_size) is not None


def _standard_only(quant: str) -> bool:
    """Methods whose apply (in this release) reads `dispatch_output.topk_output`."""
    return quant == "ct_w8a8_fp8" or (quant == "mxfp4" and harness.RELEASE == "0.5.13")


FORMATS = (("none", "standard"), ("deepep", "deepep_normal"), ("mori", "mori_normal"))
METHODS = ("mxfp4", "quark_w4a4_mxfp4", "quark_int4fp8", "ct_w8a8_fp8")
# At EP 1 without a2a there are no remote experts, so the maskless methods are right there too.
CASES = [
    (quant, a2a, dispatch, ep_size)
    for quant in METHODS
    for a2a, dispatch in FORMATS
    for ep_size in ((1, 2) if dispatch == "standard" else (2,))
    if dispatch == "standard" or not _standard_only(quant)
]


@pytest.mark.parametrize(
    ("quant", "a2a", "dispatch", "ep_size"),
    CASES,
    ids=[f"{q}/{a}/{d}-ep{e}" for q, a, d, e in CASES],
)
def test_install_reads_the_method_and_serves_its_apply(
    quant: str, a2a: str, dispatch: str, ep_size: int
) -> None:
    case = _case(quant, a2a, dispatch, ep_size)
    natives, installed = [], []
    for layer, output in zip(case.layers, case.outputs, strict=True):
        native, native_call = _native(layer, output)
        done = integration.install(layer)
        assert done.keys == ((a2a, quant, dispatch),)
        assert done.modules == (generated.RUNNERS[(a2a, quant, dispatch)],)
        ours = layer.quant_method.apply(layer, output)
        ours_call = harness.last_call()
        assert ours_call is not native_call
        # AITER picks its preshuffled fp4 kernels by w1.is_shuffled: both paths keep the tag.
        fp4 = quant in ("mxfp4", "quark_w4a4_mxfp4")
        assert getattr(ours_call["w1"], "is_shuffled", False) is fp4
        if native_call is not None:
            assert getattr(native_call["w1"], "is_shuffled", False) is fp4
        natives.append((native, native_call))
        installed.append((ours, ours_call))
        assert integration.uninstall(layer)
    if not _sglang_wrong(quant, a2a, dispatch, ep_size):
        for (native, native_call), (ours, ours_call) in zip(natives, installed, strict=True):
            assert native_call is not None, native
            compare.assert_exact(native, native_call, ours, ours_call)
        COUNTS["exact via install(layer) + apply, other quant methods"] += 1
        return
    # SGLang passes no expert mask here: the installed path is the dense MoE, SGLang's is not.
    ours_out = harness.combined(case.dispatched, [o for o, _ in installed])
    assert dense_mismatch(ours_out, case.expected, quant, dispatch) is None
    failed = [n for n, _ in natives if isinstance(n, Exception)]
    if failed:
        # The reference kernel refuses the remote experts' ids SGLang hands it without a mask.
        assert all("out of range" in str(error) for error in failed), failed
    else:
        native_out = harness.combined(case.dispatched, [n for n, _ in natives])
        assert dense_mismatch(native_out, case.expected, quant, dispatch)
    assert dense_mismatch(torch.zeros_like(ours_out), case.expected, quant, dispatch)
    COUNTS["dense via install(layer) + apply, other quant methods (sglang wrong)"] += 1


@dataclasses.dataclass(frozen=True)
class Option:
    """A layer option SGLang's AITER path turns into fused_moe keywords, and the keywords."""

    name: str
    quant: str
    fields: dict[str, Any]  # MoeRunnerConfig fields
    gpu: str  # "" (neither flag), "gfx95" or "gfx1250"
    gate_mode: str
    swiglu_limit: float | None
    activation: str
    gu_itlv: bool  # SGLANG_USE_AITER_MOE_GU_ITLV
    releases: tuple[str, ...]


BOTH, NEW = ("0.5.13", "0.5.23"), ("0.5.23",)
CLAMP, LIMIT = {"gemm1_clamp_limit": 7.0}, {"swiglu_limit": 5.0}
SPLIT = {**CLAMP, "gate_up_interleaved": False}
SITU = {"activation": "situ", "gemm1_alpha": 1.5, "gemm1_clamp_limit": 2.0}
OAI = {"is_gated": True, "gemm1_alpha": 1.702, **CLAMP}
# name, quant method, MoeRunnerConfig fields, GPU, then what SGLang passes: gate_mode,
# swiglu_limit, activation; then SGLANG_USE_AITER_MOE_GU_ITLV and the releases. gpt-oss sets the
# clamp as gemm1_clamp_limit (its weights are shuffled gate/up interleaved), others swiglu_limit.
_TABLE: list[tuple[Any, ...]] = [
    ("clamp", "mxfp4", CLAMP, "", "interleave", 7.0, "Swiglu", True, BOTH),
    ("swiglu_limit", "mxfp4", LIMIT, "", "interleave", 5.0, "Swiglu", True, BOTH),
    ("clamp-gu-itlv-off", "mxfp4", CLAMP, "", "separated", 7.0, "Swiglu", False, BOTH),
    ("clamp-gfx95-split", "mxfp4", SPLIT, "gfx95", "separated", 7.0, "Swiglu", True, NEW),
    ("situ", "mxfp4", SITU, "", "separated", None, "Situv2", True, NEW),
    # gemm1_alpha and gemm1_clamp_limit unset: SGLang passes no beta / linear_beta (AITER: 1.0).
    ("situ-defaults", "mxfp4", {"activation": "situ"}, "", "separated", None, "Situv2", True, NEW),
    ("swiglu-oai-gfx95", "quark_w4a4_mxfp4", OAI, "gfx95", "separated", 7.0, "Swiglu", True, NEW),
    ("swiglu_limit", "quark_w4a4_mxfp4", LIMIT, "", "interleave", 5.0, "Silu", True, NEW),
    ("gfx1250", "quark_w4a4_mxfp4", {}, "gfx1250", "interleave", None, "Silu", True, NEW),
]
OPTIONS = [Option(*row) for row in _TABLE]
OPTIONS_HERE = [o for o in OPTIONS if harness.RELEASE in o.releases]


def _set_gpu(monkeypatch: pytest.MonkeyPatch, option: Option) -> None:
    """The GPU SGLang sees: its runner's is_gfx95_supported and the Quark scheme's flags."""
    if option.gpu == "gfx95":
        monkeypatch.setattr(sglang_aiter, "is_gfx95_supported", lambda: True)
        # On gfx95 SGLang first tries its own small-M kernel (no fused_moe call); this compares
        # the fused_moe calls, so that kernel stays off here.
        monkeypatch.setattr(sglang_aiter, "_SMALLM_MOE_ON", False)
        monkeypatch.setattr(quark_w4a4, "_is_gfx95", True)
    if option.gpu == "gfx1250":
        monkeypatch.setattr(quark_w4a4, "_is_gfx1250", True)
    if not option.gu_itlv:
        monkeypatch.setenv("SGLANG_USE_AITER_MOE_GU_ITLV", "0")


@pytest.mark.parametrize("option", OPTIONS_HERE, ids=[f"{o.quant}/{o.name}" for o in OPTIONS_HERE])
def test_layer_options_reach_the_kernel_as_sglang_passes_them(
    option: Option, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clamp, the activation (SwiGLU-OAI, situ) and the gate_mode SGLang derives from the
    layer and the GPU: the installed runner's kernel call is SGLang's, keyword for keyword."""
    _set_gpu(monkeypatch, option)
    case = _case(option.quant, "none", "standard", options=option.fields)
    other = "separated" if option.gate_mode == "interleave" else "interleave"
    for layer, output in zip(case.layers, case.outputs, strict=True):
        native, native_call = _native(layer, output)
        assert native_call is not None, native
        assert native_call["gate_mode"] == option.gate_mode
        assert native_call["swiglu_limit"] == option.swiglu_limit
        assert native_call["activation"] is getattr(harness.aiter.ActivationType, option.activation)
        integration.install(layer)
        ours = layer.quant_method.apply(layer, output)
        ours_call = harness.last_call()
        compare.assert_exact(native, native_call, ours, ours_call)
        assert integration.uninstall(layer)
        # Negative control: the other gate_mode is another call and another output.
        with monkeypatch.context() as patch:
            patch.setattr(integration, "sglang_gate_mode", lambda *a: GateMode(other))
            integration.install(layer)
        flipped = layer.quant_method.apply(layer, output)
        assert compare.call_differences(native_call, harness.last_call()) == [
            f"gate_mode: {option.gate_mode!r} (str) vs {other!r} (str)"
        ]
        assert compare.combine_differences(native, flipped)
        assert integration.uninstall(layer)
    COUNTS["exact via install(layer) + apply, layer options"] += 1


def test_clamps_sglang_drops_or_the_runners_cannot_serve_are_refused() -> None:
    """0.5.13's Quark W4A4 apply passes AITER no clamp; 0.5.23's Quark W4A4 under situ needs
    AITER's Situv2, which only the a16w4 kernels (mxfp4) run."""
    if harness.RELEASE == "0.5.13":
        layer = _case("quark_w4a4_mxfp4", "none", "standard", options={"swiglu_limit": 7.0})
        match = "drops"
    else:
        layer = _case("quark_w4a4_mxfp4", "none", "standard", options={"activation": "situ"})
        match = "situ"
    with pytest.raises((integration.SGLangIntegrationError, ValueError), match=match):
        integration.install(layer.layers[0])
    assert integration.installed(layer.layers[0]) is None
    # The same layer without the option installs.
    integration.install(_case("quark_w4a4_mxfp4", "none", "standard").layers[0])


PAD = 64
PADDED_FORMATS = [
    (a2a, dispatch)
    for a2a, dispatch in FORMATS
    if (dispatch == "standard" or not _standard_only("mxfp4"))
    and not _sglang_wrong("mxfp4", a2a, dispatch, EP_SIZE)
]


@pytest.mark.parametrize(("a2a", "dispatch"), PADDED_FORMATS, ids=[d for _, d in PADDED_FORMATS])
def test_mxfp4_padded_hidden_is_served_as_sglang_pads_it(a2a: str, dispatch: str) -> None:
    """Mxfp4MoEMethod pads H to 256 at load; its apply pads the rows (unless they arrive padded,
    RMSNorm's x_pad_to_multiple) and passes `hidden_pad`; FusedMoE crops after combine. The
    installed runner makes the same call on the same padded rows and hands the same combine
    input; cropped, both are the dense MoE."""
    case = _case("mxfp4", a2a, dispatch, hidden_pad=PAD)
    installed = []
    for layer, output in zip(case.layers, case.outputs, strict=True):
        assert output.hidden_states.shape[-1] == HIDDEN
        prepadded = output._replace(
            hidden_states=torch.nn.functional.pad(output.hidden_states, (0, PAD))
        )
        natives = [_native(layer, output), _native(layer, prepadded)]
        integration.install(layer)
        for (native, native_call), given in zip(natives, (output, prepadded), strict=True):
            assert native_call is not None, native
            assert native_call["hidden_states"].shape[-1] == HIDDEN + PAD
            assert native_call["hidden_pad"] == PAD
            ours = layer.quant_method.apply(layer, given)
            ours_call = harness.last_call()
            compare.assert_exact(native, native_call, ours, ours_call)
            # Negative control: without the pad keyword it is another call.
            assert compare.call_differences(native_call, {**ours_call, "hidden_pad": 0})
        # FusedMoE.forward_impl crops after combine; combine works row by row, so crop first.
        installed.append(ours._replace(hidden_states=ours.hidden_states[..., :HIDDEN]))
        assert integration.uninstall(layer)
    out = harness.combined(case.dispatched, installed)
    assert dense_mismatch(out, case.expected, "mxfp4", dispatch) is None
    assert dense_mismatch(torch.zeros_like(out), case.expected, "mxfp4", dispatch)
    COUNTS["exact via install(layer) + apply, mxfp4 padded H"] += 1


def test_ct_strategies_sglang_does_not_prepare_for_aiter_are_refused() -> None:
    layer = _case("ct_w8a8_fp8", "none", "standard").layers[0]
    layer.scheme.weight_quant = QuantizationArgs(
        num_bits=8, type="float", strategy="tensor", dynamic=False
    )
    with pytest.raises(integration.SGLangIntegrationError, match="strategy 'tensor'"):
        integration.install(layer)
    assert integration.installed(layer) is None


@pytest.mark.parametrize("quant", ["ct_w8a8_fp8", "mxfp4"])
def test_methods_whose_apply_reads_topk_output_refuse_other_formats(quant: str) -> None:
    """Their apply unpacks `dispatch_output.topk_output` (0.5.13's Mxfp4MoEMethod, both
    releases' compressed-tensors scheme): SGLang's path raises there, so install refuses."""
    case = _case(quant, "deepep", "deepep_normal")
    layer, output = case.layers[0], case.outputs[0]
    if not _standard_only(quant):
        integration.install(layer)  # 0.5.23's Mxfp4MoEMethod serves DeepEP's formats
        assert integration.uninstall(layer)
        return
    with pytest.raises(integration.SGLangIntegrationError, match="topk_output"):
        integration.install(layer)
    with pytest.raises(AttributeError, match="topk_output"):
        layer.quant_method.apply(layer, output)
    assert integration.installed(layer) is None


def test_unread_quant_method_is_refused_with_the_served_list() -> None:
    layer = _case("quark_int4fp8", "none", "standard").layers[0]
    layer.quant_method = mxfp4.Mxfp4DynamicQuantMoEMethod.__new__(mxfp4.Mxfp4DynamicQuantMoEMethod)
    layer.quant_method.runner = harness.moe_runner(
        integration.layer_config(layer.moe_runner_config, ep_rank=0, ep_size=EP_SIZE)
    )
    with pytest.raises(
        integration.SGLangIntegrationError, match="DynamicQuantMoEMethod is not read"
    ):
        integration.install(layer)
    assert integration.installed(layer) is None


@pytest.mark.parametrize("quant", ["mxfp4", "quark_w4a4_mxfp4"])
def test_scales_as_sglangs_shuffle_leaves_them_are_served(quant: str) -> None:
    """On gfx95 SGLang's weight processing leaves each per_1x32 scale one 2-D matrix
    (`shuffle_scale(w13_weight_scale.view(-1, K/32), ...)`, 0.5.23 mxfp4.py:998-1041): install
    takes the layer as it is (its weights are in the kernel's layout) and hands the kernel those
    very matrices, as SGLang's own path does."""
    case = _case(quant, "none", "standard", 1)
    for layer, output in zip(case.layers, case.outputs, strict=True):
        for name in ("w13_weight_scale", "w2_weight_scale"):
            scale = getattr(layer, name)
            matrix = scale.reshape(-1, scale.shape[-1])
            setattr(layer, name, torch.nn.Parameter(matrix, requires_grad=False))
        native, native_call = _native(layer, output)
        assert native_call is not None, native
        assert native_call["w1_scale"].dim() == 2
        integration.install(layer)
        ours = layer.quant_method.apply(layer, output)
        compare.assert_exact(native, native_call, ours, harness.last_call())
        assert integration.uninstall(layer)
    COUNTS["exact via install(layer) + apply, shuffled 2-D scales"] += 1
