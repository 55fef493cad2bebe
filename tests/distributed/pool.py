"""A pool of worker processes, one per rank of a torch.distributed group, started once and reused.

Workers are forked on the CPU (0.02 s each, measured) and spawned for CUDA tensors (a forked
child cannot use CUDA once the parent has). Each job runs a module-level function on every rank;
results travel back as `torch.save` bytes. Nothing can hang the caller: every wait has a
deadline, a worker that exits early is reported with its exit code, a job past its deadline
kills the whole pool (the next job starts a fresh one), and `close` checks every exit code.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch

# A collective that never completes raises in the worker after this long.
_COLLECTIVE_TIMEOUT = timedelta(seconds=60)


class WorkerFailure(AssertionError):
    """A worker crashed, hung past its deadline, or exited with a non-zero code."""


class RemoteError:
    """An exception a job raised on one rank (the traceback text, and the exception's type)."""

    def __init__(self, kind: str, text: str) -> None:
        self.kind = kind
        self.text = text

    def __repr__(self) -> str:
        return f"RemoteError({self.kind}: {self.text.strip().splitlines()[-1]})"


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=False)


def _serve(
    rank: int,
    world: int,
    backend: str,
    device: str,
    store_path: str,
    jobs: Any,
    results: Any,
) -> None:
    torch.set_num_threads(1)  # N workers share the machine's cores (and OpenMP after fork)
    if device == "cuda":
        # One GPU per rank where there are enough (NCCL needs it), else ranks share GPUs (gloo).
        torch.cuda.set_device(rank % torch.cuda.device_count())
    import torch.distributed as dist

    dist.init_process_group(
        backend,
        init_method=f"file://{store_path}",
        rank=rank,
        world_size=world,
        timeout=_COLLECTIVE_TIMEOUT,
        **(
            {"device_id": torch.device("cuda", torch.cuda.current_device())}
            if backend == "nccl"
            else {}
        ),
    )
    results.put(("ready", rank, b""))
    while True:
        job = jobs.get()
        if job is None:
            break
        job_id, fn, kwargs = job
        try:
            value = fn(rank=rank, world=world, device=device, **kwargs)
            results.put((job_id, rank, _dumps(("ok", value))))
        except Exception as error:  # reported to the parent, which decides
            text = traceback.format_exc()
            results.put((job_id, rank, _dumps(("error", (type(error).__name__, text)))))
    dist.destroy_process_group()


class Pool:
    """`world` ranks of `backend` on `device`; `run(fn, **kwargs)` runs `fn` on all of them."""

    def __init__(
        self, world: int, *, backend: str = "gloo", device: str = "cpu", timeout: float = 120.0
    ) -> None:
        self.world, self.backend, self.device, self.timeout = world, backend, device, timeout
        self._processes: list[Any] = []
        self._job = 0

    def _start(self) -> None:
        context = mp.get_context("spawn" if self.device == "cuda" else "fork")
        self._dir = tempfile.TemporaryDirectory(prefix="moe-dist-")
        store = os.path.join(self._dir.name, "store")
        self._results = context.Queue()
        self._jobs = [context.Queue() for _ in range(self.world)]
        self._processes = [
            context.Process(
                target=_serve,
                args=(
                    r,
                    self.world,
                    self.backend,
                    self.device,
                    store,
                    self._jobs[r],
                    self._results,
                ),
                daemon=True,
            )
            for r in range(self.world)
        ]
        for process in self._processes:
            process.start()
        self._collect("ready", deadline=time.monotonic() + max(self.timeout, 60.0))

    def _collect(self, job_id: Any, deadline: float) -> list[bytes]:
        got: dict[int, bytes] = {}
        while len(got) < self.world:
            try:
                tag, rank, data = self._results.get(timeout=0.1)
            except queue.Empty:
                dead = [
                    (r, p.exitcode) for r, p in enumerate(self._processes) if p.exitcode is not None
                ]
                if dead:
                    self.kill()
                    raise WorkerFailure(
                        f"worker(s) exited early (rank, exit code): {dead}"
                    ) from None
                if time.monotonic() > deadline:
                    missing = sorted(set(range(self.world)) - set(got))
                    self.kill()
                    raise WorkerFailure(
                        f"rank(s) {missing} did not answer job {job_id} within the deadline"
                    ) from None
                continue
            if tag == job_id:
                got[rank] = data
        return [got[r] for r in range(self.world)]

    def run(
        self, fn: Callable[..., Any], *, timeout: float | None = None, **kwargs: Any
    ) -> list[Any]:
        """`fn(rank=, world=, device=, **kwargs)` on every rank; per rank its value, or a
        `RemoteError` if it raised there."""
        if not self._processes:
            self._start()
        self._job += 1
        for jobs in self._jobs:
            jobs.put((self._job, fn, kwargs))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out = []
        for data in self._collect(self._job, deadline):
            status, value = _loads(data)
            out.append(value if status == "ok" else RemoteError(*value))
        return out

    def run_ok(self, fn: Callable[..., Any], **kwargs: Any) -> list[Any]:
        """`run`, failing if any rank raised."""
        values = self.run(fn, **kwargs)
        errors = [(r, v) for r, v in enumerate(values) if isinstance(v, RemoteError)]
        if errors:
            raise WorkerFailure("; ".join(f"rank {r} raised:\n{e.text}" for r, e in errors))
        return values

    def kill(self) -> None:
        for process in self._processes:
            if process.exitcode is None:
                process.kill()
        for process in self._processes:
            process.join(timeout=10)
        self._processes = []

    def close(self) -> list[int | None]:
        """Stop every worker; return their exit codes, raising unless every one is 0."""
        if not self._processes:
            return []
        for jobs in self._jobs:
            jobs.put(None)
        deadline = time.monotonic() + 30
        for process in self._processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
        codes = [p.exitcode for p in self._processes]
        self.kill()
        if codes != [0] * len(codes):
            raise WorkerFailure(f"worker exit codes {codes}, expected all 0")
        return codes
