"""Fake `aiter.fused_moe`: v0.1.7.post2's signature (no `swiglu_limit`), and newer ones that tests
swap in for `fused_moe` (v0.1.14's, v0.1.20.post1's, and one with only `swiglu_limit` added).

v0.1.7.post2's signature is the positional part of moe_runtime's `FusedMoeKernel` protocol (its
keyword-only `output` is newer), so each fake takes it from there (with this package's enums as
defaults) plus what its release added; the binding reads the fake's `__signature__`, as it reads
AITER's real one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from moe_runtime.types import FusedMoeKernel

from . import ActivationType, QuantType
from ._recorder import record

_Parameter = inspect.Parameter
_ENUM_DEFAULTS = {"activation": ActivationType.Silu, "quant_type": QuantType.No}
_V0_1_7 = [
    parameter.replace(default=_ENUM_DEFAULTS.get(parameter.name, parameter.default))
    for parameter in list(inspect.signature(FusedMoeKernel.__call__).parameters.values())[1:]
    if parameter.kind is _Parameter.POSITIONAL_OR_KEYWORD
]
_ROUTED = ("hidden_states", "w1", "w2", "topk_weight", "topk_ids")


def _added(kind: Any, **defaults: Any) -> list[inspect.Parameter]:
    return [_Parameter(name, kind, default=default) for name, default in defaults.items()]


def _fake(
    name: str,
    parameters: Sequence[inspect.Parameter],
    doc: str,
    *,
    recorded: tuple[str, ...] = (),
    out_dtype: torch.dtype | None = None,
) -> Callable[..., torch.Tensor]:
    """A fused_moe of `parameters` that records the routed tensors and the `recorded` keywords
    (defaults applied) and returns zeros [M, H] in `out_dtype` (the activations' if None)."""
    signature = inspect.Signature(parameters)

    def fused_moe(*args: Any, **kwargs: Any) -> torch.Tensor:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        hidden_states = values["hidden_states"]
        out = torch.zeros(
            hidden_states.shape[0],
            values["w2"].shape[1],
            dtype=out_dtype or hidden_states.dtype,
        )
        routed = (values[routed_name] for routed_name in _ROUTED)
        return record("fused_moe", out, *routed, **{key: values[key] for key in recorded})

    fused_moe.__signature__ = signature  # type: ignore[attr-defined]
    fused_moe.__name__ = fused_moe.__qualname__ = name
    fused_moe.__doc__ = doc
    return fused_moe


fused_moe = _fake("fused_moe", _V0_1_7, "v0.1.7.post2's signature: `FusedMoeKernel`'s.")
fused_moe_with_swiglu_limit = _fake(
    "fused_moe_with_swiglu_limit",
    [*_V0_1_7[:8], *_added(_Parameter.KEYWORD_ONLY, swiglu_limit=None)],
    "Newer AITER adds keywords such as `swiglu_limit`; tests swap this in for `fused_moe`.",
)
fused_moe_v0_1_14 = _fake(
    "fused_moe_v0_1_14",
    [
        *_V0_1_7,
        *_added(
            _Parameter.POSITIONAL_OR_KEYWORD, splitk=0, swiglu_limit=0.0, gate_mode="separated"
        ),
    ],
    "v0.1.14's signature (aiter/fused_moe.py:146-174): `splitk`, `swiglu_limit`, `gate_mode` "
    "added. Records its keywords, which tests read back from `CALLS`.",
    recorded=("activation", "quant_type", "swiglu_limit", "gate_mode"),
    out_dtype=torch.bfloat16,
)
fused_moe_v0_1_20 = _fake(
    "fused_moe_v0_1_20",
    [
        *_V0_1_7,
        *_added(
            _Parameter.POSITIONAL_OR_KEYWORD,
            splitk=0,
            swiglu_limit=None,
            beta=None,
            linear_beta=None,
            gate_mode="separated",
            shared_w1=None,
            shared_w2=None,
            shared_w1_scale=None,
            shared_w2_scale=None,
            shared_expert_id=-1,
        ),
    ],
    "v0.1.20.post1's signature (aiter/fused_moe.py:454-489): `beta`, `linear_beta` (v0.1.19) "
    "and the `shared_w*` keywords added.",
    recorded=("gate_mode",),
    out_dtype=torch.bfloat16,
)
