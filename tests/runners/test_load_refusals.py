"""What Runner.__init__ refuses (issue 8 item 3, issue 15 item 6), and the dispatch-output class
check of the plain hot path: weights whose shapes do not fit the config, tensors a method would
silently ignore, and a dispatch output of another format."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from typing import NamedTuple

import pytest
import torch

import generated
from moe_runtime import types as t
from moe_runtime.quant import dequantize_mxfp8
from moe_runtime.testing import emulate
from moe_runtime.testing.dense import layer_activation
from moe_runtime.testing.recording import RecordingKernel
from moe_runtime.testing.weights import QUANT_METHODS, make_expert_weights
from tests.runners.harness import INTERMEDIATE

E = 8
# Not 2 * INTERMEDIATE, so that a transposed w13 has another shape.
HIDDEN = 384


def config(**changes: object) -> t.MoeLayerConfig:
    base = t.MoeLayerConfig(E, E, 0, 1, 2, HIDDEN, INTERMEDIATE, "silu")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def weights(quant: str) -> t.ExpertWeights:
    return make_expert_weights(quant, E, HIDDEN, INTERMEDIATE, seed=0)


def build(key: tuple[str, str, str], layer_weights: t.ExpertWeights, **changes: object) -> object:
    layer = config(activation=layer_activation(key[1]), **changes)
    return generated.select(*key)(layer, layer_weights, kernel=RecordingKernel())


STANDARD = ("none", "unquant", "standard")


def test_well_formed_weights_of_every_method_load() -> None:
    """Negative control for every refusal below: the weights they start from are accepted."""
    for quant in QUANT_METHODS:
        build(("none", quant, "standard"), weights(quant))


def test_transposed_w13_is_refused_with_expected_and_actual_shape() -> None:
    good = weights("unquant")
    transposed = dataclasses.replace(good, w13_weight=good.w13_weight.transpose(1, 2))
    expected = f"[{E}, {2 * INTERMEDIATE}, {HIDDEN}]"
    actual = f"[{E}, {HIDDEN}, {2 * INTERMEDIATE}]"
    with pytest.raises(
        t.ConfigError, match=rf"w13_weight must be .*{re.escape(expected)}.*got {re.escape(actual)}"
    ):
        build(STANDARD, transposed)


def test_w13_without_up_rows_is_refused_for_a_gated_activation() -> None:
    good = weights("unquant")
    gate_only = dataclasses.replace(good, w13_weight=good.w13_weight[:, :INTERMEDIATE])
    with pytest.raises(
        t.ConfigError,
        match=rf"w13_weight must be \[L, 2I, H\] \(gate then up rows: the activation is gated\) "
        rf"= \[{E}, {2 * INTERMEDIATE}, {HIDDEN}\].*got \[{E}, {INTERMEDIATE}, {HIDDEN}\]",
    ):
        build(STANDARD, gate_only)


def test_transposed_w2_is_refused() -> None:
    good = weights("fp8_channel")
    transposed = dataclasses.replace(
        good, w2_weight=good.w2_weight.transpose(1, 2).contiguous(), w2_scale=good.w2_scale
    )
    with pytest.raises(t.ConfigError, match=rf"w2_weight must be \[L, H, I\] = \[{E}, {HIDDEN}, "):
        build(("none", "fp8_channel", "standard"), transposed)


@pytest.mark.parametrize(
    ("quant", "layout"),
    [
        ("fp8_block", r"\[L, 2I/128, H/128\]"),
        ("fp8_channel", r"\[L, 2I, 1\]"),
        ("quark_int4fp8", r"\[L, 2I, 1\]"),
        ("mxfp4", r"\[L, 2I, H/32\]"),
        ("quark_w4a4_mxfp4", r"\[L, 2I, H/32\]"),
    ],
)
def test_weight_scales_of_the_wrong_shape_are_refused(quant: str, layout: str) -> None:
    good = weights(quant)
    assert good.w13_scale is not None
    wrong = dataclasses.replace(good, w13_scale=good.w13_scale[:, :1])
    with pytest.raises(t.ConfigError, match=rf"w13_scale must be {layout}"):
        build(("none", quant, "standard"), wrong)


def test_biases_of_the_wrong_shape_are_refused() -> None:
    good = weights("mxfp4")
    assert good.b13 is not None and good.b2 is not None
    with pytest.raises(
        t.ConfigError, match=rf"b13 must be \[L, 2I\] = \[{E}, {2 * INTERMEDIATE}\]"
    ):
        build(("none", "mxfp4", "standard"), dataclasses.replace(good, b13=good.b13[:, :1]))
    with pytest.raises(t.ConfigError, match=rf"b2 must be \[L, H\] = \[{E}, {HIDDEN}\]"):
        build(("none", "mxfp4", "standard"), dataclasses.replace(good, b2=good.b2.T))


def test_biases_a_method_never_passes_are_refused() -> None:
    """unquant passes no biases: today they were dropped without a word."""
    biased = weights("mxfp4")
    unquant = dataclasses.replace(weights("unquant"), b13=biased.b13, b2=biased.b2)
    with pytest.raises(t.ConfigError, match="unquant passes no biases to the kernel, yet b13"):
        build(STANDARD, unquant)


def test_weight_scales_a_method_does_not_have_are_refused() -> None:
    scaled = weights("fp8_channel")
    unquant = dataclasses.replace(weights("unquant"), w13_scale=scaled.w13_scale)
    with pytest.raises(t.ConfigError, match="unquant has no weight scales, yet w13_scale"):
        build(STANDARD, unquant)


def test_static_input_scales_a_method_does_not_have_are_refused() -> None:
    static = weights("ct_w8a8_fp8")
    fp8 = dataclasses.replace(weights("fp8_channel"), a13_scale=static.a13_scale)
    with pytest.raises(t.ConfigError, match="fp8_channel has no static input scales, yet a13"):
        build(("none", "fp8_channel", "standard"), fp8)


def test_quark_w8a8_fp8_takes_static_or_dynamic_input_scales_and_passes_neither() -> None:
    """Quark's fp8 MoE checkpoints come with static or without (dynamic) input scales
    (quark_w8a8_fp8_moe.py:37-46, 134-151): both load, and the kernel call is the same, because
    AITER's per_Token quantizer refuses a static scale for bf16 input (docs/quant_methods.md)."""
    static = weights("quark_w8a8_fp8")
    assert static.a13_scale is not None and static.a2_scale is not None
    dynamic = dataclasses.replace(static, a13_scale=None, a2_scale=None)
    batch = emulate.make_batch(3, HIDDEN, E, 2, ep_size=1, seed=1)
    calls = []
    for layer_weights in (static, dynamic):
        kernel = RecordingKernel()
        runner = generated.select("none", "quark_w8a8_fp8", "standard")(
            config(), layer_weights, kernel=kernel
        )
        runner(emulate.dispatch(batch, "standard").outputs[0])
        calls.append(kernel.only_call())
    assert calls[0].get("a1_scale") is None and calls[0].get("a2_scale") is None
    assert calls[0].keys() == calls[1].keys()
    assert all(calls[0][name] is calls[1][name] for name in ("w1", "w2", "w1_scale", "w2_scale"))
    # Negative control: a method without static input scales refuses the same tensors.
    fp8 = dataclasses.replace(weights("fp8_channel"), a13_scale=static.a13_scale)
    with pytest.raises(t.ConfigError, match="no static input scales"):
        build(("none", "fp8_channel", "standard"), fp8)


def test_doweight_stage1_is_refused_where_no_kernel_call_applies_it() -> None:
    with pytest.raises(t.ConfigError, match="unquant never applies the router weight in stage 1"):
        build(STANDARD, dataclasses.replace(weights("unquant"), doweight_stage1=True))
    mxfp4 = dataclasses.replace(weights("mxfp4"), doweight_stage1=True)
    with pytest.raises(t.ConfigError, match=r"only with config\.apply_router_weight_on_input=True"):
        build(("none", "mxfp4", "standard"), mxfp4)
    # The one way it is honoured: mxfp4 with the layer flag passes doweight_stage1 to the kernel.
    kernel = RecordingKernel()
    layer = config(top_k=1, activation="swiglu", apply_router_weight_on_input=True)
    runner = generated.select("none", "mxfp4", "standard")(layer, mxfp4, kernel=kernel)
    batch = emulate.make_batch(3, HIDDEN, E, 1, ep_size=1, seed=1)
    runner(emulate.dispatch(batch, "standard").outputs[0])
    assert kernel.calls[0]["doweight_stage1"] is True


# -- the dispatch output's class -------------------------------------------------------------------


def dispatch_output(dispatch: str) -> t.DispatchOutput:
    batch = emulate.make_batch(6, HIDDEN, E, 2, ep_size=2, seed=3)
    return emulate.dispatch(batch, dispatch).outputs[0]


def ep_runner(key: tuple[str, str, str]) -> object:
    layer = config(num_local_experts=E // 2, ep_size=2)
    half = make_expert_weights(key[1], E // 2, HIDDEN, INTERMEDIATE, seed=0)
    return generated.select(*key)(layer, half, kernel=RecordingKernel())


@pytest.mark.parametrize(
    ("key", "wrong", "expected_class", "wrong_class"),
    [
        (STANDARD, "deepep_normal", "StandardDispatchOutput", "DeepEPNormalDispatchOutput"),
        (
            ("deepep", "unquant", "deepep_normal"),
            "deepep_ll",
            "DeepEPNormalDispatchOutput",
            "DeepEPLLDispatchOutput",
        ),
        (
            ("deepep", "unquant", "deepep_ll"),
            "standard",
            "DeepEPLLDispatchOutput",
            "StandardDispatchOutput",
        ),
        # Same fields, another format: MORI's low-latency output is not its normal one.
        (
            ("mori", "unquant", "mori_normal"),
            "mori_ll",
            "MoriEPNormalDispatchOutput",
            "MoriEPLLDispatchOutput",
        ),
    ],
    ids=lambda v: "/".join(v) if isinstance(v, tuple) else v,
)
def test_a_dispatch_output_of_another_format_is_a_type_error_naming_both(
    key: tuple[str, str, str], wrong: str, expected_class: str, wrong_class: str
) -> None:
    runner = ep_runner(key)
    with pytest.raises(TypeError, match=rf"'{key[2]}'.*{expected_class}; got .*{wrong_class}"):
        runner(dispatch_output(wrong))  # type: ignore[operator]
    for checked in (False, True):
        checked_runner = generated.select(*key, checked=checked)
        layer = config(num_local_experts=E // 2, ep_size=2)
        half = make_expert_weights(key[1], E // 2, HIDDEN, INTERMEDIATE, seed=0)
        with pytest.raises(TypeError, match=wrong_class):
            checked_runner(layer, half, kernel=RecordingKernel())(dispatch_output(wrong))


class DeepEPNormalDispatchOutput(NamedTuple):
    """SGLang's class, as its dispatcher builds it: same name and fields, another module."""

    hidden_states: torch.Tensor
    hidden_states_scale: torch.Tensor | None
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    num_recv_tokens_per_expert: list[int]


# A class of that name with one more field: the runner reads only its own.
Extended = NamedTuple(
    "DeepEPNormalDispatchOutput",
    [*DeepEPNormalDispatchOutput.__annotations__.items(), ("extra", int)],
)


def test_sglang_objects_of_the_same_name_and_fields_are_accepted() -> None:
    key = ("deepep", "unquant", "deepep_normal")
    ours = dispatch_output("deepep_normal")
    kernel = RecordingKernel()
    layer = config(num_local_experts=E // 2, ep_size=2)
    half = make_expert_weights("unquant", E // 2, HIDDEN, INTERMEDIATE, seed=0)
    for checked in (False, True):
        runner = generated.select(*key, checked=checked)(layer, half, kernel=kernel)
        theirs = DeepEPNormalDispatchOutput(*ours)
        assert type(theirs) is not type(ours)
        assert torch.equal(runner(theirs).hidden_states, runner(ours).hidden_states)
    assert torch.equal(runner(Extended(*ours, 1)).hidden_states, runner(ours).hidden_states)


def test_a_class_of_the_right_name_without_the_fields_is_refused() -> None:
    Partial = NamedTuple(  # noqa: UP014 - the class name is the point of the test
        "DeepEPNormalDispatchOutput", [("hidden_states", torch.Tensor)]
    )
    runner = ep_runner(("deepep", "unquant", "deepep_normal"))
    with pytest.raises(TypeError, match=r"lacks the fields .*topk_ids"):
        runner(Partial(torch.zeros(1, HIDDEN)))  # type: ignore[operator]


@pytest.mark.parametrize("dispatch", ["mori_normal_mxfp8", "mori_ll_mxfp8", "mori_v2_mxfp8"])
def test_mxfp8_wire_reaches_aiters_mxfp8_kernel_upscaled(
    monkeypatch: pytest.MonkeyPatch, dispatch: str
) -> None:
    """AITER's fused_moe quantizes per_1x32 input itself and ignores a1_scale, so mxfp8 weights
    get the mxfp8 wire upscaled, as every other method does: AITER's own function (here a
    recording kernel standing as `aiter.fused_moe`'s, as the SGLang integration injects it) is
    taken at load and called with the exact bf16 rows and no a1_scale."""
    aiters = RecordingKernel()
    monkeypatch.setitem(sys.modules, "aiter.fused_moe", types.SimpleNamespace(fused_moe=aiters))
    batch = emulate.make_batch(5, HIDDEN, E, 2, ep_size=1, seed=1)
    dispatch_output = emulate.dispatch(batch, dispatch).outputs[0]
    runner = generated.select("mori", "mxfp8", dispatch)(
        config(activation="swiglu"), weights("mxfp8"), kernel=aiters
    )
    runner(dispatch_output)
    call = aiters.only_call()
    wire, scales = dispatch_output.hidden_states, dispatch_output.hidden_states_scale
    assert wire.dtype == torch.float8_e4m3fn
    assert call.tensor("hidden_states").dtype == torch.bfloat16
    assert call.get("a1_scale") is None
    upscaled = dequantize_mxfp8(wire, scales, torch.float32)
    assert torch.equal(call.tensor("hidden_states").float(), upscaled)
    # Negative control: the rows of another scale are not these.
    doubled = (scales.view(torch.uint8) + 1).view(torch.float8_e8m0fnu)
    assert not torch.equal(call.tensor("hidden_states").float(), dequantize_mxfp8(wire, doubled))


def _shuffled_scales(w: t.ExpertWeights, rows_pad: int = 0, cols_pad: int = 0) -> t.ExpertWeights:
    """The per_1x32 scales as AITER's shuffles leave them: one [L * rows (+pad), K/32 (+pad)]
    matrix each (SGLang 0.5.23 mxfp4.py:998-1041)."""

    def matrix(scale: torch.Tensor | None) -> torch.Tensor:
        assert scale is not None
        flat = scale.reshape(-1, scale.shape[-1])
        padded = flat.new_zeros(flat.shape[0] + rows_pad, flat.shape[1] + cols_pad)
        padded[: flat.shape[0], : flat.shape[1]] = flat
        return padded

    return dataclasses.replace(w, w13_scale=matrix(w.w13_scale), w2_scale=matrix(w.w2_scale))


@pytest.mark.parametrize("pad", [(0, 0), (256, 8)])
def test_weights_in_the_kernels_layout_may_hold_shuffled_2d_scales(pad: tuple[int, int]) -> None:
    shuffled = dataclasses.replace(_shuffled_scales(weights("mxfp4"), *pad), kernel_layout=True)
    kernel = RecordingKernel()
    runner = generated.select("none", "mxfp4", "standard")(
        config(activation="swiglu"), shuffled, kernel=kernel
    )
    batch = emulate.make_batch(4, HIDDEN, E, 2, ep_size=1, seed=0)
    runner(emulate.dispatch(batch, "standard").outputs[0])
    assert kernel.only_call().kwargs["w1_scale"] is shuffled.w13_scale
    assert kernel.only_call().kwargs["w2_scale"] is shuffled.w2_scale


def test_shuffled_scales_are_refused_unless_the_weights_say_kernel_layout() -> None:
    shuffled = _shuffled_scales(weights("mxfp4"))
    with pytest.raises(t.ConfigError, match=r"w13_scale must be \[L, 2I, H/32\]"):
        build(("none", "mxfp4", "standard"), shuffled)
    # Kernel layout with too few rows is refused too, naming the shuffled form.
    short = dataclasses.replace(shuffled, w13_scale=shuffled.w13_scale[:-1], kernel_layout=True)  # type: ignore[index]
    with pytest.raises(t.ConfigError, match=r"w13_scale .* \(or, shuffled, \[>= L\*rows"):
        build(("none", "mxfp4", "standard"), short)


def test_weights_in_a_kernels_layout_need_that_kernel_injected() -> None:
    prepared = dataclasses.replace(weights("unquant"), kernel_layout=True)
    layer = config()
    with pytest.raises(t.ConfigError, match=r"kernel_layout=True.* need that kernel passed"):
        generated.select(*STANDARD)(layer, prepared)
    generated.select(*STANDARD)(layer, prepared, kernel=RecordingKernel())
