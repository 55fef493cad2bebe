"""Small jobs for the pool and error-path tests (module level, importable by spawned workers)."""

from __future__ import annotations

import os
import time

import torch

from moe_runtime.distributed import DispatchError, dispatch


def echo(*, rank: int, world: int, device: str, value: int) -> tuple[int, int, int]:
    return rank, world, value


def crash_on(*, rank: int, world: int, device: str, victim: int, code: int) -> int:
    if rank == victim:
        os._exit(code)
    return rank


def hang_on(*, rank: int, world: int, device: str, victim: int) -> int:
    if rank == victim:
        time.sleep(3600)
    return rank


def bad_ids_on(*, rank: int, world: int, device: str, victim: int) -> str:
    """Every rank dispatches 3 tokens; `victim` passes int64 ids. Returns each rank's error."""
    ids = torch.tensor([[0, 1], [2, 3], [1, 2]], dtype=torch.int32, device=device)
    ids = ids.long() if rank == victim else ids
    try:
        dispatch(
            "deepep_normal",
            torch.zeros(3, 128, dtype=torch.bfloat16, device=device),
            ids,
            torch.full((3, 2), 0.5, device=device),
            num_experts=4 * world,
        )
    except DispatchError as error:
        return str(error)
    return "no error"
