"""Telemetry events reach handlers in the caller's process."""

import os
import threading

import pytest

import slither
from slither import telemetry
from slither.testing import crash_when

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def events():
    got = []
    lock = threading.Lock()

    def handler(event, measurements, metadata):
        with lock:
            got.append((event, dict(measurements), dict(metadata)))

    evs = [
        ("slither", "dispatch", "batch", "start"),
        ("slither", "dispatch", "batch", "stop"),
        ("slither", "dispatch", "batch", "exception"),
        ("slither", "worker", "crash"),
        ("slither", "worker", "restart"),
        ("custom", "from", "worker"),
    ]
    telemetry.attach("test-events", evs, handler)
    yield got
    telemetry.detach("test-events")


def test_batch_start_stop_carry_duration_and_metadata(rt, events):
    rt.dispatch(range(10), lambda xs: xs, batch_size=5, context=slither.Context(session_id="tele"))
    stops = [e for e in events if e[0][-1] == "stop"]
    starts = [e for e in events if e[0][-1] == "start"]
    assert len(starts) == 2 and len(stops) == 2
    for _, m, meta in stops:
        assert m["duration"] > 0
        assert meta["pool"] == "default" and meta["batch_size"] == 5 and meta["session_id"] == "tele"
        assert meta["worker"] in rt.worker_pids()
    assert sorted(meta["batch_ref"] for _, _, meta in stops) == [0, 1]


def test_crash_and_restart_events(rt, events):
    fn = crash_when(lambda xs: xs, lambda x: x == 0)
    rt.dispatch([0], fn, on_error="skip")
    rt.dispatch(range(4), lambda xs: xs, batch_size=1)  # the pool serves again
    crash = [e for e in events if e[0] == ("slither", "worker", "crash")]
    assert crash and crash[0][2]["pool"] == "default"
    assert any(e[0][-1] == "exception" and isinstance(e[2]["error"], slither.WorkerCrashed) for e in events)


def test_events_emitted_in_a_worker_reach_the_caller(rt, events):
    def fn(xs):
        slither.telemetry._emit_anywhere(("custom", "from", "worker"), {"n": len(xs)}, {"pid": os.getpid()})
        return xs

    rt.dispatch([1, 2, 3], fn, batch_size=3)
    custom = [e for e in events if e[0] == ("custom", "from", "worker")]
    assert custom and custom[0][1] == {"n": 3} and custom[0][2]["pid"] != os.getpid()


def test_span_and_failing_handler_is_detached():
    seen = []
    telemetry.attach("span", [("x", "start"), ("x", "stop"), ("x", "exception")], lambda e, m, md: seen.append(e))
    telemetry.attach("bad", [("x", "start")], lambda e, m, md: 1 / 0)
    try:
        with telemetry.span(("x",), {"a": 1}):
            pass
        with pytest.raises(ValueError):
            with telemetry.span(("x",)):
                raise ValueError
        assert seen == [("x", "start"), ("x", "stop"), ("x", "start"), ("x", "exception")]
        assert not telemetry.detach("bad")  # it was detached when it raised
    finally:
        telemetry.detach("span")
    with pytest.raises(ValueError, match="already attached"):
        telemetry.attach("t2", [], print)
        telemetry.attach("t2", [], print)
    telemetry.detach("t2")
