"""Runs one generated runner per rank of an emulated dispatch and folds them back: the harness of
the end-to-end and edge-case tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch

import generated
from moe_runtime import types as t
from moe_runtime.enums import GateMode
from moe_runtime.testing import emulate
from moe_runtime.testing.dense import activation_rounding as activation_rounding
from moe_runtime.testing.dense import dense_layer
from moe_runtime.testing.dense import dense_mismatch as dense_mismatch
from moe_runtime.testing.dense import layer_activation as layer_activation
from moe_runtime.testing.weights import make_expert_weights, slice_experts

Key = tuple[str, str, str]
NUM_EXPERTS, HIDDEN, INTERMEDIATE, TOP_K, TOKENS = 8, 256, 128, 3, 13
EP_SIZES = (1, 2, 4)
KEYS = sorted(generated.RUNNERS)
ALL = [(key, ep) for key in KEYS for ep in EP_SIZES]
DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]

_SITU_FIELDS = ("situ_beta", "situ_linear_beta")


def keys(*names: str) -> list[Key]:
    """Runner keys written as their test ids ("a2a/quant/dispatch"), in the order given; a name of
    another shape raises ValueError."""
    found = []
    for name in names:
        a2a, quant, dispatch = name.split("/")
        found.append((a2a, quant, dispatch))
    return found


def each_key(*names: str) -> pytest.MarkDecorator:
    """Parametrizes a test's `key` over the runners named as in `keys`, with those names as ids."""
    return pytest.mark.parametrize("key", keys(*names), ids="/".join)


def layer_config(
    quant: str,
    *,
    ep_size: int = 2,
    ep_rank: int = 0,
    top_k: int = TOP_K,
    hidden: int = HIDDEN,
    intermediate: int = INTERMEDIATE,
    situ_betas: tuple[float, float] | None = None,
) -> t.MoeLayerConfig:
    """One rank's layer of NUM_EXPERTS experts: `quant`'s activation, or situ with
    (situ_beta, situ_linear_beta) when `situ_betas` is given."""
    return t.MoeLayerConfig(
        num_experts=NUM_EXPERTS,
        num_local_experts=NUM_EXPERTS // ep_size,
        ep_rank=ep_rank,
        ep_size=ep_size,
        top_k=top_k,
        hidden_size=hidden,
        intermediate_size=intermediate,
        activation=layer_activation(quant) if situ_betas is None else "situ",
        **({} if situ_betas is None else dict(zip(_SITU_FIELDS, situ_betas, strict=True))),
    )


@dataclasses.dataclass
class Run:
    batch: emulate.GlobalBatch
    dispatched: emulate.Dispatched
    combine_inputs: list[Any]
    runners: list[Any]
    configs: list[t.MoeLayerConfig]
    weights: list[t.ExpertWeights]
    expected: torch.Tensor

    def mismatch(self, quant: str, dispatch: str, actual: torch.Tensor | None = None) -> str | None:
        """Why the combined output (or `actual`) is not the dense result, or None if it is."""
        return dense_mismatch(
            self.combined() if actual is None else actual, self.expected, quant, dispatch
        )

    def combined(self, combine_inputs: list[Any] | None = None) -> torch.Tensor:
        return emulate.combine(self.dispatched, combine_inputs or self.combine_inputs)


def run_combination(
    key: tuple[str, str, str],
    ep_size: int,
    *,
    device: str = "cpu",
    tokens: int = TOKENS,
    top_k: int = TOP_K,
    recv_cap: int = 0,
    max_tokens_per_rank: int | None = None,
    rank_of_runner: Callable[[int], int] = lambda rank: rank,
    seed: int = 0,
    batch: emulate.GlobalBatch | None = None,
    kernel: Any = None,
    hidden: int = HIDDEN,
    intermediate: int = INTERMEDIATE,
    hidden_pad: int = 0,
    intermediate_pad: int = 0,
    gate_mode: GateMode = GateMode.SEPARATED,
    claimed_gate_mode: GateMode | None = None,
    situ_betas: tuple[float, float] | None = None,
) -> Run:
    """Dispatch a batch (a random router-like one unless given), run the generated runner of `key`
    on every rank (with the bound kernel unless one is given), combine, and compute the dense
    float64 reference over all experts.

    `gate_mode` lays out w13's gate and up rows (the dense reference reads them that way);
    `claimed_gate_mode`, for negative controls, is what the runners' weights say instead.
    `situ_betas` makes the layer a situ one with (situ_beta, situ_linear_beta).
    """
    _, quant, dispatch = key
    weights = make_expert_weights(
        quant,
        NUM_EXPERTS,
        hidden,
        intermediate,
        seed=seed,
        device=device,
        hidden_pad=hidden_pad,
        intermediate_pad=intermediate_pad,
        gate_mode=gate_mode,
    )
    if batch is None:
        batch = emulate.make_batch(
            tokens, hidden, NUM_EXPERTS, top_k, ep_size=ep_size, seed=seed + 1, device=device
        )
    dispatched = emulate.dispatch(
        batch, dispatch, recv_cap=recv_cap, max_tokens_per_rank=max_tokens_per_rank
    )
    local = NUM_EXPERTS // ep_size
    runner_type = generated.select(*key)
    configs, runners, combine_inputs, rank_weights_list = [], [], [], []
    for rank, dispatch_output in enumerate(dispatched.outputs):
        owner = rank_of_runner(rank)
        config = layer_config(
            quant,
            ep_size=ep_size,
            ep_rank=owner,
            top_k=batch.top_k,
            hidden=hidden,
            intermediate=intermediate,
            situ_betas=situ_betas,
        )
        rank_weights = slice_experts(weights, owner * local, (owner + 1) * local)
        if claimed_gate_mode is not None:
            rank_weights = dataclasses.replace(rank_weights, gate_mode=claimed_gate_mode)
        runner = runner_type(config, rank_weights, kernel=kernel)
        configs.append(config)
        rank_weights_list.append(rank_weights)
        runners.append(runner)
        combine_inputs.append(runner(dispatch_output))
    expected = dense_layer(
        batch,
        weights,
        quant,
        activation=layer_activation(quant) if situ_betas is None else "situ",
        gate_mode=gate_mode.value,
        situ_betas=situ_betas or (1.0, 1.0),
    )
    return Run(batch, dispatched, combine_inputs, runners, configs, rank_weights_list, expected)
