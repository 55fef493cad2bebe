"""NIXL EP (ai-dynamo/nixl, `examples/device/ep/nixl_ep/buffer.py`).

`Buffer.dispatch(x, topk_idx, num_max_dispatch_tokens_per_rank, num_experts,
cumulative_local_expert_recv_stats=None, dispatch_wait_recv_cost_stats=None, use_fp8=True,
round_scale=False, use_ue8m0=False, async_finish=False, return_recv_hook=False)` returns DeepEP's
low-latency 5-tuple `(recv_x, packed_recv_count, handle, event, hook)`, with the same slab, scale
(column-major) and count layouts; `Buffer.combine(x, topk_idx, topk_weights, handle,
use_logfmt=False, zero_copy=False, async_finish=False, return_recv_hook=False, out=None,
combine_wait_recv_cost_stats=None)` -> `(combined_x, event, hook)`.
"""

from __future__ import annotations

from typing import Any

from moe_runtime.distributed.adapters._optional import require
from moe_runtime.distributed.adapters.deepep import DeepEPLowLatency


def open_buffer(**kwargs: Any) -> Any:
    """A `nixl_ep.Buffer(**kwargs)` (imports nixl_ep)."""
    return require("nixl_ep").Buffer(**kwargs)


class NixlLowLatency(DeepEPLowLatency):
    """`deepep_ll` / `deepep_ll_fp8` through a NIXL EP buffer: DeepEP's low-latency calls and
    layouts under the names `dispatch` and `combine`."""

    source = "nixl_ep Buffer.dispatch"
    _dispatch_call = "dispatch"
    _combine_call = "combine"
