"""Actors dispatch through ``slither.actors`` messages, into a tree built inside the
user's own multiprocTCPBase actor system (``Runtime(actor_system=asys)``).

Every test runs real processes: the user's admin and actors, Slither's supervisors,
a ``DispatchRunner`` process per dispatch, and the pool's worker processes.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from actor_apps import Counter, Go, PipeProducer, PipeSubscriber, Requester
from hypothesis import given, settings
from hypothesis import strategies as st
from thespian.actors import ActorExitRequest, ActorSystem

import slither
from slither import Item
from slither._sys import free_port, pid_alive
from slither.actors import (
    ROOT_NAME,
    Cancel,
    Credit,
    Demand,
    Dispatch,
    DispatchCancelled,
    DispatchDone,
    DispatchFailed,
    Feed,
    InOrder,
    PipeFailed,
    Results,
    RootSupervisor,
    Submit,
)
from slither.errors import ConfigurationError, RunnerDied, WorkerError
from slither.supervision import AwaitChild, ChildSpec, Supervisor, SupervisorInit, WhichChildren
from slither.testing import wait_pids_gone

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def app():
    """The user's actor system with a Slither runtime embedded in it."""
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": free_port()}, transientUnique=True)
    try:
        rt = slither.Runtime(pools={"default": {"size": 2, "max_restarts": 50, "max_seconds": 5.0}}, actor_system=asys)
        rt.start()
        try:
            yield asys, rt
        finally:
            ours = rt.pids()
            rt.shutdown()
            assert not wait_pids_gone(ours, timeout=10), "Slither's processes outlived shutdown"
            # The user's system is untouched: an actor of its own still answers.
            req = asys.createActor(Requester)
            assert asys.ask(req, "ping", 10)[0] == "pong"
    finally:
        asys.shutdown()


def drive(asys, rt, dispatch, grants=None, feed=None, timeout=30.0):
    """Be the requester of ``dispatch`` from a private endpoint of the user's system,
    sending Demand and Feed through ``rt.address`` (which passes them to the runner).

    grants(seq): how much to grant after each Results (default 1). feed: payloads
    to stream when ``dispatch.items`` is None, within the credit granted. Returns
    (the Results, the final message, the high mark of Results beyond the demand).
    """
    grants = grants or (lambda seq: 1)
    granted, over, results, arrived = dispatch.demand, 0, [], 0
    pending = list(feed or [])
    order, feeds = InOrder(), itertools.count()
    with asys.private() as p:
        p.tell(rt.address, dispatch)
        deadline = time.monotonic() + timeout
        while True:
            msg = p.listen(max(0.0, deadline - time.monotonic()))
            assert msg is not None, f"no answer within {timeout}s ({len(results)} results so far)"
            if isinstance(msg, Results):
                arrived += 1
                over = max(over, arrived - granted)
                n = grants(msg.seq)
                if n:
                    granted += n
                    p.tell(rt.address, Demand(dispatch.ref, n))
            elif isinstance(msg, Credit):
                chunk, pending[:] = pending[: msg.n], pending[msg.n :]
                p.tell(rt.address, Feed(dispatch.ref, chunk, last=not pending, seq=next(feeds)))
                continue
            for m in order(msg):
                if isinstance(m, Results):
                    results.append(m)
                else:
                    return results, m, over


def payloads(results):
    return [i.payload for r in results for i in r.items]


# -- the protocol ----------------------------------------------------------------------


def test_an_actor_dispatches_and_keeps_answering_while_the_work_runs(app):
    asys, rt = app
    req = asys.createActor(Requester)
    asys.tell(req, Go(rt.address, Dispatch("job", list(range(200)), "actorfns:slow_inc", batch_size=10, demand=2)))
    seen = []
    while True:
        msg = asys.listen(30)
        assert msg is not None
        seen.append(msg)
        if msg[0] == "first":
            asys.tell(req, "ping")  # mid-dispatch: its message loop must still answer
        if msg[0] in ("done", "failed"):
            break
    pongs = [m for m in seen if m[0] == "pong"]
    assert pongs and pongs[0][1] is True and 0 < pongs[0][2] < 200, pongs
    assert seen.index(pongs[0]) < len(seen) - 1  # answered before the dispatch finished
    done = seen[-1]
    assert done[0] == "done", done
    assert done[2] == [x + 1 for x in range(200)]  # "preserve": Results in input order
    assert done[3]["items"] == 200 and done[3]["pid"] not in (os.getpid(), pongs[0][3])


def test_the_tree_answers_to_the_global_name_slither(app):
    asys, rt = app
    found = asys.createActor(RootSupervisor, globalName=ROOT_NAME)
    assert found == rt.address
    results, end, _ = drive(asys, rt, Dispatch("g", [1, 2, 3], "actorfns:inc", demand=5))
    assert isinstance(end, DispatchDone) and payloads(results) == [2, 3, 4]


def test_results_come_from_the_runner_and_demand_goes_back_to_it(app):
    asys, rt = app
    with asys.private() as p:
        p.tell(rt.address, Dispatch("direct", list(range(30)), "actorfns:inc", batch_size=10, demand=1))
        first = p.listen(30)
        assert isinstance(first, Results) and first.seq == 0
        assert p.listen(0.3) is None  # demand 1: nothing more until more is granted
        # The runner is a child of the dispatch supervisor, in a process of its own.
        [dsup] = [c for c in asys.ask(rt.address, WhichChildren(), 10) if c.id == "dispatch"]
        [runner] = [c for c in asys.ask(dsup.address, WhichChildren(), 10)]
        assert runner.pid and runner.pid != os.getpid()
        p.tell(runner.address, Demand("direct", 5))  # straight to the runner this time
        order = InOrder()
        order(first)
        rest = [m for _ in range(3) for m in order(p.listen(30))]
    assert [type(m) for m in rest] == [Results, Results, DispatchDone]
    assert payloads([first, *rest[:2]]) == list(range(1, 31))


def test_bad_options_are_refused_in_the_sender_with_dispatchs_messages():
    with pytest.raises(ConfigurationError, match="ordering"):
        Dispatch("x", [1], "actorfns:inc", ordering="sideways")
    with pytest.raises(ConfigurationError, match="no module named 'no_such_mod'"):
        Dispatch("x", [1], "no_such_mod:f")
    with pytest.raises(ConfigurationError, match="demand"):
        Dispatch("x", [1], "actorfns:inc", demand=-1)
    with pytest.raises(ConfigurationError, match="Demand: n"):
        Demand("x", 0)


def test_a_failing_batch_fails_the_dispatch_with_the_workers_traceback(app):
    asys, rt = app
    results, end, _ = drive(asys, rt, Dispatch("bad", list(range(40)), "actorfns:boom_at_13", batch_size=10, demand=8))
    assert isinstance(end, DispatchFailed) and isinstance(end.reason, WorkerError)
    assert "thirteen" in str(end.reason) and "boom_at_13" in end.reason.remote_traceback
    # The batch before it, if it finished before the failure came (two workers race);
    # nothing after a halt.
    assert payloads(results) in ([], list(range(10)))


def test_skip_and_lambdas_travel(app):
    asys, rt = app
    d = Dispatch("skip", list(range(30)), lambda xs: [1 // (x - 13) for x in xs], batch_size=5, on_error="skip", demand=10)
    results, end, _ = drive(asys, rt, d)
    assert isinstance(end, DispatchDone)
    items = [i for r in results for i in r.items]
    assert len(items) == 30 and [i.id for i in items] == sorted(i.id for i in items)
    assert [i.payload for i in items if i.meta.get("skipped")] == [10, 11, 12, 13, 14]  # the batch with 13
    assert isinstance(items[12].meta["error"], WorkerError)


def test_cancel_stops_a_dispatch_and_the_next_one_runs(app):
    asys, rt = app
    with asys.private() as p:
        p.tell(rt.address, Dispatch("c", list(range(100)), "actorfns:hang", batch_size=10, timeout=None, demand=4))
        p.tell(rt.address, Cancel("c"))  # through the front door: it finds the runner
        end = p.listen(30)
    assert isinstance(end, DispatchFailed) and isinstance(end.reason, DispatchCancelled)
    results, end, _ = drive(asys, rt, Dispatch("after-cancel", list(range(20)), "actorfns:inc", demand=4))
    assert isinstance(end, DispatchDone) and payloads(results) == list(range(1, 21))


# -- demand and credit -----------------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(
    batch_size=st.integers(1, 6),
    n=st.integers(0, 60),
    demand=st.integers(0, 3),
    max_in_flight=st.integers(1, 4),
    schedule=st.lists(st.integers(0, 3), max_size=8),
)
def test_demand_bounds_results_and_the_input_read(app, batch_size, n, demand, max_in_flight, schedule):
    """Never more Results than granted; a requester that grants no more leaves the
    input unread beyond the window; once it grants again, every item comes back once."""
    asys, rt = app
    ref = ("prop", time.monotonic_ns())
    d = Dispatch(ref, None, "actorfns:inc", batch_size=batch_size, demand=demand, max_in_flight=max_in_flight)
    fed, pending = 0, list(range(n))
    granted, results, over, consumed, arrived = demand, [], 0, 0, 0
    grants, order, feeds = iter(schedule), InOrder(), itertools.count()
    with asys.private() as p:
        p.tell(rt.address, d)
        heard, done = False, None  # Demand and Feed go through the front door, which passes them on
        while done is None:
            msg = p.listen(0.3)
            if msg is None:  # quiet: the runner waits for demand (or for input)
                # Consumed input: credit given back. Window: what is sent, one batch
                # held waiting for demand, and max_in_flight batches in the window.
                assert consumed <= (granted + 1 + max_in_flight) * batch_size
                assert heard  # the runner's first Credit came before it went quiet
                granted += 1000
                p.tell(rt.address, Demand(ref, 1000))
                continue
            heard = True
            if isinstance(msg, Credit):
                if fed:  # after the first grant, credit is given back for what was taken
                    consumed += msg.n
                chunk, pending = pending[: msg.n], pending[msg.n :]
                fed += len(chunk)
                p.tell(rt.address, Feed(ref, chunk, last=not pending, seq=next(feeds)))
                continue
            if isinstance(msg, Results):
                arrived += 1
                over = max(over, arrived - granted)
                g = next(grants, 0)
                if g:
                    granted += g
                    p.tell(rt.address, Demand(ref, g))
            for m in order(msg):
                if isinstance(m, Results):
                    results.append(m)
                else:
                    done = m
    assert over <= 0
    assert isinstance(done, DispatchDone), done
    assert sorted(payloads(results)) == [x + 1 for x in range(n)]  # each exactly once
    assert [r.seq for r in results] == list(range(len(results)))


# -- message order ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 12), failed=st.booleans(), data=st.data())
def test_in_order_puts_any_arrival_order_back_in_the_protocols(n, failed, data):
    """Thespian may deliver a runner's messages out of order: InOrder hands out the
    Results in seq order, and the end only after every Results sent before it."""
    sent = [Results("r", [Item(k, k)], k) for k in range(n)]
    end = DispatchFailed("r", RuntimeError("x"), sent=n) if failed else DispatchDone("r", {"batches": n})
    arrival = data.draw(st.permutations([*sent, end]))
    order = InOrder()
    out = []
    for k, msg in enumerate(arrival):
        out.extend(order(msg))
        assert order.complete == (k == len(arrival) - 1)
    assert out == [*sent, end]
    assert order(DispatchFailed("r", RuntimeError("late"))) == []  # the first end stands
    assert order(Credit("r", 3)) == [Credit("r", 3)]


def test_feeds_that_arrive_out_of_order_are_applied_in_seq_order(app):
    """The runner holds a Feed back until the ones with lower seq came: the input ends
    with the last Feed in seq order, not with the last to arrive."""
    asys, rt = app
    d = Dispatch("feeds", None, "actorfns:inc", batch_size=4, demand=100)
    feeds = [Feed("feeds", [k * 10 + j for j in range(10)], last=k == 2, seq=k) for k in range(3)]
    with asys.private() as p:
        p.tell(rt.address, d)
        assert isinstance(p.listen(30), Credit)
        for f in reversed(feeds):  # the last one first: it must not end the input
            p.tell(rt.address, f)
        order, out = InOrder(), []
        while not order.complete:
            msg = p.listen(30)
            assert msg is not None
            out.extend(order(msg) if not isinstance(msg, Credit) else [])
    assert isinstance(out[-1], DispatchDone), out[-1]
    assert payloads(out[:-1]) == [x + 1 for x in range(30)]


# -- faults ----------------------------------------------------------------------------


def test_a_sigkilled_runner_reaches_its_requester_and_the_next_dispatch_gets_a_new_one(app):
    asys, rt = app
    with asys.private() as p:
        p.tell(rt.address, Dispatch("k", list(range(400)), "actorfns:slow_inc", batch_size=10, demand=1))
        first = p.listen(30)
        assert isinstance(first, Results)
        [dsup] = [c for c in p.ask(rt.address, WhichChildren(), 10) if c.id == "dispatch"]
        [runner] = p.ask(dsup.address, WhichChildren(), 10)
        info = p.ask(dsup.address, AwaitChild(runner.id), 10)  # its pid, once it reported one
        t0 = time.monotonic()
        os.kill(info.pid, signal.SIGKILL)
        end = p.listen(30)
        waited = time.monotonic() - t0
    assert isinstance(end, DispatchFailed) and isinstance(end.reason, RunnerDied), end
    assert end.reason.pid == info.pid and end.reason.signal == signal.SIGKILL
    assert "SIGKILL" in str(end.reason) and waited < 5
    results, end, _ = drive(asys, rt, Dispatch("k2", list(range(50)), "actorfns:inc", batch_size=10, demand=5))
    assert isinstance(end, DispatchDone) and payloads(results) == list(range(1, 51))
    assert end.stats["pid"] != info.pid


def test_a_sigkilled_worker_under_a_runner_loses_nothing_with_retry(app):
    asys, rt = app
    d = Dispatch("w", list(range(300)), "actorfns:slow_inc", batch_size=10, demand=30, on_error=slither.Retry(max_attempts=4))
    with asys.private() as p:
        p.tell(rt.address, d)
        order = InOrder()
        msg = p.listen(30)
        assert isinstance(msg, Results)
        got = order(msg)
        victim = rt.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        while not order.complete:
            if isinstance(msg, Results):
                p.tell(rt.address, Demand("w", 1))
            msg = p.listen(30)
            assert msg is not None
            got.extend(order(msg))
    assert isinstance(got[-1], DispatchDone), got[-1]
    results = [m for m in got if isinstance(m, Results)]
    assert payloads(results) == [x + 1 for x in range(300)]
    retried = [i for r in results for i in r.items if i.meta.get("attempts", 1) > 1]
    assert retried  # the killed worker's batch ran again
    assert not pid_alive(victim)


def test_two_actors_and_a_script_share_one_pool(app):
    asys, rt = app
    a, b = asys.createActor(Requester), asys.createActor(Requester)
    asys.tell(a, Go(rt.address, Dispatch("a", list(range(0, 300)), "actorfns:slow_inc", batch_size=10, demand=3)))
    asys.tell(b, Go(rt.address, Dispatch("b", list(range(1000, 1300)), "actorfns:slow_inc", batch_size=10, demand=3)))
    mine = rt.dispatch(range(5000, 5300), "actorfns:slow_inc", batch_size=10)  # beside them, in this thread
    assert [i.payload for i in mine] == [x + 1 for x in range(5000, 5300)]
    ends = {}
    while len(ends) < 2:
        msg = asys.listen(30)
        assert msg is not None
        if msg[0] in ("done", "failed"):
            ends[msg[1]] = msg
    assert ends["a"][0] == "done" and ends["a"][2] == [x + 1 for x in range(0, 300)]
    assert ends["b"][0] == "done" and ends["b"][2] == [x + 1 for x in range(1000, 1300)]


# -- long-lived pipes, driven by actors ------------------------------------------------


class Squares(slither.Pipe):
    stages = [
        slither.stage.inline("inc", handler=lambda item, ctx: item.payload + 1),
        slither.stage.pool("square", fn="actorfns:square_all", batch_size=8),
        slither.stage.router("size", routes=[(lambda i: i.payload > 10_000, "big")]),
    ]
    outputs = ["big"]


def _until(cond, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)  # the handle's own counters are what is awaited


def test_actors_submit_with_credit_and_subscribe_with_demand_and_a_killed_runner_loses_nothing(app):
    asys, rt = app
    h = rt.start_pipe(Squares, name="squares")
    try:
        n = 600
        sub, prod = asys.createActor(PipeSubscriber), asys.createActor(PipeProducer)
        with asys.private() as p:
            p.tell(sub, ("subscribe", rt.address, "squares", n))
            _until(lambda: h.status()["subscribed"], "the subscription reached the handle")
            p.tell(prod, ("produce", rt.address, "squares", n))
            _until(lambda: h.status()["submitted"] >= 100, "the producer's first payloads")
            first = h.status()["runner_pid"]
            os.kill(first, signal.SIGKILL)
            report = p.listen(60)
        status = h.status()
    finally:
        h.stop()
    assert report is not None and report[0] == "got", report
    got = report[1]
    # Exactly once, each in its output, though the runner died under them.
    assert sorted(x for _, x in got) == sorted((x + 1) ** 2 for x in range(n))
    assert all((name == "big") == (x > 10_000) for name, x in got)
    assert status["restarts"] >= 1 and status["runner_pid"] != first
    # Credit came back as its payloads came out: with a window of 16, it fed all 600.
    assert status["submitted"] == n and status["producers"] == 1


def test_a_message_for_an_unknown_pipe_is_answered_with_pipe_failed(app):
    asys, rt = app
    with asys.private() as p:
        p.tell(rt.address, Submit("no-such-pipe", [1]))  # the ref names the pipe
        msg = p.listen(30)
    assert isinstance(msg, PipeFailed) and isinstance(msg.reason, ConfigurationError)
    assert "no long-lived pipe named 'no-such-pipe'" in str(msg.reason)
    with pytest.raises(ConfigurationError, match="Submit: name the long-lived pipe"):
        Submit(("my", "ref"), [1])  # a ref that is not a name needs pipe=
    with pytest.raises(ConfigurationError, match="window"):
        Submit("p", [1], window=0)


# -- a runtime started inside an actor -------------------------------------------------

BLOCKING = """
import json, sys
from thespian.actors import ActorExitRequest, ActorSystem
from slither._sys import free_port
asys = ActorSystem("multiprocTCPBase", {"Admin Port": free_port()}, transientUnique=True)
a = asys.createActor("actor_apps.Blocking")
values, pids = asys.ask(a, "go", 60)
asys.shutdown()
print(json.dumps({"values": values, "pids": pids}))
"""


def test_a_runtime_started_inside_an_actor_stops_with_the_actor_system_quietly():
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", BLOCKING], capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["values"] == [x * x for x in range(10)]
    assert out["pids"] and not wait_pids_gone(out["pids"], timeout=10)
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


# -- inside the user's own supervisor ----------------------------------------------------


def test_slithers_root_can_be_a_child_of_the_users_supervisor_and_children_are_awaited(app):
    asys, _ = app
    sup = asys.createActor(Supervisor)
    asys.ask(sup, SupervisorInit(children=(ChildSpec("req", Requester),)), 10)
    with slither.Runtime(pools={"default": 1}, actor_system=asys, supervisor=sup) as inner:
        kids = asys.ask(sup, WhichChildren(), 10)
        assert [c.id for c in kids][0] == "req" and kids[1].id.startswith("slither-")
        assert kids[1].address == inner.address and kids[1].alive
        root = asys.ask(sup, AwaitChild(kids[1].id), 10)
        assert root.pid in inner.pids()
        results, end, _ = drive(asys, inner, Dispatch("under-sup", [1, 2], "actorfns:inc", demand=2))
        assert isinstance(end, DispatchDone) and payloads(results) == [2, 3]
        ours = inner.pids()
    assert not wait_pids_gone(ours, timeout=10)
    assert [c.id for c in asys.ask(sup, WhichChildren(), 10)] == ["req"]  # temporary: gone with the runtime
    asys.tell(sup, ActorExitRequest())


def test_await_child_answers_after_the_next_restart_with_the_new_address(app):
    asys, _ = app
    sup = asys.createActor(Supervisor)
    asys.ask(sup, SupervisorInit(children=(ChildSpec("c", Counter),)), 10)
    first = asys.ask(sup, AwaitChild("c"), 10)
    assert first.pid and first.restarts == 0 and first.address is not None
    with asys.private() as p:
        p.tell(sup, AwaitChild("c", restarts=1))  # asked before the crash: answered after the restart
        os.kill(first.pid, signal.SIGKILL)
        again = p.listen(10)
    assert again.restarts == 1 and again.pid != first.pid and again.address != first.address
    assert asys.ask(again.address, "inc", 10) == 1  # reachable at the address it gave
    asys.tell(sup, ActorExitRequest())


def test_the_embed_example_runs():
    here = os.path.dirname(os.path.abspath(__file__))
    example = os.path.join(os.path.dirname(here), "examples", "embed_supervisor.py")
    proc = subprocess.run([sys.executable, example], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "restarted as pid" in proc.stdout and "333283335000" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
