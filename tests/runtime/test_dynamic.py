"""`moe_runtime.testing.dynamic` is SGLang 0.5.13's path: on every vector recorded from SGLang's own
code it makes exactly the recorded kernel call and returns exactly the recorded combine input. Then
the per-call behaviours the vectors cannot show (mask rebuilds, the environment cap, the wire
upscales, the broken paths) and `known_wrong`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import torch

from moe_runtime import types as t
from moe_runtime.enums import ActivationType, QuantType
from moe_runtime.quant import dequantize_fp8_1x128, dequantize_mxfp4
from moe_runtime.testing import dynamic, emulate
from moe_runtime.testing.recording import KernelCall, RecordingKernel, as_dtype
from moe_runtime.testing.weights import make_expert_weights, slice_experts
from tests.recording import call_differences, combine_differences, replay, vector_paths

VECTOR_PATHS = vector_paths()
_COMBINE_INPUT_OF = {
    "standard": t.StandardCombineInput,
    "deepep_normal": t.DeepEPNormalCombineInput,
    "mori_normal": t.MoriEPNormalCombineInput,
    "mori_normal_fp8": t.MoriEPNormalCombineInput,
}


class WeightRecordingKernel(RecordingKernel):
    """The vectors' recording kernel, also keeping the weights and any positional arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.positional: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.positional.append(args)
        self.weights.append((kwargs["w1"], kwargs["w2"]))
        return super().__call__(*args, **kwargs)


def zeros_output(call: KernelCall) -> torch.Tensor:
    """Zeros [M, H] in bf16: works for every wire dtype (the vectors' recording kernel cannot sum
    fp4x2 activations)."""
    return torch.zeros(call["hidden_states"].shape[0], call["w2"].shape[1], dtype=torch.bfloat16)


def injected(kernel: object) -> t.FusedMoeKernel:
    """The recorders take fused_moe's keywords through **kwargs, which mypy cannot match to the
    FusedMoeKernel protocol; at run time any such callable is a valid injected kernel."""
    return cast(t.FusedMoeKernel, kernel)


def run_vector(path: Path) -> tuple[dict[str, Any], WeightRecordingKernel, Any]:
    kernel = WeightRecordingKernel()
    vector, combine_input = replay(
        path,
        lambda key, config, weights: dynamic.DynamicRunner(
            config, weights, key[1], kernel=injected(kernel), a2a_backend=key[0]
        ),
    )
    return vector, kernel, combine_input


def test_all_23_vectors_are_there() -> None:
    assert len(VECTOR_PATHS) == 23


@pytest.mark.parametrize("path", VECTOR_PATHS, ids=lambda p: p.stem)
def test_dynamic_path_makes_sglangs_kernel_call_and_combine_input(path: Path) -> None:
    vector, kernel, combine_input = run_vector(path)
    assert len(kernel.calls) == 1 and kernel.positional == [()]  # all by keyword, like SGLang
    assert call_differences(kernel.calls[0], vector["kernel_call"]) == []
    assert isinstance(kernel.calls[0]["quant_type"], QuantType)  # enums, not bare ints
    assert isinstance(kernel.calls[0]["activation"], ActivationType)
    w1, w2 = kernel.weights[0]
    for weight, name in ((w1, "w13_weight"), (w2, "w2_weight")):
        spec = vector["weights"][name]
        assert list(weight.shape) == spec["shape"] and weight.dtype == as_dtype(spec["dtype"])
    assert type(combine_input) is _COMBINE_INPUT_OF[vector["key"][2]]
    assert combine_differences(combine_input, vector["combine_input"]) == []
    a2a, quant, dispatch = vector["key"]
    assert dynamic.known_wrong(a2a, quant, dispatch, ep_size=vector["config"]["ep_size"]) is None


@pytest.mark.parametrize("path", VECTOR_PATHS[::5], ids=lambda p: p.stem)
def test_the_comparison_catches_a_perturbed_recording(path: Path) -> None:
    """Negative control: a changed id, mask, enum, scale, dtype or output fails the comparison."""
    vector, kernel, combine_input = run_vector(path)
    call = kernel.calls[0]
    recorded = vector["kernel_call"]
    assert call_differences(call, recorded) == []
    ids = recorded["topk_ids"].clone()
    ids[0, 0] += 1
    mask = torch.ones(3, dtype=torch.int32)
    for key, value in (
        ("topk_ids", ids),
        ("quant_type", recorded["quant_type"] + 1),
        ("activation", recorded["activation"] + 1),
        ("expert_mask", mask if recorded["expert_mask"] is None else None),
        ("a2_scale", torch.ones(1)),
        ("hidden_states", recorded["hidden_states"][:-1]),
        ("dtype", "float16"),
        ("doweight_stage1", True),
    ):
        assert call_differences(call, {**recorded, key: value}), key
    assert call_differences({**call, "gate_mode": "interleave"}, recorded)
    expected_combine = vector["combine_input"]
    zeroed = {**expected_combine, "hidden_states": torch.zeros_like(combine_input.hidden_states)}
    assert combine_differences(combine_input, zeroed)


# --------------------------------------------------------------------------- per-call behaviour


def small_config(ep_size: int = 2, ep_rank: int = 1, **extra: Any) -> t.MoeLayerConfig:
    return t.MoeLayerConfig(
        num_experts=4 * ep_size, num_local_experts=4, ep_rank=ep_rank, ep_size=ep_size, top_k=2,
        hidden_size=256, intermediate_size=128, activation="silu", **extra,
    )


def bf16_weights(local_experts: int = 4) -> t.ExpertWeights:
    return t.ExpertWeights(
        w13_weight=torch.zeros(local_experts, 256, 256, dtype=torch.bfloat16),
        w2_weight=torch.zeros(local_experts, 256, 128, dtype=torch.bfloat16),
    )


def fp4_weights() -> t.ExpertWeights:
    packed = torch.zeros(4, 256, 128, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    return t.ExpertWeights(
        w13_weight=packed,
        w2_weight=torch.zeros(4, 256, 64, dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
        w13_scale=torch.full((4, 256, 8), 127, dtype=torch.uint8).view(torch.float8_e8m0fnu),
        w2_scale=torch.full((4, 256, 4), 127, dtype=torch.uint8).view(torch.float8_e8m0fnu),
    )


def fp8_block_weights() -> t.ExpertWeights:
    return t.ExpertWeights(
        w13_weight=torch.zeros(4, 256, 256, dtype=torch.float8_e4m3fn),
        w2_weight=torch.zeros(4, 256, 128, dtype=torch.float8_e4m3fn),
        w13_scale=torch.ones(4, 2, 2),
        w2_scale=torch.ones(4, 2, 1),
    )


def batch(ep_size: int = 2) -> emulate.GlobalBatch:
    return emulate.make_batch(6, 256, 4 * ep_size, 2, ep_size=ep_size, seed=7)


def runner_of(
    quant: str,
    kernel: object,
    weights: t.ExpertWeights | None = None,
    *,
    config: t.MoeLayerConfig | None = None,
    a2a_backend: str | None = None,
) -> dynamic.DynamicRunner:
    return dynamic.DynamicRunner(
        config or small_config(),
        weights or bf16_weights(),
        quant,
        kernel=injected(kernel),
        a2a_backend=a2a_backend,
    )


def output_of(format: str, rank: int, **options: Any) -> Any:
    """Rank `rank`'s dispatch output (typed Any: each test reads its own format's fields)."""
    return emulate.dispatch(batch(), format, **options).outputs[rank]


def expert_masks_of_two_calls(format: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The expert masks the kernel gets on two calls of one runner with rank 1's output."""
    kernel = RecordingKernel()
    runner = runner_of("unquant", kernel)
    output = output_of(format, 1)
    runner(output)
    runner(output)
    first, second = (call["expert_mask"] for call in kernel.calls)
    return first, second


def test_standard_mask_is_rebuilt_every_call_and_the_others_are_not() -> None:
    first, second = expert_masks_of_two_calls("standard")
    assert first is not second and torch.equal(first, second)
    assert first.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]

    first, second = expert_masks_of_two_calls("deepep_normal")
    assert first is second and first.tolist() == [1, 1, 1, 1, 0]


def test_deepep_normal_reroutes_minus_one_and_hands_back_the_originals() -> None:
    kernel = RecordingKernel()
    output = output_of("deepep_normal", 0)
    assert bool((output.topk_ids == -1).any())
    combine_input = runner_of("unquant", kernel)(output)
    ids = kernel.calls[0]["topk_ids"]
    assert ids.dtype == torch.int32
    assert torch.equal(ids, torch.where(output.topk_ids == -1, 4, output.topk_ids).int())
    assert isinstance(combine_input, t.DeepEPNormalCombineInput)
    assert combine_input.topk_ids is output.topk_ids
    assert combine_input.topk_weights is output.topk_weights


def test_mori_cap_comes_from_the_environment_not_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output = output_of("mori_normal", 1, recv_cap=2)
    kernel = RecordingKernel()
    runner = runner_of("unquant", kernel)
    monkeypatch.delenv(dynamic.MORI_MAX_INPUT_TOKENS_ENV, raising=False)
    runner(output)
    monkeypatch.setenv(dynamic.MORI_MAX_INPUT_TOKENS_ENV, "5")
    combine_input = runner(output)
    rows = [call["hidden_states"].shape[0] for call in kernel.calls]
    assert rows == [output.hidden_states.shape[0], 5]
    assert kernel.calls[1]["topk_ids"].shape[0] == 5
    assert kernel.calls[1]["num_local_tokens"] is output.num_recv_tokens_per_expert
    assert kernel.calls[1]["dtype"] == torch.bfloat16
    assert isinstance(combine_input, t.MoriEPNormalCombineInput)
    assert combine_input.hidden_states.shape[0] == 5
    assert combine_input.topk_ids is output.origin_topk_ids


def test_fp8_wire_upscaled_for_fp4_weights_and_fp4_wire_for_fp8_weights() -> None:
    fp8_output = output_of("mori_normal_fp8", 1)
    kernel = RecordingKernel()
    runner_of("quark_w4a4_mxfp4", kernel, fp4_weights())(fp8_output)
    call = kernel.calls[0]
    n = int(fp8_output.num_recv_tokens_per_expert)
    want = dequantize_fp8_1x128(
        fp8_output.hidden_states, fp8_output.hidden_states_scale, torch.bfloat16
    )
    assert call["hidden_states"].dtype == torch.bfloat16
    assert torch.equal(call["hidden_states"][:n], want[:n])
    assert call["a1_scale"] is None and call["quant_type"] == QuantType.per_1x32

    fp4_output = output_of("mori_ll_fp4", 1)
    kernel = RecordingKernel()
    combine_input = runner_of("fp8_block", kernel, fp8_block_weights())(fp4_output)
    call = kernel.calls[0]
    n = int(fp4_output.num_recv_tokens_per_expert)
    want = dequantize_mxfp4(
        fp4_output.hidden_states, fp4_output.hidden_states_scale, torch.bfloat16
    )
    assert torch.equal(call["hidden_states"][:n], want[:n])
    assert call["a1_scale"] is None and call["quant_type"] == QuantType.per_128x128
    assert type(combine_input) is t.MoriEPLLCombineInput


def test_bf16_weights_lift_to_the_wire_quant_type() -> None:
    for format, quant_type in (
        ("mori_normal_fp8", QuantType.per_128x128),
        ("mori_normal_fp4", QuantType.per_1x32),
        ("mori_normal", QuantType.No),
    ):
        output = output_of(format, 0)
        kernel = RecordingKernel(respond=zeros_output)
        runner_of("unquant", kernel)(output)
        assert kernel.calls[0]["quant_type"] == quant_type
        assert kernel.calls[0]["a1_scale"] is output.hidden_states_scale
        assert kernel.calls[0]["hidden_states"] is output.hidden_states


def test_zero_rows_skip_the_kernel_and_return_the_input() -> None:
    output = output_of("deepep_normal", 0)
    empty = output._replace(
        hidden_states=output.hidden_states[:0],
        topk_ids=output.topk_ids[:0],
        topk_weights=output.topk_weights[:0],
    )
    kernel = RecordingKernel()
    combine_input = runner_of("unquant", kernel)(empty)
    assert kernel.calls == [] and combine_input.hidden_states is empty.hidden_states


def test_mxfp4_forces_swiglu_and_passes_the_limit() -> None:
    kernel = RecordingKernel()
    config = small_config(swiglu_limit=7.0)
    runner_of("mxfp4", kernel, fp4_weights(), config=config)(output_of("deepep_normal", 1))
    call = kernel.calls[0]
    assert call["activation"] == ActivationType.Swiglu
    assert call["swiglu_limit"] == 7.0
    assert "gate_mode" not in call  # the recorder's signature has no gate_mode keyword
    assert call["expert_mask"].tolist() == [1, 1, 1, 1, 0]


def run_dynamic_on_every_rank(
    format: str, ep_size: int, *, drop_rank: int | None = None
) -> torch.Tensor:
    """Emulated dispatch -> DynamicRunner with the bound (reference) kernel per rank -> combine."""
    weights = make_expert_weights("unquant", 8, 256, 128, seed=0)
    global_batch = emulate.make_batch(10, 256, 8, 2, ep_size=ep_size, seed=1)
    dispatched = emulate.dispatch(global_batch, format)
    local = 8 // ep_size
    combine_inputs = []
    for rank, output in enumerate(dispatched.outputs):
        config = t.MoeLayerConfig(8, local, rank, ep_size, 2, 256, 128, "silu")
        runner = dynamic.DynamicRunner(
            config, slice_experts(weights, rank * local, (rank + 1) * local), "unquant"
        )
        combine_input: Any = runner(output)
        if rank == drop_rank:
            combine_input = combine_input._replace(
                hidden_states=torch.zeros_like(combine_input.hidden_states)
            )
        combine_inputs.append(combine_input)
    return emulate.combine(dispatched, combine_inputs)


@pytest.mark.parametrize("ep_size", [2, 4])
@pytest.mark.parametrize("format", ["standard", "deepep_normal", "mori_normal", "mori_ll"])
def test_bound_kernel_path_agrees_across_formats_and_ep_sizes(format: str, ep_size: int) -> None:
    """The kernel imported per call (the reference on CPU) behind every rank of every format the
    dynamic path gets right gives the single-rank result, up to bf16 rounding of per-rank sums."""
    single = run_dynamic_on_every_rank("standard", 1)
    assert single.abs().max() > 0.1
    split = run_dynamic_on_every_rank(format, ep_size)
    assert torch.allclose(split, single, rtol=2e-2, atol=2e-2)
    dropped = run_dynamic_on_every_rank(format, ep_size, drop_rank=1)
    assert not torch.allclose(dropped, single, rtol=2e-2, atol=2e-2)


# --------------------------------------------------------------------------- SGLang's broken paths


def test_broken_paths_fail_as_sglang_does() -> None:
    with pytest.raises(AttributeError, match="topk_output"):
        runner_of("ct_w8a8_fp8", RecordingKernel())(output_of("deepep_normal", 1))

    ll_output = output_of("deepep_ll", 1)
    with pytest.raises(AttributeError, match="expert_mask_gpu"):
        runner_of("unquant", RecordingKernel(), a2a_backend="nixl")(ll_output)

    # DeepEP low latency reaches the kernel as 3-D slabs with the sender-side [T, K] ids.
    kernel = RecordingKernel()
    with pytest.raises(RuntimeError):  # the recorder cannot even broadcast rows against ids
        runner_of("unquant", kernel)(ll_output)
    assert kernel.calls[0]["hidden_states"].dim() == 3
    assert kernel.calls[0]["hidden_states"].shape[0] != kernel.calls[0]["topk_ids"].shape[0]

    # quark_int4fp8 passes no mask: standard's global ids reach the kernel unmasked.
    kernel = RecordingKernel()
    int4 = t.ExpertWeights(
        w13_weight=torch.zeros(4, 256, 256, dtype=torch.int8),
        w2_weight=torch.zeros(4, 256, 128, dtype=torch.int8),
        w13_scale=torch.ones(4, 256, 1),
        w2_scale=torch.ones(4, 256, 1),
    )
    runner_of("quark_int4fp8", kernel, int4)(output_of("standard", 1))
    assert kernel.calls[0]["expert_mask"] is None


def test_known_wrong_names_each_broken_key() -> None:
    assert dynamic.known_wrong("none", "unquant", "standard") is None
    assert dynamic.known_wrong("mori", "fp8_block", "mori_ll_fp4") is None
    assert dynamic.known_wrong("mori", "mxfp4", "mori_normal_fp8", hidden_pad=0) is None
    assert dynamic.known_wrong("none", "quark_int4fp8", "standard", ep_size=1) is None
    expectations = {
        ("deepep", "unquant", "deepep_ll"): "low-latency",
        ("mooncake", "fp8_block", "deepep_ll_fp8"): "no expert_mask_gpu",
        ("nixl", "quark_int4fp8", "deepep_ll"): "no expert_mask_gpu",
        ("mori", "ct_w8a8_fp8", "mori_normal"): "topk_output",
        ("none", "ct_w8a8_fp8", "standard"): "static",
        ("none", "quark_int4fp8", "standard"): "no expert mask",
        ("deepep", "quark_int4fp8", "deepep_normal"): "no expert mask",
        ("mori", "fp8_channel", "mori_ll_fp8"): "block scales",
        ("mori", "mxfp4", "mori_normal_fp4"): "a16w4",
        ("mori", "mxfp4", "mori_ll_fp8"): "padded hidden size",
    }
    for (a2a, quant, dispatch), words in expectations.items():
        reason = dynamic.known_wrong(a2a, quant, dispatch)
        assert reason is not None and words in reason, (a2a, quant, dispatch, reason)
    with pytest.raises(ValueError, match="unknown a2a backend 'ep'"):
        dynamic.known_wrong("ep", "unquant", "standard")
    with pytest.raises(ValueError, match="unknown quant method"):
        dynamic.known_wrong("none", "int8", "standard")
    with pytest.raises(ValueError, match="produces no 'mori_normal' outputs"):
        dynamic.known_wrong("deepep", "unquant", "mori_normal")


def test_unknown_names_are_refused() -> None:
    with pytest.raises(t.ConfigError, match="unknown quant method 'fp8'"):
        runner_of("fp8", RecordingKernel())
    with pytest.raises(t.ConfigError, match="unknown a2a backend 'deep_ep'"):
        runner_of("unquant", RecordingKernel(), a2a_backend="deep_ep")
