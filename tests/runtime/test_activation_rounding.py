"""The M-dependent per_1x32 activation rounding (moe_runtime.kernels.rounding): the rule of each
AITER release, and the reference kernel following it on both sides of M = 256 rows against the
float64 pair oracle, each comparison with a negative control (the other side's rounding)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from moe_runtime.enums import ActivationType, GateMode, QuantType
from moe_runtime.kernels import rounding
from moe_runtime.kernels.reference import ReferenceFusedMoe
from moe_runtime.kernels.rounding import Rounding
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
     ("0.1.20.post1+rocm7.0", "v0.1.14"), ("(unknown version)", "v0.1.14")],
)  # fmt: skip
def test_the_rule_follows_the_aiter_release(version: str, release: str) -> None:
    rule = rounding.for_version(version, "gfx942")
    assert (rule.release, rule.arch) == (release, "gfx942")


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


def _boundary_case(activation: str, interleaved: bool, rows: int, rule: str) -> Case:
    """M = `rows` tokens, every one routed (top-1 over 2 experts), H = I = 32, mxfp4 weights."""
    g = torch.Generator().manual_seed(rows)
    size = 32
    w13 = torch.randn(2, 2 * size, size, generator=g) / size**0.5
    if interleaved:
        w13 = w13[:, _interleaved_rows(size)]
    w2 = torch.randn(2, size, size, generator=g) / size**0.5
    kind = "a16w4" if activation == "swiglu" else "a4w4"
    wkw, d13, d2 = _quantized_weights(kind, w13, w2, fnuz=False)
    x = (torch.randn(rows, size, generator=g) * 2).bfloat16()
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
    case = _on(_boundary_case(activation, interleaved, rows, "v0.1.14"), device)
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
