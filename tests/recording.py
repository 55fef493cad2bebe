"""The recording kernel of tests/vectors/README.md, and exact comparison with a recorded call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from moe_runtime.types import (
    DeepEPNormalDispatchOutput,
    ExpertWeights,
    MoriEPLLDispatchOutput,
    MoriEPNormalDispatchOutput,
    StandardDispatchOutput,
    TopKOutput,
)

# The vectors live in the repository; MOE_TEST_VECTORS_DIR points elsewhere (another recording).
VECTORS_DIR = Path(
    os.environ.get(
        "MOE_TEST_VECTORS_DIR",
        Path(__file__).resolve().parent / "vectors" / "sglang-0.5.13",
    )
)
RECORDED_VECTORS = 23


def vector_paths() -> list[Path]:
    """Every recorded vector; a missing or incomplete directory fails collection, naming the path.

    An empty parametrisation would let every vector test pass by running nothing.
    """
    paths = sorted(VECTORS_DIR.glob("*.pt"))
    if len(paths) != RECORDED_VECTORS:
        raise FileNotFoundError(
            f"expected {RECORDED_VECTORS} SGLang vectors (*.pt) under {VECTORS_DIR}, found "
            f"{len(paths)}; they ship in tests/vectors/ (MOE_TEST_VECTORS_DIR overrides the path)"
        )
    return paths


# fused_moe's defaults (docs/aiter_fused_moe.md): a keyword not passed is recorded with these.
KERNEL_DEFAULTS: dict[str, Any] = {
    "expert_mask": None,
    "activation": 0,
    "quant_type": 0,
    "doweight_stage1": False,
    "w1_scale": None,
    "w2_scale": None,
    "a1_scale": None,
    "a2_scale": None,
    "num_local_tokens": None,
    "dtype": None,
    "hidden_pad": 0,
    "intermediate_pad": 0,
    "bias1": None,
    "bias2": None,
}


class RecordingKernel:
    """Records its keyword arguments; returns the README's deterministic function of its inputs."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        hidden_states: torch.Tensor,
        w1: torch.Tensor,
        w2: torch.Tensor,
        topk_weight: torch.Tensor,
        topk_ids: torch.Tensor,
        **kwargs: Any,
    ) -> torch.Tensor:
        self.calls.append(
            {
                "hidden_states": hidden_states,
                "topk_weight": topk_weight,
                "topk_ids": topk_ids,
                **kwargs,
            }
        )
        m, h = hidden_states.shape[0], w2.shape[1]
        # fp4 has no conversion kernel on CPU: its packed bytes stand in for the values.
        fp4 = hidden_states.dtype == torch.float4_e2m1fn_x2
        values = hidden_states.view(torch.uint8) if fp4 else hidden_states
        rows = values.float().reshape(m, -1).sum(dim=-1, keepdim=True)
        mix = (topk_weight.float() * (topk_ids.float() + 1)).sum(dim=-1, keepdim=True)
        dtype = kwargs.get("dtype")
        if dtype is None:
            wide = hidden_states.dtype in (torch.bfloat16, torch.float16)
            dtype = hidden_states.dtype if wide else torch.bfloat16
        return (rows * mix).expand(m, h).to(dtype)


def as_dtype(value: Any) -> Any:
    """Vectors store dtypes by name ("bfloat16")."""
    return getattr(torch, value) if isinstance(value, str) else value


def call_differences(recorded: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Every keyword where a recorded call differs from a vector's `kernel_call` (empty: same)."""
    actual = {**KERNEL_DEFAULTS, **recorded}
    problems = []
    for key in sorted(
        set(expected) | (set(actual) - {"block_size_M", "moe_sorting_dispatch_policy"})
    ):
        if key not in expected:
            problems.append(f"{key}: passed {actual[key]!r}, not in the recorded call")
            continue
        problem = value_difference(actual.get(key, "<missing>"), expected[key], key)
        if problem:
            problems.append(problem)
    return problems


def value_difference(actual: Any, expected: Any, key: str) -> str | None:
    if isinstance(expected, torch.Tensor) or isinstance(actual, torch.Tensor):
        if not (isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)):
            return f"{key}: {type(actual).__name__} vs {type(expected).__name__}"
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            got, want = (f"{x.dtype}{tuple(x.shape)}" for x in (actual, expected))
            return f"{key}: {got} vs {want}"
        # Byte views: CPU torch has no equality kernel for fp8 or fp4.
        if not torch.equal(_bytes(actual), _bytes(expected)):
            return f"{key}: values differ"
        return None
    if key == "dtype":
        return None if as_dtype(actual) == as_dtype(expected) else f"dtype: {actual} vs {expected}"
    if actual is None or expected is None:
        return None if actual is expected else f"{key}: {actual!r} vs {expected!r}"
    return (
        None
        if actual == expected and int(actual) == int(expected)
        else f"{key}: {actual!r} vs {expected!r}"
    )


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().view(torch.uint8)


def load_vector(path: Path) -> dict[str, Any]:
    vector: dict[str, Any] = torch.load(path, weights_only=True)
    return vector


def build_weights(recorded: dict[str, Any]) -> ExpertWeights:
    """A vector's weights: shapes and dtypes for w13/w2 (their values never reach the recording
    kernel's output, so zeros do), the recorded scales as they are."""
    fields: dict[str, Any] = {
        name: torch.zeros(spec["shape"], dtype=as_dtype(spec["dtype"]))
        if isinstance(spec, dict)
        else spec
        for name, spec in recorded.items()
    }
    return ExpertWeights(**fields)


def build_dispatch_output(dispatch: str, fields: dict[str, Any]) -> Any:
    """A vector's dispatch output as this project's type."""
    if dispatch == "standard":
        topk = TopKOutput(fields["topk_weights"], fields["topk_ids"], None)
        return StandardDispatchOutput(fields["hidden_states"], fields["hidden_states_scale"], topk)
    if dispatch == "deepep_normal":
        return DeepEPNormalDispatchOutput(**fields)
    output_type = MoriEPLLDispatchOutput if "_ll" in dispatch else MoriEPNormalDispatchOutput
    return output_type(**{**fields, "out_dtype": as_dtype(fields["out_dtype"])})
