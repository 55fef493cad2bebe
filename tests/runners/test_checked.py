"""The checked variant (`generated.select(..., checked=True)`, issue 15 item 6): it catches the
silent wrong answers of the plain runners, and on good input changes nothing and syncs nothing.

Host checks raise `DispatchOutputError`; value checks are device-side asserts, which on the CPU
raise `RuntimeError` at once. Each finding is shown on the plain runner too (the silent behaviour
the checked one exists to catch)."""

from __future__ import annotations

import functools
import re

import pytest
import torch

import generated
from moe_runtime import types as t
from moe_runtime.checks import DispatchOutputError
from moe_runtime.testing import emulate
from moe_runtime.testing.recording import RecordingKernel
from moe_runtime.testing.weights import make_expert_weights
from tests.runners.harness import HIDDEN, INTERMEDIATE, layer_activation
from tests.runtime.sync_guard import no_host_sync

E, EP, K = 8, 2, 2
L = E // EP
Key = tuple[str, str, str]


@functools.cache
def rank_weights(quant: str) -> t.ExpertWeights:
    return make_expert_weights(quant, L, HIDDEN, INTERMEDIATE, seed=0)


@functools.cache
def dispatched(dispatch: str, recv_cap: int = 0) -> emulate.Dispatched:
    batch = emulate.make_batch(10, HIDDEN, E, K, ep_size=EP, seed=7)
    return emulate.dispatch(batch, dispatch, recv_cap=recv_cap)


def layer(quant: str) -> t.MoeLayerConfig:
    return t.MoeLayerConfig(E, L, 0, EP, K, HIDDEN, INTERMEDIATE, layer_activation(quant))


def runners(key: Key) -> tuple[RecordingKernel, t.Runner, RecordingKernel, t.Runner]:
    """A plain and a checked runner of `key` on rank 0, each with its own recording kernel."""
    plain_kernel, checked_kernel = RecordingKernel(), RecordingKernel()
    config, weights = layer(key[1]), rank_weights(key[1])
    plain = generated.select(*key)(config, weights, kernel=plain_kernel)
    checked = generated.select(*key, checked=True)(config, weights, kernel=checked_kernel)
    return plain_kernel, plain, checked_kernel, checked


def test_select_gives_the_checked_subclass_only_when_asked() -> None:
    key = ("mori", "fp8_block", "mori_normal_fp8")
    plain, checked = generated.select(*key), generated.select(*key, checked=True)
    assert plain.__name__ == "Runner" and checked.__name__ == "CheckedRunner"
    assert issubclass(checked, plain) and checked is not plain


@pytest.mark.parametrize("key", sorted(generated.RUNNERS), ids="/".join)
def test_checked_runner_changes_nothing_on_good_input_and_never_syncs(key: Key) -> None:
    plain_kernel, plain, checked_kernel, checked = runners(key)
    output = dispatched(key[2]).outputs[0]
    expected = plain(output)
    with no_host_sync("cpu"):
        result = checked(output)
    assert torch.equal(result.hidden_states, expected.hidden_states)
    assert len(checked_kernel.calls) == len(plain_kernel.calls) == 1
    assert checked_kernel.calls[0].keys() == plain_kernel.calls[0].keys()


# -- findings of issue 15: "Silent wrong answers at run time" --------------------------------------

DEEPEP_NORMAL = ("deepep", "unquant", "deepep_normal")


def deepep_normal_output(ids: list[list[int]], dtype: torch.dtype) -> t.DeepEPNormalDispatchOutput:
    rows = len(ids)
    return t.DeepEPNormalDispatchOutput(
        torch.randn(rows, HIDDEN).bfloat16(),
        None,
        torch.tensor(ids, dtype=dtype),
        torch.full((rows, K), 0.5),
        [1] * L,
    )


@pytest.mark.parametrize(("bad", "alias"), [(L + 1, 0), (-2, L - 1)])
def test_deepep_normal_ids_past_the_sink_are_caught(bad: int, alias: int) -> None:
    plain_kernel, plain, _, checked = runners(DEEPEP_NORMAL)
    output = deepep_normal_output([[bad, 1], [2, -1]], torch.int64)
    # The plain runner's remainder by L + 1 turns the bad id into a real expert, silently.
    plain(output)
    assert plain_kernel.calls[0]["topk_ids"][0, 0] == alias
    with pytest.raises(RuntimeError, match=re.escape(f"topk_ids must lie in [-1, {L})")):
        checked(output)
    # Negative control: -1 is this format's way to say "another rank", and passes.
    checked(deepep_normal_output([[-1, -1], [L - 1, 0]], torch.int64))


@pytest.mark.parametrize(
    ("key", "dtype", "expected"),
    [
        (("none", "unquant", "standard"), torch.uint8, "int32"),
        (("none", "fp8_block", "standard"), torch.bool, "int32"),
        (DEEPEP_NORMAL, torch.bool, "int64 or int32"),
        (DEEPEP_NORMAL, torch.uint8, "int64 or int32"),
        (("mori", "unquant", "mori_normal"), torch.uint8, "int32"),
    ],
    ids=lambda v: "/".join(v) if isinstance(v, tuple) else str(v),
)
def test_bool_and_uint8_ids_are_refused(key: Key, dtype: torch.dtype, expected: str) -> None:
    plain_kernel, plain, _, checked = runners(key)
    output = dispatched(key[2]).outputs[0]
    if key[2] == "standard":
        topk = output.topk_output
        output = output._replace(topk_output=topk._replace(topk_ids=topk.topk_ids.to(dtype)))
    else:
        output = output._replace(topk_ids=output.topk_ids.to(dtype))
    plain(output)  # accepted without a word
    assert plain_kernel.calls[0]["topk_ids"].dtype in (dtype, torch.int32)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(DispatchOutputError, match=f"topk_ids must be {expected}, got {name}"):
        checked(output)


@pytest.mark.parametrize("dispatch", ["deepep_ll", "deepep_ll_fp8"])
def test_masked_m_of_length_one_is_refused(dispatch: str) -> None:
    key = ("deepep", "fp8_block", dispatch)
    plain_kernel, plain, _, checked = runners(key)
    output = dispatched(dispatch).outputs[0]
    short = output._replace(masked_m=output.masked_m[:1])
    plain(short)  # broadcast: every slab takes slab 0's count
    real_rows = int((plain_kernel.calls[0]["topk_ids"] < L).sum())
    assert real_rows == L * int(output.masked_m[0])
    with pytest.raises(DispatchOutputError, match=rf"masked_m must have shape \[{L}\], got \[1\]"):
        checked(short)


def test_masked_m_past_the_slab_capacity_is_caught() -> None:
    _, _, _, checked = runners(("deepep", "unquant", "deepep_ll"))
    output = dispatched("deepep_ll").outputs[0]
    capacity = output.hidden_states.shape[1]
    over = output.masked_m.clone()
    over[1] = capacity + 1
    with pytest.raises(RuntimeError, match=re.escape(f"masked_m must lie in [0, {capacity}]")):
        checked(output._replace(masked_m=over))


@pytest.mark.parametrize("dispatch", ["mori_normal", "mori_ll_fp8"])
def test_mori_recv_cap_minus_one_is_refused(dispatch: str) -> None:
    key = ("mori", "fp8_block", dispatch)
    plain_kernel, plain, _, checked = runners(key)
    output = dispatched(dispatch).outputs[0]
    capacity = output.hidden_states.shape[0]
    plain(output._replace(recv_cap=-1))
    # The plain runner no longer slices by recv_cap (the kernel reads total_recv rows), so a -1
    # cannot drop the last row any more; it is still a malformed output the checked runner names.
    assert plain_kernel.calls[0]["hidden_states"].shape[0] == capacity
    with pytest.raises(DispatchOutputError, match="recv_cap must be an int >= 0"):
        checked(output._replace(recv_cap=-1))


def test_total_recv_past_the_kept_rows_is_caught() -> None:
    _, _, _, checked = runners(("mori", "unquant", "mori_normal"))
    output = dispatched("mori_normal").outputs[0]
    total = int(output.num_recv_tokens_per_expert)
    assert total > 1
    checked(output._replace(recv_cap=total))  # negative control: the cap keeps every valid row
    with pytest.raises(RuntimeError, match=re.escape(f"total_recv must lie in [0, {total - 1}]")):
        checked(output._replace(recv_cap=total - 1))


def test_mori_ids_are_checked_below_total_recv_only() -> None:
    _, _, _, checked = runners(("mori", "unquant", "mori_normal"))
    output = dispatched("mori_normal").outputs[0]
    total = int(output.num_recv_tokens_per_expert)
    stale = output.topk_ids.clone()
    stale[total:] = 1000  # rows past total_recv are stale: anything goes there
    checked(output._replace(topk_ids=stale))
    bad = output.topk_ids.clone()
    bad[total - 1, 0] = -1  # MORI ids are global and reach the kernel: -1 is not rerouted
    with pytest.raises(RuntimeError, match=re.escape(f"topk_ids must lie in [0, {E})")):
        checked(output._replace(topk_ids=bad))


def test_standard_ids_out_of_range_are_caught() -> None:
    _, _, _, checked = runners(("none", "unquant", "standard"))
    output = dispatched("standard").outputs[0]
    for bad in (-1, E):
        ids = output.topk_output.topk_ids.clone()
        ids[0, 0] = bad
        wrong = output._replace(topk_output=output.topk_output._replace(topk_ids=ids))
        with pytest.raises(RuntimeError, match=re.escape(f"topk_ids must lie in [0, {E})")):
            checked(wrong)


@pytest.mark.parametrize(
    ("key", "change", "message"),
    [
        (
            ("none", "unquant", "standard"),
            {"hidden_states": torch.zeros(10, HIDDEN // 2).bfloat16()},
            rf"hidden_states must have shape \[\*, {HIDDEN}\], got \[10, {HIDDEN // 2}\]",
        ),
        (
            ("none", "unquant", "standard"),
            {"hidden_states": torch.zeros(10, HIDDEN)},
            "hidden_states must be bfloat16 or float16, got float32",
        ),
        (
            ("none", "unquant", "standard"),
            {"hidden_states_scale": torch.ones(10, 2)},
            "hidden_states_scale must be None: a bf16 wire",
        ),
        (
            ("mori", "fp8_block", "mori_normal_fp8"),
            {"hidden_states_scale": None},
            "hidden_states_scale must be a tensor, got NoneType",
        ),
        (
            ("mori", "fp8_block", "mori_normal_fp8"),
            {"out_dtype": torch.float32},
            "out_dtype must be bfloat16 or float16",
        ),
        (
            ("deepep", "fp8_block", "deepep_ll_fp8"),
            {"hidden_states_scale": None},
            "hidden_states_scale must be a tensor",
        ),
        (
            DEEPEP_NORMAL,
            {"num_recv_tokens_per_expert": [0]},
            f"num_recv_tokens_per_expert must be a list of {L} ints, got 1",
        ),
    ],
    ids=lambda v: "/".join(v) if isinstance(v, tuple) else None,
)
def test_fields_of_the_wrong_dtype_or_shape_are_refused(
    key: Key, change: dict[str, object], message: str
) -> None:
    _, _, _, checked = runners(key)
    output = dispatched(key[2]).outputs[0]
    checked(output)  # negative control
    with pytest.raises(DispatchOutputError, match=message):
        checked(output._replace(**change))
