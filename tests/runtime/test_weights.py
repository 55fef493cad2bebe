"""moe_runtime.testing.weights: every quant method's layouts, padding, seeding, slicing,
dequantization."""

from __future__ import annotations

import pytest
import torch

from moe_runtime import gate_up
from moe_runtime.enums import GateMode
from moe_runtime.testing.dense import dense_moe_float64
from moe_runtime.testing.weights import (
    QUANT_METHODS,
    concat_experts,
    dequantized_weights,
    make_expert_weights,
    slice_experts,
)
from moe_runtime.types import ConfigError, ExpertWeights

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
FP8, FP4X2, E8M0 = torch.float8_e4m3fn, torch.float4_e2m1fn_x2, torch.float8_e8m0fnu
EXPERTS, HIDDEN, INTER = 3, 256, 128

# The layouts of issue 3, item 5, written out by hand for L = 3, H = 256, I = 128:
# field -> (dtype, shape); None = absent.
LAYOUTS: dict[str, dict[str, tuple[torch.dtype, tuple[int, ...]] | None]] = {
    "unquant": {"w13_weight": (torch.bfloat16, (3, 256, 256)),
                "w2_weight": (torch.bfloat16, (3, 256, 128)), "w13_scale": None},
    "fp8_block": {"w13_weight": (FP8, (3, 256, 256)), "w2_weight": (FP8, (3, 256, 128)),
                  "w13_scale": (torch.float32, (3, 2, 2)), "w2_scale": (torch.float32, (3, 2, 1))},
    "fp8_channel": {"w13_weight": (FP8, (3, 256, 256)), "w2_weight": (FP8, (3, 256, 128)),
                    "w13_scale": (torch.float32, (3, 256, 1)),
                    "w2_scale": (torch.float32, (3, 256, 1)), "a13_scale": None},
    "fp8_tensor": {"w13_weight": (FP8, (3, 256, 256)), "w2_weight": (FP8, (3, 256, 128)),
                   "w13_scale": (torch.float32, (3, 1)), "w2_scale": (torch.float32, (3, 1)),
                   "a13_scale": None},
    "ct_w8a8_fp8": {"w13_weight": (FP8, (3, 256, 256)), "w2_weight": (FP8, (3, 256, 128)),
                    "w13_scale": (torch.float32, (3, 256, 1)),
                    "w2_scale": (torch.float32, (3, 256, 1)),
                    "a13_scale": (torch.float32, (1,)), "a2_scale": (torch.float32, (1,))},
    "quark_w8a8_fp8": {"w13_weight": (FP8, (3, 256, 256)), "w2_weight": (FP8, (3, 256, 128)),
                       "w13_scale": (torch.float32, (3, 256, 1)),
                       "w2_scale": (torch.float32, (3, 256, 1)),
                       "a13_scale": (torch.float32, (1,)), "a2_scale": (torch.float32, (1,))},
    "quark_w4a8_mxfp4": {"w13_weight": (FP4X2, (3, 256, 128)), "w2_weight": (FP4X2, (3, 256, 64)),
                         "w13_scale": (E8M0, (3, 256, 8)), "w2_scale": (E8M0, (3, 256, 4)),
                         "b13": (torch.float32, (3, 256)), "b2": (torch.float32, (3, 256)),
                         "a13_scale": (torch.float32, (1,)), "a2_scale": (torch.float32, (1,))},
    "mxfp8": {"w13_weight": (FP8, (3, 256, 256)), "w2_weight": (FP8, (3, 256, 128)),
              "w13_scale": (E8M0, (3, 256, 8)), "w2_scale": (E8M0, (3, 256, 4)), "b13": None},
    "mxfp4": {"w13_weight": (FP4X2, (3, 256, 128)), "w2_weight": (FP4X2, (3, 256, 64)),
              "w13_scale": (E8M0, (3, 256, 8)), "w2_scale": (E8M0, (3, 256, 4)),
              "b13": (torch.float32, (3, 256)), "b2": (torch.float32, (3, 256))},
    "quark_w4a4_mxfp4": {"w13_weight": (FP4X2, (3, 256, 128)), "w2_weight": (FP4X2, (3, 256, 64)),
                         "w13_scale": (E8M0, (3, 256, 8)), "w2_scale": (E8M0, (3, 256, 4)),
                         "b13": None},
    "quark_int4fp8": {"w13_weight": (torch.int8, (3, 256, 256)),
                      "w2_weight": (torch.int8, (3, 256, 128)),
                      "w13_scale": (torch.float32, (3, 256, 1)),
                      "w2_scale": (torch.float32, (3, 256, 1))},
}
# Largest rounding error of one stored weight, relative to its row's amax: e4m3 half an ulp
# (2**-4 of the value); E2M1 with amax/scale in (3, 6] is off by at most one scale (< amax/3);
# int4 by half a step (amax/14). On top, the bf16 draws the comparison starts from are within
# 2**-8 of the fp32 draws that were quantized.
STEP = {"unquant": 0.0, "fp8_block": 2**-4, "fp8_channel": 2**-4, "ct_w8a8_fp8": 2**-4,
        "fp8_tensor": 2**-4, "quark_w8a8_fp8": 2**-4, "mxfp8": 2**-4,
        "mxfp4": 1 / 3, "quark_w4a4_mxfp4": 1 / 3, "quark_w4a8_mxfp4": 1 / 3,
        "quark_int4fp8": 1 / 14}


def test_every_method_has_a_layout() -> None:
    assert sorted(LAYOUTS) == sorted(QUANT_METHODS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", QUANT_METHODS)
def test_layout(method: str, device: str) -> None:
    w = make_expert_weights(method, EXPERTS, HIDDEN, INTER, seed=0, device=device)
    for field, want in LAYOUTS[method].items():
        value = getattr(w, field)
        if want is None:
            assert value is None, field
        else:
            assert value is not None, field
            assert (value.dtype, tuple(value.shape)) == want, field
            assert value.device.type == torch.device(device).type
    assert w.hidden_pad == 0 and w.intermediate_pad == 0 and not w.doweight_stage1


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_seeded_and_close_to_the_same_draws(method: str) -> None:
    """Same seed -> same weights; every method stores the same random draws (unquant's bf16 ones)
    to within its quantization step, with std ~ 1/sqrt(fan_in)."""
    def draw(name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        weights = make_expert_weights(name, EXPERTS, HIDDEN, INTER, seed=seed)
        return dequantized_weights(weights, name)

    (w13, w2), (again13, _), (other13, _) = draw(method, 4), draw(method, 4), draw(method, 5)
    assert torch.equal(w13, again13) and not torch.equal(w13, other13)
    assert w13.dtype == torch.float64 and w13.shape == (EXPERTS, 2 * INTER, HIDDEN)
    assert w2.shape == (EXPERTS, HIDDEN, INTER)
    base13, base2 = draw("unquant", 4)
    for got, base in ((w13, base13), (w2, base2)):
        amax = base.abs().amax(dim=-1, keepdim=True)
        bound = STEP[method] * amax + 2**-7 * base.abs()
        assert bool(((got - base).abs() <= bound).all())
    assert 0.8 < float(w13.std() * HIDDEN**0.5) < 1.2
    assert 0.8 < float(w2.std() * INTER**0.5) < 1.2


@pytest.mark.parametrize("method", ["unquant", "mxfp4", "fp8_channel"])
def test_pads_are_zero(method: str) -> None:
    # mxfp4's gpt-oss case: hidden 96 padded by 32 to 128, intermediate 48 padded by 16 to 64.
    w = make_expert_weights(method, 2, 96, 48, seed=1, hidden_pad=32, intermediate_pad=16)
    assert w.hidden_pad == 32 and w.intermediate_pad == 16
    w13, w2 = dequantized_weights(w, method)
    assert w13.shape == (2, 128, 128) and w2.shape == (2, 128, 64)
    # gate rows [0, 64), up rows [64, 128); each half has 48 real rows then 16 zero rows.
    for half in (0, 64):
        assert bool((w13[:, half + 48 : half + 64] == 0).all())
        assert bool((w13[:, half : half + 48, :96] != 0).any())
    assert bool((w13[:, :, 96:] == 0).all())
    assert bool((w2[:, 96:] == 0).all()) and bool((w2[:, :, 48:] == 0).all())
    if method == "mxfp4":
        assert w.b13 is not None and w.b2 is not None
        assert bool((w.b13[:, 48:64] == 0).all()) and bool((w.b13[:, 112:] == 0).all())
        assert bool((w.b2[:, 96:] == 0).all()) and bool((w.b2[:, :96] != 0).any())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["fp8_block", "ct_w8a8_fp8", "mxfp4"])
def test_slice_experts(method: str, device: str) -> None:
    w = make_expert_weights(method, 4, HIDDEN, INTER, seed=2, device=device)
    part = slice_experts(w, 1, 3)
    assert part.num_local_experts == 2
    for field in ("w13_weight", "w2_weight", "w13_scale", "w2_scale", "b13", "b2"):
        full, sliced = getattr(w, field), getattr(part, field)
        if full is None:
            assert sliced is None
        else:
            assert sliced is not None
            assert torch.equal(sliced.view(torch.uint8), full[1:3].view(torch.uint8))
    assert part.a13_scale is w.a13_scale and part.a2_scale is w.a2_scale
    with pytest.raises(ValueError, match=r"expert slice \[3, 5\) must be non-empty and lie within"):
        slice_experts(w, 3, 5)


@pytest.mark.parametrize("method", ["fp8_block", "ct_w8a8_fp8", "mxfp4"])
def test_concat_experts_undoes_slice_experts(method: str) -> None:
    w = make_expert_weights(method, 4, HIDDEN, INTER, seed=3)
    parts = [slice_experts(w, 0, 1), slice_experts(w, 1, 3), slice_experts(w, 3, 4)]
    swapped = concat_experts([parts[1], parts[0], parts[2]])
    whole = concat_experts(parts)
    assert whole.num_local_experts == 4
    for field in ("w13_weight", "w2_weight", "w13_scale", "w2_scale", "b13", "b2"):
        full, joined, control = getattr(w, field), getattr(whole, field), getattr(swapped, field)
        if full is None:
            assert joined is None
            continue
        assert torch.equal(joined.view(torch.uint8), full.view(torch.uint8))
        # Negative control: the same experts in another order are not the same weights.
        assert not torch.equal(control.view(torch.uint8), full.view(torch.uint8))
    assert whole.a13_scale is w.a13_scale and whole.a2_scale is w.a2_scale


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown quant method 'fp4'; valid: unquant, fp8_block"):
        make_expert_weights("fp4", 2, 128, 128, seed=0)
    with pytest.raises(ValueError, match="unknown quant method 'int8'; valid:"):
        dequantized_weights(make_expert_weights("unquant", 1, 8, 8, seed=0), "int8")
    with pytest.raises(ValueError, match="fp8_block needs padded sizes that are multiples of 128: "
                                         "I = 96"):
        make_expert_weights("fp8_block", 2, 128, 96, seed=0)
    with pytest.raises(ValueError, match="mxfp4 needs padded sizes that are multiples of 32: H = 40"
                       ):
        make_expert_weights("mxfp4", 2, 40, 32, seed=0)
    with pytest.raises(ValueError, match="must be >= 1 and pads >= 0"):
        make_expert_weights("unquant", 0, 8, 8, seed=0)


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_unit_activations_give_order_one_outputs(method: str) -> None:
    weights = make_expert_weights(method, 4, 128, 128, seed=3)
    w13, w2 = dequantized_weights(weights, method)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 128, generator=g)
    ids = torch.randint(0, 4, (16, 2), generator=g)
    activation = "swiglu" if method == "mxfp4" else "silu"
    out = dense_moe_float64(x, ids, torch.full((16, 2), 0.5), w13, w2, activation=activation,
                            b13=weights.b13, b2=weights.b2)
    assert 0.1 < float(out.pow(2).mean().sqrt()) < 3.0


# --- interleaved gate/up rows (moe_runtime.gate_up) -------------------------------------------

INTERLEAVABLE = [m for m in QUANT_METHODS if m != "fp8_block"]


@pytest.mark.parametrize("method", INTERLEAVABLE)
def test_interleaved_weights_hold_the_same_experts_row_by_row(method: str) -> None:
    separated = make_expert_weights(method, EXPERTS, HIDDEN, INTER, seed=4, hidden_pad=32)
    interleaved = make_expert_weights(
        method, EXPERTS, HIDDEN, INTER, seed=4, hidden_pad=32, gate_mode=GateMode.INTERLEAVE
    )
    assert separated.gate_mode == GateMode.SEPARATED
    assert interleaved.gate_mode == GateMode.INTERLEAVE
    rows = 2 * INTER
    order = torch.stack([torch.arange(INTER), torch.arange(INTER) + INTER], dim=1).reshape(-1)
    d13, d2 = dequantized_weights(separated, method)
    i13, i2 = dequantized_weights(interleaved, method)
    assert i13.shape == (EXPERTS, rows, HIDDEN + 32)
    assert torch.equal(i13, d13[:, order]) and torch.equal(i2, d2)
    assert not torch.equal(i13, d13)
    if separated.b13 is not None:
        assert torch.equal(interleaved.b13, separated.b13[:, order])  # type: ignore[index]
    # Back to separated rows: the same bytes as built.
    back = gate_up.separated(interleaved)
    assert back.gate_mode == GateMode.SEPARATED
    for name in ("w13_weight", "w13_scale", "b13", "w2_weight", "w2_scale"):
        a, b = getattr(back, name), getattr(separated, name)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def test_the_dense_oracle_reads_interleaved_rows() -> None:
    separated = make_expert_weights("mxfp4", EXPERTS, HIDDEN, INTER, seed=2)
    interleaved = gate_up.interleaved(separated)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, HIDDEN, generator=g)
    ids = torch.randint(0, EXPERTS, (5, 2), generator=g)
    weights = torch.rand(5, 2, generator=g)

    def dense(w: ExpertWeights, gate_mode: str) -> torch.Tensor:
        w13, w2 = dequantized_weights(w, "mxfp4")
        return dense_moe_float64(
            x, ids, weights, w13, w2, activation="swiglu", b13=w.b13, b2=w.b2, gate_mode=gate_mode
        )

    truth = dense(separated, "separated")
    assert torch.allclose(dense(interleaved, "interleave"), truth, rtol=1e-12, atol=1e-12)
    # Negative control: interleaved rows read as separated ones.
    assert not torch.allclose(dense(interleaved, "separated"), truth, rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="gate_mode must be 'separated' or 'interleave'"):
        dense(separated, "gate_up")


def test_gate_up_relayouts_refuse_what_they_cannot_follow() -> None:
    block = make_expert_weights("fp8_block", EXPERTS, HIDDEN, INTER, seed=0)
    with pytest.raises(ConfigError, match="block scales span gate and up rows together"):
        gate_up.interleaved(block)
    ungated = ExpertWeights(torch.zeros(1, 3, 8), torch.zeros(1, 8, 3))
    with pytest.raises(ConfigError, match="needs gated w13 weights"):
        gate_up.interleaved(ungated)
    with pytest.raises(ConfigError, match=r"gate_mode must be a moe_runtime\.enums\.GateMode"):
        ExpertWeights(torch.zeros(1, 4, 8), torch.zeros(1, 8, 2), gate_mode="interleave")  # type: ignore[arg-type]
