"""The runtime contract types: validation messages, field names and order (SGLang's, as listed in
DESIGN.md), and structural fit with objects that carry SGLang's attribute names."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
import torch

from moe_runtime import types
from moe_runtime.enums import GateMode
from moe_runtime.types import ConfigError, ExpertWeights, MoeLayerConfig

_VALID: dict[str, Any] = {
    "num_experts": 8,
    "num_local_experts": 4,
    "ep_rank": 1,
    "ep_size": 2,
    "top_k": 2,
    "hidden_size": 64,
    "intermediate_size": 32,
    "activation": "silu",
}


def _config(**changes: Any) -> MoeLayerConfig:
    return MoeLayerConfig(**{**_VALID, **changes})


def _config_error(**changes: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        _config(**changes)
    message = str(raised.value)
    assert message.startswith("invalid MoeLayerConfig: ")
    return message


# --- MoeLayerConfig ------------------------------------------------------------------------------


def test_config_valid() -> None:
    config = _config()
    assert config.first_local_expert == 4
    assert config.apply_router_weight_on_input is False
    assert config.swiglu_limit == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.top_k = 3  # type: ignore[misc]


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_config_num_experts_must_match_local_times_ep_size() -> None:
    message = _config_error(num_experts=6)
    assert "num_experts (6) must equal num_local_experts (4) * ep_size (2)" in message


@pytest.mark.parametrize("rank", [-1, 2, 5])
def test_config_ep_rank_in_range(rank: int) -> None:
    assert f"ep_rank must be in [0, 2), got {rank}" in _config_error(ep_rank=rank)


@pytest.mark.parametrize("activation", ["relu", "SiLU", "", "gelu_tanh"])
def test_config_unknown_activation(activation: str) -> None:
    message = _config_error(activation=activation)
    assert f"activation must be one of silu, gelu, swiglu, situ, got {activation!r}" in message


@pytest.mark.parametrize(
    "name",
    ["num_experts", "num_local_experts", "ep_size", "top_k", "hidden_size", "intermediate_size"],
)
@pytest.mark.parametrize("value", [0, -3, 2.0, "8"])
def test_config_sizes_must_be_positive_ints(name: str, value: object) -> None:
    assert f"{name} must be a positive int, got {value!r}" in _config_error(**{name: value})


def test_config_top_k_cannot_exceed_num_experts() -> None:
    assert "top_k (9) cannot exceed num_experts (8)" in _config_error(top_k=9)


def test_config_swiglu_limit_not_negative() -> None:
    message = _config_error(activation="swiglu", swiglu_limit=-1.0)
    assert "swiglu_limit must be >= 0, got -1.0" in message


@pytest.mark.parametrize("name", ["situ_beta", "situ_linear_beta"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_config_situ_betas_positive(name: str, value: float) -> None:
    assert f"{name} must be > 0, got {value!r}" in _config_error(**{name: value})


def test_config_reports_every_problem_at_once() -> None:
    message = _config_error(hidden_size=0, activation="relu", swiglu_limit=-2.0)
    assert "hidden_size must be a positive int, got 0" in message
    assert "activation must be one of silu, gelu, swiglu, situ, got 'relu'" in message
    assert "swiglu_limit must be >= 0, got -2.0" in message
    assert message.count("; ") == 2


@pytest.mark.parametrize("activation", ["silu", "gelu", "swiglu", "situ"])
def test_config_accepts_each_activation(activation: str) -> None:
    assert _config(activation=activation).activation == activation


# --- ExpertWeights -------------------------------------------------------------------------------


def test_weights_valid_with_defaults() -> None:
    weights = ExpertWeights(torch.zeros(3, 8, 4), torch.zeros(3, 4, 4))
    assert weights.num_local_experts == 3
    for name in ("w13_scale", "w2_scale", "a13_scale", "a2_scale", "b13", "b2"):
        assert getattr(weights, name) is None
    assert (weights.doweight_stage1, weights.hidden_pad, weights.intermediate_pad) == (False, 0, 0)


def test_weights_must_be_3d() -> None:
    with pytest.raises(ConfigError) as raised:
        ExpertWeights(torch.zeros(8, 4), torch.zeros(3, 4, 4))
    assert str(raised.value) == (
        "w13_weight and w2_weight must be 3-D [experts, rows, cols], got shapes (8, 4) and "
        "(3, 4, 4)"
    )


def test_weights_expert_counts_must_match() -> None:
    with pytest.raises(ConfigError, match=r"^w13_weight has 3 experts but w2_weight has 2$"):
        ExpertWeights(torch.zeros(3, 8, 4), torch.zeros(2, 4, 4))


@pytest.mark.parametrize(("hidden_pad", "intermediate_pad"), [(-1, 0), (0, -64)])
def test_weights_pads_not_negative(hidden_pad: int, intermediate_pad: int) -> None:
    with pytest.raises(ConfigError, match=r"hidden_pad and intermediate_pad must be >= 0"):
        ExpertWeights(
            torch.zeros(1, 8, 4),
            torch.zeros(1, 4, 4),
            hidden_pad=hidden_pad,
            intermediate_pad=intermediate_pad,
        )


# --- field names and order, as DESIGN.md lists them (SGLang's) --------------------------------

# Both MORI outputs carry the same fields: the mode changes the layout, not the contents.
_MORI_DISPATCH_FIELDS = (
    "hidden_states",
    "hidden_states_scale",
    "topk_ids",
    "topk_weights",
    "num_recv_tokens_per_expert",
    "origin_topk_ids",
    "origin_topk_weights",
    "out_dtype",
    "recv_cap",
)
_DESIGN_FIELDS: dict[str, tuple[str, ...]] = {
    "TopKOutput": ("topk_weights", "topk_ids", "router_logits"),
    "StandardDispatchOutput": ("hidden_states", "hidden_states_scale", "topk_output"),
    "DeepEPNormalDispatchOutput": (
        "hidden_states",
        "hidden_states_scale",
        "topk_ids",
        "topk_weights",
        "num_recv_tokens_per_expert",
    ),
    "DeepEPLLDispatchOutput": (
        "hidden_states",
        "hidden_states_scale",
        "topk_ids",
        "topk_weights",
        "masked_m",
        "expected_m",
    ),
    "MoriEPNormalDispatchOutput": _MORI_DISPATCH_FIELDS,
    "MoriEPLLDispatchOutput": _MORI_DISPATCH_FIELDS,
    "StandardCombineInput": ("hidden_states",),
    "DeepEPNormalCombineInput": ("hidden_states", "topk_ids", "topk_weights"),
    "DeepEPLLCombineInput": ("hidden_states", "topk_ids", "topk_weights"),
    "MoriEPNormalCombineInput": ("hidden_states", "topk_ids", "topk_weights"),
    "MoriEPLLCombineInput": ("hidden_states", "topk_ids", "topk_weights"),
}


@pytest.mark.parametrize("name", sorted(_DESIGN_FIELDS))
def test_named_tuple_fields_follow_sglang(name: str) -> None:
    cls = getattr(types, name)
    assert issubclass(cls, tuple)
    assert cls._fields == _DESIGN_FIELDS[name]


def test_config_and_weights_fields_follow_design() -> None:
    assert [(f.name, f.default) for f in dataclasses.fields(MoeLayerConfig)] == [
        ("num_experts", dataclasses.MISSING),
        ("num_local_experts", dataclasses.MISSING),
        ("ep_rank", dataclasses.MISSING),
        ("ep_size", dataclasses.MISSING),
        ("top_k", dataclasses.MISSING),
        ("hidden_size", dataclasses.MISSING),
        ("intermediate_size", dataclasses.MISSING),
        ("activation", dataclasses.MISSING),
        ("apply_router_weight_on_input", False),
        ("swiglu_limit", 0.0),
        ("moe_sorting_dispatch_policy", 0),
        ("situ_beta", None),
        ("situ_linear_beta", None),
    ]
    assert [(f.name, f.default) for f in dataclasses.fields(ExpertWeights)] == [
        ("w13_weight", dataclasses.MISSING),
        ("w2_weight", dataclasses.MISSING),
        ("w13_scale", None),
        ("w2_scale", None),
        ("a13_scale", None),
        ("a2_scale", None),
        ("b13", None),
        ("b2", None),
        ("doweight_stage1", False),
        ("hidden_pad", 0),
        ("intermediate_pad", 0),
        ("gate_mode", GateMode.SEPARATED),
        ("kernel_layout", False),
    ]


# --- structural fit with SGLang's objects -------------------------------------------------------


class SGLangDeepEPNormalOutput(NamedTuple):
    """A stand-in for SGLang's DeepEP normal dispatch output: its own class, SGLang's fields."""

    hidden_states: torch.Tensor
    hidden_states_scale: torch.Tensor | None
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    num_recv_tokens_per_expert: list[int]

    @property
    def format(self) -> str:
        return "deepep_normal"


def _reads_deepep_normal(out: types.DeepEPNormalDispatchOutput) -> tuple[Any, ...]:
    """What a runner does with its dispatch output: attribute reads and positional unpacking."""
    hidden_states, scale, topk_ids, topk_weights, counts = out
    assert hidden_states is out.hidden_states and topk_ids is out.topk_ids
    return hidden_states, scale, topk_ids, topk_weights, counts, out.num_recv_tokens_per_expert


def test_sglang_dispatch_output_fits_where_ours_is_expected() -> None:
    fields = (
        torch.randn(3, 8),
        None,
        torch.zeros(3, 2, dtype=torch.int32),
        torch.rand(3, 2),
        [2, 1],
    )
    ours = types.DeepEPNormalDispatchOutput(*fields)
    theirs = SGLangDeepEPNormalOutput(*fields)
    assert SGLangDeepEPNormalOutput._fields == types.DeepEPNormalDispatchOutput._fields
    got_ours = _reads_deepep_normal(ours)
    got_theirs = _reads_deepep_normal(theirs)  # type: ignore[arg-type]
    assert len(got_ours) == len(got_theirs) == 6
    assert all(a is b for a, b in zip(got_ours, got_theirs, strict=True))
    # And conversion either way keeps every field in place.
    converted = types.DeepEPNormalDispatchOutput(**theirs._asdict())
    back = SGLangDeepEPNormalOutput(*ours)
    for name in types.DeepEPNormalDispatchOutput._fields:
        assert getattr(converted, name) is getattr(theirs, name)
        assert getattr(back, name) is getattr(ours, name)


def test_sglang_standard_output_with_its_topk_output_fits() -> None:
    # SGLang's StandardTopKOutput, as a plain object with its attribute names.
    topk = SimpleNamespace(
        topk_weights=torch.rand(4, 2),
        topk_ids=torch.zeros(4, 2, dtype=torch.int32),
        router_logits=torch.randn(4, 8),
    )
    theirs = SimpleNamespace(
        hidden_states=torch.randn(4, 8), hidden_states_scale=None, topk_output=topk
    )
    # Every field our type declares is there under the same name, nested ones included.
    for name in types.StandardDispatchOutput._fields:
        assert hasattr(theirs, name), name
    for name in types.TopKOutput._fields:
        assert getattr(theirs.topk_output, name) is getattr(topk, name)
    ours = types.StandardDispatchOutput(
        theirs.hidden_states,
        theirs.hidden_states_scale,
        types.TopKOutput(topk.topk_weights, topk.topk_ids, topk.router_logits),
    )
    assert ours.topk_output.topk_ids is theirs.topk_output.topk_ids


@pytest.mark.parametrize(
    "name",
    [
        "DeepEPNormalCombineInput",
        "DeepEPLLCombineInput",
        "MoriEPNormalCombineInput",
        "MoriEPLLCombineInput",
    ],
)
def test_our_combine_input_fits_sglang_combine(name: str) -> None:
    """SGLang's combine code unpacks `hidden_states, topk_ids, topk_weights` in that order and
    reads them by name; our combine inputs answer both ways with the same tensors."""
    hidden, ids, weights = torch.randn(2, 8), torch.zeros(2, 2, dtype=torch.int32), torch.rand(2, 2)
    combine_input = getattr(types, name)(hidden, ids, weights)
    hidden_states, topk_ids, topk_weights = combine_input
    assert hidden_states is hidden and topk_ids is ids and topk_weights is weights
    assert combine_input.hidden_states is hidden
    assert combine_input.topk_ids is ids
    assert combine_input.topk_weights is weights
