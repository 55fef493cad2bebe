"""The wire upscaler a runner binds at load: one Triton launch on a GPU, the torch code elsewhere.

A runner whose wire no kernel takes (docs/formats.md, wire x weight table) dequantizes it on every
call. `moe_runtime.quant` has that as torch code (3 launches for an fp8 wire, 13 for fp4, any
device); `moe_runtime.kernels.triton_dequant` has it as one Triton launch per wire, bit-identical.
`bind(name, device)` picks, once per runner: Triton for a CUDA or ROCm device when Triton imports,
the torch code otherwise. Triton is imported only there, so a CPU process never imports it.
`describe()` says what is bound where; `moe_runtime.kernels.describe()` includes it.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Literal, cast

import torch

from moe_runtime import quant

UpscalerName = Literal[
    "dequantize_fp8_1x128", "dequantize_mxfp4", "dequantize_mxfp8", "dequantize_fp8_per_row"
]
Upscaler = Callable[[torch.Tensor, torch.Tensor, torch.dtype], torch.Tensor]

TRITON_MODULE = "moe_runtime.kernels.triton_dequant"
_TORCH = {
    "dequantize_fp8_1x128": quant.dequantize_fp8_1x128,
    "dequantize_mxfp4": quant.dequantize_mxfp4,
    "dequantize_mxfp8": quant.dequantize_mxfp8,
    "dequantize_fp8_per_row": quant.dequantize_fp8_per_row,
}
# The upscalers moe_runtime.kernels.triton_dequant has a one-launch kernel for; the two newer
# wires' (one multiply each, two or three launches) always run as torch code.
_TRITON = frozenset({"dequantize_fp8_1x128", "dequantize_mxfp4"})
# Why Triton is not bound on GPUs (None until a GPU runner tried and failed to import it).
_triton_error: str | None = None


def bind(name: UpscalerName, device: torch.device) -> Upscaler:
    """The upscaler `name` for activations on `device` (decided at load, never per call)."""
    global _triton_error
    if device.type != "cuda" or _triton_error is not None or name not in _TRITON:
        return _TORCH[name]
    try:
        module = importlib.import_module(TRITON_MODULE)
    # Triton fails to import in several ways (ImportError, a RuntimeError with no driver);
    # either way the torch code is exact, only slower, and describe() says why it is bound.
    except Exception as error:
        _triton_error = f"{type(error).__name__}: {error}"
        return _TORCH[name]
    return cast(Upscaler, getattr(module, name))


def describe() -> str:
    """Which upscaler runners bind on which devices, and why."""
    torch_code = "torch (moe_runtime.quant)"
    if _triton_error is not None:
        return f"{torch_code} on every device: importing Triton failed ({_triton_error})"
    if importlib.util.find_spec("triton") is None:
        return f"{torch_code} on every device: Triton is not installed"
    return f"Triton ({TRITON_MODULE}) for CUDA/ROCm tensors, {torch_code} for CPU tensors"
