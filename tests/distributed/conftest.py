"""One worker pool per world size for the whole module (workers start once, jobs reuse them).

`MOE_DIST_DEVICE=cuda` runs the same suite with CUDA tensors: gloo at 2 and 4 ranks (sharing the
GPUs), and NCCL with one rank per GPU (NCCL refuses two ranks on one GPU, "Duplicate GPU
detected"), so a single GPU gives NCCL at 1 rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.distributed.pool import Pool

DEVICE = os.environ.get("MOE_DIST_DEVICE", "cpu")


def _groups() -> list[tuple[str, int]]:
    if DEVICE != "cuda":
        return [("gloo", 2), ("gloo", 4)]
    import torch

    # NCCL: one process per GPU, all of them (one rank on a single GPU).
    return [("gloo", 2), ("gloo", 4), ("nccl", max(1, torch.cuda.device_count()))]


GROUPS = _groups()


@pytest.fixture(autouse=True)
def _one_thread_like_the_workers() -> Iterator[None]:
    """The single-process emulation runs on one CPU thread, as every worker does: a float32 GEMM's
    blocking (so its bits) depends on the thread count, and the comparison is bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=GROUPS, ids=[f"{b}{n}-{DEVICE}" for b, n in GROUPS])
def pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    backend, world = request.param
    workers = Pool(world, backend=backend, device=DEVICE)
    yield workers
    # Teardown fails the module's last test if any worker did not exit cleanly.
    workers.close()
