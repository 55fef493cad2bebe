"""SGLang's recorded vectors (tests/vectors/README.md): loading them, building their inputs, and
exact comparison of a call and a combine input with the recorded ones."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from moe_runtime.testing.recording import KERNEL_DEFAULTS, as_dtype, value_difference
from moe_runtime.types import (
    DeepEPNormalDispatchOutput,
    ExpertWeights,
    MoeLayerConfig,
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


# What a call may pass that the vectors do not record: the weights (their values never reach the
# recording kernel's output) and two keywords that do not change the result.
_UNRECORDED = frozenset({"w1", "w2", "block_size_M", "moe_sorting_dispatch_policy"})


def call_differences(passed: Mapping[str, Any], expected: dict[str, Any]) -> list[str]:
    """Every keyword where a call differs from a vector's `kernel_call` (empty: the same call); a
    keyword not passed is the kernel's default, one the recording lacks is a difference."""
    actual = {**KERNEL_DEFAULTS, **passed}
    problems = []
    for key in sorted(set(expected) | (set(actual) - _UNRECORDED)):
        if key not in expected:
            problems.append(f"{key}: passed {actual[key]!r}, not in the recorded call")
        elif key not in actual:
            problems.append(f"{key}: recorded, never passed and without a default")
        elif problem := value_difference(key, actual[key], expected[key]):
            problems.append(problem)
    return problems


def combine_differences(actual: Any, expected: dict[str, Any]) -> list[str]:
    """Every field where a combine input differs from a vector's `combine_input`."""
    return [
        problem
        for name, want in expected.items()
        if (problem := value_difference(name, getattr(actual, name, None), want))
    ]


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


# What `replay` builds a runner from: the vector's key, layer config and weights.
RunnerOf = Callable[[tuple[str, str, str], MoeLayerConfig, ExpertWeights], Callable[[Any], Any]]


def replay(path: Path, runner_of: RunnerOf) -> tuple[dict[str, Any], Any]:
    """A vector, and the combine input of the runner `runner_of` builds for it on its dispatch
    output."""
    vector = load_vector(path)
    a2a, quant, dispatch = vector["key"]
    runner = runner_of(
        (a2a, quant, dispatch),
        MoeLayerConfig(**vector["config"]),
        build_weights(vector["weights"]),
    )
    return vector, runner(build_dispatch_output(dispatch, vector["dispatch_output"]))
