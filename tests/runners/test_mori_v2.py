"""MORI EPv2 runners: the expert output goes straight into combine's staging view, the strided scale
views reach the kernel as they are, and SGLang 0.5.23's own dispatch output class is accepted.

The values against dense float64 math at EP 1, 2 and 4 are test_end_to_end.py's (every generated
key); this file checks what EPv2 adds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch

import generated
from moe_runtime import types as t
from moe_runtime.kernels import reference
from moe_runtime.testing import emulate
from tests.runners.harness import KEYS, run_combination

V2_KEYS = [key for key in KEYS if key[2] in emulate.MORI_V2_FORMATS]


class _Spy:
    """The reference kernel, remembering the keywords of its calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, output: torch.Tensor | None = None, **kwargs: Any) -> Any:
        self.calls.append({**kwargs, "output": output})
        return reference.fused_moe(*args, output=output, **kwargs)


class _NoOutputKeyword:
    """A kernel with AITER v0.1.20.post1's keywords: no `output`."""

    def __call__(self, *args: Any, gate_mode: str = "separated", **kwargs: Any) -> Any:
        return reference.fused_moe(*args, **kwargs)


def test_every_v2_format_is_generated_for_every_quant_method() -> None:
    methods = {key[1] for key in KEYS}
    assert {(key[1], key[2]) for key in V2_KEYS} == {
        (method, fmt) for method in methods for fmt in emulate.MORI_V2_FORMATS
    }


@pytest.mark.parametrize("key", V2_KEYS, ids="/".join)
def test_expert_output_is_written_in_place(key: tuple[str, str, str]) -> None:
    run = run_combination(key, 2)
    assert run.mismatch(key[1], key[2]) is None
    pairs = zip(run.dispatched.outputs, run.combine_inputs, strict=True)
    for dispatch_output, combine_input in pairs:
        assert combine_input.hidden_states.data_ptr() == dispatch_output.expert_output.data_ptr()
        assert combine_input.hidden_states.shape == dispatch_output.expert_output.shape


def test_padded_weights_leave_the_copy_to_combine() -> None:
    # gpt-oss pads H: the kernel's rows are H_pad wide and cannot go into the [R, H] view, so the
    # runner hands back its own cropped rows (and stays right); the in-place check above fails here.
    key = ("mori", "mxfp4", "mori_v2")
    run = run_combination(key, 2, hidden=224, intermediate=96, hidden_pad=32, intermediate_pad=32)
    assert run.mismatch(key[1], key[2]) is None
    pairs = zip(run.dispatched.outputs, run.combine_inputs, strict=True)
    for dispatch_output, combine_input in pairs:
        assert combine_input.hidden_states.data_ptr() != dispatch_output.expert_output.data_ptr()


@pytest.mark.parametrize(
    "key",
    [("mori", "unquant", "mori_v2_fp8"), ("mori", "fp8_block", "mori_v2_fp8"),
     ("mori", "quark_w4a4_mxfp4", "mori_v2_fp4"), ("mori", "unquant", "mori_v2_fp4")],
    ids="/".join,
)
def test_strided_scales_reach_the_kernel_without_a_copy(key: tuple[str, str, str]) -> None:
    spy = _Spy()
    run = run_combination(key, 2, kernel=spy)
    assert run.mismatch(key[1], key[2]) is None
    assert len(spy.calls) == 2
    for call, dispatch_output in zip(spy.calls, run.dispatched.outputs, strict=True):
        scale = dispatch_output.hidden_states_scale
        assert not scale.is_contiguous()  # the emulation hands over a view of wider rows
        assert call["a1_scale"] is scale
        assert call["output"] is dispatch_output.expert_output


def test_a_kernel_without_the_output_keyword_is_refused_at_load() -> None:
    with pytest.raises(t.ConfigError, match=r"`output` keyword .*after v0\.1\.20\.post1"):
        run_combination(("mori", "fp8_block", "mori_v2_fp8"), 2, kernel=_NoOutputKeyword())
    # The same kernel serves the EPv1 format, which passes no `output`.
    run = run_combination(("mori", "fp8_block", "mori_normal_fp8"), 2, kernel=_NoOutputKeyword())
    assert run.mismatch("fp8_block", "mori_normal_fp8") is None


class MoriEPNormalDispatchOutput(NamedTuple):
    """SGLang 0.5.23's class (token_dispatcher/moriep.py:169-182): EPv1 and EPv2 share it."""

    hidden_states: torch.Tensor
    hidden_states_scale: torch.Tensor | None
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    num_recv_tokens_per_expert: torch.Tensor
    origin_topk_ids: torch.Tensor
    origin_topk_weights: torch.Tensor
    out_dtype: torch.dtype
    expert_output: torch.Tensor | None = None
    recv_cap: int = 0


def test_sglang_0_5_23_dispatch_output_is_accepted_as_it_is() -> None:
    key = ("mori", "fp8_block", "mori_v2_fp8")
    run = run_combination(key, 2)
    ours = run.dispatched.outputs[0]
    sglang = MoriEPNormalDispatchOutput(*ours)
    combine_input = run.runners[0](sglang)
    assert combine_input.hidden_states.data_ptr() == ours.expert_output.data_ptr()
    assert torch.equal(combine_input.hidden_states, run.combine_inputs[0].hidden_states)
    # 0.5.13's class of the same name lacks expert_output: refused, naming the field.
    old = t.MoriEPNormalDispatchOutput(*ours[:8], ours.recv_cap)
    with pytest.raises(TypeError, match="lacks the fields expert_output"):
        run.runners[0](old)


def test_expert_output_none_lets_the_kernel_allocate() -> None:
    # A MORI without combine_in_view hands over expert_output=None (moriep.py:1555-1558).
    key = ("mori", "unquant", "mori_v2")
    run = run_combination(key, 2)
    outputs = [output._replace(expert_output=None) for output in run.dispatched.outputs]
    combine_inputs = [runner(out) for runner, out in zip(run.runners, outputs, strict=True)]
    assert run.mismatch(key[1], key[2], run.combined(combine_inputs)) is None
    assert generated.select(*key) is type(run.runners[0])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda out: out[:, :-1], r"expert_output must have shape"),
        (lambda out: out[:-1], r"expert_output must have shape"),
        (lambda out: out.float(), r"expert_output must be bfloat16"),
    ],
    ids=["narrow", "short", "dtype"],
)
def test_checked_runner_refuses_an_expert_output_the_kernel_cannot_write(
    change: Any, match: str
) -> None:
    from moe_runtime.checks import DispatchOutputError

    key = ("mori", "unquant", "mori_v2")
    run = run_combination(key, 2)
    checked = generated.select(*key, checked=True)(run.configs[0], run.weights[0])
    output = run.dispatched.outputs[0]
    assert torch.equal(checked(output).hidden_states, run.combine_inputs[0].hidden_states)
    checked(output._replace(expert_output=None))  # None: the kernel allocates
    with pytest.raises(DispatchOutputError, match=match):
        checked(output._replace(expert_output=change(output.expert_output)))
