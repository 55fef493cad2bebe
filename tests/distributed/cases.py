"""Jobs the worker ranks run (module level, so that spawned workers can import them), and the
comparison of what they return with the single-process emulation of the same batch."""

from __future__ import annotations

from typing import Any

import torch

import generated
from moe_runtime.distributed import combine, dispatch, wire
from moe_runtime.distributed import dispatcher as dispatch_module
from moe_runtime.testing import emulate
from moe_runtime.testing.weights import make_expert_weights, slice_experts
from tests.runners.harness import HIDDEN, INTERMEDIATE, NUM_EXPERTS, TOP_K, Run, layer_config

FAULTS = ("drop", "swap")


def _drop_one_token(rank: int) -> None:
    """This rank's dispatcher loses the first row it sends to rank 0 (and knows no better: its
    counts and handle are consistent with the loss, as a transport bug would leave them)."""
    real = dispatch_module._send_plan

    def plan(*args: Any, **kwargs: Any) -> dispatch_module.SendPlan:
        p = real(*args, **kwargs)
        if p.rows[0] == 0:
            raise AssertionError("fault injection needs a row to drop")
        keep = torch.ones(p.tokens.numel(), dtype=torch.bool, device=p.tokens.device)
        keep[0] = False
        return dispatch_module.SendPlan(
            (p.rows[0] - 1, *p.rows[1:]),
            p.tokens[keep],
            None if p.ks is None else p.ks[keep],
            None if p.experts is None else p.experts[keep],
        )

    dispatch_module._send_plan = plan


def _swap_two_ranks(rank: int) -> None:
    """This rank files the rows of two ranks (the first two it hears from) under each other's
    name on arrival."""
    real = wire.exchange
    calls = [0]

    def exchange(payload: torch.Tensor, send_rows: Any, recv_rows: Any, group: Any) -> torch.Tensor:
        out = real(payload, send_rows, recv_rows, group)
        calls[0] += 1
        if calls[0] > 1:  # the dispatch's rows only; the combine goes back untouched
            return out
        blocks = list(torch.split(out, list(recv_rows)))
        heard = [s for s, n in enumerate(recv_rows) if n]
        if len(heard) < 2:
            raise AssertionError("fault injection needs rows from two ranks")
        a, b = heard[:2]
        blocks[a], blocks[b] = blocks[b], blocks[a]
        return torch.cat(blocks)

    wire.exchange = exchange


def run_layer(
    *,
    rank: int,
    world: int,
    device: str,
    key: tuple[str, str, str],
    seed: int,
    tokens: int,
    recv_cap: int = 0,
    fault: str | None = None,
    fault_rank: int = 1,
) -> tuple[Any, Any, torch.Tensor]:
    """One MoE layer on this rank: the batch and weights of `harness.run_combination(key, world,
    seed=seed, tokens=tokens)`, this rank's tokens dispatched, the generated runner, combined.
    Returns (dispatch output, combine input, combined [T_r, H]) on the CPU."""
    saved = dispatch_module._send_plan, wire.exchange
    if fault is not None and rank == fault_rank:
        {"drop": _drop_one_token, "swap": _swap_two_ranks}[fault](rank)
    try:
        _, quant, fmt = key
        weights = make_expert_weights(
            quant, NUM_EXPERTS, HIDDEN, INTERMEDIATE, seed=seed, device=device
        )
        batch = emulate.make_batch(
            tokens, HIDDEN, NUM_EXPERTS, TOP_K, ep_size=world, seed=seed + 1, device=device
        )
        rows = batch.tokens_slice(rank)
        local = NUM_EXPERTS // world
        output, handle = dispatch(
            fmt,
            batch.hidden_states[rows],
            batch.topk_ids[rows],
            batch.topk_weights[rows],
            num_experts=NUM_EXPERTS,
            recv_cap=recv_cap,
        )
        config = layer_config(quant, ep_size=world, ep_rank=rank)
        runner = generated.select(*key)(
            config, slice_experts(weights, rank * local, (rank + 1) * local)
        )
        combine_input = runner(output)
        combined = combine(handle, combine_input)
        return _cpu(output), _cpu(combine_input), combined.cpu()
    finally:
        dispatch_module._send_plan, wire.exchange = saved


def _cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, tuple):
        return type(value)(*(_cpu(v) for v in value))
    return value


def identical(a: Any, b: Any) -> bool:
    """Same type, dtype, shape, strides and bits (one-byte floats compared as bytes)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            return False
        if (a.dtype, a.shape, a.stride()) != (b.dtype, b.shape, b.stride()):
            return False
        a, b = a.cpu(), b.cpu()
        if a.element_size() == 1:
            return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
        # Bit patterns, so that NaN == NaN and -0.0 != 0.0.
        width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(width), b.contiguous().view(width))
    if isinstance(a, tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(identical(x, y) for x, y in zip(a, b, strict=True))
        )
    return bool(type(a) is type(b) and a == b)


def differences(results: list[Any], run: Run, quant: str, fmt: str) -> list[str]:
    """Every way the ranks' results differ from the emulated run `run`; empty when none."""
    problems = []
    emulated_combined = run.combined()
    # On CUDA the emulation's low-latency combine is an index_add_ with repeated indices (atomic
    # adds in any order), so its float32 sums may differ from the sequential order by an ulp or
    # so; everything else (and every CPU result) is compared bit for bit.
    atomic = run.batch.hidden_states.is_cuda and fmt in ("deepep_ll", "deepep_ll_fp8")
    for rank, (output, combine_input, combined) in enumerate(results):
        expected = run.dispatched.outputs[rank]
        if not identical(output, _cpu(expected)):
            fields = [
                f
                for f, x, y in zip(expected._fields, output, _cpu(expected), strict=True)
                if not identical(x, y)
            ]
            problems.append(f"rank {rank}: dispatch output differs in {fields}")
        if not identical(combine_input, _cpu(run.combine_inputs[rank])):
            problems.append(f"rank {rank}: combine input differs from the emulated runner's")
        rows = run.batch.tokens_slice(rank)
        expected_rows = emulated_combined[rows].cpu()
        if atomic:
            same = torch.allclose(combined, expected_rows, rtol=1e-6, atol=1e-6)
        else:
            same = identical(combined, expected_rows)
        if not same:
            problems.append(f"rank {rank}: combined rows differ from emulate.combine")
    whole = torch.cat([combined for _, _, combined in results])
    dense = run.mismatch(quant, fmt, whole)
    if dense is not None:
        problems.append(f"against dense float64: {dense}")
    return problems
