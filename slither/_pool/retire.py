"""Workers ended on purpose: recycled after ``max_batches`` or above ``max_rss``,
stopped at shutdown (for a pool with a teardown). Each gets no new task, finishes what
it holds, and is sent a control frame behind it (see ``slither._protocol``). Called
holding the pool's lock, except :func:`stop_workers`."""

from __future__ import annotations

import time

from slither import _protocol, _wire
from slither._pool.task import Task, WorkerConn


def count(pool, conn: WorkerConn, touched: list) -> None:
    """One more batch done on ``conn`` (holds pool.lock): at ``max_batches`` it gets no
    new task, and once it holds none it is told to recycle (see slither._worker)."""
    conn.batches += 1
    if conn.batches == pool.max_batches:
        _retire(pool, conn)
    if conn.recycling:
        _recycle_when_idle(pool, conn, touched)


def over_rss(pool, conn: WorkerConn, touched: list) -> None:
    """``conn``'s worker said its resident memory passed ``max_rss`` (holds pool.lock):
    as at ``max_batches``, no new task, and recycled once it holds none."""
    _retire(pool, conn)
    _recycle_when_idle(pool, conn, touched)


def _retire(pool, conn: WorkerConn) -> None:
    conn.retiring = conn.recycling = True
    pool.scheduler.retire(conn)


def _recycle_when_idle(pool, conn: WorkerConn, touched: list) -> None:
    if not conn.inflight and conn.alive and conn.index not in pool._recycled:
        pool._recycled.add(conn.index)
        send_control(pool, conn, _protocol.RECYCLE, touched)


def send_control(pool, conn: WorkerConn, msg: tuple, touched: list) -> None:
    """Queue a control frame behind what ``conn`` was sent (holds pool.lock; flush ``touched``)."""
    conn.sendq.append(Task(None, None, _wire.dumps(msg), ref=0))
    if conn not in touched:
        touched.append(conn)


def stop_workers(pool, timeout: float) -> None:
    """Tell every worker to tear down and end (after what it holds), and wait up to
    ``timeout`` for them to go: at shutdown, for pools with a teardown."""
    touched: list[WorkerConn] = []
    with pool.lock:
        conns = list(pool.scheduler.workers.values())
        for conn in conns:
            conn.retiring = True
            send_control(pool, conn, _protocol.STOP, touched)
    pool.sender.flush(touched)
    deadline = time.monotonic() + timeout
    with pool.lock:
        while any(c.alive for c in conns) and time.monotonic() < deadline:
            pool.changed.wait(max(0.0, deadline - time.monotonic()))
