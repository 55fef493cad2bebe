"""The worker pool never hangs the suite: a crashed worker and a hung one both fail the job
within its deadline, with the rank named; an invalid input on one rank raises on every rank."""

from __future__ import annotations

import time

import pytest

from tests.distributed import jobs
from tests.distributed.pool import Pool, WorkerFailure


def test_jobs_reuse_the_workers(pool: Pool) -> None:
    assert pool.run_ok(jobs.echo, value=7) == [(r, pool.world, 7) for r in range(pool.world)]
    assert pool.run_ok(jobs.echo, value=8)[-1] == (pool.world - 1, pool.world, 8)


def test_invalid_input_on_one_rank_raises_on_every_rank(pool: Pool) -> None:
    errors = pool.run_ok(jobs.bad_ids_on, victim=pool.world - 1)
    bad = pool.world - 1
    for rank, message in enumerate(errors):
        assert f"invalid dispatch input on rank(s) [{bad}]" in message, (rank, message)
    assert "topk_ids must be int32" in errors[bad]


def test_a_crashed_worker_fails_the_job_with_its_exit_code() -> None:
    workers = Pool(2, timeout=30)
    try:
        assert workers.run_ok(jobs.echo, value=1)[1] == (1, 2, 1)
        with pytest.raises(WorkerFailure, match=r"exited early .*\(1, 3\)"):
            workers.run(jobs.crash_on, victim=1, code=3)
        # The next job starts a fresh pool.
        assert workers.run_ok(jobs.echo, value=2)[0] == (0, 2, 2)
    finally:
        workers.kill()


def test_a_hung_worker_fails_the_job_by_its_deadline() -> None:
    workers = Pool(2, timeout=30)
    try:
        workers.run_ok(jobs.echo, value=1)
        start = time.monotonic()
        with pytest.raises(WorkerFailure, match=r"rank\(s\) \[0\] did not answer"):
            workers.run(jobs.hang_on, victim=0, timeout=2.0)
        assert time.monotonic() - start < 15
    finally:
        workers.kill()


def test_close_reports_a_non_zero_exit_code() -> None:
    workers = Pool(2, timeout=30)
    workers.run_ok(jobs.echo, value=1)
    workers._processes[1].kill()  # as if the worker had died between jobs
    workers._processes[1].join(timeout=10)
    with pytest.raises(WorkerFailure, match="exit codes"):
        workers.close()
