"""Importing an optional dispatcher library only when it is selected, with a clear error."""

from __future__ import annotations

import importlib
from types import ModuleType

# Import name -> (pyproject extra, where it comes from).
_SOURCES = {
    "deep_ep": ("deepep", "build DeepEP v1.2.1 from github.com/deepseek-ai/DeepEP (CUDA)"),
    "mori": ("mori", "build MORI from github.com/ROCm/mori (ROCm; distribution amd_mori)"),
    "mooncake": ("mooncake", "pip install mooncake-transfer-engine (its mooncake_ep_buffer)"),
    "nixl_ep": ("nixl", "build nixl_ep from github.com/ai-dynamo/nixl examples/device/ep"),
}


class DispatcherUnavailable(ImportError):
    """The selected dispatcher's library is not installed (or failed to import)."""


def require(name: str) -> ModuleType:
    """Import `name` (one of deep_ep, mori, mooncake, nixl_ep, or a submodule of one)."""
    root = name.split(".")[0]
    if root not in _SOURCES:
        raise ValueError(f"unknown dispatcher library {root!r}; known: {', '.join(_SOURCES)}")
    try:
        return importlib.import_module(name)
    except ImportError as error:
        extra, source = _SOURCES[root]
        raise DispatcherUnavailable(
            f"{name} is not importable ({error}); it is the optional extra "
            f"'aiter-moe-runners[{extra}]': {source}"
        ) from error
