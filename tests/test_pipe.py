"""Pipe: definitions, stage semantics, policies, pipelining, long-lived pipes."""

import itertools
import os
import signal
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storemod import KV

import slither
from slither import Fail, Pipe, PipeDefinitionError, PipeError, Retry, Route, Routed, Skip, stage
from slither.testing import Rendezvous, crash_when, once_per

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def prt():
    from slither.testing import running_runtime

    with running_runtime(pools={"default": {"size": 2, "max_restarts": 100, "max_seconds": 5}}, stores=[KV]) as rt:
        yield rt


def double(item, ctx):
    return item.payload * 2


def inc(item, ctx):
    return item.payload + 1


class Chained(Pipe):
    stages = [stage.inline("double", handler=double), stage.inline("inc", handler=inc)]


class Routing(Pipe):
    stages = [stage.router("route", routes=[(lambda i: i.payload > 10, "big"), (lambda i: i.payload < 0, "negative")])]
    outputs = ["big", "negative"]


class InlineThenPool(Pipe):
    stages = [stage.inline("prep", handler=inc), stage.pool("square", fn=lambda xs: [x * x for x in xs], batch_size=3)]


class SkipOnError(Pipe):
    stages = [stage.inline("check", handler=lambda item, ctx: 1 / item.payload)]
    on_error = {"check": "skip"}


def test_chained_inline_stages(prt):
    out = prt.run_pipe(Chained, [1, 2, 3])
    assert [i.payload for i in out["default"]] == [3, 5, 7]


def test_routing_to_named_outputs_and_default(prt):
    out = prt.run_pipe(Routing, [5, 20, -1, 11, 0])
    assert [i.payload for i in out["big"]] == [20, 11]
    assert [i.payload for i in out["negative"]] == [-1]
    assert [i.payload for i in out["default"]] == [5, 0]


def test_inline_then_pool(prt):
    out = prt.run_pipe(InlineThenPool, range(10))
    assert [i.payload for i in out["default"]] == [(x + 1) ** 2 for x in range(10)]
    assert out.stats["square"]["in"] == 10


def test_skip_on_error(prt):
    out = prt.run_pipe(SkipOnError, [1, 0, 2])
    assert [i.payload for i in out["default"]] == [1.0, 0.5]
    assert [i.payload for i in out.skipped] == [0]
    assert isinstance(out.skipped[0].meta["error"], ZeroDivisionError)
    assert out.skipped[0].meta["stage"] == "check"


def test_empty_input_and_declared_outputs_present(prt):
    out = prt.run_pipe(Routing, [])
    assert set(out) == {"default", "big", "negative"} and all(v == [] for v in out.values())
    assert out.skipped == []


def test_handler_result_forms(prt):
    def h(item, ctx):
        p = item.payload
        if p == 0:
            return Skip("zero")
        if p == 1:
            return Fail("one is bad")
        if p == 2:
            return Routed("special", "two!")
        return p

    class Forms(Pipe):
        stages = [stage.inline("h", handler=h)]
        outputs = ["special", "failed"]
        on_error = {"h": Route("failed")}

    out = prt.run_pipe(Forms, [0, 1, 2, 3])
    assert [i.payload for i in out["default"]] == [3]
    assert [i.payload for i in out["special"]] == ["two!"]
    assert [i.payload for i in out["failed"]] == [1]
    assert isinstance(out["failed"][0].meta["error"], slither.errors.StageFailure)
    assert out.skipped[0].meta["error"] == "zero"


def test_cardinality_many_and_batch_handler(prt):
    class Many(Pipe):
        stages = [
            stage.inline("split", handler=lambda i, c: i.payload.split(), cardinality="many"),
            stage.inline("upper", batch_handler=lambda items, c: [i.payload.upper() for i in items]),
        ]

    out = prt.run_pipe(Many, ["a b", "c", "d e f"])
    assert [i.payload for i in out["default"]] == ["A", "B", "C", "D", "E", "F"]
    assert len({i.id for i in out["default"]}) == 6


def test_halt_raises_pipe_error_with_partial_results(prt):
    class Halting(Pipe):
        stages = [stage.inline("div", handler=lambda i, c: 10 // i.payload)]
        chunk_size = 2

    with pytest.raises(PipeError) as ei:
        prt.run_pipe(Halting, [1, 2, 0, 5])
    e = ei.value
    assert e.pipe == "Halting" and e.stage == "div" and isinstance(e.reason, ZeroDivisionError)
    assert isinstance(e.__cause__, ZeroDivisionError)
    assert [i.payload for i in e.partial_results["default"]] == [10, 5]


def test_pool_stage_halt_names_stage(prt):
    class PoolHalt(Pipe):
        stages = [stage.pool("boom", fn=lambda xs: [1 / x for x in xs])]

    with pytest.raises(PipeError) as ei:
        prt.run_pipe(PoolHalt, [1, 0])
    assert ei.value.stage == "boom" and isinstance(ei.value.reason, slither.WorkerError)


@pytest.mark.parametrize(
    "attrs, match",
    [
        ({"stages": [stage.inline("a", handler=inc), stage.inline("a", handler=inc)]}, "duplicate stage name 'a'"),
        ({"stages": [stage.router("r", routes=[(bool, "nowhere")])]}, "undeclared output 'nowhere'"),
        ({"stages": [stage.inline("a", handler=inc)], "on_error": {"b": "skip"}}, "unknown stage 'b'"),
        ({"stages": [stage.inline("a", handler=inc)], "on_error": {"a": "explode"}}, "on_error\\['a'\\]"),
        ({"stages": [stage.inline("a", handler=inc)], "on_error": {"a": Route("zz")}}, "undeclared output 'zz'"),
        ({"stages": [stage.inline("a", handler=inc)], "outputs": ["skipped"]}, "reserved"),
        ({"stages": []}, "non-empty"),
        ({"stages": ["not a stage"]}, "is not a stage"),
    ],
)
def test_definitions_are_validated_at_class_creation(attrs, match):
    with pytest.raises(PipeDefinitionError, match=match):
        type("Bad", (Pipe,), attrs)


def test_stage_constructors_validate():
    with pytest.raises(PipeDefinitionError, match="unknown stage kind"):
        stage.StageSpec("x", "python")
    with pytest.raises(PipeDefinitionError, match="needs fn"):
        stage.pool("p")
    with pytest.raises(PipeDefinitionError, match="unknown pool stage options"):
        stage.pool("p", fn="m:f", batchsize=3)
    with pytest.raises(PipeDefinitionError, match="exactly one"):
        stage.inline("i")


def test_session_and_metadata_reach_stages_workers_and_session_views(prt):
    KV.put("kv", "s", "store-value")
    seen = {}

    def look(item, ctx):
        seen["ctx"] = (ctx.pipe, ctx.stage, ctx.session_id, dict(ctx.metadata))
        return KV.view("kv_session", {"key": "s"}, ctx)["value"]

    class WithStore(Pipe):
        stores = {"kv": KV}
        stages = [
            stage.inline("look", handler=look),
            stage.pool(
                "remote",
                fn=lambda xs: [
                    (x, slither.worker.context().session_id, slither.worker.view("kv_session", {"key": "s"})["value"]) for x in xs
                ],
            ),
        ]

    out = prt.run_pipe(WithStore, [1], session_id="sess-9", metadata={"user": "ann"})
    assert seen["ctx"] == ("WithStore", "look", "sess-9", {"user": "ann"})
    assert out["default"][0].payload == ("store-value", "sess-9", "store-value")
    with pytest.raises(slither.ViewNotFound):  # outside the run, the session view is gone
        KV.view("kv_session", {"key": "s"})


def test_stream_pipe_is_lazy_over_endless_input(prt):
    pulled = itertools.count()

    def endless():
        for n in itertools.count():
            next(pulled)
            yield n

    class Lazy(Pipe):
        stages = [stage.inline("a", handler=inc), stage.pool("b", fn=lambda xs: xs, batch_size=8, max_in_flight=2)]
        chunk_size = 8
        buffer = 2

    stream = prt.stream_pipe(Lazy, endless())
    got = [next(stream)[1].payload for _ in range(100)]
    stream.close()
    assert got == list(range(1, 101))
    # bounded read-ahead: feeder chunk + 2 inboxes x 2 chunks x 8 + pool window 2 x 8 + out queue
    assert next(pulled) < 100 + 8 * (1 + 2 * 2 + 2 + 2 * 4) + 8


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(-5, 5)),
        st.tuples(st.just("mul"), st.integers(-3, 3)),
        st.tuples(st.just("drop_mod"), st.integers(2, 5)),
        st.tuples(st.just("route_gt"), st.integers(-20, 20)),
    ),
    min_size=1,
    max_size=5,
)


def _build(spec):
    stages, outputs = [], []
    for n, (op, k) in enumerate(spec):
        name = f"s{n}"
        if op == "add":
            stages.append(stage.inline(name, handler=lambda i, c, k=k: i.payload + k))
        elif op == "mul":
            stages.append(stage.inline(name, handler=lambda i, c, k=k: i.payload * k))
        elif op == "drop_mod":
            stages.append(stage.inline(name, handler=lambda i, c, k=k: Skip("mod") if i.payload % k == 0 else i.payload))
        else:
            outputs.append(f"gt{n}")
            stages.append(stage.router(name, routes=[(lambda i, k=k: i.payload > k, f"gt{n}")]))
    return type("Random", (Pipe,), {"stages": stages, "outputs": outputs, "chunk_size": 3, "buffer": 2})


def _reference(spec, xs):
    out, skipped = {"default": []}, []
    for n, (op, _) in enumerate(spec):
        if op == "route_gt":
            out[f"gt{n}"] = []
    for x in xs:
        v, dest = x, "default"
        for n, (op, k) in enumerate(spec):
            if op == "add":
                v += k
            elif op == "mul":
                v *= k
            elif op == "drop_mod":
                if v % k == 0:
                    dest = None
                    break
            elif v > k:
                dest = f"gt{n}"
                break
        if dest is None:
            skipped.append(v)
        else:
            out[dest].append(v)
    return out, skipped


@settings(max_examples=25)
@given(ops, st.lists(st.integers(-30, 30), max_size=40))
def test_random_pipes_match_plain_python(prt, spec, xs):
    P = _build(spec)
    out = prt.run_pipe(P, xs)
    ref, skipped = _reference(spec, xs)
    assert {k: [i.payload for i in v] for k, v in out.items()} == ref
    assert [i.payload for i in out.skipped] == skipped


@pytest.mark.chaos
@pytest.mark.parametrize("policy", [Retry(max_attempts=5, backoff=0), "skip"])
def test_every_input_accounted_for_once_under_worker_crashes(prt, tmp_path, policy):
    fn = once_per(str(tmp_path), crash_when, lambda xs: [x * 10 for x in xs], lambda x: x % 17 == 3)

    class Crashy(Pipe):
        stages = [stage.inline("tag", handler=lambda i, c: i.payload), stage.pool("work", fn=fn, batch_size=4, max_in_flight=4)]
        on_error = {"work": policy}

    xs = list(range(300))
    out = prt.run_pipe(Crashy, xs)
    done = [i for i in out["default"]]
    ids = [i.id for i in done] + [i.id for i in out.skipped]
    assert len(ids) == len(set(ids)) == len(xs)  # every input exactly once
    if isinstance(policy, Retry):
        assert [i.payload for i in done] == [x * 10 for x in xs]
    else:
        assert out.skipped and all(isinstance(i.meta["error"], slither.WorkerCrashed) for i in out.skipped)


@pytest.mark.chaos
def test_long_lived_pipe_survives_a_killed_worker(prt):
    with Rendezvous() as rv:

        def work(xs, rv=rv):
            if -1 in xs:
                rv.arrive(os.getpid(), wait=True)
            return [x + 1 for x in xs]

        class Live(Pipe):
            stages = [stage.pool("work", fn=work, batch_size=1)]
            on_error = {"work": Retry(max_attempts=3, backoff=0)}

        h = prt.start_pipe(Live, max_pending=100)
        h.submit(-1)
        pid = rv.wait(timeout=20)
        rv.release()  # later attempts pass straight through
        os.kill(pid, signal.SIGKILL)
        for x in range(20):
            h.submit(x)
        results = []
        it = h.results(timeout=30)
        for _ in range(21):
            results.append(next(it))
        h.stop(drain=True)
    assert sorted(i.payload for _, i in results) == sorted([0] + [x + 1 for x in range(20)])
    st_ = h.status()
    assert st_["state"] == "stopped" and st_["submitted"] == 21 and st_["completed"] == 21


def test_long_lived_pipe_backpressure_and_nowait(prt):
    class Slow(Pipe):
        stages = [stage.inline("id", handler=lambda i, c: i.payload)]

    h = prt.start_pipe(Slow, max_pending=2)
    h.submit(1)
    h.submit(2)
    with pytest.raises(slither.errors.PipeFull):
        h.submit_nowait(3)
    with pytest.raises(TimeoutError):
        h.submit(3, timeout=0.05)
    it = h.results(timeout=10)
    next(it)
    h.submit(3, timeout=10)  # a result taken frees a slot
    h.stop(drain=True)
    assert sorted(i.payload for _, i in list(it)) == [2, 3]


def test_pipe_telemetry(prt):
    got = []
    evs = [("slither", "pipe", "run", "start"), ("slither", "pipe", "run", "stop"), ("slither", "pipe", "stage", "stop")]
    slither.telemetry.attach("pt", evs, lambda e, m, md: got.append((e, md.get("stage"))))
    try:
        prt.run_pipe(InlineThenPool, range(5))
    finally:
        slither.telemetry.detach("pt")
    assert (("slither", "pipe", "run", "start"), None) in got and (("slither", "pipe", "run", "stop"), None) in got
    assert {s for e, s in got if e[2] == "stage"} == {"prep", "square"}


def _exits(item, ctx):
    if item.payload == 3:
        raise SystemExit(1)  # what sys.exit() in a handler does
    return item.payload


class ExitingHandler(Pipe):
    stages = [stage.inline("a", handler=_exits), stage.router("r", routes=[(lambda i: i.payload == 4 and exit(2), "x")])]
    outputs = ["x"]
    on_error = {"a": "skip", "r": Route("x")}


def test_sys_exit_in_a_handler_or_predicate_fails_the_item_not_the_pipe(prt):
    """A stage thread must never die quietly: that used to hang run_pipe forever."""
    out = prt.run_pipe(ExitingHandler, range(6))
    assert [i.payload for i in out["default"]] == [0, 1, 2, 5]
    assert [i.payload for i in out.skipped] == [3] and "SystemExit" in str(out.skipped[0].meta["error"])
    assert [i.payload for i in out["x"]] == [4] and out["x"][0].meta["stage"] == "r"


def _endless_then_exit():
    yield 1
    raise SystemExit(3)


def test_an_input_iterator_raising_system_exit_fails_the_run(prt):
    with pytest.raises(PipeError) as ei:
        prt.run_pipe(Chained, _endless_then_exit())
    assert isinstance(ei.value.reason, SystemExit)


class LongLivedExit(Pipe):
    stages = [stage.inline("a", handler=_exits)]
    on_error = {"*": "skip"}


def test_long_lived_pipe_keeps_serving_after_a_handler_exits(prt):
    h = prt.start_pipe(LongLivedExit)
    try:
        for x in range(6):
            h.submit(x)
        got = {}
        for name, item in itertools.islice(h.results(timeout=30), 6):
            got[item.payload] = name
        assert got == {0: "default", 1: "default", 2: "default", 3: "skipped", 4: "default", 5: "default"}
        h.submit(10)
        name, item = next(h.results(timeout=30))
        assert (name, item.payload) == ("default", 10)
        assert h.status()["state"] == "running"
    finally:
        h.stop()


def _square_all(xs):
    return [x * x for x in xs]


def _trickle(n):
    for x in range(n):
        time.sleep(0.02)  # a slow source (the workload's shape): the pool stage is idle when each input comes
        yield x


class Fed(Pipe):
    stages = [stage.inline("prep", handler=inc), stage.pool("square", fn=_square_all, batch_size=1)]
    chunk_size = 1


def _submitters(rt, source, pipe=Fed):
    """Names of the threads that submitted each batch of Fed's pool stage, and its output."""
    names = []
    slither.telemetry.attach(
        "fed", [("slither", "dispatch", "batch", "start")], lambda e, m, md: names.append(threading.current_thread().name)
    )
    try:
        out = rt.run_pipe(pipe, source)
    finally:
        slither.telemetry.detach("fed")
    return names, [i.payload for i in out["default"]]


def test_new_input_reaches_an_idle_pool_stage_from_the_thread_that_fed_it(prt):
    """An idle pool stage does not wake its own thread for new input when the stage
    feeding it has nothing else waiting: that stage's thread submits the batch (a thread
    switch fewer on a long-lived pipe's path)."""
    names, out = _submitters(prt, _trickle(12))
    assert out == [(x + 1) ** 2 for x in range(12)]
    assert len(names) == 12
    assert sum(n.endswith("-prep") for n in names) >= 4, names  # scheduling may let the stage's thread take some


def _slow_inc(item, ctx):
    time.sleep(0.005)  # I/O-bound work (the workload's shape): more input queues up behind it
    return item.payload + 1


def test_a_feeder_with_more_input_waiting_leaves_the_submitting_to_the_pool_stage(prt):
    """The feeding stage's own inbox holds more: its work is the pipe's critical path, so
    the pool stage's thread submits (only the last inputs may find that inbox empty)."""

    class SlowFed(Fed):
        stages = [stage.inline("prep", handler=_slow_inc), Fed.stages[1]]

    names, out = _submitters(prt, list(range(30)), SlowFed)
    assert out == [(x + 1) ** 2 for x in range(30)]
    assert sum(n.endswith("-prep") for n in names) <= 3, names
