"""PoolSpec(setup=, teardown=, max_batches=, max_rss=): per-worker state, recycling, and
a setup that fails surfacing as PoolDown with its cause instead of a silent restart loop."""

import collections
import itertools
import os
import signal
import threading

import pytest

import slither
from slither import PoolDown, PoolSpec
from slither.testing import wait_pids_gone

pytestmark = pytest.mark.timeout(60)


def _marks(d):
    return sorted(os.listdir(d))


def test_setup_runs_once_per_worker_and_again_in_a_replacement(tmp_path):
    d = str(tmp_path)

    def setup(d=d):
        open(os.path.join(d, f"setup-{os.getpid()}"), "w").close()
        return {"loaded_in": os.getpid()}

    spec = PoolSpec(size=2, setup=setup, max_restarts=10)
    with slither.Runtime(pools={"default": spec}) as rt:
        out = list(rt.map(lambda x: (slither.worker.state()["loaded_in"], os.getpid()), range(40), batch_size=2))
        assert all(loaded == pid for loaded, pid in out)
        assert _marks(d) == sorted(f"setup-{p}" for p in rt.worker_pids())  # once each, not per batch
        victim = rt.worker_pids()[0]
        replaced = threading.Event()
        slither.telemetry.attach("test-setup-restart", [("slither", "worker", "restart")], lambda *a: replaced.set())
        try:
            os.kill(victim, signal.SIGKILL)
            assert replaced.wait(20)  # the replacement is attached: it ran its setup first
        finally:
            slither.telemetry.detach("test-setup-restart")
        assert not wait_pids_gone([victim])
        assert len(_marks(d)) == 3  # the replacement ran setup too
        assert {p for p, _ in rt.map(lambda x: (slither.worker.state()["loaded_in"], 0), range(20))} <= set(rt.worker_pids())


def test_a_failing_setup_is_pool_down_with_its_cause():
    def setup():
        raise RuntimeError("the model file is missing")  # the setup's line

    rt = slither.Runtime(pools={"default": PoolSpec(size=1, setup=setup, max_restarts=2, max_seconds=30)})
    with pytest.raises(PoolDown, match="a worker's setup failed: RuntimeError: the model file is missing") as ei:
        rt.start()
    cause = ei.value.__cause__
    assert isinstance(cause, slither.WorkerError) and cause.remote_type == "RuntimeError"
    assert 'raise RuntimeError("the model file is missing")' in cause.remote_traceback
    assert not rt.running


def test_max_batches_recycles_workers_losing_nothing(tmp_path):
    d = str(tmp_path)

    def teardown(d=d):
        open(os.path.join(d, f"teardown-{os.getpid()}"), "w").close()

    spec = PoolSpec(size=2, max_batches=3, teardown=teardown, max_restarts=0)  # a restart would bring the pool down
    with slither.Runtime(pools={"default": spec}) as rt:
        out = list(rt.map(lambda x: (x, os.getpid()), range(30), batch_size=1))
        assert [x for x, _ in out] == list(range(30))
        assert len({pid for _, pid in out}) >= 30 // 3 // 2  # workers came and went
        assert rt.pool().crashes == 0 and rt.pool().restarts == 0 and rt.pool().down is None
        recycled = {pid for _, pid in out} - set(rt.worker_pids())
    torn_down = {int(name.split("-")[1]) for name in _marks(d)}
    assert recycled <= torn_down  # every recycled worker tore down
    assert len(torn_down) == len({pid for _, pid in out} | torn_down)  # and so did the last ones, at shutdown


def test_max_batches_is_exact_however_deep_the_queues():
    """Tiny batches deepen a worker's queue to 16; it is still given max_batches of
    them in its life, not that many plus what it held when it reached the count."""
    with slither.Runtime(pools={"default": PoolSpec(size=1, max_batches=5, max_restarts=0)}) as rt:
        pids = list(rt.map(lambda x: os.getpid(), range(40), batch_size=1))
        assert rt.pool().crashes == 0 and rt.pool().down is None
    counts = collections.Counter(pids)
    assert list(counts.values()) == [5] * 8, counts


_kept: list = []  # what _leak_40mb keeps, in the worker that ran it


def _leak_40mb(x):
    _kept.append(b"x" * (40 << 20))  # written, so resident
    return x, os.getpid()


def test_max_rss_recycles_a_worker_whose_memory_grew_losing_nothing():
    from slither._sys import ResidentMemory

    with slither.Runtime(pools={"default": 1}) as probe:
        ((_, base),) = probe.run_on_workers(lambda: ResidentMemory().bytes())
    spec = PoolSpec(size=1, max_rss=base + (100 << 20), max_restarts=0)  # a restart would bring the pool down
    with slither.Runtime(pools={"default": spec}) as rt:
        out = list(rt.map(_leak_40mb, range(12), batch_size=1))
        assert [x for x, _ in out] == list(range(12))
        runs = [len(list(g)) for _, g in itertools.groupby(pid for _, pid in out)]
        # above the ceiling after its third batch (+120 MB), give or take a few MB of start:
        # it answers the batch queued behind (depth 2), and is recycled
        assert len(runs) >= 3 and all(2 <= n <= 4 for n in runs[:-1]), runs
        assert rt.pool().crashes == 0 and rt.pool().restarts == 0 and rt.pool().down is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"setup": 3}, "PoolSpec.setup must be a callable or 'module:function'"),
        ({"teardown": "nomodule"}, "PoolSpec.teardown must be a callable"),
        ({"max_batches": 0}, "PoolSpec.max_batches must be a positive int"),
        ({"max_rss": 0}, "PoolSpec.max_rss must be a positive int"),
    ],
)
def test_pool_spec_checks_its_new_options(kwargs, match):
    with pytest.raises(slither.ConfigurationError, match=match):
        PoolSpec(size=1, **kwargs)
