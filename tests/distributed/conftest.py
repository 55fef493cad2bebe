"""One worker pool per world size for the whole module (workers start once, jobs reuse them).

`MOE_DIST_DEVICE=cuda` runs the same suite with CUDA tensors: gloo at 2 and 4 ranks on one GPU,
and NCCL at 1 rank (NCCL refuses two ranks on one GPU, "Duplicate GPU detected").
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.distributed.pool import Pool

DEVICE = os.environ.get("MOE_DIST_DEVICE", "cpu")
GROUPS = [("gloo", 2), ("gloo", 4)] + ([("nccl", 1)] if DEVICE == "cuda" else [])


@pytest.fixture(scope="module", params=GROUPS, ids=[f"{b}{n}-{DEVICE}" for b, n in GROUPS])
def pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    backend, world = request.param
    workers = Pool(world, backend=backend, device=DEVICE)
    yield workers
    # Teardown fails the module's last test if any worker did not exit cleanly.
    workers.close()
