"""Generated runners against SGLang's dynamic path (moe_runtime.testing.dynamic), same inputs, same
kernel.

Where SGLang's path is right, the generated runner's combine input is bit-identical to it on every
rank. Where it is wrong, `moe_runtime.testing.dynamic.known_wrong` says why, and the test shows the
flaw: the dynamic path raises, or its result leaves the dense MoE that the generated runner matches.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import generated
from moe_runtime import kernels
from moe_runtime.kernels.reference import ReferenceFusedMoe
from moe_runtime.testing import emulate
from moe_runtime.testing.dynamic import QUANT_METHODS, DynamicRunner, has_path, known_wrong
from moe_runtime.testing.recording import RecordingKernel
from tests.runners.harness import EP_SIZES, KEYS, dense_mismatch, run_combination

# The keys SGLang 0.5.13 has a path for (its quant methods; no MORI EPv2); the harness's weights
# are unpadded (hidden_pad 0).
SGLANG_KEYS = [k for k in KEYS if k[1] in QUANT_METHODS and has_path(k[0], k[2])]
RIGHT = [
    (k, ep)
    for k in SGLANG_KEYS
    for ep in EP_SIZES
    if known_wrong(*k, ep_size=ep, hidden_pad=0) is None
]
WRONG = [
    (k, reason)
    for k in SGLANG_KEYS
    if (reason := known_wrong(*k, ep_size=2, hidden_pad=0)) is not None
]
KERNEL = ReferenceFusedMoe()


def dynamic_outputs(run: Any, key: tuple[str, str, str], *, kernel: Any = KERNEL) -> list[Any]:
    a2a, quant, _ = key
    outputs = []
    for weights, config, dispatch_output in zip(
        run.weights, run.configs, run.dispatched.outputs, strict=True
    ):
        dynamic = DynamicRunner(config, weights, quant, kernel=kernel, a2a_backend=a2a)
        outputs.append(dynamic(dispatch_output))
    return outputs


def same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and all(
        x is y or (isinstance(x, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y))
        for x, y in zip(a, b, strict=True)
    )


def test_the_two_lists_cover_the_matrix() -> None:
    assert len(KEYS) == len(generated.RUNNERS)
    # 98 of SGLang 0.5.13's methods and formats; the rest are new methods, MORI EPv2 formats or
    # the wires 0.5.13 lacks (mxfp8: 0.5.23's; per-token fp8: vLLM's).
    assert len(SGLANG_KEYS) == 98
    assert {k[2] for k in KEYS if k[1] in QUANT_METHODS and k not in SGLANG_KEYS} == {
        "mori_v2",
        "mori_v2_fp8",
        "mori_v2_fp4",
        "mori_normal_mxfp8",
        "mori_ll_mxfp8",
        "mori_v2_mxfp8",
        "mori_normal_fp8_token",
        "mori_ll_fp8_token",
    }
    assert {k for k, _ in WRONG} | {k for k, _ in RIGHT} == set(SGLANG_KEYS)
    assert 0 < len(WRONG) < len(SGLANG_KEYS)


@pytest.mark.parametrize(("key", "ep_size"), RIGHT, ids=[f"{'/'.join(k)}-ep{e}" for k, e in RIGHT])
def test_identical_to_sglangs_path_where_it_is_right(
    key: tuple[str, str, str], ep_size: int
) -> None:
    run = run_combination(key, ep_size, kernel=KERNEL)
    for rank, (ours, theirs) in enumerate(
        zip(run.combine_inputs, dynamic_outputs(run, key), strict=True)
    ):
        assert same(ours, theirs), f"rank {rank}"


def test_identity_check_catches_one_changed_value() -> None:
    """Negative control for `same`: a single perturbed element or a swapped routing tensor fails."""
    key = ("mori", "fp8_block", "mori_normal")
    run = run_combination(key, 2, kernel=KERNEL)
    ours, theirs = run.combine_inputs[0], dynamic_outputs(run, key)[0]
    assert same(ours, theirs)
    nudged = ours.hidden_states.clone()
    nudged[0, 0] += 1
    assert not same(ours._replace(hidden_states=nudged), theirs)
    assert not same(ours._replace(topk_ids=ours.topk_ids.flip(0)), theirs)


@pytest.mark.parametrize(("key", "reason"), WRONG, ids=["/".join(k) for k, _ in WRONG])
def test_sglangs_path_is_wrong_where_known(key: tuple[str, str, str], reason: str) -> None:
    run = run_combination(key, 2, kernel=KERNEL)
    assert run.mismatch(key[1], key[2]) is None, "the generated runner is right"
    try:
        theirs = dynamic_outputs(run, key)
    except Exception as error:  # SGLang's own failure mode (shape, attribute or value errors)
        assert type(error).__name__ in {
            "RuntimeError",
            "AttributeError",
            "ValueError",
            "IndexError",
        }
        return
    combined = emulate.combine(run.dispatched, theirs)
    if dense_mismatch(combined, run.expected, key[1], key[2]) is not None:
        return
    # The one flaw the reference cannot show: SGLang hands the fp4 wire to the Swiglu a16w4 kernel,
    # which on AITER takes bf16 (the reference dequantizes whatever it gets). Show the call itself.
    assert key[1] == "mxfp4" and key[2].endswith("_fp4"), f"flaw not shown: {reason}"
    theirs_kernel, ours_kernel = RecordingKernel(), RecordingKernel()
    run_combination(key, 2, kernel=ours_kernel)
    dynamic_outputs(run, key, kernel=theirs_kernel)
    swiglu = int(kernels.ActivationType.Swiglu)
    assert {int(call["activation"]) for call in theirs_kernel.calls + ours_kernel.calls} == {swiglu}
    assert {call["hidden_states"].dtype for call in theirs_kernel.calls} == {torch.float4_e2m1fn_x2}
    assert {call["hidden_states"].dtype for call in ours_kernel.calls} == {torch.bfloat16}
