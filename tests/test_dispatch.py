"""Dispatch against a real multi-process runtime: results, faults, backpressure."""

import collections.abc
import itertools
import os
import signal
import threading
import time

import pytest

import slither
from slither import BadBatchResult, BatchTimeout, DispatchError, Retry, SerializationError, WorkerCrashed
from slither.testing import Rendezvous, crash_when, hang_when, once_per, settle, wait_pids_gone

pytestmark = pytest.mark.timeout(60)


def test_lambda_and_named_function(rt):
    assert [i.payload for i in rt.dispatch(range(100), lambda xs: [x + 1 for x in xs], batch_size=7)] == list(range(1, 101))
    assert [i.payload for i in rt.dispatch(range(10), "fnmod:double", batch_size=3)] == [x * 2 for x in range(10)]


def test_closure_state_travels(rt):
    offset = 1000
    assert [i.payload for i in rt.dispatch([1, 2], lambda xs: [x + offset for x in xs])] == [1001, 1002]


def test_worker_keeps_module_state_between_batches(rt):
    out = rt.dispatch(range(40), "fnmod:pid_and_counter", batch_size=4, max_in_flight=2)
    by_pid = {}
    for i in out:
        pid, count = i.payload
        by_pid.setdefault(pid, []).append(count)
    assert any(max(counts) > 4 for counts in by_pid.values())  # a counter outlived its batch


@pytest.mark.chaos
def test_os_exit_mid_batch_fails_only_that_batch(rt):
    fn = crash_when(lambda xs: [x * 3 for x in xs], lambda x: x == 13, exitcode=7)
    out = rt.dispatch(range(40), fn, batch_size=4, on_error="skip")
    skipped = [i.payload for i in out if i.meta.get("skipped")]
    assert skipped == [12, 13, 14, 15]
    assert isinstance(out[13].meta["error"], WorkerCrashed)
    assert [i.payload for i in out if not i.meta.get("skipped")] == [x * 3 for x in range(40) if not 12 <= x <= 15]
    # the pool is whole again
    assert len(rt.dispatch(range(8), lambda xs: xs, batch_size=1)) == 8


def test_os_exit_under_halt_raises_worker_crashed(rt):
    fn = crash_when(lambda xs: xs, lambda x: x == 5)
    with pytest.raises(DispatchError) as ei:
        rt.dispatch(range(10), fn, batch_size=2)
    assert isinstance(ei.value.reason, WorkerCrashed)
    assert ei.value.batch_ref == 2


@pytest.mark.chaos
def test_sigkilled_worker_batch_is_retried_elsewhere(rt):
    with Rendezvous() as rv:

        def victim(xs, rv=rv):
            if 0 in xs and not os.path.exists(marker):
                open(marker, "w").close()
                rv.arrive(os.getpid(), wait=True)
            return [x + 1 for x in xs]

        marker = f"/tmp/slither-test-kill-{os.getpid()}-{time.monotonic_ns()}"
        result = {}
        t = threading.Thread(
            target=lambda: result.setdefault("out", rt.dispatch(range(6), victim, batch_size=2, on_error=Retry(3, backoff=0)))
        )
        t.start()
        pid = rv.wait(timeout=20)
        os.kill(pid, signal.SIGKILL)
        t.join(30)
        os.unlink(marker)
    out = result["out"]
    assert [i.payload for i in out] == [1, 2, 3, 4, 5, 6]
    assert out[0].meta["attempts"] == 2 and out[2].meta["attempts"] == 1
    assert pid not in rt.worker_pids()


@pytest.mark.chaos
def test_hung_worker_is_killed_after_timeout(rt):
    fn = hang_when(lambda xs: xs, lambda x: x == 3)
    out = rt.dispatch(range(8), fn, batch_size=2, timeout=0.5, on_error="skip")
    assert [i.payload for i in out if i.meta.get("skipped")] == [2, 3]
    assert isinstance(out[3].meta["error"], BatchTimeout)
    assert "killed and replaced" in str(out[3].meta["error"])


def test_poison_item_raises_worker_error_with_remote_traceback(rt):
    def fn(xs):
        return [1 / x for x in xs]

    with pytest.raises(DispatchError) as ei:
        rt.dispatch([1, 2, 0, 4], fn, batch_size=2)
    reason = ei.value.reason
    assert isinstance(reason, slither.WorkerError)
    assert reason.remote_type == "ZeroDivisionError"
    assert "1 / x" in reason.remote_traceback
    assert ei.value.__cause__ is reason
    assert [i.payload for i in ei.value.partial_results] == [1.0, 0.5]


@pytest.mark.parametrize(
    "fn, match", [(lambda xs: xs[:-1], "returned 1 results for 2 items"), ("fnmod:not_a_list", "returned tuple, expected a list")]
)
def test_wrong_results_are_bad_batch_result(rt, fn, match):
    with pytest.raises(DispatchError, match=match) as ei:
        rt.dispatch([1, 2], fn)
    assert isinstance(ei.value.reason, BadBatchResult)


def test_bad_batch_result_is_not_retried(rt):
    out = rt.dispatch([1, 2], lambda xs: [], on_error=Retry(5, backoff=0, then="skip"))
    assert all(i.meta["attempts"] == 1 and i.meta["skipped"] for i in out)


def test_unpicklable_payload_names_the_item(rt):
    lock = threading.Lock()
    items = slither.Item.wrap_many([1, lock, 3])
    with pytest.raises(DispatchError) as ei:
        rt.dispatch(items, lambda xs: xs, batch_size=3)
    assert isinstance(ei.value.reason, SerializationError)
    assert ei.value.reason.item_id == items[1].id
    assert f"item {items[1].id!r}" in str(ei.value)


def test_unpicklable_result(rt):
    with pytest.raises(DispatchError, match="result could not be pickled"):
        rt.dispatch([1], lambda xs: [threading.Lock() for _ in xs])


def test_unknown_module_fails_before_work(rt):
    with pytest.raises(slither.ConfigurationError, match="no module named 'no_such_module'"):
        rt.dispatch([1], "no_such_module:fn")
    with pytest.raises(slither.ConfigurationError, match="expected 'module:function'"):
        rt.dispatch([1], "fnmod")


def test_missing_function_is_caught_up_front_and_a_broken_import_is_a_worker_error(rt):
    with pytest.raises(slither.ConfigurationError, match="module 'fnmod' has no attribute 'nope'"):
        rt.dispatch([1], "fnmod:nope")
    with pytest.raises(slither.ConfigurationError, match="module 'os' has no attribute 'nosuchfn'"):
        rt.dispatch([1], "os:nosuchfn")
    with pytest.raises(DispatchError) as ei:
        rt.dispatch([1], "brokenmod:fn")
    assert "brokenmod fails on import" in str(ei.value)


def test_retry_succeeds_on_later_attempt(rt, tmp_path):
    fn = once_per(str(tmp_path), crash_when, lambda xs: [x * 2 for x in xs], lambda x: x % 5 == 0)
    out = rt.dispatch(range(20), fn, batch_size=3, on_error=Retry(max_attempts=3, backoff=0.01))
    assert [i.payload for i in out] == [x * 2 for x in range(20)]
    assert max(i.meta["attempts"] for i in out) == 2


def test_lazy_consumption_of_endless_input(rt):
    taken = itertools.count()

    def endless():
        for n in itertools.count():
            next(taken)
            yield n

    stream = rt.dispatch_stream(endless(), lambda xs: xs, batch_size=10, max_in_flight=3)
    got = [next(stream).payload for _ in range(25)]
    assert got == list(range(25))
    # 25 handed over = 3 batches started; the window allows at most 3 more batches ahead.
    assert next(taken) <= 10 * (3 + 3) + 1
    stream.close()


def test_closing_a_stream_stops_it_at_once(rt):
    """close() inside a batch hands out nothing more and reads no more input; a stream
    dropped unfinished releases its queued batches at once (no cycle waits for the collector)."""
    pulled = []

    def source():
        for n in range(10_000):
            pulled.append(n)
            yield n

    pool = rt.pool("default")
    stream = rt.dispatch_stream(source(), lambda xs: xs, batch_size=10, max_in_flight=8)
    assert isinstance(stream, collections.abc.Iterator)
    got = []
    for item in stream:
        got.append(item.payload)
        if len(got) == 15:
            stream.close()  # in the middle of the second batch
    assert got == list(range(15))
    taken = len(pulled)
    assert next(stream, None) is None and len(pulled) == taken <= 10 * (2 + 8)
    assert not pool.stats().queued

    settle(rt)  # the closed stream's sent batches are done: each worker takes a held one
    with Rendezvous() as rv:

        def held(xs, rv=rv):
            if xs[0] >= 10:
                rv.arrive(xs[0], wait=True)
            return xs

        stream = rt.dispatch_stream(range(10_000), held, batch_size=10, max_in_flight=8)
        assert next(stream).payload == 0
        rv.wait(count=2, timeout=20)  # both workers run a batch, held: no reply changes their depth now
        # The window: 8 taken, 1 handed out. Each worker holds up to its depth (2, or 4
        # after the tiny batches before), the rest wait in the pool's queue.
        on_workers = min(7, sum(c.depth for c in pool.scheduler.workers.values()))
        assert (pool.stats().in_flight, pool.stats().queued) == (on_workers, 7 - on_workers)
        del stream
        assert not pool.stats().queued
        rv.release()


def test_closing_a_stream_leaves_an_executors_lists_alone():
    """close() stops the stream without touching the list a batch came in (here one an
    executor keeps): it spends the stream's own iterator over it."""
    kept = []

    class Keeping:
        def execute_batch(self, batch, ctx):
            out = [i.update_payload(i.payload * 2) for i in batch]
            kept.append(out)
            return out

    stream = slither.dispatch_stream(range(10), executor=Keeping(), batch_size=5)
    assert next(stream).payload == 0
    stream.close()
    assert next(stream, None) is None
    assert [[i.payload for i in b] for b in kept] == [[0, 2, 4, 6, 8], [10, 12, 14, 16, 18]]


def test_window_bounds_batches_taken(rt):
    settle(rt)  # a worker still busy with an earlier test's batches would leave the window to the other
    pulled = []
    with Rendezvous() as rv:

        def fn(xs, rv=rv):
            rv.arrive(xs[0], wait=True)
            return xs

        def source():
            for n in range(100):
                pulled.append(n)
                yield n

        res = {}
        t = threading.Thread(target=lambda: res.setdefault("out", rt.dispatch(source(), fn, batch_size=1, max_in_flight=4)))
        t.start()
        rv.wait(count=2, timeout=20)  # both workers hold a batch: the dispatcher is at its window
        assert len(pulled) <= 4 + 1
        rv.release()
        t.join(30)
    assert [i.payload for i in res["out"]] == list(range(100))


def test_dispatchs_default_window_follows_the_pool_and_the_streams_stays_eight(rt):
    """dispatch() hands nothing out before its end: without max_in_flight its window is
    twice the pool's capacity (deep for tiny batches); dispatch_stream's stays 8."""
    from slither._dispatch import collect, collecting

    rt.dispatch(range(64 * 100), lambda xs: xs)  # tiny batches: every worker's queue deepens
    capacity = rt.pool().scheduler.capacity
    assert capacity > 2 * len(rt.worker_pids())
    run = collecting(range(64 * 50), lambda xs: xs, runtime=rt)
    assert [i.payload for i in collect(run)] == list(range(64 * 50))
    assert run.max_in_flight == 2 * rt.pool().scheduler.capacity > 8
    run = collecting(range(64 * 50), lambda xs: xs, runtime=rt, max_in_flight=3)
    collect(run)
    assert run.max_in_flight == 3  # a window given is kept

    pulled = []

    def source():
        for n in itertools.count():
            pulled.append(n)
            yield n

    stream = rt.dispatch_stream(source(), lambda xs: xs, batch_size=1)
    assert next(stream).payload == 0
    stream.close()
    assert 8 <= len(pulled) <= 8 + 2  # the window, the batch being cut, one taken after the first result


def test_a_window_that_follows_the_pool_holds_few_large_batches(rt):
    """The depth follows how long batches run, not their size: quick batches of 1 MB
    deepen the queues, yet no more than WINDOW_BYTES of them (or the floor, 8) is
    read ahead."""
    from slither._dispatch import collect, collecting
    from slither._dispatch.engine import WINDOW_BYTES

    rt.dispatch(range(64 * 100), lambda xs: xs)
    assert 2 * rt.pool().scheduler.capacity > 8
    big = [bytes(1 << 20)] * 24
    run = collecting(big, lambda xs: [len(x) for x in xs], runtime=rt, batch_size=1)
    assert [i.payload for i in collect(run)] == [1 << 20] * 24
    assert WINDOW_BYTES // (1 << 20) <= 8 and run.max_in_flight == 8


@pytest.mark.chaos
def test_a_cancelled_dispatch_runs_none_of_the_batches_queued_behind_its_running_one(tmp_path):
    """Cancelling kills the worker running the dispatch's batch; the batches sent behind
    it (tiny ones: a deep queue) are not run by its replacement afterwards."""
    marks = str(tmp_path)
    with slither.Runtime(pools={"default": 1}) as rt:
        list(rt.map(lambda x: x, range(64 * 40)))  # the one worker's queue deepens
        assert rt.pool().scheduler.capacity > 2
        with Rendezvous() as rv:

            def fn(xs, d=marks, rv=rv):
                if xs[0] == 0:
                    rv.arrive(wait=True)
                open(os.path.join(d, f"ran-{xs[0]}"), "w").close()
                return xs

            stream = rt.dispatch_stream(range(6), fn, batch_size=1)
            consumer = threading.Thread(target=lambda: list(stream))
            consumer.start()
            rv.wait(timeout=20)
            conn = next(iter(rt.pool().scheduler.workers.values()))
            assert len(conn.inflight) == 6  # all sent to the worker, 0 running
            stream.cancel()
            consumer.join(20)
        settle(rt)  # the replacement runs whatever it is given before this returns
        assert os.listdir(marks) == []


def test_two_threads_dispatch_at_once(rt):
    results = {}

    def go(name, base):
        results[name] = [i.payload for i in rt.dispatch(range(base, base + 200), lambda xs: [x * 2 for x in xs], batch_size=5)]

    threads = [threading.Thread(target=go, args=(n, n * 1000)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for n in range(3):
        assert results[n] == [x * 2 for x in range(n * 1000, n * 1000 + 200)]


def test_session_affinity_keeps_one_worker(rt):
    ctx = slither.Context(session_id="affine-1")
    pids = {
        i.payload
        for i in rt.dispatch(range(40), lambda xs: [os.getpid() for _ in xs], batch_size=2, affinity="session", context=ctx)
    }
    assert len(pids) == 1


def test_worker_sees_context(rt):
    ctx = slither.Context(session_id="ctx-1", metadata={"tenant": "acme"})
    out = rt.dispatch(
        [1], lambda xs: [(slither.worker.context().session_id, slither.worker.context().metadata["tenant"])], context=ctx
    )
    assert out[0].payload == ("ctx-1", "acme")


def test_call_batch_runs_one_batch(rt):
    out = rt.call_batch(range(10), lambda xs: [len(xs)] * len(xs))
    assert [i.payload for i in out] == [10] * 10


def test_as_completed_returns_everything(rt):
    out = rt.dispatch(range(50), lambda xs: xs, batch_size=3, ordering="as_completed")
    assert sorted(i.payload for i in out) == list(range(50))


def test_workers_see_callers_sys_path_and_cwd(rt):
    out = rt.dispatch([0], lambda xs: [os.getcwd()])
    assert out[0].payload == os.getcwd()


def test_run_on_workers_probes_each_worker(rt):
    got = rt.run_on_workers(lambda: os.getpid())
    assert sorted(p for p, _ in got) == rt.worker_pids() == sorted(v for _, v in got)


@pytest.mark.chaos
def test_settle_returns_once_every_worker_is_back_and_idle(rt):
    pool = rt.pool("default")
    with Rendezvous() as rv:
        out = {}
        fn = lambda xs, rv=rv: rv.arrive(os.getpid(), wait=True) or xs  # noqa: E731
        t = threading.Thread(target=lambda: out.setdefault("held", rt.dispatch([1], fn)))
        t.start()
        holder = rv.wait(timeout=20)
        os.kill(next(p for p in rt.worker_pids() if p != holder), signal.SIGKILL)  # the other one restarts
        seen = {}

        def settling():
            settle(rt)
            seen.update(stats=pool.stats(), pids=rt.worker_pids())

        s = threading.Thread(target=settling)
        s.start()
        assert pool.wait_ready(20)  # the replacement is back: only the held batch keeps settle waiting
        assert "stats" not in seen
        rv.release()
        t.join(30)
        s.join(30)
    assert [i.payload for i in out["held"]] == [1]
    assert seen["stats"].in_flight == 0 and len(seen["pids"]) == 2


@pytest.mark.chaos
def test_keyboard_interrupt_stops_dispatch_and_kills_its_workers(rt):
    with Rendezvous() as rv:

        def fn(xs, rv=rv):
            rv.arrive(os.getpid(), wait=True)
            return xs

        stream = rt.dispatch_stream(range(4), fn, batch_size=1)
        holder = {}

        def interrupt():
            holder["pid"] = rv.wait(timeout=20)
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C

        t = threading.Thread(target=interrupt)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            list(stream)
        t.join()
    assert not wait_pids_gone([holder["pid"]], timeout=5)
    assert [i.payload for i in rt.dispatch(range(4), lambda xs: xs)] == [0, 1, 2, 3]  # still usable


@pytest.mark.chaos
def test_memory_hog_fails_as_crashed_others_survive():
    from slither.testing import running_runtime

    def hog(xs):
        if 1 in xs:
            blocks = []
            while True:
                blocks.append(bytearray(50 * 1024 * 1024))
        return xs

    with running_runtime(pools={"default": slither.PoolSpec(size=2, max_memory=1024 * 1024 * 1024)}) as rt2:
        out = rt2.dispatch(range(6), hog, batch_size=2, on_error="skip")
        assert [i.payload for i in out if not i.meta.get("skipped")] == [2, 3, 4, 5]
        assert isinstance(out[0].meta["error"], (WorkerCrashed, slither.WorkerError))


def test_raw_and_wrapped_payloads_mix_and_keep_ids(rt):
    """Raw payloads get fresh increasing ids; Items keep theirs, meta and route, in every batch shape."""
    mine = slither.Item(id="k", payload=5, meta={"m": 1}, route="r")
    data = [1, 2, mine, 3] + list(range(10, 20))
    out = rt.dispatch(data, lambda xs: [x * 2 for x in xs], batch_size=4)
    assert [i.payload for i in out] == [x * 2 for x in [1, 2, 5, 3] + list(range(10, 20))]
    assert out[2].id == "k" and dict(out[2].meta) == {"m": 1} and out[2].route == "r"
    raw_ids = [i.id for k, i in enumerate(out) if k != 2]
    assert raw_ids == sorted(raw_ids) and len(set(raw_ids)) == len(raw_ids)
    assert all(type(i) is slither.Item and not i.meta for k, i in enumerate(out) if k != 2)


def test_an_item_inside_a_payload_is_part_of_the_payload(rt):
    """Pickling it tells the dispatch that an Item went by; only an Item of the input
    itself is unwrapped."""
    inner = slither.Item(id="inner", payload=7)
    data = [[inner], {"x": inner}, 3, slither.Item(id="top", payload=4)]
    out = rt.dispatch(data, lambda xs: xs, batch_size=2)
    assert [i.payload for i in out] == [[inner], {"x": inner}, 3, 4]
    assert out[3].id == "top" and "inner" not in [i.id for i in out]


def _opaque_item(id, payload):
    return slither.Item(id=id, payload=payload)


def test_items_that_pickle_without_item_reduce_are_still_found(rt, monkeypatch):
    """A subclass with a reduce of its own, or a copyreg entry, would not say it was
    pickled: every chunk of the input is then scanned for Items."""
    import copyreg

    import attrs

    from slither import _item

    monkeypatch.setattr(_item, "opaque_items", False)

    @attrs.frozen
    class Own(slither.Item):
        def __reduce__(self):
            return (_opaque_item, (self.id, self.payload))

    assert _item.opaque_items
    out = rt.dispatch([1, Own(id="own", payload=2), 3], lambda xs: [x * 10 for x in xs], batch_size=3)
    assert [i.payload for i in out] == [10, 20, 30] and out[1].id == "own"

    monkeypatch.setattr(_item, "opaque_items", False)

    @attrs.frozen
    class Registered(slither.Item):
        pass

    copyreg.pickle(Registered, lambda i: (_opaque_item, (i.id, i.payload)))
    try:
        out = rt.dispatch([Registered(id="reg", payload=5), 6], lambda xs: [x + 1 for x in xs])
        assert [(i.id, i.payload) for i in out][0] == ("reg", 6) and out[1].payload == 7
    finally:
        del copyreg.dispatch_table[Registered]


def test_a_failed_raw_batch_reports_the_ids_its_results_would_have_had(rt):
    fn = crash_when(lambda xs: xs, lambda x: x == 6)
    out = rt.dispatch(range(8), fn, batch_size=4, on_error="skip")
    assert [bool(i.meta.get("skipped")) for i in out] == [False] * 4 + [True] * 4
    ids = [i.id for i in out]
    assert ids == sorted(ids) and len(set(ids)) == 8 and ids[-1] - ids[0] == 7


def test_a_batch_goes_to_an_idle_worker_not_behind_a_running_one():
    """Two slow batches on a 2-worker pool run side by side (depth 2 must not queue both on one worker).

    A runtime of its own: a batch left running by an earlier test would make a worker busy."""
    from slither.testing import running_runtime

    def slow(xs):
        import time

        time.sleep(0.3)
        return [os.getpid() for _ in xs]

    with running_runtime(pools={"default": 2}) as fresh:
        for _ in range(3):
            out = fresh.dispatch(range(2), slow, batch_size=1)
            assert out[0].payload != out[1].payload


# -- receiving: the waiting thread reads every worker socket (see Pool.wait) --------------


def test_eight_threads_share_the_reading(rt):
    """Batches of one item, eight callers at once: the reading right passes between them
    (and their results between their queues) thousands of times; every result reaches
    its own caller, in order."""
    results = {}

    def go(n):
        kind = "preserve" if n % 2 else "as_completed"
        out = rt.dispatch(range(n * 1000, n * 1000 + 300), lambda xs: [x + 1 for x in xs], batch_size=1, ordering=kind)
        results[n] = [i.payload for i in out] if kind == "preserve" else sorted(i.payload for i in out)

    threads = [threading.Thread(target=go, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert {n: results.get(n) for n in range(8)} == {n: list(range(n * 1000 + 1, n * 1000 + 301)) for n in range(8)}


def test_a_paused_stream_does_not_stall_another_caller(rt):
    """A dispatch_stream whose consumer stops reading holds no reading right: another
    caller's dispatch completes meanwhile, and the paused stream's results (read by the
    other caller or the backup reader) are all there, in order, when it resumes."""
    stream = rt.dispatch_stream(range(40), lambda xs: [x * 3 for x in xs], batch_size=2, max_in_flight=8)
    first = next(stream)
    done = []
    t = threading.Thread(target=lambda: done.append(rt.dispatch(range(500), lambda xs: [-x for x in xs], batch_size=4)))
    t.start()
    t.join(30)
    assert [i.payload for i in done[0]] == [-x for x in range(500)]
    assert [first.payload] + [i.payload for i in stream] == [x * 3 for x in range(40)]


def test_a_crash_is_seen_while_no_caller_waits(rt):
    """Nobody dispatches: the pool's backup reader still sees a killed worker's EOF at
    once (the crash event fires, the supervisor's replacement is attached)."""
    from slither import telemetry

    victim = rt.worker_pids()[0]
    seen = threading.Event()

    def on_crash(event, measurements, metadata):
        if metadata.get("worker") == victim:
            seen.set()

    telemetry.attach("test-crash-idle", [("slither", "worker", "crash")], on_crash)
    try:
        os.kill(victim, signal.SIGKILL)
        assert seen.wait(20), "the pool did not notice the killed worker while nobody was waiting"
    finally:
        telemetry.detach("test-crash-idle")
    assert rt.pool().wait_ready(20)
    assert victim not in rt.worker_pids()


def test_the_pools_reader_thread_and_wake_pipe_end_with_the_runtime():
    from slither.testing import running_runtime

    def link(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None

    with running_runtime(pools={"rxend": 1}) as fresh:
        pool = fresh.pool("rxend")
        assert [i.payload for i in fresh.dispatch([1, 2], lambda xs: xs, pool="rxend")] == [1, 2]
        pipes = {fd: link(fd) for fd in (pool.receiver._wake_r, pool.receiver._wake_w)}
        assert all(v and v.startswith("pipe:") for v in pipes.values())
    pool.receiver._backup.join(10)
    assert not pool.receiver._backup.is_alive()
    assert all(link(fd) != was for fd, was in pipes.items()), "the pool's wake pipe was left open"


def _sized(xs):
    """A 300 KB result for even payloads, a small one for odd: both ways of reading a frame."""
    return [bytes([x % 256]) * 300_000 if x % 2 == 0 else x for x in xs]


def test_large_and_small_results_interleave_on_one_connection(rt):
    """Large frames are read by a thread of their connection, small ones by the waiting
    thread; a connection goes back and forth between them without losing or reordering."""
    out = rt.dispatch(range(60), _sized, batch_size=1, max_in_flight=6)
    assert [i.payload for i in out] == _sized(range(60))


def test_large_and_small_batches_go_out_in_order(rt):
    """Small frames queued for one worker leave in one sendall (with the function's own
    frame, the first time), a large one on its own: none lost, none reordered."""
    payloads = [bytes([x]) * 300_000 if x % 3 == 0 else x for x in range(45)]
    out = rt.dispatch(
        payloads, lambda xs: [(len(x), x[0]) if isinstance(x, bytes) else -x for x in xs], batch_size=1, max_in_flight=6
    )
    assert [i.payload for i in out] == [(300_000, x) if x % 3 == 0 else -x for x in range(45)]


def test_a_worker_dying_between_large_results_is_retried(rt, tmp_path):
    from slither.testing import once_per

    def fn(xs):
        return _sized(xs)

    flaky = once_per(str(tmp_path), crash_when, fn, lambda x: x in (9, 20))
    out = rt.dispatch(range(40), flaky, batch_size=1, max_in_flight=6, on_error=Retry(3, backoff=0))
    assert [i.payload for i in out] == _sized(range(40))
    assert any(i.meta["attempts"] == 2 for i in out)


def _who(xs):
    return [(os.getpid(), len(x)) for x in xs]


@pytest.mark.timeout(40)
def test_a_worker_that_stops_reading_does_not_stall_the_pool():
    """A worker stops reading its socket (SIGSTOPped here; a member cut off by the network
    alike) while 4 MB batches, more than any socket buffer holds, are on their way to it:
    no caller's thread blocks sending to it, so the other worker's results keep coming.
    No batch timeout: before, the caller blocked in sendall until this test's own timeout.
    Then the stopped worker is killed: its batches run again elsewhere, none lost, and the
    connections' sender threads end with the runtime."""
    from slither.testing import running_runtime

    def senders():
        return [t for t in threading.enumerate() if t.name.startswith("slither-stuck-w") and t.name.endswith("-send")]

    with running_runtime(pools={"stuck": {"size": 2, "max_restarts": 10, "max_seconds": 1.0}}) as fresh:
        stopped, other = fresh.worker_pids("stuck")
        blob = b"x" * (4 << 20)
        os.kill(stopped, signal.SIGSTOP)
        try:
            stream = fresh.dispatch_stream(
                [blob] * 10,
                _who,
                pool="stuck",
                batch_size=1,
                max_in_flight=4,
                ordering="as_completed",
                timeout=None,
                on_error=Retry(3, backoff=0),
            )
            first = [next(stream).payload for _ in range(6)]
            assert first == [(other, 4 << 20)] * 6
        finally:
            os.kill(stopped, signal.SIGKILL)
        rest = [i.payload for i in stream]
        assert len(rest) == 4 and all(n == 4 << 20 for _, n in rest)
        assert stopped not in {pid for pid, _ in rest}
        threads = senders()
        assert threads, "no send was handed over to a connection's thread"
    for t in threads:
        t.join(10)
    assert not [t.name for t in threads if t.is_alive()]


def test_a_telemetry_handler_dispatching_on_its_own_pool_gets_a_clear_error(rt):
    """A crash event runs its handlers in the thread reading the pool's sockets: a
    dispatch there would wait on itself, so it raises at once instead of hanging."""
    from slither import telemetry

    got = []

    def on_crash(event, measurements, metadata):
        try:
            rt.dispatch([1], lambda xs: xs)
            got.append("no error")
        except RuntimeError as exc:
            got.append(str(exc))

    telemetry.attach("test-reentrant", [("slither", "worker", "crash")], on_crash)
    try:
        out = rt.dispatch(range(4), crash_when(lambda xs: xs, lambda x: x == 2), batch_size=1, on_error="skip")
    finally:
        telemetry.detach("test-reentrant")
    assert [bool(i.meta.get("skipped")) for i in out] == [False, False, True, False]
    assert len(got) == 1 and "would wait on itself" in got[0]
    assert rt.pool().wait_ready(20)
