"""What the CUDA graph tests share: the shapes, the graph-safe reference kernel, the formats whose
shapes do not depend on the data, one rank's inputs, and capture-then-replay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from moe_runtime import types as t
from moe_runtime.kernels.reference import ReferenceFusedMoe
from moe_runtime.testing import emulate
from moe_runtime.testing.weights import make_expert_weights, slice_experts

E, H, INTER, K, T, EP = 8, 256, 128, 2, 16, 2
GRAPH_SAFE = ReferenceFusedMoe(graph_safe=True)
# Formats whose shapes do not depend on the data (DeepEP normal's row count does).
STATIC_KEYS = [
    ("none", "unquant", "standard"),
    ("none", "fp8_block", "standard"),
    ("deepep", "unquant", "deepep_ll"),
    ("nixl", "fp8_block", "deepep_ll_fp8"),
    ("deepep", "fp8_channel", "deepep_ll_fp8"),  # the slab upscale (Triton on a GPU)
    ("mooncake", "quark_w4a4_mxfp4", "deepep_ll"),
    ("mori", "fp8_channel", "mori_normal"),
    ("mori", "fp8_block", "mori_normal_fp8"),
    ("mori", "mxfp4", "mori_ll_fp4"),
    ("mori", "unquant", "mori_ll_fp8"),
]


def capture_and_replay(fn: Callable[[], Any]) -> tuple[Any, Any]:
    """Eager result, then the result of a captured graph replayed with sync debug mode 'error'."""
    eager = fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up on a side stream, as CUDA graph capture requires
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            captured = fn()
        graph.replay()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return eager, captured


def rank_one(key: tuple[str, str, str]) -> tuple[t.MoeLayerConfig, t.ExpertWeights, Any]:
    """Rank 1 of EP's layer config, its slice of seeded weights, and its dispatch output."""
    _, quant, dispatch = key
    weights = make_expert_weights(quant, E, H, INTER, seed=0, device="cuda")
    batch = emulate.make_batch(T, H, E, K, ep_size=EP, seed=2, device="cuda")
    output = emulate.dispatch(batch, dispatch).outputs[1]
    activation = "swiglu" if quant == "mxfp4" else "silu"
    config = t.MoeLayerConfig(E, E // EP, 1, EP, K, H, INTER, activation)
    return config, slice_experts(weights, E // EP, E), output
