"""Interleaved timing of a benchmark's variants, and the device synchronisation that brackets it."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping

import torch


def time_interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    sync: Callable[[], None],
    rounds: int,
    batch_seconds: float,
    budget_seconds: float,
    warmup: int = 5,
) -> dict[str, float]:
    """Median µs per call of each variant.

    Each round times one batch of calls per variant, in the listed order on even rounds and the
    reverse on odd ones; a batch is bracketed by `sync` (a device synchronisation on CUDA) and
    sized to about `batch_seconds`. The garbage collector is paused inside batches. Rounds stop
    at `rounds`, or earlier (never under 5) when the case would exceed `budget_seconds`.
    """
    names = list(variants)
    per_call: dict[str, float] = {}
    for name in names:
        function = variants[name]
        for _ in range(warmup):
            function()
        sync()
        start = time.perf_counter()
        function()
        sync()
        per_call[name] = max(time.perf_counter() - start, 1e-7)
    calls = {name: max(1, min(1000, int(batch_seconds / per_call[name]))) for name in names}
    round_seconds = sum(calls[name] * per_call[name] for name in names)
    rounds = max(5, min(rounds, int(budget_seconds / max(round_seconds, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            function, count = variants[name], calls[name]
            gc.disable()
            sync()
            start = time.perf_counter_ns()
            for _ in range(count):
                function()
            sync()
            elapsed = time.perf_counter_ns() - start
            gc.enable()
            samples[name].append(elapsed / count / 1000.0)
    return {name: statistics.median(values) for name, values in samples.items()}


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None

