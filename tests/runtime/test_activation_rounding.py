"""The M-dependent per_1x32 activation rounding (moe_runtime.kernels.rounding): the rule of each
AITER release, and the reference kernel following it on both sides of M = 256 rows against the
float64 pair oracle, each comparison with a negative control (the other side's rounding)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from moe_runtime.enums import ActivationType, GateMode, QuantType
from moe_runtime.kernels import rounding
from moe_runtime.kernels.reference import ReferenceFusedMoe
from moe_runtime.kernels.rounding import Rounding
from moe_runtime.quant import MxScale
from moe_runtime.testing.dense import moe_close
from tests.runtime.test_reference import (
    DEVICES,
    Case,
    _call,
    _interleaved_rows,
    _on,
    _pair_oracle,
    _quantized_weights,
)

B, F4, F8 = Rounding.BF16, Rounding.MXFP4, Rounding.MXFP8
SWIGLU, SILU = ActivationType.Swiglu, ActivationType.Silu
SEP, INTER = GateMode.SEPARATED, GateMode.INTERLEAVE


@pytest.mark.parametrize(
    ("version", "release"),
    [("0.1.7.post2+fake", "v0.1.7.post2"), ("0.1.8", "v0.1.7.post2"), ("0.1.9", "v0.1.9"),
     ("0.1.12.post1", "v0.1.9"), ("0.1.13", "v0.1.13"), ("v0.1.14", "v0.1.14"),
     ("0.1.14.post1", "v0.1.14"), ("0.1.15.post3", "v0.1.15"), ("0.1.16", "v0.1.16"),
     ("0.1.20.post1+rocm7.0", "v0.1.16"), ("(unknown version)", "v0.1.16")],
)  # fmt: skip
def test_the_rule_follows_the_aiter_release(version: str, release: str) -> None:
    rule = rounding.for_version(version, "gfx942")
    assert (rule.release, rule.arch) == (release, "gfx942")


NEAREST, ROUND_UP, UNIT = MxScale.NEAREST, MxScale.ROUND_UP, MxScale.UNIT


# release -> (mxfp4 scale, mxfp8 scale), read from AITER's quantizers at each tag (see
# moe_runtime/kernels/rounding.py for the lines).
SCALES = {
    "v0.1.7.post2": (NEAREST, None),
    "v0.1.9": (NEAREST, UNIT),
    "v0.1.13": (NEAREST, UNIT),
    "v0.1.14": (NEAREST, UNIT),
    "v0.1.15": (NEAREST, NEAREST),
    "v0.1.16": (ROUND_UP, ROUND_UP),
}


@pytest.mark.parametrize("release", list(SCALES))
def test_the_scales_follow_the_aiter_release(release: str) -> None:
    rule = rounding.for_version(release)
    assert (rule.mxfp4_scale, rule.mxfp8_scale) == SCALES[release]
    assert rule.scale(F4) is SCALES[release][0]
    if SCALES[release][1] is None:
        with pytest.raises(ValueError, match="rounds no stage to mxfp8"):
            rule.scale(F8)
    else:
        assert rule.scale(F8) is SCALES[release][1]
    with pytest.raises(ValueError, match="not scaled"):
        rule.scale(B)


def test_a_rule_states_an_mxfp8_scale_exactly_when_it_can_choose_mxfp8() -> None:
    with pytest.raises(ValueError, match="mxfp8_scale is set exactly when swiglu_bound > 0"):
        rounding.Mxfp4ActivationRule("v0.1.9", 512, False, NEAREST, None)
    with pytest.raises(ValueError, match="mxfp8_scale is set exactly when swiglu_bound > 0"):
        rounding.Mxfp4ActivationRule("v0.1.7.post2", 0, False, NEAREST, UNIT)
    with pytest.raises(ValueError, match="mxfp4 has no unit-scale rule"):
        rounding.Mxfp4ActivationRule("v0.1.14", 256, True, UNIT, UNIT)


# (release, activation, gate mode, rows, arch) -> the stage roundings, read from
# aiter/fused_moe.py at each tag (see moe_runtime/kernels/rounding.py for the lines).
STAGES = [
    ("v0.1.7.post2", SWIGLU, SEP, 4096, "gfx950", (B, B)),
    ("v0.1.7.post2", SILU, SEP, 1, "gfx950", (F4, F4)),
    ("v0.1.9", SWIGLU, SEP, 511, "gfx950", (B, B)),
    ("v0.1.9", SWIGLU, SEP, 512, "gfx950", (F8, F8)),
    ("v0.1.9", SWIGLU, SEP, 512, "gfx942", (B, B)),
    ("v0.1.13", SWIGLU, SEP, 256, "gfx950", (F8, F8)),
    ("v0.1.13", SILU, SEP, 256, "gfx950", (F4, F4)),
    ("v0.1.14", SWIGLU, SEP, 255, "gfx950", (B, B)),
    ("v0.1.14", SWIGLU, SEP, 256, "gfx950", (F4, F4)),
    ("v0.1.14", SWIGLU, SEP, 256, "gfx942", (F4, F4)),
    ("v0.1.14", SWIGLU, INTER, 255, "gfx950", (B, B)),
    ("v0.1.14", SWIGLU, INTER, 256, "gfx950", (F8, F8)),
    ("v0.1.14", SWIGLU, INTER, 256, "gfx942", (B, B)),
    ("v0.1.14", SILU, INTER, 255, "gfx950", (B, F4)),
    ("v0.1.14", SILU, INTER, 256, "gfx950", (F8, F8)),
    ("v0.1.14", SILU, SEP, 256, "gfx950", (F4, F4)),
]


@pytest.mark.parametrize(("release", "act", "mode", "rows", "arch", "want"), STAGES)
def test_stage_roundings(
    release: str, act: ActivationType, mode: GateMode, rows: int, arch: str,
    want: tuple[Rounding, Rounding],
) -> None:  # fmt: skip
    rule = rounding.for_version(release, arch)
    assert rule.release == release
    assert rule.stages(act, mode, rows) == want


def _boundary_case(
    activation: str, interleaved: bool, rows: int, rule: str, *, spread: float = 2.0,
    top: float | None = None,
) -> Case:  # fmt: skip
    """M = `rows` tokens, every one routed (top-1 over 2 experts), H = I = 32, mxfp4 weights;
    activations of standard deviation `spread`, the first of each row `top` if given."""
    g = torch.Generator().manual_seed(rows)
    size = 32
    w13 = torch.randn(2, 2 * size, size, generator=g) / size**0.5
    if interleaved:
        w13 = w13[:, _interleaved_rows(size)]
    w2 = torch.randn(2, size, size, generator=g) / size**0.5
    kind = "a16w4" if activation == "swiglu" else "a4w4"
    wkw, d13, d2 = _quantized_weights(kind, w13, w2, fnuz=False)
    x = torch.randn(rows, size, generator=g) * spread
    if top is not None:
        x[:, 0] = top
    x = x.bfloat16()
    kwargs: dict[str, Any] = {
        "hidden_states": x,
        **wkw,
        "topk_weight": torch.rand(rows, 1, generator=g) + 0.5,
        "topk_ids": torch.randint(0, 2, (rows, 1), generator=g, dtype=torch.int32),
        "activation": SWIGLU if activation == "swiglu" else SILU,
        "quant_type": QuantType.per_1x32,
    }
    if interleaved:
        kwargs["gate_mode"] = "interleave"
    return Case(kind, kwargs, d13, d2, x.double(), None, rows, activation, 7.0, False,
                interleaved, rule)  # fmt: skip


# (activation, interleaved) -> the oracle's stage roundings below / from 256 rows (newest rule).
SIDES = {
    ("swiglu", False): (("a16w4", "a16w4"), ("a4w4", "a4w4")),
    ("swiglu", True): (("a16w4", "a16w4"), ("a8w4", "a8w4")),
    ("silu", True): (("a16w4", "a4w4"), ("a8w4", "a8w4")),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows", [255, 256])
@pytest.mark.parametrize(("activation", "interleaved"), list(SIDES))
def test_reference_rounds_by_rows_like_the_newest_aiter(
    activation: str, interleaved: bool, rows: int, device: str
) -> None:
    case = _on(_boundary_case(activation, interleaved, rows, "v0.1.16"), device)
    actual = _call(ReferenceFusedMoe(), case).cpu()
    below, above = SIDES[(activation, interleaved)]
    right, wrong = (below, above) if rows < 256 else (above, below)
    assert moe_close(actual, _pair_oracle(case), "unquant")
    assert moe_close(actual, _pair_oracle(case, right), "unquant")
    # Negative control: the rounding of the other side of the bound.
    assert not moe_close(actual, _pair_oracle(case, wrong), "unquant")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("activation", "interleaved"), list(SIDES))
def test_reference_with_the_v0_1_7_rule_ignores_the_rows(
    activation: str, interleaved: bool, device: str
) -> None:
    """The constructor option: AITER v0.1.7.post2's rule at 256 rows (Swiglu bf16, Silu mxfp4)
    against the oracle of that rule; the newest rule's oracle is the negative control."""
    case = _on(_boundary_case(activation, interleaved, 256, "v0.1.7.post2"), device)
    kernel = ReferenceFusedMoe(rounding=rounding.RULES[0])
    actual = _call(kernel, case).cpu()
    assert moe_close(actual, _pair_oracle(case), "unquant")
    assert not moe_close(actual, _pair_oracle(case, SIDES[(activation, interleaved)][1]), "unquant")
    assert "v0.1.7.post2" in repr(kernel)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("release", "wrong"), [("0.1.15", "v0.1.16"), ("0.1.16", "v0.1.15")])
def test_reference_scales_mxfp4_as_the_release(release: str, wrong: str, device: str) -> None:
    """Silu rounds both stages to mxfp4. Every row's amax is 3 (1.5 * 2): AITER up to v0.1.15
    scales it by 2**0 (3 on the grid), v0.1.16 by 2**-1 (6). The other release's oracle is the
    negative control."""
    rule = rounding.for_version(release)
    case = _on(_boundary_case("silu", False, 8, rule.release, spread=0.5, top=3.0), device)
    actual = _call(ReferenceFusedMoe(rounding=rule), case).cpu()
    assert moe_close(actual, _pair_oracle(case), "unquant")
    assert not moe_close(actual, _pair_oracle(replace(case, rule=wrong)), "unquant")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("release", "wrong"), [("0.1.14", "v0.1.16"), ("0.1.15", "v0.1.14"), ("0.1.16", "v0.1.14")]
)
def test_reference_scales_mxfp8_as_the_release(release: str, wrong: str, device: str) -> None:
    """Swiglu on INTERLEAVE rows from 256 rows on gfx950 rounds both stages to mxfp8. Small
    activations (spread 2**-8) make the scale matter: AITER up to v0.1.14 casts with unit scales
    (subnormal e4m3, a step of 2**-9), later releases scale each group first. The negative
    control is a release of the other kind."""
    rule = rounding.for_version(release, "gfx950")
    case = _on(_boundary_case("swiglu", True, 256, rule.release, spread=2.0**-8), device)
    assert rule.stages(SWIGLU, INTER, 256) == (F8, F8)
    actual = _call(ReferenceFusedMoe(rounding=rule), case).cpu()
    assert moe_close(actual, _pair_oracle(case), "unquant")
    assert not moe_close(actual, _pair_oracle(replace(case, rule=wrong)), "unquant")
