"""Exact comparison of two kernel calls and of two combine inputs (every field, bit for bit)."""

from __future__ import annotations

from typing import Any

import torch


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    # Byte views: CPU torch has no equality kernel for fp8 or fp4.
    return tensor.detach().contiguous().view(torch.uint8)


def value_difference(name: str, a: Any, b: Any) -> str | None:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return f"{name}: {type(a).__name__} vs {type(b).__name__}"
        if a.dtype != b.dtype or a.shape != b.shape or a.stride() != b.stride():
            return (
                f"{name}: {a.dtype}{tuple(a.shape)} stride {a.stride()} vs "
                f"{b.dtype}{tuple(b.shape)} stride {b.stride()}"
            )
        if not torch.equal(_bytes(a), _bytes(b)):
            return f"{name}: values differ"
        return None
    # Enums must be the same members of the same (AITER's) class, not just equal integers.
    if type(a) is not type(b) or a != b:
        return f"{name}: {a!r} ({type(a).__name__}) vs {b!r} ({type(b).__name__})"
    return None


def call_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Every parameter of fused_moe where two recorded calls differ (empty: the same call)."""
    names = sorted((set(a) | set(b)) - {"result"})
    return [d for n in names if (d := value_difference(n, a.get(n), b.get(n))) is not None]


def combine_differences(a: Any, b: Any) -> list[str]:
    """Where two combine inputs differ: their class, then every field."""
    if type(a) is not type(b):
        return [
            f"class {type(a).__module__}.{type(a).__name__} vs {type(b).__module__}."
            f"{type(b).__name__}"
        ]
    return [
        d
        for name, x, y in zip(a._fields, a, b, strict=True)
        if (d := value_difference(name, x, y)) is not None
    ]


def perturbed_call(call: dict[str, Any]) -> dict[str, Any]:
    """The call with one top-k id changed: a negative control for `call_differences`."""
    ids = call["topk_ids"].clone()
    ids.view(-1)[0] = ids.view(-1)[0] + 1
    return {**call, "topk_ids": ids}


def perturbed_combine(combine_input: Any) -> Any:
    """The combine input with one output element changed: a negative control."""
    hidden = combine_input.hidden_states.clone()
    if hidden.numel():
        hidden.view(-1)[0] = hidden.view(-1)[0] + 1
    else:
        hidden = torch.ones(1, dtype=hidden.dtype)
    return combine_input._replace(hidden_states=hidden)


def assert_exact(
    native: Any, native_call: dict[str, Any], ours: Any, ours_call: dict[str, Any]
) -> None:
    """SGLang's combine input and kernel call against the installed path's: the same, and each
    comparison catches one perturbed value (the negative controls)."""
    assert call_differences(native_call, ours_call) == []
    assert combine_differences(native, ours) == []
    assert call_differences(native_call, perturbed_call(ours_call))
    assert combine_differences(native, perturbed_combine(ours))
