"""Load-time pieces of issue 14: the wire upscaler binding (Triton on GPUs, torch elsewhere, Triton
never imported by a CPU process) and the low-latency shape tensors built once per capacity.

The Triton kernels themselves are tested on the GPU, bit for bit against the torch code
(tests/gpu/test_triton_dequant.py)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import generated
from moe_runtime import loadtime, quant
from moe_runtime.kernels import upscale
from moe_runtime.testing import emulate
from moe_runtime.testing.recording import RecordingKernel
from moe_runtime.testing.weights import make_expert_weights
from tests.runners.harness import layer_config

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "torch_code"),
    [
        ("dequantize_fp8_1x128", quant.dequantize_fp8_1x128),
        ("dequantize_mxfp4", quant.dequantize_mxfp4),
    ],
)
def test_cpu_tensors_get_the_torch_code(name: upscale.UpscalerName, torch_code: object) -> None:
    assert loadtime.bind_upscaler(name, torch.device("cpu")) is torch_code


def test_a_gpu_without_a_working_triton_gets_the_torch_code_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(module: str) -> object:
        raise RuntimeError(f"no driver for {module}")

    monkeypatch.setattr(upscale, "_triton_error", None)
    monkeypatch.setattr(importlib, "import_module", broken)
    bound = upscale.bind("dequantize_mxfp4", torch.device("cuda"))
    assert bound is quant.dequantize_mxfp4
    assert upscale.describe() == (
        "torch (moe_runtime.quant) on every device: importing Triton failed "
        f"(RuntimeError: no driver for {upscale.TRITON_MODULE})"
    )


def test_describe_names_the_binding_by_device() -> None:
    if importlib.util.find_spec("triton") is None:
        assert upscale.describe().endswith("on every device: Triton is not installed")
    else:
        assert upscale.describe().startswith(f"Triton ({upscale.TRITON_MODULE}) for CUDA/ROCm")


_NO_TRITON_DRIVER = """
import json, sys
import generated
from moe_runtime.testing import emulate
from moe_runtime.testing.weights import make_expert_weights
from moe_runtime.types import MoeLayerConfig
key = tuple(sys.argv[1].split("/"))
weights = make_expert_weights(key[1], 4, 256, 128, seed=0)
batch = emulate.make_batch(4, 256, 4, 2, ep_size=1, seed=1)
output = emulate.dispatch(batch, key[2]).outputs[0]
config = MoeLayerConfig(num_experts=4, num_local_experts=4, ep_rank=0, ep_size=1, top_k=2,
                        hidden_size=256, intermediate_size=128, activation="silu")
generated.select(*key)(config, weights)(output)
watched = ("triton", "moe_runtime.kernels.triton_dequant", "moe_runtime.kernels.upscale")
print(json.dumps(sorted(m for m in sys.modules if m in watched or m.startswith("triton."))))
"""


@pytest.mark.parametrize(
    "key", ["mori/fp8_channel/mori_normal_fp8", "mori/fp8_channel/mori_ll_fp4"]
)
def test_a_cpu_process_never_imports_triton(key: str) -> None:
    """An fp8 and an fp4 wire, upscaled on CPU by the torch code, in a fresh interpreter."""
    process = subprocess.run(
        [sys.executable, "-c", _NO_TRITON_DRIVER, key],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    modules = json.loads(process.stdout.strip().splitlines()[-1])
    # The binding module is watched and imported: the check sees what is imported.
    assert modules == ["moe_runtime.kernels.upscale"]


def test_slab_shapes_are_built_once_per_capacity() -> None:
    shapes = loadtime.SlabShapes(3, torch.device("cpu"))
    first = shapes[5]
    assert first is shapes[5]
    assert torch.equal(first.slot, torch.arange(5, dtype=torch.int32))
    assert first.unit_weights.shape == (15, 1) and first.unit_weights.dtype == torch.float32
    assert bool((first.unit_weights == 1).all())
    other = shapes[2]
    assert other is not first and other.slot.tolist() == [0, 1] and len(shapes) == 2


@pytest.mark.parametrize("dispatch", ["deepep_ll", "deepep_ll_fp8"])
def test_low_latency_runners_reuse_the_shape_tensors_across_calls(dispatch: str) -> None:
    key = ("deepep", "fp8_block", dispatch)
    weights = make_expert_weights("fp8_block", 4, 256, 128, seed=0)
    kernel = RecordingKernel()
    runner = generated.select(*key)(layer_config(key[1], top_k=2), weights, kernel=kernel)
    for seed in (1, 2):
        batch = emulate.make_batch(6, 256, 8, 2, ep_size=2, seed=seed)
        runner(emulate.dispatch(batch, dispatch, max_tokens_per_rank=3).outputs[0])
    first, second = kernel.calls
    assert first["topk_weight"] is second["topk_weight"]
    assert bool((first["topk_weight"] == 1).all())
    # Negative control: the ids depend on masked_m, so they are fresh tensors on every call.
    assert first["topk_ids"] is not second["topk_ids"]
