"""The common path has no surprises: progress bars, long-lived fan-out pipes, cancelling
a stream from another thread, stage options checked when the Pipe class is created, the
default timeout, and errors that say what happened."""

import itertools
import os
import threading

import pytest

import slither
from slither import Pipe, PipeDefinitionError, PoolSpec, StoreError, stage
from slither.errors import RuntimeNotStarted
from slither.testing import Rendezvous, wait_pids_gone

pytestmark = pytest.mark.timeout(60)


def test_progress_bar_with_and_without_a_length(rt, monkeypatch):
    import tqdm

    bars = []

    class Recorded(tqdm.tqdm):
        def close(self):
            if not self.disable:  # tqdm closes again (disabled by then) when it is collected
                bars.append((self.total, self.n))
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    assert len(rt.dispatch(list(range(100)), lambda xs: xs, progress=True)) == 100
    stream = rt.dispatch_stream((x for x in range(50)), lambda xs: xs, progress=True, batch_size=10)
    assert [i.payload for i in stream] == list(range(50))
    assert bars == [(100, 100), (None, 50)]  # the input's length when it has one; no end shown otherwise


def test_long_lived_fan_out_pipe_counts_inputs_not_results(rt):
    class Split(Pipe):
        stages = [stage.inline("split", handler=lambda item, ctx: item.payload.split(), cardinality="many")]

    handle = rt.start_pipe(Split, max_pending=2)
    try:
        handle.submit("a b c")
        handle.submit("")  # no result at all: its slot is free at once
        handle.submit("d", timeout=10)
        got = [item.payload for _, item in itertools.islice(handle.results(timeout=10), 4)]
        status = handle.status()
    finally:
        handle.stop()
    assert got == ["a", "b", "c", "d"]
    assert status["pending"] == 0 and status["submitted"] == status["completed"] == 3


def test_stream_cancelled_from_another_thread_kills_its_running_batch(rt):
    with Rendezvous() as rv:

        def held(xs, rv=rv):
            if 5 in xs:
                rv.arrive(os.getpid(), wait=True)
            return xs

        stream = rt.dispatch_stream(itertools.count(), held, batch_size=5, max_in_flight=2, timeout=None)
        seen = []
        first_batch = threading.Event()

        def consume():
            for item in stream:
                seen.append(item.payload)
                if item.payload == 4:
                    first_batch.set()

        t = threading.Thread(target=consume)
        t.start()
        pid = rv.wait(timeout=20)  # a worker holds batch 1
        assert first_batch.wait(20)  # and the consumer has batch 0: it now waits for batch 1
        stream.cancel()
        t.join(20)
        assert not t.is_alive()
    assert stream.cancelled
    assert seen == [0, 1, 2, 3, 4]
    assert not wait_pids_gone([pid], timeout=10)  # the worker running its batch was killed
    assert [i.payload for i in rt.dispatch([1, 2], lambda xs: xs)] == [1, 2]  # and replaced


@pytest.mark.parametrize(
    "options, match",
    [
        ({"batch_size": "8"}, "batch_size must be a positive int, got '8'"),
        ({"batch_size": -1}, "batch_size must be a positive int, got -1"),
        ({"timeout": 0}, "timeout must be a positive number, got 0"),
        ({"max_in_flight": 0}, "max_in_flight must be a positive int"),
        ({"affinity": "sticky"}, "affinity must be one of"),
    ],
)
def test_pool_stage_options_are_checked_when_the_class_is_created(options, match):
    with pytest.raises(PipeDefinitionError, match=match):

        class Bad(Pipe):  # noqa: F841 - creating the class is the test
            stages = [stage.pool("p", fn=len, **options)]


def test_no_timeout_by_default(rt):
    stream = rt.dispatch_stream([1], lambda xs: xs)
    assert stream._run.timeout is None
    assert list(stream)[0].payload == 1


def test_a_misspelt_option_names_the_public_function(rt):
    with pytest.raises(
        TypeError, match=r"dispatch\(\) got an unexpected keyword argument 'batchsize'; did you mean 'batch_size'\?"
    ):
        rt.dispatch([1], lambda xs: xs, batchsize=3)
    with pytest.raises(TypeError, match=r"dispatch_stream\(\) got an unexpected keyword argument 'orderin'"):
        rt.dispatch_stream([1], lambda xs: xs, orderin="preserve")


def test_start_after_shutdown_says_to_create_a_new_runtime():
    rt = slither.Runtime(pools={"default": 1}).start()
    rt.shutdown()
    with pytest.raises(RuntimeNotStarted, match="create a new Runtime") as ei:
        rt.dispatch([1], lambda xs: xs)
    assert "call start()" not in str(ei.value)


def test_memory_error_under_max_memory_says_so():
    with slither.Runtime(pools={"default": PoolSpec(size=1, max_memory=256 * 2**20)}) as rt:
        out = rt.dispatch([1], lambda xs: [bytearray(2**31)], on_error="skip")
    err = out[0].meta["error"]
    assert err.remote_type == "MemoryError"
    assert "out of memory (max_memory=268435456 bytes" in str(err)


class FailsAtStart(slither.Store):
    tables = [slither.Table("t")]

    def load(self, tables):
        raise KeyError("no source")


def test_a_store_failing_its_first_load_does_not_claim_old_data():
    rt = slither.Runtime(pools={"default": 1}, stores=[FailsAtStart])
    with pytest.raises(StoreError) as ei:
        rt.start()
    assert "the store stays empty (it had no data yet)" in str(ei.value)
    assert "old data is kept" not in str(ei.value)
    assert not rt.running
