"""slither.Executor: a concurrent.futures.Executor whose workers can die, hang or be
cancelled mid-call without breaking the executor."""

import asyncio
import concurrent.futures as cf
import os
import signal
import time

import pytest

import slither
from slither import BatchTimeout, WorkerCrashed
from slither.errors import RemoteTraceback
from slither.testing import Rendezvous, settle, wait_pids_gone

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ex(rt):
    executor = rt.executor()
    yield executor
    executor.shutdown(cancel_futures=True)


def test_submit_and_the_calls_own_exception(ex):
    assert ex.submit(pow, 2, 10).result(10) == 1024
    assert ex.submit(lambda *a, **k: (a, k), 1, x=2).result(10) == ((1,), {"x": 2})
    fut = ex.submit(lambda: {}["missing"])  # the failing call
    with pytest.raises(KeyError):
        fut.result(10)
    cause = fut.exception().__cause__
    assert isinstance(cause, RemoteTraceback) and '{}["missing"]' in str(cause)


def test_as_completed_wait_and_map(ex):
    fs = [ex.submit(lambda x: x * x, i) for i in range(50)]
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=30)) == [i * i for i in range(50)]
    done, not_done = cf.wait(fs, timeout=30)
    assert len(done) == 50 and not not_done
    assert list(ex.map(lambda a, b: a + b, range(10), range(10), chunksize=3)) == [2 * i for i in range(10)]
    assert list(ex.map(abs, [-1, -2], timeout=30)) == [1, 2]


def test_run_in_executor(ex):
    async def main():
        return await asyncio.get_running_loop().run_in_executor(ex, pow, 3, 4)

    assert asyncio.run(main()) == 81


@pytest.mark.chaos
def test_a_dead_worker_fails_one_future_not_the_executor(ex):
    fut = ex.submit(lambda: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(WorkerCrashed, match="killed by SIGKILL"):
        fut.result(20)
    assert ex.submit(pow, 2, 3).result(20) == 8  # no BrokenProcessPool


@pytest.mark.chaos
def test_cancel_of_a_running_call_kills_only_its_worker(rt, ex):
    with Rendezvous() as rv:

        def held(rv=rv):
            rv.arrive(os.getpid(), wait=True)
            return "never"

        fut = ex.submit(held)
        pid = rv.wait(timeout=20)
        assert fut.cancel() and fut.cancelled()
        assert not wait_pids_gone([pid], timeout=10)
        other = [p for p in rt.worker_pids() if p != pid]
        assert ex.submit(os.getpid).result(20) in other + rt.worker_pids()


def test_a_call_cancelled_while_it_waits_in_a_workers_queue_never_runs(tmp_path):
    """Tiny calls deepen a worker's queue: a cancelled call may already be in it,
    behind a running one. It is skipped there, and nothing is killed."""
    marks = str(tmp_path)
    with slither.Runtime(pools={"default": 1}) as rt, rt.executor() as ex:
        list(ex.map(abs, range(64 * 40), chunksize=64))  # the one worker's queue deepens
        assert rt.pool().scheduler.capacity > 2
        pid = rt.worker_pids()[0]
        with Rendezvous() as rv:
            first = ex.submit(lambda rv=rv: rv.arrive(wait=True) or "first")
            rv.wait(timeout=20)
            queued = ex.submit(lambda d=marks: open(os.path.join(d, "ran"), "w").close())
            conn = next(iter(rt.pool().scheduler.workers.values()))
            assert len(conn.inflight) == 2  # sent to the worker, behind the running call
            assert queued.cancel() and queued.cancelled()
            rv.release()
            assert first.result(20) == "first"
        settle(rt)  # the worker has answered everything it was sent
        assert os.listdir(marks) == []
        assert rt.worker_pids() == [pid]  # skipping it killed nothing


def test_a_call_over_the_timeout_fails_with_batch_timeout(rt):
    ex = rt.executor(timeout=0.5)
    try:
        with pytest.raises(BatchTimeout):
            ex.submit(time.sleep, 60).result(20)
    finally:
        ex.shutdown()


def test_shutdown_refuses_new_calls_and_can_cancel_the_rest(rt):
    ex = rt.executor()
    settle(rt)  # a worker killed earlier (a timeout) must be back, or the other would take all four
    with Rendezvous() as rv:
        held = [ex.submit(lambda rv=rv: rv.arrive(wait=True)) for _ in range(4)]  # 2 workers: 2 run, 2 wait
        rv.wait(count=2, timeout=20)
        ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in held)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(abs, 1)


def test_executor_uses_the_runtime_of_the_with_block():
    with slither.Runtime(pools={"default": 1}) as rt:
        with slither.Executor() as ex:
            assert ex.submit(os.getpid).result(20) == rt.worker_pids()[0]
