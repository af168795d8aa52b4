"""Long-lived pipes under the PipeSupervisor: a PipeRunner process per pipe, restarted
on crash with nothing accepted lost, PipeDown past its restart intensity."""

import itertools
import os
import signal
import threading

import pytest
from pipes_under_test import OffsetStore, ScorePipe

import slither
from slither import Pipe, stage
from slither.testing import Rendezvous, wait_pids_gone

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def rt():
    from slither.testing import running_runtime

    with running_runtime(pools={"default": {"size": 2, "max_restarts": 100, "max_seconds": 5}}, stores=[OffsetStore]) as rt:
        yield rt


def inc(item, ctx):
    return item.payload + 1


def square_all(xs):
    return [x * x for x in xs]


class Three(Pipe):
    """inline → pool → router: the shape the latency target is measured on."""

    stages = [
        stage.inline("inc", handler=inc),
        stage.pool("square", fn=square_all, batch_size=8),
        stage.router("size", routes=[(lambda i: i.payload > 10_000, "big")]),
    ]
    outputs = ["big"]


def _stream(h, n, kill_after=None, kill=None):
    """Submit 0..n-1 from a thread, take n results here; run ``kill()`` once ``kill_after``
    results are in (the feeder is still submitting: max_pending is far below n)."""
    errors = []

    def feed():
        try:
            for x in range(n):
                h.submit(x, timeout=60)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=feed)
    t.start()
    out = []
    for k, (name, item) in enumerate(itertools.islice(h.results(timeout=60), n), 1):
        out.append((name, item.payload))
        if k == kill_after:
            kill()
    t.join(60)
    assert not errors
    return out


def test_the_runner_is_a_process_of_its_own_and_a_sigkill_loses_nothing_accepted(rt):
    h = rt.start_pipe(Three, max_pending=50)
    try:
        first = h.status()["runner_pid"]
        assert first not in (None, os.getpid()) and first in rt.pids()
        out = _stream(h, 3000, kill_after=700, kill=lambda: os.kill(first, signal.SIGKILL))
        status = h.status()
    finally:
        h.stop(drain=True)
    # Exactly once, after the handle's deduplication: every accepted payload, no duplicate.
    assert sorted(p for _, p in out) == sorted((x + 1) ** 2 for x in range(3000))
    assert all((name == "big") == (p > 10_000) for name, p in out)
    assert status["restarts"] >= 1 and status["runner_pid"] not in (None, first)
    assert status["submitted"] == status["completed"] == 3000
    assert wait_pids_gone([first], timeout=5) == []


def _exit_in_handler(item, ctx):
    marker = item.payload
    if isinstance(marker, str) and not os.path.exists(marker):
        open(marker, "w").close()  # once: the restarted runner runs it again and passes
        os._exit(7)
    return marker


class ExitsOnce(Pipe):
    stages = [stage.inline("maybe_exit", handler=_exit_in_handler)]


def test_os_exit_in_an_inline_handler_restarts_the_runner_and_reruns_what_it_had(rt, tmp_path):
    marker = str(tmp_path / "exited")
    h = rt.start_pipe(ExitsOnce, max_pending=100)
    try:
        for x in range(20):
            h.submit(x)
        h.submit(marker)
        for x in range(20, 40):
            h.submit(x)
        got = [item.payload for _, item in itertools.islice(h.results(timeout=30), 41)]
        status = h.status()
    finally:
        h.stop()
    assert sorted(got, key=str) == sorted([*range(40), marker], key=str)
    assert len(got) == len(set(got)) == 41
    assert status["restarts"] == 1


def _always_exit(item, ctx):
    if item.payload == "poison":
        os._exit(3)
    return item.payload


class Poisoned(Pipe):
    stages = [stage.inline("drink", handler=_always_exit)]


def test_past_its_restart_intensity_the_pipe_raises_pipe_down_to_submit_and_results(rt):
    h = rt.start_pipe(Poisoned, restart=(2, 60))
    waiting = {}

    def wait_results():
        try:
            list(h.results(timeout=60))
        except BaseException as exc:  # noqa: BLE001
            waiting["exc"] = exc

    t = threading.Thread(target=wait_results)
    t.start()
    h.submit("poison")  # every incarnation runs it again, and dies
    t.join(60)
    assert isinstance(waiting.get("exc"), slither.PipeDown), waiting
    err = waiting["exc"]
    assert err.pipe == "Poisoned" and "restart=(2, 60)" in str(err) and err.exitcode == 3
    with pytest.raises(slither.PipeDown):
        h.submit(1)
    with pytest.raises(slither.PipeDown):
        next(h.results(timeout=5))
    assert h.status()["state"] == "failed" and h.status()["restarts"] == 2
    h.stop()


def test_a_poison_input_is_skipped_after_max_replays_and_its_neighbours_come_out(rt):
    """Each runner it reaches dies; the ones in flight beside it are replayed, the
    suspects one at a time, so only the poison is blamed."""
    h = rt.start_pipe(Poisoned, restart=(5, 60), max_replays=2)
    try:
        for x in range(30):
            h.submit(x)
        h.submit("poison")
        for x in range(30, 60):
            h.submit(x)
        got = list(itertools.islice(h.results(timeout=60), 61))
        status = h.status()
    finally:
        h.stop()
    out = {item.payload: (name, item) for name, item in got}
    assert sorted(p for p in out if p != "poison") == list(range(60)) and len(got) == 61
    assert all(name == "default" for p, (name, _) in out.items() if p != "poison")
    name, poison = out["poison"]
    assert name == "skipped" and isinstance(poison.meta["error"], slither.errors.RunnerDied)
    assert poison.meta["error"].exitcode == 3 and "max_replays=2" in str(poison.meta["error"])
    assert status["restarts"] == 3 and status["state"] == "running"


def _hangs(item, ctx):
    if item.payload == "hang":
        threading.Event().wait()  # never returns: only the runner's end ends it
    return item.payload


class Hangs(Pipe):
    stages = [stage.inline("slow", handler=_hangs, timeout=0.5)]
    on_error = {"slow": "skip"}
    chunk_size = 1  # the timeout takes a whole chunk: inputs sent together would share the hung one's


class HangsAndHalts(Pipe):
    stages = [stage.inline("slow", handler=_hangs, timeout=0.5)]


def test_an_inline_handler_past_its_timeout_costs_a_runner_and_the_stage_policy_decides(rt):
    h = rt.start_pipe(Hangs, max_pending=100)
    try:
        for x in ["a", "hang", "b"]:
            h.submit(x)
        got = {item.payload: (name, item) for name, item in itertools.islice(h.results(timeout=60), 3)}
        h.submit("c")
        after = next(h.results(timeout=30))
        status = h.status()
    finally:
        h.stop()
    assert got["a"][0] == got["b"][0] == "default" and after[1].payload == "c"
    name, hung = got["hang"]
    assert name == "skipped" and isinstance(hung.meta["error"], slither.errors.StageTimeout)
    assert hung.meta["error"].stage == "slow" and hung.meta["stage"] == "slow"
    assert status["restarts"] == 1 and status["state"] == "running"

    h = rt.start_pipe(HangsAndHalts)  # "halt", the default: the pipe fails, naming the stage
    h.submit("hang")
    with pytest.raises(slither.PipeError) as ei:
        next(h.results(timeout=60))
    assert ei.value.stage == "slow" and isinstance(ei.value.reason, slither.errors.StageTimeout)
    h.stop()


def test_run_pipe_fails_on_an_inline_timeout_instead_of_hanging(rt):
    with pytest.raises(slither.PipeError) as ei:
        rt.run_pipe(HangsAndHalts, ["x", "hang"])
    assert isinstance(ei.value.reason, slither.errors.StageTimeout)


def test_a_store_read_in_an_inline_stage_and_a_pool_stage_by_name_work_in_the_runner(rt):
    h = rt.start_pipe(ScorePipe)
    try:
        for x in (-2, 3):
            h.submit(x)
        got = sorted((name, item.payload) for name, item in itertools.islice(h.results(timeout=30), 2))
    finally:
        h.stop()
    assert got == [("default", -4), ("positive", 6)]


def test_a_handler_that_cannot_travel_is_named_when_the_pipe_starts(rt):
    lock = threading.Lock()

    class Locked(Pipe):
        stages = [stage.inline("ok", handler=inc), stage.inline("locked", handler=lambda i, c, lock=lock: i.payload)]

    with pytest.raises(slither.ConfigurationError, match=r"stage 'locked': its handler .* cannot travel .*lock"):
        rt.start_pipe(Locked)
    assert [h.name for h in rt._pipes] == []


def test_a_payload_that_cannot_be_pickled_is_refused_by_submit_and_nothing_else_is_lost(rt):
    class Id(Pipe):
        stages = [stage.inline("id", handler=lambda i, c: i.payload)]

    h = rt.start_pipe(Id, max_pending=3)
    try:
        h.submit(1)
        with pytest.raises(slither.SerializationError, match=r"input #1 \(lock\) cannot be pickled"):
            h.submit(threading.Lock())
        for _ in range(2):  # the refused payload took no slot
            h.submit(2)
        got = sorted(item.payload for _, item in itertools.islice(h.results(timeout=30), 3))
    finally:
        h.stop()
    assert got == [1, 2, 2]


def test_names_and_restart_intensity_are_checked(rt):
    h = rt.start_pipe(Three)
    try:
        second = rt.start_pipe(Three)
        assert (h.name, second.name) == ("Three", "Three-2")
        second.stop()
        with pytest.raises(slither.ConfigurationError, match="already running"):
            rt.start_pipe(Three, name="Three")
    finally:
        h.stop()
    for bad in ((1,), (-1, 5), (3, 0), "often", {"max_restart": 3}):
        with pytest.raises(slither.ConfigurationError, match="restart"):
            rt.start_pipe(Three, restart=bad)


def test_stage_telemetry_reaches_the_caller_and_status_counts_per_stage(rt):
    got = []
    slither.telemetry.attach("sp", [("slither", "pipe", "stage", "stop")], lambda e, m, md: got.append(md["stage"]))
    h = rt.start_pipe(Three)
    try:
        h.submit(1)
        next(h.results(timeout=30))
    finally:
        h.stop(drain=True)
        slither.telemetry.detach("sp")
    assert {"inc", "square"} <= set(got)
    assert h.status()["stages"]["square"]["in"] == 1


def test_a_drain_finishes_what_a_killed_runner_had_in_flight(rt):
    with Rendezvous() as rv:

        def held(xs, rv=rv):
            if 5 in xs:
                rv.arrive(os.getpid(), wait=True)
            return xs

        class Held(Pipe):
            stages = [stage.pool("held", fn=held, batch_size=1)]
            on_error = {"held": slither.Retry(max_attempts=3, backoff=0)}

        h = rt.start_pipe(Held)
        for x in range(10):
            h.submit(x)
        rv.wait(timeout=30)  # batch 5 is on a worker: the runner has it in flight
        os.kill(h.status()["runner_pid"], signal.SIGKILL)
        rv.release()
        h.stop(drain=True, timeout=60)
        got = sorted(item.payload for _, item in h.results(timeout=10))
    assert got == list(range(10))
    assert h.status()["state"] == "stopped"


def test_in_the_debugging_base_the_stages_are_threads_of_the_caller():
    with slither.Runtime(pools={"default": 1}, base="simpleSystemBase") as srt:
        h = srt.start_pipe(Three)
        h.submit(2)
        assert next(h.results(timeout=30))[1].payload == 9
        assert h.status()["runner_pid"] == os.getpid()
        h.stop()


def test_a_result_is_read_by_the_thread_waiting_for_it(rt, monkeypatch):
    """The consumer in results() reads the link itself: no hand-off from a reader thread."""
    from slither._pipe_runner import engine

    readers = []
    real = engine.RemoteEngine._frame

    def spy(self, msg):
        if msg[0] == "out":
            readers.append(threading.current_thread())
        return real(self, msg)

    monkeypatch.setattr(engine.RemoteEngine, "_frame", spy)
    h = rt.start_pipe(Three)
    try:
        results = h.results(timeout=30)
        for k in range(20):
            h.submit(k)
            assert next(results)[1].payload == (k + 1) ** 2
    finally:
        h.stop()
    assert len(readers) == 20
    assert readers.count(threading.current_thread()) >= 10, readers  # the link's thread may read one now and then


def test_the_runner_forwards_only_the_events_the_caller_listens_to(rt, monkeypatch):
    """No handler: no event crosses the link. One attached while the pipe runs: its
    events come from the next input on (the runner is told before that input)."""
    forwarded = []
    real = slither.telemetry.emit

    def spy(event, measurements=None, metadata=None):
        if metadata and "runner" in metadata:
            forwarded.append(event)
        real(event, measurements, metadata)

    monkeypatch.setattr(slither.telemetry, "emit", spy)
    h = rt.start_pipe(Three)
    got = []
    try:
        results = h.results(timeout=30)
        h.submit(1)
        next(results)
        assert forwarded == []
        slither.telemetry.attach("late", [("slither", "pipe", "stage", "stop")], lambda e, m, md: got.append(md["stage"]))
        try:
            h.submit(2)
            next(results)  # its stages' events travel ahead of its result, on the same link
        finally:
            slither.telemetry.detach("late")
    finally:
        h.stop()
    assert {"inc", "square"} <= set(got)
    assert set(forwarded) == {("slither", "pipe", "stage", "stop")}  # batch events: nobody listened
