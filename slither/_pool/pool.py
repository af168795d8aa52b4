"""The caller's side of one named pool: the façade over its scheduler, sender and
receiver, and what happens when a reply comes or a worker goes.

How a batch travels::

    dispatch thread ──submit(Task)──▶ Scheduler (queue) ──pump──▶ conn.inflight + conn.sendq
                                                                │
           the thread that pumped, outside the pool lock (Sender) ◀──┘  sends the pre-pickled frame
                                                                │
                       worker process: reader thread → main thread runs it → reply
                                                                │
    task.callback ◀── the thread reading the pool's sockets (Receiver) ◀──┘

* Timeouts: the timer thread SIGKILLs a worker whose head task is late and
  gives it no new task; the dead socket's EOF fails the batch as
  ``BatchTimeout``.
* Crashes: the EOF of a worker that died on its own waits (at most
  ``EXIT_REPORT_WAIT``) for its nanny's report of how it ended, so that
  ``WorkerCrashed`` names the signal or exit code.
* ``PoolDown``: the pool supervisor says it gave up, or its process is gone.
  Every waiting task fails at once and new submissions raise.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import CancelledError
from typing import Any

import attrs
from loguru import logger

from slither import _pickle, _protocol, _wire, telemetry
from slither._pool import retire
from slither._pool.exits import ExitReports
from slither._pool.receiver import Receiver
from slither._pool.remote import crashed, relog, with_source
from slither._pool.scheduler import Scheduler
from slither._pool.sender import Sender
from slither._pool.task import Task, WorkerConn, _kill_conn
from slither._pool.timer import timer_loop
from slither.errors import (
    BadBatchResult,
    BatchTimeout,
    PoolDown,
    RuntimeNotStarted,
    SerializationError,
    WorkerCrashed,
    WorkerError,
)


@attrs.frozen
class PoolStats:
    """A snapshot of one pool (``Runtime.pool(name).stats()``)."""

    name: str
    size: int
    connected: int
    queued: int
    in_flight: int
    crashes: int
    restarts: int
    down: bool


class Pool:
    """Caller-side state of one named pool. Thread-safe."""

    def __init__(self, name: str, size: int, depth: int | None = None):
        self.name = name
        self.size = size
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.scheduler = Scheduler(name, depth, self._wake_timer)
        self.sender = Sender(name, self.lock)
        self.receiver = Receiver(self)
        self.seen: set[int] = set()  # worker indexes that connected once: the next connection is a restart
        self.down: PoolDown | None = None
        self.closed = False
        self.sup_pid: int | None = None
        self.worker_setup: tuple | None = None  # (setup key, blob, teardown key, blob) sent to each worker
        self.max_batches: int | None = None
        self.max_rss: int | None = None  # sent to each worker in its init (it measures, we recycle)
        self.setup_error: WorkerError | None = None  # the last failed setup: the cause of PoolDown
        self._recycled: set[int] = set()  # worker indexes retired on purpose: their next connection is no restart
        self.crashes = 0
        self.restarts = 0
        self._timer_next = 0.0
        self.exits = ExitReports()
        self.runners: dict[str, tuple] = {}  # DispatchRunner hub path -> (its registration socket, a send lock)
        self._timer = threading.Thread(target=timer_loop, args=(self,), name=f"slither-pool-{name}-timer", daemon=True)
        self._timer.start()
        self.receiver.start()

    @property
    def workers(self) -> dict[int, WorkerConn]:
        return self.scheduler.workers

    def wait(self, q, timeout: float):
        """The next message on ``q`` (see :meth:`Receiver.wait`)."""
        return self.receiver.wait(q, timeout)

    def ready(self, q) -> list:
        """The messages already on ``q`` (see :meth:`Receiver.ready`)."""
        return self.receiver.ready(q)

    def wake(self) -> None:
        self.receiver.wake()

    def stats(self) -> PoolStats:
        with self.lock:
            conns = list(self.scheduler.workers.values())
            return PoolStats(
                self.name,
                self.size,
                len(conns),
                len(self.scheduler.pending) + sum(len(c.private) for c in conns),
                sum(len(c.inflight) for c in conns),
                self.crashes,
                self.restarts,
                self.down is not None,
            )

    # -- submission ----------------------------------------------------
    def submit(self, task: Task) -> None:
        with self.lock:
            if self.closed:
                raise RuntimeNotStarted(f"pool {self.name!r} is shut down")
            if self.down is not None:
                raise self.down_error()
            if not self.scheduler.route(task):
                return  # it waits behind others: no worker has room
            touched = self.scheduler.pump()
        self.sender.flush(touched)

    def _wake_timer(self, deadline: float) -> None:
        # Waking the timer thread on every batch costs a GIL round trip; it only
        # needs waking when a deadline falls before its next planned check.
        if deadline < self._timer_next:
            self.changed.notify_all()

    def cancel(self, owner: Any, kill_running: bool = False) -> None:
        """Drop the tasks of ``owner`` not started: those still queued here, and those
        sent to a worker behind the one it runs (the worker is told to skip them: they
        are answered "cancelled", and are never run elsewhere if it dies). With
        ``kill_running``, kill the workers running one of them too."""
        touched: list[WorkerConn] = []
        with self.lock:
            self.scheduler.drop(owner)
            for conn in list(self.scheduler.workers.values()):
                mine = [t for t in conn.inflight if t.owner is owner and not t.cancelled]
                if not mine:
                    continue
                for t in mine:
                    t.cancelled = True
                if kill_running and conn.inflight[0].owner is owner:
                    self._doom(conn)
                    continue
                behind = [t.ref for t in mine if t is not conn.inflight[0]]
                if behind:
                    retire.send_control(self, conn, _protocol.cancel(behind), touched)
        self.sender.flush(touched)

    def _doom(self, conn: WorkerConn) -> None:
        """Kill ``conn``'s worker and give it no more tasks meanwhile (holds self.lock): its
        EOF, read later, fails its head task (and the cancelled ones) and puts the others
        back in the queue."""
        self.scheduler.retire(conn)
        _kill_conn(conn)

    # -- connections ---------------------------------------------------
    def attach(self, conn: WorkerConn) -> None:
        with self.lock:
            if self.closed or self.down is not None:
                conn.sock.close()
                return
            restarted = conn.index in self.seen and conn.index not in self._recycled
            self._recycled.discard(conn.index)
            self.seen.add(conn.index)
            conn.budget = self.max_batches
            old = self.scheduler.add(conn)
            if old is not None and old.alive:
                _kill_conn(old)  # a replacement arrived before the old socket's EOF: the old one is dead
            self.receiver.polled(conn, True)
            if restarted:
                self.restarts += 1
            touched = self.scheduler.pump()
            if not conn.remote:
                for path in self.runners:  # a fresh worker serves the running DispatchRunners too
                    retire.send_control(self, conn, _protocol.join(path), touched)
            self.changed.notify_all()
        self.receiver.wake()  # whoever is reading adds the new socket
        self.sender.flush(touched)
        if restarted:
            telemetry.emit(("slither", "worker", "restart"), {}, {"pool": self.name, "worker": conn.pid, "index": conn.index})

    # -- DispatchRunners (see slither._runner) -------------------------------
    def add_runner(self, path: str, sock: socket.socket) -> None:
        """A DispatchRunner listening at ``path`` wants this pool's workers: tell each local
        one to join it, answer how many will (the pool's size while all are being restarted),
        and forward exits and PoolDown to it."""
        touched: list = []
        with self.lock:
            conns = [c for c in self.scheduler.workers.values() if c.alive and not c.remote]
            for conn in conns:
                retire.send_control(self, conn, _protocol.join(path), touched)
            lock = threading.Lock()
            self.runners[path] = (sock, lock)
            # None alive right now (all being restarted): the replacements join as they attach.
            remote_only = not conns and any(c.remote for c in self.scheduler.workers.values())
            count = len(conns) or (0 if remote_only else self.size)
            with lock:  # before any forward can reach it
                _wire.send(sock, _protocol.joined(count, str(self.down) if self.down is not None else None))
        self.sender.flush(touched)

    def remove_runner(self, path: str) -> None:
        with self.lock:
            self.runners.pop(path, None)

    def _tell_runners(self, msg: tuple) -> None:
        with self.lock:
            runners = list(self.runners.values())
        for sock, lock in runners:
            try:
                with lock:
                    _wire.send(sock, msg)
            except OSError:
                pass  # that runner is gone; its registration ends on the EOF

    # -- what the receiver hands over --------------------------------------
    def _handle(self, conn: WorkerConn, msg, touched: list) -> None:
        """A frame from ``conn``: a telemetry event, a log record, or a reply (connections
        given new tasks meanwhile go on ``touched``, for the caller to flush)."""
        kind = msg[0]
        if kind == _protocol.EVENT:
            telemetry.emit(msg[1], msg[2], {**msg[3], "pool": self.name, "worker": conn.pid})
        elif kind == _protocol.LOG:
            relog(msg[1])
        elif kind == _protocol.OVER_RSS:
            logger.info(
                "pool {!r}: worker {} holds {:.0f} MB resident, above max_rss: recycling it", self.name, conn.pid, msg[1] / 2**20
            )
            with self.lock:
                retire.over_rss(self, conn, touched)
        else:
            self._complete(conn, msg, touched)

    def setup_failed(self, error: WorkerError) -> None:
        """A worker's setup raised (it ends; its supervisor restarts it or gives up)."""
        with self.lock:
            self.setup_error = error
        logger.warning("pool {!r}: a worker's setup failed: {}", self.name, error)

    def _unreadable(self, conn: WorkerConn, failed: _wire.UnpicklingFailed, touched: list) -> None:
        """A frame from ``conn`` that this process cannot unpickle: a reply fails its
        batch (``SerializationError``); anything else is dropped, with a warning."""
        try:
            kind, ref = _pickle.loads_tolerant(failed.main, failed.buffers)[:2]
        except Exception:  # noqa: BLE001
            kind, ref = None, None
        if kind not in _protocol.REPLIES:
            logger.warning(
                "pool {!r}: dropped a frame from worker {} that cannot be unpickled here: {}", self.name, conn.pid, failed
            )
            return
        self._complete(conn, _protocol.ser(ref, f"the batch's result could not be unpickled in the caller: {failed}"), touched)

    def _complete(self, conn: WorkerConn, msg, touched: list) -> None:
        """A reply to ``conn``'s head task: pump the queue (the connections given tasks go
        on ``touched``, for the caller to flush), then run the task's callback."""
        kind = msg[0]
        with self.lock:
            task = self.scheduler.answered(conn, msg[3] if kind == _protocol.OK else 0)
            if task.ref != msg[1]:  # pragma: no cover - protocol invariant
                logger.error("pool {!r}: reply for {} while {} was head", self.name, msg[1], task.ref)
            if self.max_batches is not None or conn.recycling:
                retire.count(self, conn, touched)
            self.scheduler.pump(touched)
        if kind == _protocol.OK:
            result, error = msg[2], None
        elif kind == _protocol.ERR:
            result, error = None, WorkerError(msg[2], msg[3], with_source(msg[4]))
        elif kind == _protocol.BAD:
            result, error = None, BadBatchResult(msg[2])
        elif kind == _protocol.UNLOADABLE:
            result, error = None, SerializationError(f"the worker could not unpickle the batch: {msg[3]}")
            error.unloadable = msg[2]  # [(position in the batch, "module.Class")]: see slither._dispatch
        elif kind == _protocol.CANCELLED:
            result, error = None, CancelledError(f"batch {msg[1]} was cancelled before worker {conn.pid} started it")
        else:
            result, error = None, SerializationError(msg[2])
        if task.callback is not None:
            task.callback(task, result, error, conn.pid)

    def _lost(self, conn: WorkerConn) -> None:
        """``conn``'s worker is gone (EOF, a socket error): fail what it ran, re-queue the rest."""
        with self.lock:
            conn.alive = False
            self.receiver.polled(conn, False)
            if conn.bulk is not None:
                conn.bulk.put(False)  # its thread ends (a no-op when it is the one calling)
            if conn.sender is not None:
                conn.sender.put(None)  # ends after a send it is in fails (the worker's end is gone or cut)
            head, lost_pinned = self.scheduler.remove(conn)
            closing = self.closed
            planned = conn.retiring and head is None and not lost_pinned  # recycled or stopped, holding nothing
            if not closing and not planned:
                self.crashes += 1
            touched = self.scheduler.pump()
            self.changed.notify_all()
        self.sender.flush(touched)
        try:
            conn.sock.close()
        except OSError:
            pass
        if not closing and not planned:
            meta = {"pool": self.name, "worker": conn.pid, "index": conn.index, "batch_ref": head.meta if head else None}
            telemetry.emit(("slither", "worker", "crash"), {}, meta)
        victims = ([head] if head is not None else []) + lost_pinned
        if not victims:
            return
        if closing:
            err: Exception = RuntimeNotStarted(f"pool {self.name!r} was shut down")
        elif self.down is not None:
            err = self.down_error()
        elif head is not None and head.timed_out:
            err = BatchTimeout(
                f"batch ran longer than {head.timeout}s on worker {conn.pid} of pool {self.name!r}; "
                "the worker was killed and replaced"
            )
        else:
            err = self._crash_of(conn, victims)
            if err is None:
                return  # failed when its nanny says how the worker ended (see exited())
        self._fail(victims, err, conn.pid)

    def _crash_of(self, conn: WorkerConn, victims: list[Task]) -> WorkerCrashed | None:
        """The crash of a local worker, if its nanny already said how it ended; else None,
        and ``victims`` wait for that report (see ExitReports)."""
        if conn.remote:
            return WorkerCrashed(f"worker {conn.pid} of pool {self.name!r} died while running the batch", pid=conn.pid)
        with self.lock:
            report = self.exits.lost(conn.pid, victims)
            if report is None:
                self.changed.notify_all()  # the timer plans the fallback
                return None
        return crashed(self.name, conn.pid, *report)

    def exited(self, pid: int, exitcode: int | None, fault: str) -> None:
        """A nanny's report of how worker ``pid`` ended (see ``slither._worker``)."""
        if self.runners:
            self._tell_runners(_protocol.exit_report("", self.name, -1, pid, exitcode, fault))
        with self.lock:
            victims = self.exits.reported(pid, exitcode, fault)
        if victims is not None:
            self._fail(victims, crashed(self.name, pid, exitcode, fault), pid)

    def _fail(self, victims: list[Task], err: Exception, pid) -> None:
        """Fail ``victims`` with ``err``, then wake the thread reading the sockets: this may
        be the hub's, the timer's or a bulk thread, and a caller of one of them sitting in
        poll() meanwhile would see its queue only when a frame or a new connection next
        woke it (about 40 ms after a SIGKILL, when the replacement connects)."""
        for t in victims:
            if t.callback is not None:
                t.callback(t, None, err, pid)
        if victims:
            self.receiver.wake()

    # -- the end -----------------------------------------------------------
    def mark_down(self, reason: str | None = None) -> None:
        with self.lock:
            if self.down is not None or self.closed:
                return
            if reason is None and self.setup_error is not None:
                reason = f"pool {self.name!r} is down: restart intensity exceeded; a worker's setup failed: {self.setup_error}"
            self.down = PoolDown(self.name, reason)
            victims = self.scheduler.take_queued(with_inflight=True) + self.exits.take_all()
            for conn in self.scheduler.workers.values():
                _kill_conn(conn)
            self.changed.notify_all()
        logger.warning("pool {!r} is down: {}", self.name, self.down)
        if self.runners:
            self._tell_runners((_protocol.POOL_DOWN, "", self.name, str(self.down)))
        for t in victims:
            if t.callback is not None:
                t.callback(t, None, self.down_error(), None)
        self.receiver.wake()  # a thread reading in wait() sees its queue

    def down_error(self) -> PoolDown:
        """The ``PoolDown`` to raise. A fresh instance per caller: one exception raised
        in several threads would have its traceback rewritten under each of them."""
        err = PoolDown(self.name, str(self.down))
        err.__cause__ = self.setup_error  # a setup that kept failing brought it down
        return err

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.scheduler.workers) < self.size and self.down is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
            if self.down is not None:
                raise self.down_error()
        return True

    def live_workers(self) -> list[tuple[int, int]]:
        with self.lock:
            return [(c.index, c.pid) for c in self.scheduler.workers.values()]

    def close(self) -> None:
        with self.lock:
            self.closed = True
            victims = self.scheduler.take_queued(with_inflight=False) + self.exits.take_all()
            self.changed.notify_all()
        # Sockets stay open: closing them now would make the workers exit and their
        # supervisor restart them mid-teardown. disconnect() runs after the tree stopped.
        self._fail(victims, RuntimeNotStarted(f"pool {self.name!r} was shut down"), None)
        self.receiver.wake()  # also with no victims: a thread reading in wait() sees the pool closed

    def disconnect(self) -> None:
        """Close every worker socket (after the actor tree is stopped)."""
        with self.lock:
            conns = list(self.scheduler.workers.values())
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
