"""SGLang 0.5.13's own kernel calls and combine inputs (tests/vectors) reproduced exactly by the
generated runner of each recorded key, run with the vectors' recording kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import generated
from moe_runtime.testing.recording import RecordingKernel
from tests.recording import (
    call_differences,
    combine_differences,
    load_vector,
    replay,
    vector_paths,
)

VECTOR_PATHS = vector_paths()


def run_vector(path: Path) -> tuple[dict[str, Any], RecordingKernel, Any]:
    kernel = RecordingKernel()
    vector, combine_input = replay(
        path, lambda key, config, weights: generated.select(*key)(config, weights, kernel=kernel)
    )
    return vector, kernel, combine_input


def test_every_recorded_key_has_a_generated_runner() -> None:
    assert len(VECTOR_PATHS) == 23
    for path in VECTOR_PATHS:
        assert tuple(load_vector(path)["key"]) in generated.RUNNERS, path.name


@pytest.mark.parametrize("path", VECTOR_PATHS, ids=lambda p: p.stem)
def test_runner_makes_sglangs_kernel_call_and_combine_input(path: Path) -> None:
    vector, kernel, combine_input = run_vector(path)
    assert len(kernel.calls) == 1
    assert call_differences(kernel.calls[0], vector["kernel_call"]) == []
    assert type(combine_input).__name__.startswith(
        {"standard": "Standard", "deepep_normal": "DeepEPNormal"}.get(vector["key"][2], "MoriEP")
    )
    assert combine_differences(combine_input, vector["combine_input"]) == []


@pytest.mark.parametrize("path", VECTOR_PATHS[::7], ids=lambda p: p.stem)
def test_comparison_catches_a_perturbed_call_or_output(path: Path) -> None:
    """Negative control: the comparisons above fail on a changed id, mask, enum or output."""
    vector, kernel, combine_input = run_vector(path)
    call = dict(kernel.calls[0])
    ids = call["topk_ids"].clone()
    ids[0, 0] += 1
    assert call_differences({**call, "topk_ids": ids}, vector["kernel_call"])
    assert call_differences(
        {**call, "quant_type": int(call["quant_type"]) + 1}, vector["kernel_call"]
    )
    assert call_differences(
        {**call, "expert_mask": torch.ones(3, dtype=torch.int32)}, vector["kernel_call"]
    )
    assert call_differences({**call, "a2_scale": torch.ones(1)}, vector["kernel_call"])
    zeroed = combine_input._replace(hidden_states=torch.zeros_like(combine_input.hidden_states))
    assert combine_differences(zeroed, vector["combine_input"])
