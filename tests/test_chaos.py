"""Chaos: workers, stores and callers killed while work flows; every item accounted for.

Faults are driven by progress (every N results), never by sleeps. Run alone
with ``pytest -m chaos``; they are also part of the normal suite.
"""

import os
import random
import signal
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slither
from slither import PoolDown, Retry, stage
from slither.testing import running_runtime, wait_pids_gone
from slither.testing import strategies as sst

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

SPEC = {"size": 2, "max_restarts": 1000, "max_seconds": 1.0}


@pytest.fixture(scope="module")
def crt():
    with running_runtime(pools={"default": SPEC}) as rt:
        yield rt


def square(xs):
    return [x * x for x in xs]


def kill_random_worker(rt, rng):
    pids = rt.worker_pids()
    if pids:
        try:
            os.kill(rng.choice(pids), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_random_sigkills_while_streaming_with_retry(crt):
    rng = random.Random(1)
    n = 5000
    got = {}
    kills = 0
    for k, item in enumerate(
        crt.dispatch_stream(range(n), square, batch_size=20, max_in_flight=6, on_error=Retry(max_attempts=10, backoff=0)), 1
    ):
        assert item.id not in got
        got[item.id] = item.payload
        if k % 400 == 0:
            kill_random_worker(crt, rng)
            kills += 1
    assert kills >= 10
    assert sorted(got.values()) == sorted(x * x for x in range(n))
    assert len(got) == n
    assert crt.pool().wait_ready(30) and len(crt.worker_pids()) == 2  # the pool is whole afterwards
    assert crt.pool().crashes >= 1


class ChaosPipe(slither.Pipe):
    stages = [
        stage.inline("tag", handler=lambda i, c: i.payload),
        stage.pool("work", fn=square, batch_size=16, max_in_flight=4),
        stage.router("route", routes=[(lambda i: i.payload % 2 == 0, "even")]),
    ]
    outputs = ["even"]
    on_error = {"work": Retry(max_attempts=10, backoff=0)}


def test_random_sigkills_during_a_pipe_stream(crt):
    rng = random.Random(2)
    n = 3000
    seen = {}
    for k, (name, item) in enumerate(crt.stream_pipe(ChaosPipe, range(n)), 1):
        assert item.id not in seen
        seen[item.id] = (name, item.payload)
        if k % 300 == 0:
            kill_random_worker(crt, rng)
    assert len(seen) == n
    assert sorted(p for _, p in seen.values()) == sorted(x * x for x in range(n))
    assert all((name == "even") == (p % 2 == 0) for name, p in seen.values())


def test_random_sigkills_during_a_long_lived_pipe(crt):
    rng = random.Random(3)
    h = crt.start_pipe(ChaosPipe, max_pending=200)
    n = 1500

    def feed():
        for x in range(n):
            h.submit(x, timeout=60)
        h.stop(drain=True, timeout=120)

    t = threading.Thread(target=feed)
    t.start()
    out = []
    for k, (name, item) in enumerate(h.results(timeout=60), 1):
        out.append(item.payload)
        if k % 200 == 0:
            kill_random_worker(crt, rng)
    t.join(60)
    assert sorted(out) == sorted(x * x for x in range(n))
    assert h.status()["state"] == "stopped"


def test_pool_down_reaches_every_waiting_caller_promptly_and_pool_restarts():
    with running_runtime(pools={"default": {"size": 2, "max_restarts": 3, "max_seconds": 10.0}}) as rt:

        def doomed(xs):
            os._exit(3)

        errors = []
        started = threading.Barrier(4)

        def caller():
            started.wait()
            try:
                rt.dispatch(range(50), doomed, batch_size=1, on_error=Retry(max_attempts=100, backoff=0))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=caller) for _ in range(3)]
        for t in threads:
            t.start()
        started.wait()
        for t in threads:
            t.join(60)
        assert len(errors) == 3 and all(isinstance(e, PoolDown) for e in errors), errors
        with pytest.raises(PoolDown):
            rt.dispatch([1], square)  # new work is refused at once
        rt.restart_pool("default")
        assert [i.payload for i in rt.dispatch([3], square)] == [9]


@settings(max_examples=8, deadline=None)
@given(sst.fault_schedules(max_batches=12, kinds=("none", "crash", "kill", "raise")), st.integers(1, 6))
def test_fault_schedules_with_retry_lose_nothing(crt, tmp_path_factory, schedule, window):
    marker_dir = str(tmp_path_factory.mktemp("faults"))

    def fn(xs, schedule=schedule, marker_dir=marker_dir):
        batch = xs[0] // 5
        fault = schedule.get(batch, "none")
        marker = os.path.join(marker_dir, str(batch))
        if fault != "none" and not os.path.exists(marker):
            open(marker, "w").close()
            if fault == "crash":
                os._exit(1)
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("injected")
        return [x + 1 for x in xs]

    out = crt.dispatch(range(60), fn, batch_size=5, max_in_flight=window, on_error=Retry(max_attempts=3, backoff=0))
    assert [i.payload for i in out] == list(range(1, 61))
    faulty = {b for b, f in schedule.items() if f != "none" and b < 12}
    # each faulty batch failed exactly once; batches queued behind it on a killed
    # worker were re-queued without spending an attempt
    assert {(i.payload - 1) // 5 for i in out if i.meta["attempts"] == 2} == faulty
    assert all(i.meta["attempts"] in (1, 2) for i in out)


def test_malformed_fn_that_cannot_be_pickled_fails_before_work(crt):
    lock = threading.Lock()
    with pytest.raises(slither.SerializationError, match="could not be pickled"):
        crt.dispatch([1], lambda xs, lock=lock: xs)


def test_caller_exit_without_shutdown_leaves_nothing(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "p.py"
    script.write_text(
        "import slither\nrt = slither.Runtime(pools={'default': 2}).start()\n"
        "list(rt.dispatch_stream(range(1000), lambda xs: xs))\nprint(' '.join(map(str, rt.pids())), flush=True)\n"
    )
    out = tmp_path / "out.txt"  # a file, not a pipe: a leaked process holding a pipe would hang this test
    with out.open("w") as f:
        subprocess.run(
            [sys.executable, str(script)],
            stdout=f,
            timeout=60,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    pids = [int(x) for x in out.read_text().split()]
    assert pids and not wait_pids_gone(pids, timeout=10)
