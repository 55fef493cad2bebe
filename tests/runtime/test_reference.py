"""The reference `fused_moe` against independent float64 computations, its errors, and its modes.

Two oracles:
- `_pair_oracle` (here): the kernel's math per (token, slot) pair in float64 with Python loops,
  replicating the rounding points with moe_runtime.quant; compared with the spec's tolerances;
- `moe_runtime.testing.dense.dense_moe_float64`: pure math (no activation quantization) on the
  same dequantized weights; compared with the per-method bounds of its `TOLERANCES`.
Every comparison is paired with a negative control that must fail it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_runtime import quant
from moe_runtime.enums import ActivationType, GateMode, QuantType
from moe_runtime.kernels.reference import ReferenceFusedMoe, fused_moe, fused_moe_graph_safe
from moe_runtime.testing.dense import (
    assert_moe_close,
    dense_moe_float64,
    dissimilarity,
    moe_close,
)
from moe_runtime.testing.weights import dequantized_weights, make_expert_weights
from tests.runtime.sync_guard import HostSyncError, no_host_sync

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
ACTIVATIONS = {"silu": ActivationType.Silu, "gelu": ActivationType.Gelu,
               "swiglu": ActivationType.Swiglu}

# Weight/activation schemes of the kernel, each with the quant type it calls and the hidden/inter
# granularity its activation quantization needs.
KINDS = {
    "no": (QuantType.No, 1),
    "per_tensor": (QuantType.per_Tensor, 1),
    "per_token_fp8": (QuantType.per_Token, 1),
    "per_token_int4": (QuantType.per_Token, 1),
    "per_1x128": (QuantType.per_1x128, 128),
    "per_128x128": (QuantType.per_128x128, 128),
    "a4w4": (QuantType.per_1x32, 32),
    "a16w4": (QuantType.per_1x32, 32),
    "mxfp8": (QuantType.per_1x32, 32),  # fp8 weights: mxfp8 activations with every activation
}
PREQUANTIZABLE = {"per_tensor", "per_token_fp8", "per_1x128", "per_128x128", "a4w4", "a16w4"}


@dataclass(frozen=True)
class Case:
    """One kernel call: its arguments and what the oracle needs to recompute it."""

    kind: str
    kwargs: dict[str, Any]  # every argument of the call
    w13: torch.Tensor  # float64 dequantized, as the kernel sees them
    w2: torch.Tensor
    x: torch.Tensor  # float64 activations the oracle starts from (dequantized if pre-quantized)
    mask: list[int] | None
    rows: int  # valid rows (num_local_tokens or M)
    activation: str
    limit: float
    prequantized: bool
    interleaved: bool = False  # gate_mode "interleave": w13's gate and up rows alternate
    rule: str = "v0.1.16"  # the per_1x32 activation rounding the kernel follows (AITER release)


# ---------------------------------------------------------------------------------------------
# The pair oracle: written from the spec, one (token, slot) pair at a time, in float64.


def _local_index(global_id: int, mask: list[int] | None, experts: int) -> int | None:
    """The local expert of an id: the number of selected ids before it, if it is selected."""
    if mask is None:
        return global_id if 0 <= global_id < experts else None
    if not 0 <= global_id < len(mask) or mask[global_id] == 0:
        return None
    return sum(mask[:global_id])


def _qdq(kind: str, v: torch.Tensor, static: torch.Tensor | None) -> torch.Tensor:
    """The activation rounding of `kind` on float64 rows `v` (per tensor: one scale for all)."""
    if kind == "per_tensor":
        if static is not None:
            q = quant.quantize_fp8_static(v, static.cpu())
            return quant.dequantize_fp8_per_tensor(q, static.cpu()).double()
        q, s = quant.quantize_fp8_per_tensor(v)
        return quant.dequantize_fp8_per_tensor(q, s).double()
    if kind in ("per_token_fp8", "per_token_int4"):
        q, s = quant.quantize_fp8_per_row(v)
        return quant.dequantize_fp8_per_row(q, s).double()
    if kind in ("per_1x128", "per_128x128"):
        q, s = quant.quantize_fp8_1x128(v)
        return quant.dequantize_fp8_1x128(q, s).double()
    if kind == "a4w4":
        p, e = quant.quantize_mxfp4(v)
        return quant.dequantize_mxfp4(p, e).double()
    if kind in ("a8w4", "mxfp8"):  # an independent float64 restatement, not quant.quantize_mxfp8
        return _mxfp8(v)
    if kind == "a4w4_nearest":
        return _mx_nearest(v, 6.0, _e2m1)
    if kind == "a8w4_nearest":
        return _mx_nearest(v, 448.0, _e4m3)
    if kind == "a8w4_unit":  # AITER v0.1.9 to v0.1.14: `x.to(fp8)`, unit scales
        return _e4m3(v.double())
    return v  # "no" and "a16w4" keep their activations


def _mx_nearest(v: torch.Tensor, qmax: float, elements: Any) -> torch.Tensor:
    """MX in float64 with AITER's scale up to v0.1.15: per 32 elements, amax rounded to the
    power of two below it (above it from 1.5 times that power), over the largest power of two
    <= qmax; elements rounded by `elements`."""
    groups = v.double().reshape(*v.shape[:-1], -1, 32)
    amax = groups.abs().amax(dim=-1, keepdim=True)
    below = torch.floor(torch.log2(torch.where(amax > 0, amax, torch.ones_like(amax))))
    e = below + (amax >= 1.5 * 2.0**below).double() - math.floor(math.log2(qmax))
    e = torch.where(amax > 0, e, torch.zeros_like(e))
    return (elements(groups / 2.0**e) * 2.0**e).reshape(v.shape)


def _e4m3(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(-448, 448).to(torch.float8_e4m3fn).double()


_E2M1_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


def _e2m1(v: torch.Tensor) -> torch.Tensor:
    """The nearest E2M1 value, ties to the even code (the grid's even indices), saturating."""
    distance = (v.abs().clamp(max=6.0).unsqueeze(-1) - _E2M1_GRID).abs()
    odd = torch.arange(8) % 2
    code = (distance + odd * 1e-9).argmin(dim=-1)
    return _E2M1_GRID[code] * torch.sign(v)


def _mxfp8(v: torch.Tensor) -> torch.Tensor:
    """MX fp8 in float64: per 32 elements the smallest power of two 2**e with amax / 2**e <= 448,
    elements rounded to e4m3fn."""
    groups = v.double().reshape(*v.shape[:-1], -1, 32)
    amax = groups.abs().amax(dim=-1, keepdim=True)
    e = torch.where(amax > 0, torch.ceil(torch.log2(amax / 448.0)), torch.zeros_like(amax))
    scaled = (groups / 2.0**e).clamp(-448, 448)
    return (scaled.to(torch.float8_e4m3fn).double() * 2.0**e).reshape(v.shape)


# The suffix of the `_qdq` kinds of an older AITER release's mxfp4 and mxfp8 scale, restated from
# its quantizers (the tags are cited in moe_runtime/kernels/rounding.py): mxfp4 rounded amax to
# the nearest power of two up to v0.1.15; mxfp8 cast with unit scales up to v0.1.14, then did
# as mxfp4 in v0.1.15. From v0.1.16 both take the smallest scale that fits (no suffix).
_OLDER_SCALES = {
    "v0.1.7.post2": ("_nearest", ""),
    "v0.1.14": ("_nearest", "_unit"),
    "v0.1.15": ("_nearest", "_nearest"),
}


def _stage_kinds(case: Case) -> tuple[str, str]:
    """The rounding of each stage's input, as `_qdq` kinds: per_1x32 by the release's stage rule
    and with its MX scale."""
    if case.kind not in ("a4w4", "a16w4"):
        return case.kind, case.kind
    fp4, fp8 = _OLDER_SCALES.get(case.rule, ("", ""))
    suffix = {"a4w4": fp4, "a8w4": fp8}
    first, second = _stage_rule(case)
    return first + suffix.get(first, ""), second + suffix.get(second, "")


def _stage_rule(case: Case) -> tuple[str, str]:
    """per_1x32 on fp4 weights follows AITER's rule by release, restated here from
    aiter/fused_moe.py (v0.1.20.post1:724-752 and :3098-3106 for v0.1.14 onwards;
    v0.1.7.post2:220-221): gfx950, M = every row of the call."""
    swiglu = case.activation == "swiglu"
    if case.rule == "v0.1.7.post2":
        return ("a16w4", "a16w4") if swiglu else ("a4w4", "a4w4")
    large = case.kwargs["topk_ids"].shape[0] >= 256
    if swiglu and not case.interleaved:
        return ("a4w4", "a4w4") if large else ("a16w4", "a16w4")
    if not (swiglu or case.interleaved):
        return "a4w4", "a4w4"
    if large:
        return "a8w4", "a8w4"
    return ("a16w4", "a16w4") if swiglu else ("a16w4", "a4w4")


def _act(
    name: str, h: torch.Tensor, inter: int, g1u1: bool, limit: float, interleaved: bool = False
) -> torch.Tensor:
    # INTERLEAVE: gate row i is row 2i of w13, up row i is row 2i + 1.
    gate_h, up_h = (h[0::2], h[1::2]) if interleaved else (h[:inter], h[inter:])
    if name == "swiglu":
        g = torch.clamp(gate_h, max=limit)
        u = torch.clamp(up_h, min=-limit, max=limit)
        return g * torch.sigmoid(1.702 * g) * (u + 1)
    gate = gate_h if g1u1 else h
    if name == "silu":
        out = gate * torch.sigmoid(gate)
    else:
        out = gate * 0.5 * (1.0 + torch.erf(gate / math.sqrt(2.0)))
    return out * up_h if g1u1 else out


def _pair_oracle(case: Case, stages: tuple[str, str] | None = None) -> torch.Tensor:
    """`stages` overrides the roundings of the stage inputs (`_qdq` kinds) the case implies."""
    stage1, stage2 = stages or _stage_kinds(case)
    kw = case.kwargs
    ids = kw["topk_ids"].cpu().tolist()
    weights = kw["topk_weight"].double().cpu()
    w13, w2 = case.w13, case.w2
    experts, hidden, inter = w2.shape
    g1u1 = w13.shape[1] == 2 * inter
    out_dtype = kw.get("dtype") or (
        kw["hidden_states"].dtype
        if kw["hidden_states"].dtype in (torch.bfloat16, torch.float16)
        else torch.bfloat16
    )
    b13 = kw.get("bias1")
    b2 = kw.get("bias2")
    stage1_weight = kw.get("doweight_stage1", False)
    x = case.x[: case.rows]
    if not case.prequantized and case.rows:
        x = _qdq(stage1, x, kw.get("a1_scale"))
    pairs = [
        (t, k, e)
        for t in range(case.rows)
        for k in range(len(ids[t]))
        if (e := _local_index(ids[t][k], case.mask, experts)) is not None
    ]
    activated = []
    for t, k, e in pairs:
        h = w13[e] @ x[t]
        if stage1_weight:
            h = h * weights[t, k]
        if b13 is not None:
            h = h + b13[e].double().cpu()
        a = _act(case.activation, h, inter, g1u1, case.limit, case.interleaved)
        activated.append(a.to(out_dtype).double())  # rounding point 1
    out = torch.zeros(len(ids), hidden, dtype=torch.float64)
    if pairs:
        stage2_in = _qdq(stage2, torch.stack(activated), kw.get("a2_scale"))  # point 2
        for (t, k, e), a in zip(pairs, stage2_in, strict=True):
            y = w2[e] @ a
            if b2 is not None:
                y = y + b2[e].double().cpu()
            out[t] += y if stage1_weight else y * weights[t, k]
    return out.to(out_dtype)


# ---------------------------------------------------------------------------------------------
# Building calls.


def _quantized_weights(
    kind: str, w13: torch.Tensor, w2: torch.Tensor, fnuz: bool
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Kernel weights (+ scales) for `kind` and their float64 dequantized forms."""
    fp8 = torch.float8_e4m3fnuz if fnuz else torch.float8_e4m3fn
    if kind == "no":
        q13, q2 = w13.bfloat16(), w2.bfloat16()
        return {"w1": q13, "w2": q2}, q13.double(), q2.double()
    if kind == "per_tensor":
        parts13 = [quant.quantize_fp8_per_tensor(w, fp8) for w in w13]
        parts2 = [quant.quantize_fp8_per_tensor(w, fp8) for w in w2]
        q13, s13 = torch.stack([p[0] for p in parts13]), torch.stack([p[1] for p in parts13])
        q2, s2 = torch.stack([p[0] for p in parts2]), torch.stack([p[1] for p in parts2])
        d13 = q13.double() * s13.double().reshape(-1, 1, 1)
        d2 = q2.double() * s2.double().reshape(-1, 1, 1)
    elif kind == "per_token_fp8":
        (q13, s13), (q2, s2) = quant.quantize_fp8_per_row(w13, fp8), quant.quantize_fp8_per_row(
            w2, fp8
        )
        d13, d2 = q13.double() * s13.double(), q2.double() * s2.double()
    elif kind == "per_token_int4":
        (q13, s13), (q2, s2) = quant.quantize_int4_per_row(w13), quant.quantize_int4_per_row(w2)
        d13, d2 = q13.double() * s13.double(), q2.double() * s2.double()
    elif kind in ("per_1x128", "per_128x128"):
        (q13, s13), (q2, s2) = quant.quantize_fp8_128x128(w13, fp8), quant.quantize_fp8_128x128(
            w2, fp8
        )
        d13 = quant.dequantize_fp8_128x128(q13, s13).double()
        d2 = quant.dequantize_fp8_128x128(q2, s2).double()
    elif kind == "mxfp8":
        (q13, s13), (q2, s2) = quant.quantize_mxfp8(w13, fp8), quant.quantize_mxfp8(w2, fp8)
        d13 = quant.dequantize_mxfp8(q13, s13).double()
        d2 = quant.dequantize_mxfp8(q2, s2).double()
    else:
        (q13, s13), (q2, s2) = quant.quantize_mxfp4(w13), quant.quantize_mxfp4(w2)
        d13 = quant.dequantize_mxfp4(q13, s13).double()
        d2 = quant.dequantize_mxfp4(q2, s2).double()
    return {"w1": q13, "w2": q2, "w1_scale": s13, "w2_scale": s2}, d13, d2


def _prequantize(kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wire activations for `kind`: (quantized, a1_scale, float64 dequantized)."""
    if kind == "per_tensor":
        q, s = quant.quantize_fp8_per_tensor(x)
        return q, s, quant.dequantize_fp8_per_tensor(q, s).double()
    if kind == "per_token_fp8":
        q, s = quant.quantize_fp8_per_row(x)
        return q, s, quant.dequantize_fp8_per_row(q, s).double()
    if kind in ("per_1x128", "per_128x128"):
        q, s = quant.quantize_fp8_1x128(x)
        return q, s, quant.dequantize_fp8_1x128(q, s).double()
    if kind == "mxfp8":
        # MORI's mxfp8 wire; decoded here in float64 from the e8m0 bytes, not by moe_runtime.quant.
        q, s = quant.quantize_mxfp8(x)
        exponent = s.view(torch.uint8).double() - 127
        return q, s, q.double() * torch.pow(2.0, exponent).repeat_interleave(32, dim=-1)
    q, s = quant.quantize_mxfp4(x)
    return q, s, quant.dequantize_mxfp4(q, s).double()


@st.composite
def cases(draw: st.DrawFn, kind: str, interleaved: bool = False) -> Case:
    """A random call of quant kind `kind`: shapes incl. L = K = M = 1, masks with holes or a
    sink, num_local_tokens < M with garbage rows, doweight_stage1, biases, g1u0, fp16 output,
    pre-quantized activations. `interleaved`: gated, with w13's gate and up rows interleaved
    before quantization (as a checkpoint stores them) and gate_mode "interleave"; I >= 2, so
    the two layouts differ."""
    qt, group = KINDS[kind]
    experts = draw(st.integers(1, 4))
    tokens = draw(st.integers(1, 6))
    top_k = draw(st.integers(1, 3))
    if group == 1:
        hidden, inter = draw(st.integers(1, 24)), draw(st.integers(2 if interleaved else 1, 24))
    else:
        hidden = group * draw(st.integers(1, 2))
        inter = group * draw(st.integers(1, 2))
    # per_1x32 with Swiglu is a16w4 (bf16 activations); a4w4 is every other activation.
    choices = {"a16w4": ["swiglu"], "a4w4": ["silu", "gelu"]}.get(kind, ["silu", "gelu", "swiglu"])
    activation = draw(st.sampled_from(choices))
    g1u1 = activation == "swiglu" or interleaved or draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)

    # Routing: local ids, a mask with holes over more ids, or a sink id L masked off.
    mask_style = draw(st.sampled_from(["none", "holes", "sink"]))
    if mask_style == "none":
        mask, id_bound = None, experts
    elif mask_style == "sink":
        mask, id_bound = [1] * experts + [0], experts + 1
    else:
        total = experts + draw(st.integers(1, 4))
        chosen = sorted(torch.randperm(total, generator=g)[:experts].tolist())
        mask, id_bound = [int(i in chosen) for i in range(total)], total
    ids = torch.randint(0, id_bound, (tokens, top_k), generator=g, dtype=torch.int32)
    weights = torch.rand(tokens, top_k, generator=g)
    rows = draw(st.integers(0, tokens)) if draw(st.booleans()) else tokens

    n1 = 2 * inter if g1u1 else inter
    w13 = torch.randn(experts, n1, hidden, generator=g) / hidden**0.5
    if interleaved:
        w13 = w13[:, _interleaved_rows(inter)]
    w2 = torch.randn(experts, hidden, inter, generator=g) / inter**0.5
    fnuz = kind in ("per_token_fp8", "per_128x128") and draw(st.booleans())
    wkw, d13, d2 = _quantized_weights(kind, w13, w2, fnuz)

    x = torch.randn(tokens, hidden, generator=g).bfloat16()
    prequantized = kind in PREQUANTIZABLE and draw(st.booleans())
    kwargs: dict[str, Any] = {
        "hidden_states": x,
        **wkw,
        "topk_weight": weights,
        "topk_ids": ids,
        "activation": ACTIVATIONS[activation],
        "quant_type": qt,
        "doweight_stage1": draw(st.booleans()),
    }
    x64 = x.double()
    if prequantized:
        kwargs["hidden_states"], kwargs["a1_scale"], x64 = _prequantize(kind, x.float())
    elif kind == "per_tensor" and draw(st.booleans()):
        kwargs["a1_scale"] = torch.tensor([x.float().abs().max().item() / 300 + 1e-3])
    if kind == "per_tensor" and draw(st.booleans()):
        kwargs["a2_scale"] = torch.tensor([0.01])
    if mask is not None:
        kwargs["expert_mask"] = torch.tensor(mask, dtype=torch.int32)
    if rows < tokens:
        kwargs["num_local_tokens"] = torch.tensor([rows], dtype=torch.int32)
        # Rows past num_local_tokens are stale: garbage ids and, for float input, NaN or values
        # big enough to wreck a per-tensor scale if they were counted.
        ids[rows:] = torch.tensor([-7, 10**6, 3], dtype=torch.int32)[: top_k]
        if not prequantized:
            kwargs["hidden_states"][rows:] = draw(st.sampled_from([float("nan"), 1e6]))
    if draw(st.booleans()):
        kwargs["bias1"] = torch.randn(experts, n1, generator=g) * 0.1
        kwargs["bias2"] = torch.randn(experts, hidden, generator=g) * 0.1
    if draw(st.booleans()):
        kwargs["dtype"] = torch.float16
    limit = draw(st.sampled_from([0.0, 0.0, 0.5, 10.0])) if activation == "swiglu" else 0.0
    if limit:
        kwargs["swiglu_limit"] = limit
    if interleaved:
        kwargs["gate_mode"] = draw(st.sampled_from([GateMode.INTERLEAVE, "interleave"]))
    return Case(
        kind, kwargs, d13, d2, x64, mask, rows, activation, limit or 7.0, prequantized, interleaved
    )


def _interleaved_rows(inter: int) -> torch.Tensor:
    """Row order of an interleaved w13: gate 0, up 0, gate 1, up 1, ..."""
    return torch.stack([torch.arange(inter), torch.arange(inter) + inter], dim=1).reshape(-1)


def _on(case: Case, device: str) -> Case:
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.kwargs.items()}
    return replace(case, kwargs=moved)


def _call(kernel: ReferenceFusedMoe, case: Case) -> torch.Tensor:
    kw = dict(case.kwargs)
    return kernel(kw.pop("hidden_states"), kw.pop("w1"), kw.pop("w2"), kw.pop("topk_weight"),
                  kw.pop("topk_ids"), **kw)


def _control(actual: torch.Tensor) -> torch.Tensor:
    """A wrong answer: the first valid row replaced by its negation plus 0.5."""
    bad = actual.float().clone()
    bad[0] = -bad[0] + 0.5
    return bad


def _check_case(case: Case, device: str) -> None:
    case = _on(case, device)
    expected = _pair_oracle(case)
    default = _call(fused_moe, case)
    graph = _call(fused_moe_graph_safe, case)
    m, h = case.kwargs["topk_ids"].shape[0], case.w2.shape[1]
    assert default.shape == (m, h) and default.dtype == expected.dtype
    assert graph.shape == (m, h) and graph.dtype == expected.dtype
    assert bool((default[case.rows :] == 0).all()) and bool((graph[case.rows :] == 0).all())
    if case.rows == 0:
        return
    assert_moe_close(default.cpu(), expected, "unquant", rows=case.rows)
    assert not moe_close(_control(default.cpu()), expected, "unquant", rows=case.rows)
    # Graph-safe mode: the same results up to the summation order of fp32 GEMMs.
    assert_moe_close(graph.cpu(), default.cpu(), "unquant", rows=case.rows)
    assert not moe_close(_control(graph.cpu()), default.cpu(), "unquant",
                         rows=case.rows)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_matches_pair_oracle(kind: str, device: str) -> None:
    @settings(max_examples=12, deadline=None)
    @given(case=cases(kind))
    def run(case: Case) -> None:
        _check_case(case, device)

    run()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_interleaved_gate_up_matches_pair_oracle(kind: str, device: str) -> None:
    @settings(max_examples=10, deadline=None)
    @given(case=cases(kind, interleaved=True))
    def run(case: Case) -> None:
        _check_case(case, device)
        # Negative control: the same weights read as gate rows then up rows.
        case = _on(case, device)
        expected = _pair_oracle(case)
        separated = _call(fused_moe, replace(case, kwargs={
            k: v for k, v in case.kwargs.items() if k != "gate_mode"
        }))  # fmt: skip
        if case.rows and bool(expected[: case.rows].abs().sum() > 0):
            assert not moe_close(separated.cpu(), expected, "unquant", rows=case.rows)

    run()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_wrong_gate_mode_gives_a_large_error(kind: str, device: str) -> None:
    """A fixed interleaved call with every pair routed: read in the wrong mode, the output is
    far from the oracle (dissimilarity > 0.1, where the spec's bound is 1e-3)."""
    qt, group = KINDS[kind]
    size = max(group, 16)
    g = torch.Generator().manual_seed(5)
    activation = "swiglu" if kind == "a16w4" else "silu"
    w13 = (torch.randn(3, 2 * size, size, generator=g) / size**0.5)[:, _interleaved_rows(size)]
    w2 = torch.randn(3, size, size, generator=g) / size**0.5
    wkw, d13, d2 = _quantized_weights(kind, w13, w2, fnuz=False)
    ids = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 2]], dtype=torch.int32)
    kwargs: dict[str, Any] = {
        "hidden_states": torch.randn(4, size, generator=g).bfloat16(),
        **wkw,
        "topk_weight": torch.rand(4, 2, generator=g) + 0.5,
        "topk_ids": ids,
        "activation": ACTIVATIONS[activation],
        "quant_type": qt,
        "gate_mode": "interleave",
    }
    x64 = kwargs["hidden_states"].double()
    case = _on(Case(kind, kwargs, d13, d2, x64, None, 4, activation, 7.0, False, True), device)
    expected = _pair_oracle(case).double()
    right = _call(fused_moe, case).cpu().double()
    wrong = _call(fused_moe, replace(case, kwargs={**case.kwargs, "gate_mode": "separated"}))
    wrong = wrong.cpu().double()
    assert dissimilarity(right, expected) < 1e-3
    assert dissimilarity(wrong, expected) > 0.1


def test_gate_mode_errors() -> None:
    kw = _tiny()
    with pytest.raises(ValueError, match="gate_mode must be one of 'separated', 'interleave'"):
        _run(fused_moe, {**kw, "gate_mode": "gu_interleaved"})
    ungated = {**kw, "w1": kw["w1"][:, : kw["w2"].shape[2]], "gate_mode": "interleave"}
    with pytest.raises(ValueError, match="gate_mode 'interleave' needs gate and up rows"):
        _run(fused_moe, ungated)


# ---------------------------------------------------------------------------------------------
# Dynamic scales: the same roundings on every device.

# Values that quantize to exact ties when the scale is the correctly rounded amax / qmax: amax
# 2.625 gives the fp8 scale 2.625 / 448 = 3/512 exactly, and 1.078125, -0.7265625 and 0.890625 then
# divide to 184, -124 and 152, the midpoints of (176, 192), (-128, -120) and (144, 160); ties go to
# the even code, 192, -128 and 160, i.e. 1.125, -0.75 and 0.9375. A scale one ulp high (CUDA's
# reciprocal multiply for a division by a Python float) rounds all three towards zero instead.
_TIES = [2.625, 1.078125, -0.7265625, 0.890625]
_TIES_FP8 = [2.625, 1.125, -0.75, 0.9375]
# int4: scale 2.625 / 7 = 0.375 exactly; 1.3125 / 0.375 = 3.5 rounds to the even 4, i.e. 1.5.
_TIES_INT4 = ([2.625, 1.3125], [2.625, 1.5])


@pytest.mark.parametrize("device", DEVICES)
def test_dynamic_scales_round_ties_alike_on_every_device(device: str) -> None:
    row = torch.zeros(1, 128)
    row[0, : len(_TIES)] = torch.tensor(_TIES)
    block = torch.zeros(128, 128)
    block[0] = row[0]
    want = torch.zeros(1, 128)
    want[0, : len(_TIES_FP8)] = torch.tensor(_TIES_FP8)
    x = row.bfloat16().to(device)
    results = {
        "per_tensor": quant.dequantize_fp8_per_tensor(*quant.quantize_fp8_per_tensor(x)),
        "per_row": quant.dequantize_fp8_per_row(*quant.quantize_fp8_per_row(x)),
        "1x128": quant.dequantize_fp8_1x128(*quant.quantize_fp8_1x128(x)),
        "128x128": quant.dequantize_fp8_128x128(
            *quant.quantize_fp8_128x128(block.to(device)))[:1],
    }
    for name, got in results.items():
        assert torch.equal(got.cpu(), want), name
    # Control: a scale one ulp above 3/512 rounds the ties towards zero, so the check can fail.
    high = torch.tensor([[3 / 512]]).nextafter(torch.tensor([[1.0]])).to(device)
    off = quant.dequantize_fp8_per_row(quant.quantize_fp8_static(x, high), high)
    assert not torch.equal(off.cpu(), want)
    source, expected = _TIES_INT4
    q, s = quant.quantize_int4_per_row(torch.tensor([source]).to(device))
    assert torch.equal(quant.dequantize_int4_per_row(q, s).cpu(), torch.tensor([expected]))


# ---------------------------------------------------------------------------------------------
# Hand-built semantics.


def _tiny(device: str = "cpu", **overrides: Any) -> dict[str, Any]:
    """A valid call on 4 tokens, 3 local experts, H = I = 8, top-2, bf16."""
    g = torch.Generator().manual_seed(7)
    kwargs: dict[str, Any] = {
        "hidden_states": torch.randn(4, 8, generator=g).bfloat16(),
        "w1": (torch.randn(3, 16, 8, generator=g) / 3).bfloat16(),
        "w2": (torch.randn(3, 8, 8, generator=g) / 3).bfloat16(),
        "topk_weight": torch.rand(4, 2, generator=g),
        "topk_ids": torch.tensor([[0, 1], [2, 0], [1, 2], [0, 0]], dtype=torch.int32),
    }
    kwargs.update(overrides)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _run(kernel: ReferenceFusedMoe, kwargs: dict[str, Any]) -> torch.Tensor:
    kw = dict(kwargs)
    return kernel(kw.pop("hidden_states"), kw.pop("w1"), kw.pop("w2"), kw.pop("topk_weight"),
                  kw.pop("topk_ids"), **kw)


def _dense(kwargs: dict[str, Any], ids: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    return dense_moe_float64(kwargs["hidden_states"].cpu(), ids, kwargs["topk_weight"].cpu(),
                             kwargs["w1"].cpu().double(), kwargs["w2"].cpu().double(),
                             activation=activation)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", [fused_moe, fused_moe_graph_safe], ids=["default", "graph"])
def test_expert_mask_maps_by_cumulative_sum(device: str, kernel: ReferenceFusedMoe) -> None:
    # mask over 5 global ids selects 1, 3, 4 -> local 0, 1, 2; ids 0 and 2 are dropped.
    mask = torch.tensor([0, 1, 0, 1, 1], dtype=torch.int32)
    ids = torch.tensor([[1, 0], [4, 3], [2, 2], [3, 1]], dtype=torch.int32)
    local = torch.tensor([[0, -1], [2, 1], [-1, -1], [1, 0]])  # by hand; -1 = dropped
    kwargs = _tiny(device, topk_ids=ids, expert_mask=mask)
    out = _run(kernel, kwargs)
    expected = _dense(kwargs, local)
    assert_moe_close(out.cpu(), expected, "unquant")
    assert bool((out[2] == 0).all())  # every slot of token 2 dropped
    # Control: the ids taken as local indices directly (no mapping) must not match.
    assert not moe_close(out.cpu(), _dense(kwargs, ids.clamp(max=2)), "unquant")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", [fused_moe, fused_moe_graph_safe], ids=["default", "graph"])
def test_output_keyword_writes_into_a_strided_buffer(
    device: str, kernel: ReferenceFusedMoe
) -> None:
    # MORI EPv2's combine view: rows of a wider arena, full of stale values before the call.
    kwargs = _tiny(device)
    expected = _dense(kwargs, kwargs["topk_ids"].cpu())
    arena = torch.full((6, 12), 1024.0, dtype=torch.bfloat16, device=device)
    view = arena[:4, 2:10]
    returned = _run(kernel, {**kwargs, "output": view})
    assert returned.data_ptr() == view.data_ptr() and returned.stride() == view.stride()
    assert_moe_close(view.cpu(), expected, "unquant")
    assert not moe_close(arena[:4, :8].cpu(), expected, "unquant")  # negative control: beside it
    assert bool((arena[4:] == 1024.0).all()) and bool((arena[:, :2] == 1024.0).all())
    assert returned.equal(_run(kernel, kwargs))  # the same values as without the keyword


@pytest.mark.parametrize(
    "output",
    [torch.zeros(4, 9, dtype=torch.bfloat16), torch.zeros(4, 8, dtype=torch.float16)],
    ids=["shape", "dtype"],
)
def test_output_keyword_refuses_a_buffer_of_another_shape_or_dtype(output: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="output must be"):
        _run(fused_moe, {**_tiny(), "output": output})


@pytest.mark.parametrize("device", DEVICES)
def test_without_mask_ids_are_local(device: str) -> None:
    kwargs = _tiny(device)
    expected = _dense(kwargs, kwargs["topk_ids"].cpu())
    assert_moe_close(_run(fused_moe, kwargs).cpu(), expected, "unquant")
    assert not moe_close(torch.zeros(4, 8), expected, "unquant")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quant_type", [QuantType.No, QuantType.per_Tensor])
@pytest.mark.parametrize("stale", [float("nan"), 1e6])
def test_num_local_tokens_zeroes_rows_and_ignores_stale_data(
    device: str, quant_type: QuantType, stale: float
) -> None:
    # Stale rows: NaN, or 1e6, which would push a per-tensor scale to ~2232 and crush the valid
    # rows (~1) below fp8's smallest step if it were counted; and garbage ids.
    kwargs = _tiny(device, quant_type=quant_type)
    full = _run(fused_moe, kwargs)
    stale_kwargs = _tiny(device, quant_type=quant_type,
                         num_local_tokens=torch.tensor([2], dtype=torch.int32))
    stale_kwargs["hidden_states"][2:] = stale
    stale_kwargs["topk_ids"][2:] = torch.tensor([-1, 99], dtype=torch.int32, device=device)
    # The valid rows alone give the reference answer for rows 0 and 1.
    alone = _run(fused_moe, {k: v[:2] if k in ("hidden_states", "topk_ids", "topk_weight") else v
                             for k, v in kwargs.items()})
    for kernel in (fused_moe, fused_moe_graph_safe):
        out = _run(kernel, stale_kwargs)
        assert bool((out[2:] == 0).all())
        assert_moe_close(out[:2].cpu(), alone.cpu(), "unquant")
        assert not moe_close(out.cpu(), full.cpu(), "unquant")  # rows 2, 3 differ


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel", [fused_moe, fused_moe_graph_safe], ids=["default", "graph"])
def test_dropped_pairs_move_no_per_tensor_amax(device: str, kernel: ReferenceFusedMoe) -> None:
    # Mask [1, 1, 0]: id 2 is dropped. Expert 1 gets no routed pair but a huge bias, so a dropped
    # pair that leaked into the stage-2 amax would carry silu(500) * 500 = 2.5e5 into the
    # per-tensor scale (~560) and crush the real activations (~1) below fp8's smallest step.
    g = torch.Generator().manual_seed(2)
    w13 = torch.randn(2, 16, 8, generator=g) / 3
    w2 = torch.randn(2, 8, 8, generator=g) / 3
    wkw, d13, d2 = _quantized_weights("per_tensor", w13, w2, fnuz=False)
    bias1 = torch.zeros(2, 16)
    bias1[1] = 500.0
    ids = torch.tensor([[0, 2], [2, 0], [0, 2], [0, 0]], dtype=torch.int32)
    kwargs = _tiny(device, **wkw, topk_ids=ids, expert_mask=torch.tensor([1, 1, 0],
                   dtype=torch.int32), quant_type=QuantType.per_Tensor, bias1=bias1)
    case = Case("per_tensor", kwargs, d13, d2, kwargs["hidden_states"].double().cpu(), [1, 1, 0],
                4, "silu", 7.0, prequantized=False)
    expected = _pair_oracle(case)
    assert_moe_close(_run(kernel, kwargs).cpu(), expected, "unquant")
    # Control: the dropped pairs sent to expert 1 instead (amax 2.5e5) change the answer.
    rerouted = {**kwargs, "topk_ids": torch.where(ids == 2, 1, ids).to(device)}
    leaked = _pair_oracle(replace(case, kwargs=rerouted, mask=None))
    assert not moe_close(leaked, expected, "unquant")


@pytest.mark.parametrize("device", DEVICES)
def test_output_dtype_rules(device: str) -> None:
    kwargs = _tiny(device)
    assert _run(fused_moe, kwargs).dtype == torch.bfloat16
    assert _run(fused_moe, {**kwargs, "dtype": torch.float16}).dtype == torch.float16
    half = {**kwargs, "hidden_states": kwargs["hidden_states"].half()}
    assert _run(fused_moe, half).dtype == torch.float16
    q, s = quant.quantize_fp8_per_row(kwargs["hidden_states"].float())
    fp8 = {**kwargs, "hidden_states": q, "a1_scale": s, "quant_type": QuantType.per_Token}
    out = _run(fused_moe, fp8)
    assert out.dtype == torch.bfloat16 and out.shape == (4, 8)


@pytest.mark.parametrize("device", DEVICES)
def test_plain_ints_and_pad_hints(device: str) -> None:
    kwargs = _tiny(device)
    base = _run(fused_moe, {**kwargs, "activation": ActivationType.Gelu})
    as_ints = _run(fused_moe, {**kwargs, "activation": 1, "quant_type": 0, "hidden_pad": 64,
                               "intermediate_pad": 32, "block_size_M": 32,
                               "moe_sorting_dispatch_policy": 1})
    assert torch.equal(base, as_ints)
    assert not torch.equal(base, _run(fused_moe, kwargs))  # Gelu is not Silu


@pytest.mark.parametrize("device", DEVICES)
def test_swiglu_limit(device: str) -> None:
    # Big pre-activations so that the clamp matters: limit 7 by default, 0 means 7, 20 differs.
    kwargs = _tiny(device, activation=ActivationType.Swiglu)
    kwargs["hidden_states"] = kwargs["hidden_states"] * 30
    default = _run(fused_moe, kwargs)
    assert torch.equal(default, _run(fused_moe, {**kwargs, "swiglu_limit": 0.0}))
    assert torch.equal(default, _run(fused_moe, {**kwargs, "swiglu_limit": 7.0}))
    assert not torch.equal(default, _run(fused_moe, {**kwargs, "swiglu_limit": 20.0}))


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_weights_meet_quantized_wires(device: str) -> None:
    """MORI: bf16 weights meet fp8 (per_128x128) or fp4 (per_1x32) wires, with no weight scale."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 128, generator=g)
    kwargs = _tiny(device, w1=(torch.randn(3, 256, 128, generator=g) / 11).bfloat16().to(device),
                   w2=(torch.randn(3, 128, 128, generator=g) / 11).bfloat16().to(device))
    for qt, (q, s, deq) in (
        (QuantType.per_128x128, _prequantize("per_1x128", x)),
        (QuantType.per_1x32, _prequantize("a4w4", x)),
    ):
        call = {**kwargs, "hidden_states": q.to(device), "a1_scale": s.to(device),
                "quant_type": qt}
        out = _run(fused_moe, call)
        expected = dense_moe_float64(deq, kwargs["topk_ids"].cpu(), kwargs["topk_weight"].cpu(),
                                     kwargs["w1"].cpu().double(), kwargs["w2"].cpu().double(),
                                     activation="silu")
        method = "fp8_block" if qt == QuantType.per_128x128 else "quark_w4a4_mxfp4"
        assert_moe_close(out.cpu(), expected, method)
        assert not moe_close(-out.cpu(), expected, method)


def test_an_mxfp8_wire_is_read_by_no_per_1x32_kernel() -> None:
    """fp8 rows with e8m0 scales per 32 fit no per_1x32 kernel, not even fp8 (mxfp8) weights':
    AITER quantizes that path's input itself and ignores a1_scale. The same rows upscaled to bf16
    run on the fp8 weights."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 64, generator=g)
    q, s, x64 = _prequantize("mxfp8", x)
    w13, w2 = torch.randn(3, 128, 64, generator=g), torch.randn(3, 64, 64, generator=g)
    fp8_weights, _, _ = _quantized_weights("mxfp8", w13, w2, False)
    fp4_weights, _, _ = _quantized_weights("a4w4", w13, w2, False)
    call = {**_tiny(), "hidden_states": q, "a1_scale": s, "quant_type": QuantType.per_1x32,
            "activation": ActivationType.Swiglu}
    for weights in (fp8_weights, fp4_weights):
        with pytest.raises(ValueError, match="do not fit quant_type per_1x32"):
            _run(fused_moe, {**call, **weights})
    # Control: the rows upscaled, without a scale, run on the fp8 weights.
    upscaled = {**call, **fp8_weights, "hidden_states": x64.bfloat16(), "a1_scale": None}
    assert bool(torch.isfinite(_run(fused_moe, upscaled).float()).all())


# ---------------------------------------------------------------------------------------------
# Quant methods end to end against the pure-math dense oracle: the calibration of TOLERANCES.

METHOD_CALLS = {
    # quant method: (quant type, activation)
    "unquant": (QuantType.No, "silu"),
    "fp8_block": (QuantType.per_128x128, "silu"),
    "fp8_channel": (QuantType.per_Token, "gelu"),
    "fp8_tensor": (QuantType.per_Tensor, "silu"),
    "mxfp4": (QuantType.per_1x32, "swiglu"),
    "quark_w4a4_mxfp4": (QuantType.per_1x32, "silu"),
    "quark_int4fp8": (QuantType.per_Token, "silu"),
    "ct_w8a8_fp8": (QuantType.per_Token, "silu"),
    "quark_w8a8_fp8": (QuantType.per_Token, "gelu"),
    "mxfp8": (QuantType.per_1x32, "swiglu"),
    "quark_w4a8_mxfp4": (QuantType.per_1x32, "swiglu"),
}


@dataclass(frozen=True)
class MethodRun:
    out: torch.Tensor  # the reference's output (cpu)
    expected: torch.Tensor  # float64 dense oracle
    without_expert0: torch.Tensor  # float64 dense oracle with expert 0's contributions dropped


def _method_run(method: str, device: str, seed: int) -> MethodRun:
    """Run the reference the way a runner calls it for `method`, and the dense oracle."""
    qt, activation = METHOD_CALLS[method]
    hidden, inter, experts, top_k, tokens = 128, 128, 4, 2, 32
    weights = make_expert_weights(method, experts, hidden, inter, seed=seed, device=device)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(tokens, hidden, generator=g).bfloat16()
    probs = torch.softmax(torch.randn(tokens, experts, generator=g), dim=-1)
    topk_weight, topk_ids = torch.topk(probs, top_k)
    hidden_states, a1_scale = x.to(device), None
    if method == "ct_w8a8_fp8":
        # Static input scale: quantize on the way in, hand the kernel fp8 rows and [M, 1] scales.
        static = weights.a13_scale
        assert static is not None
        hidden_states = quant.quantize_fp8_static(hidden_states, static)
        a1_scale = static.reshape(1, 1).expand(tokens, 1).contiguous()
    out = fused_moe(hidden_states, weights.w13_weight, weights.w2_weight, topk_weight.to(device),
                    topk_ids.int().to(device), activation=ACTIVATIONS[activation],
                    quant_type=qt, w1_scale=weights.w13_scale, w2_scale=weights.w2_scale,
                    a1_scale=a1_scale, bias1=weights.b13, bias2=weights.b2)
    w13, w2 = (w.cpu() for w in dequantized_weights(weights, method))
    b13 = None if weights.b13 is None else weights.b13.cpu()
    b2 = None if weights.b2 is None else weights.b2.cpu()

    def dense(ids: torch.Tensor) -> torch.Tensor:
        return dense_moe_float64(x, ids, topk_weight, w13, w2, activation=activation, b13=b13,
                                 b2=b2)

    return MethodRun(out.cpu(), dense(topk_ids), dense(torch.where(topk_ids == 0, -1, topk_ids)))


# How much noise, relative to a row's rms, each method's bounds must detect
# (see moe_runtime.testing.dense).
_PERTURBATION = {"unquant": 0.1, "mxfp4": 0.1, "quark_w4a8_mxfp4": 0.1, "quark_w4a4_mxfp4": 2.0}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", list(METHOD_CALLS))
def test_tolerance_calibration(method: str, device: str) -> None:
    """The reference passes its method's bounds; zeros, a constant, perturbed rows, a dropped
    expert, a sign flip and a NaN all fail them."""
    run = _method_run(method, device, seed=11)
    out, expected = run.out, run.expected
    assert_moe_close(out, expected, method)
    g = torch.Generator().manual_seed(5)
    rows = torch.randperm(out.shape[0], generator=g)[: max(1, out.shape[0] // 10)]
    perturbed = out.double().clone()
    scale = _PERTURBATION.get(method, 0.3) * perturbed[rows].pow(2).mean(-1, keepdim=True).sqrt()
    perturbed[rows] += torch.randn(perturbed[rows].shape, generator=g, dtype=torch.float64) * scale
    nan_at_3 = torch.arange(out.numel()).reshape(out.shape) == 3
    controls = {
        "zeros": torch.zeros_like(out),
        "constant": torch.full_like(out.double(), float(expected.abs().mean())),
        "perturbed rows": perturbed,
        "dropped expert": run.without_expert0,
        "sign flip": -out,
        "nan": torch.where(nan_at_3, float("nan"), out.double()),
    }
    passing = [name for name, bad in controls.items() if moe_close(bad, expected, method)]
    assert passing == []


# ---------------------------------------------------------------------------------------------
# Errors: each names what was wrong and what is expected.

ERRORS = [
    ({"topk_ids": torch.zeros(4, 2, dtype=torch.int64)}, TypeError,
     "topk_ids must be int32, got int64"),
    ({"topk_weight": torch.ones(4, 2, dtype=torch.float16)}, TypeError,
     "topk_weight must be float32, got float16"),
    ({"expert_mask": torch.ones(3, dtype=torch.int64)}, TypeError,
     "expert_mask must be int32, got int64"),
    ({"topk_weight": torch.ones(4, 3)}, ValueError, r"topk_weight shape \(4, 3\) must equal"),
    ({"topk_ids": torch.zeros(5, 2, dtype=torch.int32), "topk_weight": torch.ones(5, 2)},
     ValueError, "hidden_states has 4 rows but topk_ids has 5"),
    ({"dtype": torch.float32}, TypeError, "output dtype must be bfloat16 or float16, got float32"),
    ({"hidden_states": torch.ones(4, 8)}, TypeError,
     "hidden_states must be bfloat16, float16, float8_e4m3fn.* got float32"),
    ({"hidden_states": torch.ones(4, 6).bfloat16()}, ValueError,
     "hidden_states has 6 columns but the weights expect H = 8"),
    ({"w1": torch.ones(2, 16, 8).bfloat16()}, ValueError, "w1 has 2 experts but w2 has 3"),
    ({"w1": torch.ones(3, 12, 8).bfloat16()}, ValueError, r"w1 must have I \(8\) or 2\*I \(16\)"),
    ({"activation": 7}, ValueError, "activation must be one of"),
    ({"activation": -1}, ValueError, "ActivationType.No is not supported"),
    ({"quant_type": 9}, ValueError, "quant_type must be a QuantType"),
    ({"w1": torch.ones(3, 8, 8).bfloat16(), "activation": ActivationType.Swiglu}, ValueError,
     "Swiglu needs gate and up rows"),
    ({"expert_mask": torch.ones(2, dtype=torch.int32)}, ValueError,
     "expert_mask has 2 entries, fewer than the 3 local experts"),
    ({"num_local_tokens": torch.tensor([2], dtype=torch.int64)}, TypeError,
     "num_local_tokens must be an int32 tensor of one element"),
    ({"bias1": torch.zeros(3, 8)}, ValueError, r"bias1 must be \[3, 16\], got \(3, 8\)"),
    ({"bias2": torch.zeros(3, 16)}, ValueError, r"bias2 must be \[3, 8\], got \(3, 16\)"),
    ({"w1_scale": torch.ones(3, 1)}, ValueError, "w1_scale was given but quant_type is No"),
    ({"quant_type": QuantType.per_Token, "w1_scale": torch.ones(3, 16)}, ValueError,
     r"w1_scale for per_Token must be \[3, 16, 1\], got \[3, 16\]"),
    ({"quant_type": QuantType.per_Token, "a1_scale": torch.ones(4, 1)}, ValueError,
     "a static scale is only accepted for per_Tensor or pre-quantized"),
    ({"quant_type": QuantType.per_Token, "a2_scale": torch.ones(1)}, ValueError,
     "a2_scale must be a \\[1\\] per_Tensor scale"),
    ({"quant_type": QuantType.per_1x128}, ValueError,
     "per_1x128 quantizes activations in groups of 128: hidden size H = 8"),
    ({"hidden_states": torch.ones(4, 8).to(torch.float8_e4m3fn)}, ValueError,
     "do not fit quant_type No"),
    ({"hidden_states": torch.ones(4, 8).to(torch.float8_e4m3fn),
      "quant_type": QuantType.per_Token}, ValueError, "a1_scale must be provided"),
    ({"hidden_states": torch.ones(4, 8).to(torch.float8_e4m3fn),
      "quant_type": QuantType.per_Token, "a1_scale": torch.ones(1)}, ValueError,
     r"a1_scale for pre-quantized per_Token input must be \[4, 1\]"),
    ({"w1": torch.zeros(3, 16, 4, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)}, ValueError,
     "w1 is float4_e2m1fn_x2: it needs QuantType.per_1x32"),
    ({"topk_ids": torch.zeros(0, 2, dtype=torch.int32), "topk_weight": torch.ones(0, 2),
      "hidden_states": torch.ones(0, 8).bfloat16()}, ValueError, "M == 0"),
    ({"swiglu_limit": -1.0}, ValueError, "swiglu_limit must be >= 0"),
]
# Value errors: they read device data, so only the default mode raises them.
VALUE_ERRORS = [
    ({"topk_ids": torch.tensor([[0, -1], [0, 0], [0, 0], [0, 0]], dtype=torch.int32)},
     "negative ids .min -1.*sink id"),
    ({"topk_ids": torch.tensor([[0, 3], [0, 0], [0, 0], [0, 0]], dtype=torch.int32)},
     "id 3, out of range: ids must be < the number of local experts L"),
    ({"expert_mask": torch.tensor([1, 1, 1, 0], dtype=torch.int32),
      "topk_ids": torch.tensor([[0, 4], [0, 0], [0, 0], [0, 0]], dtype=torch.int32)},
     "id 4, out of range: ids must be < expert_mask.numel.. = 4"),
    ({"expert_mask": torch.tensor([1, 1, 0, 0], dtype=torch.int32)},
     "expert_mask selects 2 experts but the weights hold L = 3"),
    ({"expert_mask": torch.tensor([1, 2, 0, 0], dtype=torch.int32)}, "only 0 and 1"),
    ({"num_local_tokens": torch.tensor([5], dtype=torch.int32)},
     r"num_local_tokens = 5 must be in \[0, M = 4\]"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("overrides", "error", "match"), ERRORS)
def test_errors(device: str, overrides: dict[str, Any], error: type[Exception], match: str) -> None:
    for kernel in (fused_moe, fused_moe_graph_safe):
        with pytest.raises(error, match=match):
            _run(kernel, _tiny(device, **overrides))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("overrides", "match"), VALUE_ERRORS)
def test_value_errors_default_mode_only(device: str, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _run(fused_moe, _tiny(device, **overrides))
    # Graph-safe mode cannot look at values; it must still return a full, finite output.
    out = _run(fused_moe_graph_safe, _tiny(device, **overrides))
    assert out.shape == (4, 8) and bool(torch.isfinite(out).all())


# ---------------------------------------------------------------------------------------------
# Graph-safe mode: no host sync, capturable.


def _graph_kwargs(kind: str, device: str) -> dict[str, Any]:
    qt, group = KINDS[kind]
    hidden = inter = 128 if group > 1 else 16
    g = torch.Generator().manual_seed(1)
    w13 = torch.randn(2, 2 * inter, hidden, generator=g) / hidden**0.5
    w2 = torch.randn(2, hidden, inter, generator=g) / inter**0.5
    wkw, _, _ = _quantized_weights(kind, w13, w2, fnuz=False)
    kwargs = {
        "hidden_states": torch.randn(6, hidden, generator=g).bfloat16(),
        **wkw,
        "topk_weight": torch.rand(6, 2, generator=g),
        "topk_ids": torch.tensor([[0, 1], [1, 2], [2, 0], [1, 1], [0, 2], [2, 2]],
                                 dtype=torch.int32),
        "expert_mask": torch.tensor([1, 0, 1], dtype=torch.int32),
        "quant_type": qt,
        "activation": ActivationType.Swiglu if kind == "a16w4" else ActivationType.Silu,
        "num_local_tokens": torch.tensor([5], dtype=torch.int32),
        "bias1": torch.randn(2, 2 * inter, generator=g) * 0.1,
        "bias2": torch.randn(2, hidden, generator=g) * 0.1,
    }
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_graph_safe_mode_never_syncs(kind: str, device: str) -> None:
    kwargs = _graph_kwargs(kind, device)
    with no_host_sync(device):
        out = _run(fused_moe_graph_safe, kwargs)
    default = _run(fused_moe, kwargs).cpu()
    assert_moe_close(out.cpu(), default, "unquant")
    assert not moe_close(_control(out.cpu()), default, "unquant")
    # Control: the default mode reads values on the host, and the guard notices.
    with pytest.raises(HostSyncError), no_host_sync(device):
        _run(fused_moe, kwargs)
    if device == "cuda":
        # Capture the graph-safe call in a CUDA graph; replays follow new inputs in place.
        static = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            _run(fused_moe_graph_safe, static)  # warm-up outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = _run(fused_moe_graph_safe, static)
        static["topk_weight"].copy_(kwargs["topk_weight"].flip(0))
        with no_host_sync(device):
            graph.replay()
        torch.cuda.synchronize()
        fresh = _run(fused_moe, {**kwargs, "topk_weight": kwargs["topk_weight"].flip(0)})
        assert_moe_close(captured.cpu(), fresh.cpu(), "unquant")
        assert not moe_close(captured.cpu(), out.cpu(), "unquant")
