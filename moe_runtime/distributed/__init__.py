"""Expert parallelism across real processes on torch.distributed, and adapters for the real
dispatchers (DeepEP, MORI, Mooncake, NIXL; see `adapters`).

`dispatch` gives each rank exactly the dispatch output `moe_runtime.testing.emulate` builds for
it; `combine` takes the runner's combine input back to `[T_r, H]` on the sending rank. Both work
on gloo (CPU and CUDA tensors) and NCCL. Nothing here imports `generated`: the caller selects and
builds the runners (see `moe_runtime.ep_run`).
"""

from moe_runtime.distributed.combiner import combine
from moe_runtime.distributed.dispatcher import DispatchError, DispatchHandle, dispatch

__all__ = ["DispatchError", "DispatchHandle", "combine", "dispatch"]
