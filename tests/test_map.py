"""map: plain values back, one per input, with dispatch's window, policies and isolation."""

import itertools
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slither
from slither import DispatchError, Retry, Skipped, WorkerError
from slither.testing import crash_when, once_per

pytestmark = pytest.mark.timeout(60)


@settings(max_examples=15)
@given(n=st.integers(0, 300), batch_size=st.integers(1, 40), ordering=st.sampled_from(["preserve", "as_completed"]))
def test_one_result_per_input(rt, n, batch_size, ordering):
    out = list(rt.map(lambda x: x * 3, range(n), batch_size=batch_size, ordering=ordering))
    if ordering == "preserve":
        assert out == [x * 3 for x in range(n)]
    else:
        assert sorted(out) == [x * 3 for x in range(n)]


def test_named_function_and_its_check_before_work(rt):
    assert list(rt.map("math:sqrt", [4, 9])) == [2.0, 3.0]
    with pytest.raises(slither.ConfigurationError, match="module 'math' has no attribute 'nosuch'"):
        rt.map("math:nosuch", [1])


def test_results_are_plain_values_not_items(rt):
    out = list(rt.map(lambda x: {"n": x}, [1, 2]))
    assert out == [{"n": 1}, {"n": 2}] and not any(isinstance(v, slither.Item) for v in out)


def test_skip_yields_the_skipped_marker_for_the_failing_batch_only(rt):
    out = list(rt.map(lambda x: 10 // x, [5, 0, 2, 1], batch_size=2, on_error="skip"))
    assert isinstance(out[0], Skipped) and isinstance(out[1], Skipped)
    assert isinstance(out[0].error, WorkerError) and out[0].error.remote_type == "ZeroDivisionError"
    assert out[2:] == [5, 10]


def test_halt_raises_with_the_workers_traceback(rt):
    with pytest.raises(DispatchError) as ei:
        list(rt.map(lambda x: math.log(x), [1, 0]))  # the failing line
    assert "math.log(x)" in ei.value.reason.remote_traceback


@pytest.mark.chaos
def test_a_crashed_worker_costs_nothing_under_retry(rt, tmp_path):
    fn = once_per(str(tmp_path), crash_when, lambda xs: [x + 1 for x in xs], lambda x: x % 7 == 3)
    # crash_when wraps a batch function; map applies fn per input, so wrap each input as a batch of one
    out = list(rt.map(lambda x, fn=fn: fn([x])[0], range(40), batch_size=4, on_error=Retry(3, backoff=0)))
    assert out == [x + 1 for x in range(40)]


def _counted(taken: list):
    """An endless input that notes in ``taken`` each value read from it."""
    for x in itertools.count():
        taken.append(x)
        yield x


def test_input_is_read_lazily(rt):
    taken = []
    it = rt.map(lambda x: x, _counted(taken), batch_size=10, max_in_flight=3)
    assert list(itertools.islice(it, 5)) == [0, 1, 2, 3, 4]
    it.close()
    assert len(taken) <= 10 * 4  # the window, and the batch being cut


def test_the_default_window_follows_the_pool(rt):
    """Twice the pool's capacity, at least MAP_WINDOW (16): the tiny-work path keeps
    more batches on their way, the more its workers' queues hold."""
    from slither._dispatch.mapping import MAP_WINDOW
    from slither._pool.scheduler import MAX_DEPTH

    list(rt.map(lambda x: x, range(64 * 100), batch_size=64))  # tiny batches: every worker's queue deepens
    assert rt.pool().scheduler.capacity > 2 * len(rt.worker_pids())
    taken = []
    it = rt.map(lambda x: x, _counted(taken), batch_size=1)
    assert next(it) == 0
    it.close()
    # The window is sized again at each take, as the workers' depths move: more than
    # the floor, at most twice the deepest capacity (plus the batch being cut, and
    # one taken after the first result).
    assert MAP_WINDOW + 2 < len(taken) <= 2 * MAX_DEPTH * len(rt.worker_pids()) + 2
    taken = []
    it = rt.map(lambda x: x, _counted(taken), batch_size=1, max_in_flight=5)
    assert next(it) == 0
    it.close()
    assert 5 <= len(taken) <= 7  # a window given is kept


def test_top_level_map_uses_the_runtime_of_the_with_block():
    with slither.Runtime(pools={"default": 1}) as rt:
        assert list(slither.map(lambda x: os.getpid(), [1])) == [rt.worker_pids()[0]]


def test_auto_batch_size_grows_for_tiny_work_and_stays_small_for_slow_items(rt):
    from slither import AutoBatch

    tiny = AutoBatch()
    assert list(rt.map(lambda x: x + 1, range(50_000), strategy=tiny)) == list(range(1, 50_001))
    assert tiny.size >= 1024
    slow = AutoBatch()
    assert list(rt.map(lambda x: __import__("time").sleep(0.12) or x, range(6), strategy=slow)) == list(range(6))
    assert slow.size == 1
    assert [i.payload for i in rt.dispatch(range(300), lambda xs: xs, batch_size="auto")] == list(range(300))


@given(st.lists(st.floats(0, 1), max_size=60), st.floats(0.001, 0.5))
def test_auto_batch_rule(durations, target):
    from slither import AutoBatch

    a = AutoBatch(target=target, max_size=4096)
    for d in durations:
        before = a.size
        a.observe(d)
        assert 1 <= a.size <= 4096
        if d < target / 2:
            assert a.size == min(4096, before * 2)
        elif d > target * 2:
            assert a.size == max(1, before // 2)
        else:
            assert a.size == before


def test_auto_is_refused_where_a_size_must_be_known():
    with pytest.raises(slither.PipeDefinitionError, match="batch_size must be a positive int, got 'auto'"):
        slither.stage.pool("p", fn=len, batch_size="auto")
