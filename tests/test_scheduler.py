"""Which worker gets which task: the automatic depth (deep queues for short batches,
two for long ones, from the run times the workers report) and the invariants the
scheduler keeps whatever the replies' timing."""

import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slither._pool import scheduler as sched
from slither._pool.task import Task, WorkerConn

pytestmark = pytest.mark.timeout(60)


class Clock:
    """Stands in for ``time`` in the scheduler: ``monotonic`` is what the test says."""

    def __init__(self):
        self.ns = 1_000_000_000

    def monotonic(self):
        return self.ns / 1e9


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(sched, "time", c)
    return c


def _conns(n: int, socks: list) -> list[WorkerConn]:
    """``n`` connections on socket pairs (noted in ``socks``, for the caller to close)."""
    conns = []
    for i in range(n):
        a, b = socket.socketpair()
        socks += [a, b]
        conns.append(WorkerConn(None, i, 1000 + i, a))
    return conns


@pytest.fixture
def make_conns():
    socks: list = []
    yield lambda n: _conns(n, socks)
    for s in socks:
        s.close()


def _task(k):
    return Task(None, None, [b""], ref=k)


def _scheduler(conns, depth=None):
    s = sched.Scheduler("t", depth, lambda deadline: None)
    for c in conns:
        s.add(c)
    return s


def _reply(s, conn, clock, run_ns):
    """``conn`` answers its head task, which it says ran ``run_ns``."""
    clock.ns += run_ns
    return s.answered(conn, run_ns)


def test_short_batches_deepen_a_workers_queue_and_long_ones_bring_it_back(clock, make_conns):
    (conn,) = make_conns(1)
    s = _scheduler([conn])
    for k in range(200):
        s.route(_task(k))
    s.pump()
    assert len(conn.inflight) == sched.DEPTH  # 2 until its batches are known to be short
    for _ in range(3):
        _reply(s, conn, clock, 50_000)  # 50 µs batches: 1 ms of them is 20, more than the most
        s.pump()
    assert conn.depth == sched.MAX_DEPTH and len(conn.inflight) == sched.MAX_DEPTH
    for _ in range(40):
        _reply(s, conn, clock, 250_000)  # 0.25 ms ones: about 1 ms is 4 of them
        s.pump()
    assert conn.depth == 4 and len(conn.inflight) == 4
    for _ in range(40):
        _reply(s, conn, clock, 3_000_000)  # then 3 ms ones: the running average climbs past 0.5 ms
        s.pump()
    assert conn.depth == sched.DEPTH and len(conn.inflight) == sched.DEPTH
    assert s.capacity == sched.DEPTH


def test_a_reply_without_a_run_time_leaves_the_depth_alone(clock, make_conns):
    """A probe's answer, or a failed batch's, says nothing about how long batches take."""
    (conn,) = make_conns(1)
    s = _scheduler([conn])
    for k in range(6):
        s.route(_task(k))
    s.pump()
    _reply(s, conn, clock, 50_000)
    s.pump()
    assert conn.depth == sched.MAX_DEPTH and len(conn.inflight) == 5
    s.answered(conn, 0)
    s.answered(conn, 0)
    assert conn.run_ns == 50_000 and conn.depth == sched.MAX_DEPTH and s.capacity == sched.MAX_DEPTH


def test_a_worker_with_a_budget_is_given_no_more_than_it(clock, make_conns):
    """max_batches: however deep its queue, a worker gets its budget of tasks and no more."""
    a, b = make_conns(2)
    s = _scheduler([a, b])
    a.budget = 3
    for k in range(40):
        s.route(_task(k))
    s.pump()
    sent_to_a = []
    for _ in range(6):
        sent_to_a += [t.ref for t in a.sendq]
        a.sendq.clear()
        if a.inflight:
            _reply(s, a, clock, 20_000)  # tiny: its depth would be 16
        _reply(s, b, clock, 20_000)
        s.pump()
    sent_to_a += [t.ref for t in a.sendq]
    assert len(sent_to_a) == 3 and a.budget == 0 and not a.inflight
    assert b.depth == sched.MAX_DEPTH and len(b.inflight) == sched.MAX_DEPTH  # the other takes the rest


def test_a_dead_workers_cancelled_tasks_are_not_queued_again(make_conns):
    """Tasks its owner gave up go to the caller to fail, with the pinned ones; the others
    it held go back to the front of the queue, in order."""
    (conn,) = make_conns(1)
    s = _scheduler([conn])
    for k in range(2):
        s.route(_task(k))
    s.pump()
    s.route(_task(2))
    conn.inflight[1].cancelled = True
    head, to_fail = s.remove(conn)
    assert head.ref == 0 and [t.ref for t in to_fail] == [1] and [t.ref for t in s.pending] == [2]


def test_an_explicit_depth_never_changes(clock, make_conns):
    (conn,) = make_conns(1)
    s = _scheduler([conn], depth=1)
    for k in range(10):
        s.route(_task(k))
    s.pump()
    for _ in range(8):
        assert len(conn.inflight) == 1
        _reply(s, conn, clock, 10_000)
        s.pump()
    assert conn.depth == 1


@settings(max_examples=60, deadline=None)
@given(
    workers=st.integers(1, 4),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("submit"), st.integers(1, 6)),
            st.tuples(st.just("reply"), st.integers(0, 3), st.integers(1_000, 5_000_000)),
            st.tuples(st.just("replace"), st.integers(0, 3)),
        ),
        max_size=80,
    ),
)
def test_no_worker_is_overfilled_and_none_has_room_while_tasks_wait(workers, steps):
    clock = Clock()
    real, sched.time = sched.time, clock
    socks: list = []
    try:
        conns = _conns(workers, socks)
        s = _scheduler(conns)
        submitted, answered, k = [], [], 0
        for step in steps:
            if step[0] == "submit":
                for _ in range(step[1]):
                    placeable = s.route(_task(k))
                    submitted.append(k)
                    k += 1
                    if placeable:  # as Pool.submit: a task queued behind others is not pumped
                        s.pump()
            elif step[0] == "replace":  # the worker dies: its head fails, the rest go back to the queue
                i = step[1] % workers
                head, _pinned = s.remove(conns[i])
                if head is not None:
                    answered.append(head.ref)
                conns[i] = _conns(1, socks)[0]
                conns[i].index = i
                s.add(conns[i])
            else:
                conn = conns[step[1] % workers]
                if conn.inflight:
                    answered.append(_reply(s, conn, clock, step[2]).ref)
            if step[0] != "submit":
                s.pump()
            assert s.capacity == sum(c.depth for c in s.workers.values())
            for c in conns:
                assert sched.DEPTH <= c.depth <= sched.MAX_DEPTH
                assert len(c.inflight) <= sched.MAX_DEPTH  # more than its depth only just after the depth fell
                if s.pending:
                    assert len(c.inflight) >= c.depth  # a task waits only while every worker is full
        held = [t.ref for c in conns for t in c.inflight]
        assert sorted(answered + held + [t.ref for t in s.pending]) == submitted  # each task exactly once
        assert [t.ref for t in s.pending] == sorted(t.ref for t in s.pending)  # still in submission order
    finally:
        sched.time = real
        for sock in socks:
            sock.close()


def test_real_workers_get_deep_queues_for_tiny_batches_and_two_for_slow_ones(rt):
    list(rt.map(lambda x: x + 1, range(64 * 200), batch_size=64))
    conns = list(rt.pool().scheduler.workers.values())
    assert [c.depth for c in conns] == [sched.MAX_DEPTH] * len(conns)
    list(rt.map(lambda x: time.sleep(0.003) or x, range(24), batch_size=1))
    assert [c.depth for c in rt.pool().scheduler.workers.values()] == [sched.DEPTH] * len(conns)
