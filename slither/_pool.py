"""The caller's side of the data plane: the hub and one ``Pool`` per named pool.

How a batch travels::

    dispatch thread ──submit(Task)──▶ Pool.pending ──pump──▶ conn.inflight + conn.sendq
                                                         │
          whichever thread pumped (outside the pool lock) ◀──┘  sends the pre-pickled frame
                                                         │
                          worker process: reader thread → run loop → reply
                                                         │
    dispatch thread ◀──task.callback── reader thread (per worker) ◀──┘

* Each worker holds at most ``depth`` tasks (default 2): one running, one
  queued in its socket, so it never idles waiting for a round trip. Only the
  head task has started; when a worker dies the head fails (crashed or timed
  out) and the others go back to the front of the queue untouched.
* Timeouts: the head task's deadline is set when it becomes head; the timer
  thread SIGKILLs a worker whose head is late. The worker's supervisor
  replaces it; the dead socket's EOF fails the batch as ``BatchTimeout``.
* ``PoolDown``: the pool supervisor says it gave up, or its process is gone.
  Every waiting task fails at once and new submissions raise.
"""

from __future__ import annotations

import itertools
import linecache
import logging
import os
import queue
import re
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from loguru import logger

from slither import _net, _pickle, _wire, telemetry
from slither.errors import (
    BadBatchResult,
    BatchTimeout,
    PoolDown,
    RuntimeNotStarted,
    SerializationError,
    WorkerCrashed,
    WorkerError,
)
from slither.supervision import pid_alive

_refs = itertools.count(1)
_TAKE_OVER = object()  # put on a waiting thread's queue: the reading right is free, take it


class Task:
    """One batch (or probe) on its way to a worker."""

    __slots__ = (
        "ref",
        "fn_key",
        "fn_blob",
        "chunks",
        "session",
        "timeout",
        "callback",
        "owner",
        "deadline",
        "timed_out",
        "meta",
        "pinned",
    )

    def __init__(self, fn_key, fn_blob, chunks, *, ref, session=None, timeout=None, callback=None, owner=None, meta=None):
        self.ref = ref
        self.fn_key = fn_key
        self.fn_blob = fn_blob
        self.chunks = chunks
        self.session = session
        self.timeout = timeout
        self.callback = callback
        self.owner = owner
        self.deadline = None
        self.timed_out = False
        self.meta = meta
        self.pinned = None  # a worker index this task must run on (probes)

    def __repr__(self) -> str:
        return f"<Task {self.ref}>"


def new_ref() -> int:
    return next(_refs)


class WorkerConn:
    __slots__ = (
        "pool",
        "index",
        "pid",
        "sock",
        "inflight",
        "private",
        "fn_keys",
        "sendq",
        "send_lock",
        "alive",
        "sessions",
        "remote",
        "reader",
        "bulk",
        "sender",
    )

    def __init__(self, pool, index, pid, sock, remote: bool = False):
        self.remote = remote  # on another node: its pid means nothing here, never signal it
        self.pool = pool
        self.index = index
        self.pid = pid
        self.sock = sock
        self.inflight: deque[Task] = deque()
        self.private: deque[Task] = deque()
        self.fn_keys: set = set()
        # Frames to send, in inflight order. No writer thread: the thread that
        # queued a task sends it (one sender at a time, see Pool._flush), which
        # saves a thread handoff per batch.
        self.sendq: deque[Task] = deque()
        self.send_lock = threading.Lock()
        self.alive = True
        self.sessions: set = set()
        self.reader = _wire.Reader(sock)
        self.bulk: queue.SimpleQueue | None = None  # hands large frames to a thread of this connection
        self.sender: queue.SimpleQueue | None = None  # hands sends that would block to a thread of this connection


# A frame with more than this still to arrive is read by a thread of its connection,
# so that the thread reading every socket goes on sending and receiving meanwhile.
BULK = 128 * 1024


class Pool:
    """Caller-side state of one named pool. Thread-safe."""

    def __init__(self, name: str, size: int, depth: int = 2):
        self.name = name
        self.size = size
        self.depth = depth
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.pending: deque[Task] = deque()
        self.workers: dict[int, WorkerConn] = {}
        self.sessions: dict[str, int] = {}
        self.seen: set[int] = set()
        self.down: PoolDown | None = None
        self.closed = False
        self.sup_pid: int | None = None
        self.crashes = 0
        self.restarts = 0
        self._rr = 0
        self._workers_gen = 0  # bumped whenever self.workers changes
        self._rot_gen = -1
        self._rotations: list[list[WorkerConn]] = []
        self._timer_next = 0.0
        self._exits: dict[int, tuple] = {}  # pid -> (exitcode, fault): nannies' reports not yet matched to an EOF
        self._awaiting: dict[int, tuple] = {}  # pid -> (deadline, tasks): lost workers whose report is awaited
        # Receiving (see wait()): whoever holds _rx reads every worker socket of the pool.
        self._rx = threading.Lock()
        self._rx_owner = 0  # ident of the thread holding _rx, 0 when free
        self._rx_taken = 0  # how many times _rx was taken: the backup reader stays away while it moves
        self._rx_wanted = False  # a waiting thread asks the backup reader to hand over
        self._followers: deque = deque()  # queues of threads waiting while another one reads
        self._conns: dict[int, WorkerConn] = {}  # fd -> connection being read (under self.lock)
        self._conns_gen = 0
        self._poller = None
        self._poller_gen = -1
        self._poller_conns: dict[int, WorkerConn] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_closed = False
        self._timer = threading.Thread(target=self._timer_loop, name=f"slither-pool-{name}-timer", daemon=True)
        self._timer.start()
        self._backup = threading.Thread(target=self._backup_loop, name=f"slither-pool-{name}-rx", daemon=True)
        self._backup_ident = 0
        self._backup.start()

    # -- submission ----------------------------------------------------
    def submit(self, task: Task) -> None:
        with self.lock:
            if self.closed:
                raise RuntimeNotStarted(f"pool {self.name!r} is shut down")
            if self.down is not None:
                raise self._pool_down()
            self._route(task)
            touched = self._pump()
        self._flush(touched)

    def _route(self, task: Task) -> None:
        if task.pinned is not None:
            conn = self.workers.get(task.pinned)
            if conn is None:
                raise WorkerCrashed(f"worker {task.pinned} of pool {self.name!r} is not connected")
            conn.private.append(task)
            return
        if task.session is not None:
            idx = self.sessions.get(task.session)
            if idx is None and self.workers:
                conn = min(self.workers.values(), key=lambda c: (len(c.sessions), len(c.inflight) + len(c.private)))
                idx = conn.index
                conn.sessions.add(task.session)
                self.sessions[task.session] = idx
            if idx is not None:
                self.workers[idx].private.append(task)
                return
        self.pending.append(task)

    def _pump(self) -> list[WorkerConn]:
        """Hand queued tasks to workers with room. Caller holds the lock.

        Returns the connections that got tasks: the caller passes them to
        :meth:`_flush` once it has released the lock.
        """
        touched: list[WorkerConn] = []
        if not self.workers:
            return touched
        if self._rot_gen != self._workers_gen:  # the workers changed: their rotations, computed once
            vals = list(self.workers.values())
            self._rotations = [vals[i:] + vals[:i] for i in range(len(vals))]
            self._rot_gen = self._workers_gen
        self._rr = (self._rr + 1) % len(self._rotations)
        conns = self._rotations[self._rr]  # ties go round the workers
        depth = self.depth
        progress = True
        while progress:
            progress = False
            for conn in conns:  # tasks bound to a worker (session affinity, probes)
                while conn.private and len(conn.inflight) < depth:
                    self._assign(conn, conn.private.popleft(), touched)
            while self.pending:
                # The least loaded worker with room: a task never queues behind
                # a running batch while another worker is idle.
                conn, load = None, depth
                for c in conns:
                    n = len(c.inflight)
                    if n < load:
                        conn, load = c, n
                        if n == 0:
                            break
                if conn is None:
                    break
                task = self.pending.popleft()
                if task.session is not None:
                    # Its session had no worker when it was submitted: bind it here.
                    idx = self.sessions.setdefault(task.session, conn.index)
                    if idx != conn.index:
                        self.workers[idx].private.append(task)
                        progress = True
                        continue
                    conn.sessions.add(task.session)
                self._assign(conn, task, touched)
        return touched

    def _assign(self, conn: WorkerConn, task: Task, touched: list) -> None:
        if not conn.inflight and task.timeout:
            task.deadline = time.monotonic() + task.timeout
            self._wake_timer(task.deadline)
        conn.inflight.append(task)
        conn.sendq.append(task)
        if conn not in touched:
            touched.append(conn)

    def _flush(self, conns: list[WorkerConn]) -> None:
        """Send what is queued on ``conns``. Never called with the pool lock held.

        One sender per connection at a time keeps frames in order; a thread
        that finds another one sending leaves its frames to it (the sender
        re-checks the queue after releasing its lock, so none is stranded).
        Never blocks: what the socket does not take at once (a large frame
        the worker has not read yet; a worker that stopped reading: a
        SIGSTOPped process, a member cut off by the network) is finished by
        the connection's sender thread, which holds the send lock meanwhile.
        """
        for conn in conns:
            while conn.sendq:
                if not conn.send_lock.acquire(blocking=False):
                    break  # the current sender will see our frames
                handed = False
                try:
                    rest = _wire.send_buffers(conn.sock, self._take_frames(conn), block=False)
                    if rest:
                        handed = self._hand_over(conn, rest)
                except OSError:
                    conn.sendq.clear()  # the reader sees the EOF and fails what was in flight
                finally:
                    if not handed:
                        conn.send_lock.release()

    def _take_frames(self, conn: WorkerConn) -> list:
        """Empty ``conn.sendq`` into the buffers to send, in order (holds its send lock):
        small frames queued together are joined into one buffer, a large frame's chunks
        stay as they are (out-of-band buffers are never copied)."""
        out: list = []
        small: list[bytes] = []
        while conn.sendq:
            task = conn.sendq.popleft()
            frames = [task.chunks]
            if task.fn_blob is not None and task.fn_key not in conn.fn_keys:
                frames.insert(0, _wire.dumps(("fn", task.fn_key, task.fn_blob)))
                conn.fn_keys.add(task.fn_key)
            for chunks in frames:
                if len(chunks) == 1 and len(chunks[0]) <= _wire._SMALL:
                    small.append(chunks[0])
                    continue
                if small:  # a large frame: what is queued before it goes first
                    out.append(b"".join(small))
                    small = []
                out += chunks
        if small:
            out.append(b"".join(small))  # one frame: join() hands it back as it is
        return out

    def _hand_over(self, conn: WorkerConn, rest: list) -> bool:
        """Give ``rest`` and the send lock of ``conn`` to the connection's sender thread
        (False if the connection is lost meanwhile: nothing is left to send to)."""
        with self.lock:
            if not conn.alive:
                return False
            if conn.sender is None:
                conn.sender = queue.SimpleQueue()
                threading.Thread(
                    target=self._send_loop, args=(conn,), name=f"slither-{self.name}-w{conn.index}-send", daemon=True
                ).start()
            conn.sender.put(rest)  # under the lock: before any end-of-connection marker
        return True

    def _send_loop(self, conn: WorkerConn) -> None:
        """Finish the sends handed over to this connection (holding its send lock,
        blocking as long as the worker takes to read), then what was queued meanwhile."""
        while True:
            rest = conn.sender.get()
            if rest is None:
                return
            try:
                _wire.send_buffers(conn.sock, rest)
                while conn.sendq:
                    _wire.send_buffers(conn.sock, self._take_frames(conn))
            except OSError:
                conn.sendq.clear()  # the reader sees the EOF and fails what was in flight
            finally:
                conn.send_lock.release()
            self._flush([conn])  # frames queued after our last look and before the release

    def _wake_timer(self, deadline: float) -> None:
        # Waking the timer thread on every batch costs a GIL round trip; it only
        # needs waking when a deadline falls before its next planned check.
        if deadline < self._timer_next:
            self.changed.notify_all()

    def cancel(self, owner: Any, kill_running: bool = False) -> None:
        """Drop queued tasks of ``owner``; optionally kill workers running them."""
        with self.lock:
            self.pending = deque(t for t in self.pending if t.owner is not owner)
            for conn in self.workers.values():
                conn.private = deque(t for t in conn.private if t.owner is not owner)
            for conn in list(self.workers.values()):
                if kill_running and conn.inflight and conn.inflight[0].owner is owner:
                    self._doom(conn)

    # -- connections ---------------------------------------------------
    def attach(self, conn: WorkerConn) -> None:
        with self.lock:
            if self.closed or self.down is not None:
                conn.sock.close()
                return
            restarted = conn.index in self.seen
            self.seen.add(conn.index)
            old = self.workers.get(conn.index)
            if old is not None and old.alive:
                # A replacement arrived before the old socket's EOF: the old one is dead.
                _kill_conn(old)
            self.workers[conn.index] = conn
            self._workers_gen += 1
            self._polled(conn, True)
            if restarted:
                self.restarts += 1
            touched = self._pump()
            self.changed.notify_all()
        self._wake()  # whoever is reading adds the new socket
        self._flush(touched)
        if restarted:
            telemetry.emit(("slither", "worker", "restart"), {}, {"pool": self.name, "worker": conn.pid, "index": conn.index})

    # -- receiving -----------------------------------------------------
    # No reader thread per worker: a thread waiting for its results (wait())
    # reads the sockets of every worker of the pool itself, and hands what
    # belongs to other waiting threads to their queues. One reader at a time
    # (the _rx lock); the others wait on their queues and are handed the
    # reading right when the reader leaves. When nobody has waited for a
    # while (between dispatches, or while a dispatch_stream consumer works
    # on an item), the backup thread reads, so a crash, a telemetry event or
    # a result is still taken in at once. On the hot path one thread sends,
    # receives and builds the result Items, without a thread switch per batch.

    def wait(self, q: queue.SimpleQueue, timeout: float):
        """The next message put on ``q``, waiting at most ``timeout`` seconds
        (``queue.Empty`` after that). While it waits, the calling thread reads
        the pool's worker sockets unless another thread does already."""
        if self._rx_owner == threading.get_ident():
            raise RuntimeError(
                f"waiting for results of pool {self.name!r} in the thread that reads its sockets "
                "(a telemetry handler of a worker event dispatching on the same pool?): it would wait on itself"
            )
        while not q.empty():
            msg = q.get()
            if msg is not _TAKE_OVER:
                return msg
        deadline = time.monotonic() + timeout
        while True:
            if self._rx.acquire(blocking=False):
                self._rx_owner = threading.get_ident()
                self._rx_taken += 1
                try:
                    while True:
                        if self._wake_closed:  # the pool is gone (see _backup_loop): only our queue is left
                            msg = q.get(timeout=max(0.0, deadline - time.monotonic()))
                            if msg is not _TAKE_OVER:
                                return msg
                            continue
                        self._read(max(0.0, deadline - time.monotonic()))
                        while not q.empty():
                            msg = q.get()
                            if msg is not _TAKE_OVER:
                                return msg
                        if time.monotonic() >= deadline:
                            raise queue.Empty
                finally:
                    self._rx_owner = 0
                    self._rx.release()
                    if self._followers:
                        self._pass_on()
            # Another thread reads: wait for a message or for the reading right.
            if self._rx_owner == self._backup_ident:
                self._rx_wanted = True
                self._wake()
            self._followers.append(q)
            try:
                if not self._rx.locked():
                    continue  # the reader left between our two looks: take over
                left = deadline - time.monotonic()
                if left <= 0:
                    raise queue.Empty
                msg = q.get(timeout=left)
            finally:
                try:
                    self._followers.remove(q)
                except ValueError:
                    pass  # _pass_on took it
            if msg is not _TAKE_OVER:
                if self._followers and not self._rx.locked():
                    self._pass_on()  # a hand-over meant for us may be lost in our queue
                return msg

    def _pass_on(self) -> None:
        """Hand the reading right to a waiting thread (called after releasing _rx)."""
        try:
            q = self._followers.popleft()
        except IndexError:
            return
        q.put(_TAKE_OVER)

    def _wake(self) -> None:
        """Make the current reader return from poll() (new socket, a message put from outside)."""
        with self.lock:
            if self._wake_closed:
                return
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass  # full: a wake-up is pending anyway

    def _read(self, timeout: float) -> None:
        """Wait up to ``timeout`` for frames, and handle every frame that arrived. Holds _rx."""
        if self._poller_gen != self._conns_gen:
            with self.lock:
                poller = select.poll()
                poller.register(self._wake_r, select.POLLIN)
                for fd in self._conns:
                    poller.register(fd, select.POLLIN)
                conns = dict(self._conns)
                self._poller, self._poller_gen, self._poller_conns = poller, self._conns_gen, conns
        touched: list[WorkerConn] = []  # connections given new tasks while results were handled
        for fd, _ev in self._poller.poll(int(timeout * 1000 + 0.999)):
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            conn = self._poller_conns.get(fd)
            if conn is not None and conn.alive:
                self._drain(conn, touched)
        if touched:
            self._flush(touched)  # after every result that arrived: one sendall per worker

    def _polled(self, conn: WorkerConn, on: bool) -> None:
        """Add ``conn`` to the sockets the reader polls, or take it out. Holds self.lock."""
        fd = conn.sock.fileno()
        if on:
            self._conns[fd] = conn
        elif self._conns.get(fd) is conn:
            del self._conns[fd]
        else:
            return
        self._conns_gen += 1

    def _drain(self, conn: WorkerConn, touched: list) -> None:
        """Handle the frames of ``conn`` that arrived (poll said it is readable); the
        connections that got new tasks meanwhile go on ``touched``, for the caller to flush."""
        reader = conn.reader
        try:
            while True:
                if reader.unread() > BULK:
                    self._to_bulk(conn)  # a large frame: its own thread reads it
                    return
                try:
                    msg = reader.recv()  # blocks only for the rest of a frame on its way
                except _wire.UnpicklingFailed as failed:
                    self._unreadable(conn, failed, touched)
                else:
                    self._handle(conn, msg, touched)
                if reader.start == reader.end:
                    return
        except Exception as exc:  # noqa: BLE001
            self._read_failed(conn, exc)

    def _read_failed(self, conn: WorkerConn, exc: Exception) -> None:
        """EOF or a socket error: the worker is gone. Anything else (e.g. a result that
        fails to unpickle here): logged, and the worker is ended."""
        if not isinstance(exc, (EOFError, OSError)):
            logger.opt(exception=exc).error("pool {!r}: bad frame from worker {}", self.name, conn.pid)
            _kill_conn(conn)
        self._lost(conn)

    def _handle(self, conn: WorkerConn, msg, touched: list) -> None:
        """A frame from ``conn``: a telemetry event, or a reply (connections given new
        tasks meanwhile go on ``touched``, for the caller to flush)."""
        kind = msg[0]
        if kind == "event":
            telemetry.emit(msg[1], msg[2], {**msg[3], "pool": self.name, "worker": conn.pid})
        elif kind == "log":
            _relog(msg[1])
        else:
            self._complete(conn, msg, touched)

    def _unreadable(self, conn: WorkerConn, failed: _wire.UnpicklingFailed, touched: list) -> None:
        """A frame from ``conn`` that this process cannot unpickle: a reply fails its
        batch (``SerializationError``); anything else is dropped, with a warning."""
        try:
            kind, ref = _pickle.loads_tolerant(failed.main, failed.buffers)[:2]
        except Exception:  # noqa: BLE001
            kind, ref = None, None
        if kind not in ("ok", "err", "bad", "ser", "unloadable"):
            logger.warning(
                "pool {!r}: dropped a frame from worker {} that cannot be unpickled here: {}", self.name, conn.pid, failed
            )
            return
        why = f"the batch's result could not be unpickled in the caller: {failed}"
        self._complete(conn, ("ser", ref, why), touched)

    def _to_bulk(self, conn: WorkerConn) -> None:
        """Stop polling ``conn`` and let its bulk thread read the next frame."""
        with self.lock:
            self._polled(conn, False)
            if conn.bulk is None:
                conn.bulk = queue.SimpleQueue()
                threading.Thread(
                    target=self._bulk_loop, args=(conn,), name=f"slither-{self.name}-w{conn.index}-bulk", daemon=True
                ).start()
        conn.bulk.put(True)

    def _bulk_loop(self, conn: WorkerConn) -> None:
        """Read ``conn``'s frames while they are large (as a reader thread of its own would:
        receiving overlaps the other thread's sends), and give the socket back to the shared
        poll after the first small one."""
        reader = conn.reader
        while conn.bulk.get():
            try:
                while True:
                    big = reader.unread() > BULK  # blocks until the next frame's header arrives
                    touched: list[WorkerConn] = []
                    try:
                        msg = reader.recv()
                    except _wire.UnpicklingFailed as failed:
                        self._unreadable(conn, failed, touched)
                    else:
                        self._handle(conn, msg, touched)
                    self._flush(touched)
                    if not big:
                        break
                    self._wake()  # a thread reading in wait() sees what we put on its queue
            except Exception as exc:  # noqa: BLE001
                self._read_failed(conn, exc)
                return
            with self.lock:
                if not conn.alive:
                    return
                self._polled(conn, True)
            self._wake()  # the reader polls this socket again (and sees the queue we may have put on)

    def _backup_loop(self) -> None:
        """Read the sockets when no waiting thread has for a while; end after close()."""
        self._backup_ident = threading.get_ident()
        while True:
            with self.lock:
                if self.closed and not self.workers:
                    break
            taken = self._rx_taken
            time.sleep(0.01)  # no event marks "nobody took the reading right for a while": look again
            if self._rx_taken != taken or not self._rx.acquire(blocking=False):
                continue
            self._rx_wanted = False
            self._rx_owner = self._backup_ident
            self._rx_taken += 1
            try:
                while not self._rx_wanted:
                    self._read(0.25)
                    with self.lock:
                        if self.closed and not self.workers:
                            break
            finally:
                self._rx_owner = 0
                self._rx.release()
                self._pass_on()
        # Close the wake pipe holding the reading right, so that no thread is in poll() on it
        # (its numbers may be reused at once), and under the lock that _wake() takes.
        with self._rx, self.lock:
            self._wake_closed = True
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._pass_on()  # a thread waiting for the reading right sees _wake_closed

    def _complete(self, conn: WorkerConn, msg, touched: list) -> None:
        """A reply to ``conn``'s head task: pump the queue (the connections given tasks go
        on ``touched``, for the caller to flush), then run the task's callback."""
        with self.lock:
            task = conn.inflight.popleft()
            if task.ref != msg[1]:  # pragma: no cover - protocol invariant
                logger.error("pool {!r}: reply for {} while {} was head", self.name, msg[1], task.ref)
            if conn.inflight and conn.inflight[0].timeout:
                conn.inflight[0].deadline = time.monotonic() + conn.inflight[0].timeout
                self._wake_timer(conn.inflight[0].deadline)
            touched += [c for c in self._pump() if c not in touched]
        kind = msg[0]
        if kind == "ok":
            result, error = msg[2], None
        elif kind == "err":
            result, error = None, WorkerError(msg[2], msg[3], _with_source(msg[4]))
        elif kind == "bad":
            result, error = None, BadBatchResult(msg[2])
        elif kind == "unloadable":  # ("unloadable", ref, [(position in batch, "module.Class")], why)
            result, error = None, SerializationError(f"the worker could not unpickle the batch: {msg[3]}")
            error.unloadable = msg[2]
        else:
            result, error = None, SerializationError(msg[2])
        if task.callback is not None:
            task.callback(task, result, error, conn.pid)

    def _lost(self, conn: WorkerConn) -> None:
        with self.lock:
            conn.alive = False
            self._polled(conn, False)
            if conn.bulk is not None:
                conn.bulk.put(False)  # its thread ends (a no-op when it is the one calling)
            if conn.sender is not None:
                conn.sender.put(None)  # ends after a send it is in fails (the worker's end is gone or cut)
            conn.sendq.clear()  # every queued frame is also in inflight: re-queued below
            if self.workers.get(conn.index) is conn:
                del self.workers[conn.index]
                self._workers_gen += 1
            head = conn.inflight.popleft() if conn.inflight else None
            # Never started: back to the front of the queue, in order.
            rest = [t for t in list(conn.inflight) + list(conn.private) if t.pinned is None]
            lost_pinned = [t for t in list(conn.inflight) + list(conn.private) if t.pinned is not None]
            conn.inflight.clear()
            conn.private.clear()
            for sess in conn.sessions:
                if self.sessions.get(sess) == conn.index:
                    del self.sessions[sess]
            for t in reversed(rest):
                self.pending.appendleft(t)
            closing = self.closed
            if not closing:
                self.crashes += 1
            touched = self._pump()
            self.changed.notify_all()
        self._flush(touched)
        try:
            conn.sock.close()
        except OSError:
            pass
        if not closing:
            telemetry.emit(
                ("slither", "worker", "crash"),
                {},
                {"pool": self.name, "worker": conn.pid, "index": conn.index, "batch_ref": head.meta if head else None},
            )
        victims = ([head] if head is not None else []) + lost_pinned
        if not victims:
            return
        if closing:
            err: Exception = RuntimeNotStarted(f"pool {self.name!r} was shut down")
        elif self.down is not None:
            err = self._pool_down()
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
        and ``victims`` wait for that report (at most EXIT_REPORT_WAIT seconds)."""
        if conn.remote:
            return WorkerCrashed(f"worker {conn.pid} of pool {self.name!r} died while running the batch", pid=conn.pid)
        with self.lock:
            report = self._exits.pop(conn.pid, None)
            if report is None:
                self._awaiting[conn.pid] = (time.monotonic() + EXIT_REPORT_WAIT, victims)
                self.changed.notify_all()  # the timer plans the fallback
                return None
        return _crashed(self.name, conn.pid, *report)

    def exited(self, pid: int, exitcode: int | None, fault: str) -> None:
        """A nanny's report of how worker ``pid`` ended (see ``slither._worker``)."""
        with self.lock:
            waiting = self._awaiting.pop(pid, None)
            if waiting is None:
                self._exits[pid] = (exitcode, fault)  # its EOF is still on its way
                while len(self._exits) > 64:  # reports of workers that held no batch
                    del self._exits[next(iter(self._exits))]
                return
        self._fail(waiting[1], _crashed(self.name, pid, exitcode, fault), pid)

    def _fail(self, victims: list[Task], err: Exception, pid) -> None:
        for t in victims:
            if t.callback is not None:
                t.callback(t, None, err, pid)

    def mark_down(self, reason: str | None = None) -> None:
        with self.lock:
            if self.down is not None or self.closed:
                return
            self.down = PoolDown(self.name, reason)
            victims = list(self.pending) + self._take_awaiting()
            self.pending.clear()
            for conn in self.workers.values():
                victims += list(conn.inflight) + list(conn.private)
                conn.inflight.clear()
                conn.private.clear()
                _kill_conn(conn)
            self.changed.notify_all()
        logger.warning("pool {!r} is down: {}", self.name, self.down)
        for t in victims:
            if t.callback is not None:
                t.callback(t, None, self._pool_down(), None)
        self._wake()  # a thread reading in wait() sees its queue

    def _doom(self, conn: WorkerConn) -> None:
        """Kill ``conn``'s worker and give it no more tasks meanwhile (holds self.lock): its
        EOF, read later, fails its head task and puts the others back in the queue."""
        if self.workers.get(conn.index) is conn:
            del self.workers[conn.index]
            self._workers_gen += 1
        for sess in conn.sessions:
            if self.sessions.get(sess) == conn.index:
                del self.sessions[sess]
        _kill_conn(conn)

    def _take_awaiting(self) -> list[Task]:
        """Every task waiting for a nanny's report, taken (holds self.lock)."""
        tasks = [t for _, ts in self._awaiting.values() for t in ts]
        self._awaiting.clear()
        return tasks

    def _pool_down(self) -> PoolDown:
        # A fresh instance per caller: one exception raised in several threads
        # would have its traceback rewritten under each of them.
        return PoolDown(self.name, str(self.down))

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.workers) < self.size and self.down is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
            if self.down is not None:
                raise self._pool_down()
        return True

    def live_workers(self) -> list[tuple[int, int]]:
        with self.lock:
            return [(c.index, c.pid) for c in self.workers.values()]

    def close(self) -> None:
        with self.lock:
            self.closed = True
            victims = list(self.pending) + self._take_awaiting()
            self.pending.clear()
            conns = list(self.workers.values())
            for conn in conns:
                victims += list(conn.private)
                conn.private.clear()
            self.changed.notify_all()
        # Sockets stay open: closing them now would make the workers exit and their
        # supervisor restart them mid-teardown. disconnect() runs after the tree stopped.
        err = RuntimeNotStarted(f"pool {self.name!r} was shut down")
        for t in victims:
            if t.callback is not None:
                t.callback(t, None, err, None)
        self._wake()

    def disconnect(self) -> None:
        """Close every worker socket (after the actor tree is stopped)."""
        with self.lock:
            conns = list(self.workers.values())
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _timer_loop(self) -> None:
        with self.lock:
            while not self.closed:
                now = time.monotonic()
                nxt = now + 0.25
                for conn in list(self.workers.values()):
                    head = conn.inflight[0] if conn.inflight else None
                    if head is not None and head.deadline is not None and not head.timed_out:
                        if head.deadline <= now:
                            head.timed_out = True
                            self._doom(conn)
                        else:
                            nxt = min(nxt, head.deadline)
                late = [pid for pid, (deadline, _) in self._awaiting.items() if deadline <= now]
                if late:
                    self.lock.release()
                    try:
                        for pid in late:
                            self.exited(pid, None, "")  # the nanny died too, or the caller is too busy to hear it
                    finally:
                        self.lock.acquire()
                    continue
                for deadline, _ in self._awaiting.values():
                    nxt = min(nxt, deadline)
                if self.sup_pid is not None and self.down is None and not pid_alive(self.sup_pid):
                    self.lock.release()
                    try:
                        self.mark_down(f"pool {self.name!r} is down: its supervisor process {self.sup_pid} exited")
                    finally:
                        self.lock.acquire()
                    continue
                self._timer_next = nxt
                self.changed.wait(max(0.0, nxt - time.monotonic()))
                self._timer_next = 0.0


# How long a batch whose worker died waits for its nanny's report of how (a few ms
# after the EOF, as a rule) before it fails without it.
EXIT_REPORT_WAIT = 1.0


def _crashed(pool: str, pid: int, exitcode: int | None, fault: str) -> WorkerCrashed:
    how = WorkerCrashed.how(exitcode)
    return WorkerCrashed(f"worker {pid} of pool {pool!r} {how} while running the batch", pid=pid, exitcode=exitcode, fault=fault)


_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+)')


def _with_source(tb: str) -> str:
    """A worker's traceback with the source lines it could not show filled in from
    this process's ``linecache`` (a notebook cell, a file not on the worker's host)."""
    if not tb:
        return tb
    lines = tb.splitlines(keepends=True)
    out = []
    for k, line in enumerate(lines):
        out.append(line)
        m = _FRAME.match(line)
        if m and not (k + 1 < len(lines) and lines[k + 1].startswith("    ")):
            src = linecache.getline(m["file"], int(m["line"])).strip()
            if src:
                out.append(f"    {src}\n")
    return "".join(out)


def _relog(d: dict) -> None:
    """A ``logging`` record from a worker, handled here under its logger's name."""
    record = logging.makeLogRecord(d)
    lg = logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
    if lg.isEnabledFor(record.levelno):
        lg.handle(record)


def _kill_conn(conn: WorkerConn) -> None:
    """End a worker: SIGKILL a local one; cut a remote one's connection (its
    reader sees the EOF and exits the process, stuck or not)."""
    if conn.remote:
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    else:
        _kill(conn.pid)


def _kill(pid: int | None) -> None:
    if pid and pid != os.getpid():  # an in-process (debug) worker cannot be killed
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Hub:
    """Accepts connections from this runtime's workers and pool supervisors on a
    Unix socket in the runtime's private directory. Every first frame must carry
    the runtime's token."""

    def __init__(self, path: str, token: str, store_paths: Callable[[], dict]):
        self.path = path
        self.token = token
        self.pools: dict[str, Pool] = {}
        self.store_paths = store_paths
        self.sock = _wire.listen(path)
        self.tcp: socket.socket | None = None
        self._secret = b""
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="slither-hub", daemon=True)
        self._thread.start()

    def listen_tcp(self, host: str, port: int, secret: bytes) -> tuple[str, int]:
        """Also accept workers of convention members over TCP, each proving it knows ``secret``."""
        self.tcp = socket.create_server((host, port), backlog=128)
        self._secret = secret
        threading.Thread(target=self._accept_loop, args=(self.tcp, True), name="slither-hub-tcp", daemon=True).start()
        return self.tcp.getsockname()[:2]

    def _accept_loop(self, listener=None, tcp: bool = False) -> None:
        listener = listener or self.sock
        while not self._closed:
            try:
                s, peer = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._greet, args=(s, peer if tcp else None), daemon=True).start()

    def _greet(self, s: socket.socket, peer=None) -> None:
        remote = peer is not None
        try:
            if remote:
                _net.tune(s)
                if not _net.server_handshake(s, self._secret):  # before anything is unpickled
                    logger.warning("slither hub: refused {}: it did not prove it knows the convention secret", peer)
                    s.close()
                    return
            s.settimeout(10)
            hello = _wire.recv(s)
            s.settimeout(None)
            kind, token = hello[0], hello[1]
            if not remote and token != self.token:
                s.close()
                return
            if kind == "worker":
                _, _, pool_name, index, pid = hello
                pool = self.pools.get(pool_name)
                if pool is None:
                    s.close()
                    return
                _wire.send(s, ("init", list(sys.path), os.getcwd(), self.store_paths()))
                pool.attach(WorkerConn(pool_name, index, pid, s, remote=remote))
            elif remote:
                s.close()  # only workers come over the network
            elif kind == "pool_up":
                pool = self.pools.get(hello[2])
                if pool is not None:
                    with pool.lock:
                        pool.sup_pid = hello[3]
                s.close()
            elif kind == "exit":  # ("exit", token, pool, index, pid, exitcode, faulthandler text)
                pool = self.pools.get(hello[2])
                if pool is not None:
                    pool.exited(hello[4], hello[5], hello[6])
                s.close()
            elif kind == "pool_down":
                pool = self.pools.get(hello[2])
                if pool is not None:
                    pool.mark_down()
                s.close()
            else:
                s.close()
        except (OSError, EOFError, ValueError, TypeError):
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        for listener in (self.sock, self.tcp):
            try:
                if listener is not None:
                    listener.close()
            except OSError:
                pass
        try:
            os.unlink(self.path)
        except OSError:
            pass
