"""A context manager that fails on host synchronisation and data-dependent shapes, on any device.

On CUDA, `torch.cuda.set_sync_debug_mode("error")` catches real synchronisations. On every device
(the CPU included) a dispatch mode rejects the operators that imply one or that a CUDA graph cannot
capture: reading a value on the host (`.item()`, `bool(t)`), ops whose output shape depends on the
data (`nonzero`, boolean indexing, `masked_select`, `unique`, tensor-valued `repeat_interleave`)
and tensors built from host data (`torch.tensor([...])`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_SYNCING = {
    "aten._local_scalar_dense",
    "aten.is_nonzero",
    "aten.equal",
    "aten.nonzero",
    "aten.nonzero_static",
    "aten.masked_select",
    "aten.unique_consecutive",
    "aten._unique",
    "aten._unique2",
    "aten.unique_dim",
    "aten.lift_fresh",
    "aten.lift_fresh_copy",
}


class HostSyncError(AssertionError):
    """An operator that would synchronise with the host (or defeat graph capture) ran."""


def _has_bool_index(indices: Any) -> bool:
    return isinstance(indices, list | tuple) and any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices
    )


class _RejectSyncs(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = str(func.overloadpacket)
        if name in _SYNCING:
            raise HostSyncError(f"{func} needs the host (sync or data-dependent shape)")
        if name == "aten.repeat_interleave" and isinstance(args[0], torch.Tensor) and (
            len(args) == 1 or isinstance(args[1], torch.Tensor)
        ):
            raise HostSyncError(f"{func} with tensor repeats has a data-dependent shape")
        if name in ("aten.index", "aten.index_put", "aten.index_put_") and _has_bool_index(
            args[1]
        ):
            raise HostSyncError(f"{func} with a boolean mask has a data-dependent shape")
        return func(*args, **(kwargs or {}))


@contextmanager
def no_host_sync(device: str | torch.device) -> Iterator[None]:
    """Run the body rejecting host syncs (see the module docstring)."""
    on_cuda = torch.device(device).type == "cuda"
    previous = torch.cuda.get_sync_debug_mode() if on_cuda else 0
    if on_cuda:
        torch.cuda.set_sync_debug_mode("error")
    try:
        with _RejectSyncs():  # type: ignore[no-untyped-call]
            yield
    finally:
        if on_cuda:
            torch.cuda.set_sync_debug_mode(previous)
