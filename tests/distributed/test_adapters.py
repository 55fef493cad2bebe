"""The adapters for DeepEP (normal, low latency), Mooncake EP, NIXL EP and MORI, against fakes
with the sources' exact signatures (tests/distributed/fakes.py): their outputs are the
project's dispatch outputs field for field, the generated runner takes them, and the combined
layer is the emulated one and within tolerance of the dense MoE; raw outputs that break the
documented layout are refused by name; the libraries are imported only when selected."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

import pytest
import torch

import generated
from moe_runtime.distributed.adapters import (
    DeepEPLowLatency,
    DeepEPNormal,
    DispatcherUnavailable,
    MooncakeLowLatency,
    MoriDispatcher,
    NixlLowLatency,
    deepep,
    mori,
    require,
)
from moe_runtime.distributed.adapters.deepep import AdapterError
from moe_runtime.testing import emulate
from tests.distributed.cases import identical
from tests.distributed.fakes import (
    FakeDeepEPBuffer,
    FakeMooncakeBuffer,
    FakeMoriOp,
    FakeNixlBuffer,
    FakeWorld,
)
from tests.runners.harness import NUM_EXPERTS, TOP_K, keys, run_combination

EP, TOKENS, MAX_TOKENS = 2, 13, 8


def _run(
    key: tuple[str, str, str],
    make: Callable[[FakeWorld, int], Any],
    *,
    max_tokens: int | None = None,
    hidden: int = 256,
) -> tuple[Any, FakeWorld, list[Any], list[torch.Tensor]]:
    """Dispatch every rank through its adapter, run the generated runners, combine."""
    run = run_combination(key, EP, tokens=TOKENS, max_tokens_per_rank=max_tokens, hidden=hidden)
    world = FakeWorld(run.batch, key[2], max_tokens_per_rank=max_tokens)
    adapters = [make(world, r) for r in range(EP)]
    outputs, handles, combine_inputs = [], [], []
    for rank, adapter in enumerate(adapters):
        rows = run.batch.tokens_slice(rank)
        output, handle = adapter.dispatch(
            run.batch.hidden_states[rows], run.batch.topk_ids[rows], run.batch.topk_weights[rows]
        )
        runner = generated.select(*key)(run.configs[rank], run.weights[rank])
        outputs.append(output)
        handles.append(handle)
        combine_inputs.append(runner(output))
    for rank, combine_input in enumerate(combine_inputs):
        world.stage(rank, combine_input)
    combined = [
        a.combine(ci, h) for a, ci, h in zip(adapters, combine_inputs, handles, strict=True)
    ]
    return run, world, outputs, combined


def _low_latency(adapter: Any, fake: Any, **options: Any) -> Callable[[FakeWorld, int], Any]:
    """A low-latency adapter over `fake` on each rank, at this file's capacity and EP size."""
    return lambda w, r: adapter(
        fake(w, r), num_experts=NUM_EXPERTS, ep_size=EP, max_tokens_per_rank=MAX_TOKENS, **options
    )


def _check_layer(run: Any, key: tuple[str, str, str], combined: list[torch.Tensor]) -> None:
    whole = torch.cat(combined)
    assert identical(whole, run.combined().bfloat16())
    assert run.mismatch(key[1], key[2], whole) is None
    # Control: the same rows filed under the other rank fail the dense comparison.
    assert run.mismatch(key[1], key[2], torch.cat(combined[::-1])) is not None


def test_deepep_normal() -> None:
    key = ("deepep", "fp8_block", "deepep_normal")
    run, _world, outputs, combined = _run(
        key, lambda w, r: DeepEPNormal(FakeDeepEPBuffer(w, r), num_experts=NUM_EXPERTS)
    )
    for rank, output in enumerate(outputs):
        assert identical(output, run.dispatched.outputs[rank])
        assert isinstance(output.num_recv_tokens_per_expert, list)
    _check_layer(run, key, combined)


def test_deepep_normal_num_worst_tokens_padding() -> None:
    key = ("deepep", "unquant", "deepep_normal")
    worst = TOKENS + 3
    run, world, outputs, combined = _run(
        key,
        lambda w, r: DeepEPNormal(
            FakeDeepEPBuffer(w, r), num_experts=NUM_EXPERTS, num_worst_tokens=worst
        ),
    )
    assert [c for c in world.calls if c[0] == "dispatch"] == [
        ("dispatch", r, {"num_worst_tokens": worst}) for r in range(EP)
    ]
    for rank, output in enumerate(outputs):
        real = run.dispatched.outputs[rank].hidden_states.shape[0]
        assert output.hidden_states.shape[0] == worst
        assert output.num_recv_tokens_per_expert == []
        assert bool((output.topk_ids[real:] == -1).all())
        assert output.topk_ids.dtype == torch.int64
    # The padding rows go to the runner's sink: the layer is the unpadded one, bit for bit.
    _check_layer(run, key, combined)


@pytest.mark.parametrize(
    ("key", "use_fp8"),
    [(("deepep", "unquant", "deepep_ll"), False), (("deepep", "fp8_block", "deepep_ll_fp8"), True)],
    ids=["bf16", "fp8"],
)
def test_deepep_low_latency(key: tuple[str, str, str], use_fp8: bool) -> None:
    run, _world, outputs, combined = _run(
        key,
        _low_latency(DeepEPLowLatency, FakeDeepEPBuffer, use_fp8=use_fp8),
        max_tokens=MAX_TOKENS,
    )
    for rank, output in enumerate(outputs):
        # Field for field the emulation's, the column-major scales included (same strides).
        assert identical(output, run.dispatched.outputs[rank])
    if use_fp8:
        scale = outputs[0].hidden_states_scale
        assert scale is not None and scale.stride()[1] == 1  # column-major [L, C, H/128]
    _check_layer(run, key, combined)


@pytest.mark.parametrize("make", ["nixl", "deepep"])
def test_ue8m0_scales_are_unpacked(make: str) -> None:
    key = ("nixl", "unquant", "deepep_ll_fp8")
    fake = {"nixl": FakeNixlBuffer, "deepep": FakeDeepEPBuffer}[make]
    adapter = {"nixl": NixlLowLatency, "deepep": DeepEPLowLatency}[make]
    run, world, outputs, combined = _run(
        key,
        _low_latency(adapter, fake, use_fp8=True, round_scale=True, use_ue8m0=True),
        max_tokens=MAX_TOKENS,
        hidden=512,  # DeepEP packs four UE8M0 scales per int32: H % 512 == 0
    )
    assert {c[2]["use_ue8m0"] for c in world.calls} == {True}
    for rank, output in enumerate(outputs):
        scale = output.hidden_states_scale
        assert scale is not None and scale.dtype == torch.float32
        assert tuple(scale.shape) == (
            NUM_EXPERTS // EP,
            MAX_TOKENS * EP,
            run.batch.hidden_size // 128,
        )
        assert bool((torch.frexp(scale).mantissa == 0.5).all())  # powers of two
        # Valid slots dequantize to the emulation's rows within one fp8 step.
        emulated = run.dispatched.outputs[rank]
        valid = torch.arange(scale.shape[1]) < output.masked_m.unsqueeze(1)
        mine = output.hidden_states.float() * scale.repeat_interleave(128, -1)
        theirs = emulated.hidden_states.float() * emulated.hidden_states_scale.repeat_interleave(
            128, -1
        )
        assert torch.allclose(mine[valid], theirs[valid], rtol=0.13, atol=1e-3)
    assert run.mismatch(key[1], key[2], torch.cat(combined)) is None


def test_mooncake() -> None:
    key = ("mooncake", "fp8_channel", "deepep_ll_fp8")
    run, _world, outputs, combined = _run(
        key,
        _low_latency(
            MooncakeLowLatency,
            FakeMooncakeBuffer,
            use_fp8=True,
            active_ranks=torch.ones(EP, dtype=torch.int32),
            timeout_us=1000,
        ),
        max_tokens=MAX_TOKENS,
    )
    for rank, output in enumerate(outputs):
        assert identical(output, run.dispatched.outputs[rank])
    _check_layer(run, key, combined)


def test_mooncake_refuses_what_it_cannot_carry() -> None:
    world = FakeWorld(
        emulate.make_batch(4, 256, NUM_EXPERTS, TOP_K, ep_size=EP, seed=0),
        "deepep_ll",
        max_tokens_per_rank=4,
    )
    adapter = MooncakeLowLatency(
        FakeMooncakeBuffer(world, 0),
        num_experts=NUM_EXPERTS,
        ep_size=EP,
        max_tokens_per_rank=4,
        use_fp8=False,
        active_ranks=torch.ones(EP, dtype=torch.int32),
    )
    with pytest.raises(AdapterError, match="H % 128"):
        adapter.dispatch(
            torch.zeros(2, 96, dtype=torch.bfloat16),
            torch.zeros(2, TOP_K, dtype=torch.int32),
            torch.zeros(2, TOP_K),
        )


# Each MORI key with the wire its dispatcher is opened with.
MORI_WIRES = {
    "mori/unquant/mori_normal": "bf16",
    "mori/fp8_block/mori_ll_fp8": "fp8",
    "mori/quark_w4a4_mxfp4/mori_normal_fp4": "fp4",
    "mori/mxfp8/mori_ll_mxfp8": "mxfp8",
    "mori/fp8_channel/mori_normal_fp8_token": "fp8_token",
}


@pytest.mark.parametrize("key", keys(*MORI_WIRES), ids="/".join)
def test_mori(key: tuple[str, str, str]) -> None:
    wire = MORI_WIRES["/".join(key)]
    run, _world, outputs, combined = _run(
        key,
        lambda w, r: MoriDispatcher(
            FakeMoriOp(w, r, max_num_inp_token_per_rank=MAX_TOKENS),
            wire=wire,
            low_latency="_ll" in key[2],
        ),
    )
    for rank, output in enumerate(outputs):
        assert identical(output, run.dispatched.outputs[rank])
    _check_layer(run, key, combined)


def test_raw_outputs_that_break_the_layout_are_refused() -> None:
    ids = torch.zeros(2, TOP_K, dtype=torch.int64)
    weights = torch.zeros(2, TOP_K)
    x = torch.zeros(2, 128, dtype=torch.bfloat16)
    with pytest.raises(AdapterError, match="returns \\(recv_x"):
        deepep.normal_dispatch_output((x, ids, weights))
    with pytest.raises(AdapterError, match="bf16 activations"):
        deepep.normal_dispatch_output(((x, weights), ids, weights, [0], None, None))
    with pytest.raises(AdapterError, match="int64 recv_topk_idx"):
        deepep.normal_dispatch_output((x, ids.int(), weights, [0], None, None))
    low_latency = deepep.DeepEPLowLatency(
        None, num_experts=2, ep_size=2, max_tokens_per_rank=2, use_fp8=False
    )
    with pytest.raises(AdapterError, match="int32 counts"):
        low_latency.dispatch_output(
            (x.view(1, 2, 128), torch.tensor([1]), None, None, None), ids, weights
        )
    with pytest.raises(AdapterError, match="int32 \\[1\\] total_recv"):
        MoriDispatcher(None, wire="bf16", low_latency=False).dispatch_output(
            (x, weights, None, ids.int(), torch.tensor([2])), ids.int(), weights, torch.bfloat16
        )


def test_libraries_are_imported_only_when_selected(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "deep_ep",
        "mori",
        "mori.ops",
        "mooncake",
        "mooncake.mooncake_ep_buffer",
        "nixl_ep",
    ):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    with pytest.raises(DispatcherUnavailable, match=r"aiter-moe-runners\[deepep\]"):
        deepep.open_buffer(None, num_nvl_bytes=1)
    with pytest.raises(DispatcherUnavailable, match=r"aiter-moe-runners\[mori\]"):
        mori.open_op(None)
    with pytest.raises(ValueError, match="unknown dispatcher library"):
        require("torch")
    fake = types.ModuleType("deep_ep")
    fake.Buffer = lambda group, **kwargs: ("buffer", group, kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "deep_ep", fake)
    assert deepep.open_buffer("g", num_nvl_bytes=1) == ("buffer", "g", {"num_nvl_bytes": 1})
