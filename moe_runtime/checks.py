"""What the checked runners' validation prologue calls (`generated.select(..., checked=True)`).

Two kinds of check, so that a checked runner is still CUDA-graph capturable and never syncs:
- host checks read only Python values, dtypes and shapes, and raise `DispatchOutputError` at once,
  naming the field, what was expected and what arrived;
- value checks (id ranges, `masked_m`, `total_recv`) are device-side asserts
  (`torch._assert_async`): queued with the call, they fail the stream on the device (on the CPU,
  where the stream is the host, they raise `RuntimeError` with the message at once).

The generated prologue passes every bound the plan decided (dtypes, -1 allowed or not, which
size a dimension must have); these functions hold no knowledge of the formats.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# A dimension of an expected shape: a size, or None for any size.
Dim = int | None


class DispatchOutputError(ValueError):
    """A dispatch output whose fields do not have the dtypes, shapes or values its format has."""


def _dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    return " or ".join(str(d).removeprefix("torch.") for d in dtypes)


def tensor(name: str, value: object, dtypes: Sequence[torch.dtype], shape: Sequence[Dim]) -> None:
    """Host check: `value` is a tensor of one of `dtypes` whose shape matches `shape`."""
    if not isinstance(value, torch.Tensor):
        raise DispatchOutputError(f"{name} must be a tensor, got {type(value).__name__}")
    if value.dtype not in dtypes:
        raise DispatchOutputError(
            f"{name} must be {_dtype_names(dtypes)}, got {str(value.dtype).removeprefix('torch.')}"
        )
    actual = tuple(value.shape)
    fits = len(actual) == len(shape) and all(
        want is None or want == got for want, got in zip(shape, actual, strict=True)
    )
    if not fits:
        wanted = ", ".join("*" if d is None else str(d) for d in shape)
        raise DispatchOutputError(f"{name} must have shape [{wanted}], got {list(actual)}")


def absent(name: str, value: object, why: str) -> None:
    """Host check: a field the format leaves empty is None."""
    if value is not None:
        raise DispatchOutputError(f"{name} must be None: {why}")


def out_dtype(value: object, dtypes: Sequence[torch.dtype]) -> None:
    """Host check: the output dtype a dispatcher asks for is one the kernel writes."""
    if value not in dtypes:
        raise DispatchOutputError(f"out_dtype must be {_dtype_names(dtypes)}, got {value!r}")


def expert_output(value: object, rows: int, width: int, dtype: object) -> None:
    """Host check of MORI EPv2's combine view: None (the kernel allocates) or `[rows, width]` in
    the output dtype, which the kernel writes as it is."""
    if value is not None:
        dtypes = (dtype,) if isinstance(dtype, torch.dtype) else ()
        tensor("expert_output", value, dtypes, (rows, width))


def counts(name: str, value: object, length: int) -> None:
    """Host check: a per-expert list of counts (DeepEP normal) has one entry per local expert."""
    if not isinstance(value, list) or len(value) != length:
        size = len(value) if isinstance(value, list) else type(value).__name__
        raise DispatchOutputError(f"{name} must be a list of {length} ints, got {size}")


def recv_cap_rows(recv_cap: object, capacity: int) -> int:
    """Host check of MORI's recv_cap, returning the rows the runner keeps.

    0 means no cap and a cap past the buffer keeps the whole buffer; a negative cap would slice
    rows off the end (`[:-1]` drops the last row), so it is refused.
    """
    if not isinstance(recv_cap, int) or isinstance(recv_cap, bool) or recv_cap < 0:
        raise DispatchOutputError(
            f"recv_cap must be an int >= 0 (0 = no cap), got {recv_cap!r}: a negative cap slices "
            "rows off the end of the receive buffer"
        )
    return capacity if recv_cap == 0 else min(recv_cap, capacity)


def ids_in_range(name: str, ids: torch.Tensor, low: int, high: int) -> None:
    """Device assert: every id lies in [low, high)."""
    in_range = (ids >= low) & (ids < high)
    torch._assert_async(in_range.all(), f"{name} must lie in [{low}, {high})")


def valid_ids_in_range(
    name: str, ids: torch.Tensor, low: int, high: int, valid_rows: torch.Tensor
) -> None:
    """Device assert: ids in [low, high) on the rows below `valid_rows` (a [1] tensor); the rows
    past it are stale and may hold anything."""
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1)
    stale = rows >= valid_rows.reshape(1, 1)
    in_range = ((ids >= low) & (ids < high)) | stale
    torch._assert_async(in_range.all(), f"{name} must lie in [{low}, {high}) below total_recv")


def values_in_range(name: str, values: torch.Tensor, low: int, high: int) -> None:
    """Device assert: every value lies in [low, high] (inclusive: counts up to a capacity)."""
    in_range = (values >= low) & (values <= high)
    torch._assert_async(in_range.all(), f"{name} must lie in [{low}, {high}]")
