"""Receiving from workers: no reader thread per worker.

A thread waiting for its results (:meth:`Receiver.wait`) reads the sockets of
every worker of the pool itself, and hands what belongs to other waiting
threads to their queues. One reader at a time (the ``_rx`` lock); the others
wait on their queues and are handed the reading right when the reader
leaves. When nobody has waited for a while (between dispatches, or while a
``dispatch_stream`` consumer works on an item), the backup thread reads, so
a crash, a telemetry event or a result is still taken in at once. On the hot
path one thread sends, receives and builds the result Items, without a
thread switch per batch. A frame with more than ``BULK`` bytes still to
arrive is read by a thread of its connection, so that the thread reading
every socket goes on sending and receiving meanwhile.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from collections import deque

from loguru import logger

from slither import _wire
from slither._pool.task import WorkerConn, _kill_conn

_TAKE_OVER = object()  # put on a waiting thread's queue: the reading right is free, take it

# A frame with more than this still to arrive is read by a thread of its connection.
BULK = 128 * 1024


class Receiver:
    """The reading side of one pool (see the module docstring). ``pool`` handles what is read."""

    def __init__(self, pool):
        self.pool = pool
        self.name = pool.name
        self.lock = pool.lock
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
        self._backup = threading.Thread(target=self._backup_loop, name=f"slither-pool-{self.name}-rx", daemon=True)
        self._backup_ident = 0

    def start(self) -> None:
        self._backup.start()

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
                self.wake()
            self._followers.append(q)
            try:
                # Sound because _rx is taken only without blocking (but at close): a thread woken
                # in a blocking acquire holds a lock before it has the GIL back to mark it held,
                # and this loop would spin meanwhile (see slither._pipe_runner.engine._Link).
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

    def ready(self, q: queue.SimpleQueue) -> list:
        """The messages already on ``q``, taken without waiting (none: an empty list)."""
        out: list = []
        dropped = False
        while not q.empty():
            msg = q.get()
            if msg is _TAKE_OVER:
                dropped = True
            else:
                out.append(msg)
        if dropped and self._followers and not self._rx.locked():
            self._pass_on()  # the reading right was handed to us, and we are not waiting: on to the next
        return out

    def _pass_on(self) -> None:
        """Hand the reading right to a waiting thread (called after releasing _rx)."""
        try:
            q = self._followers.popleft()
        except IndexError:
            return
        q.put(_TAKE_OVER)

    def wake(self) -> None:
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
            self.pool.sender.flush(touched)  # after every result that arrived: one sendall per worker

    def polled(self, conn: WorkerConn, on: bool) -> None:
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
                try:
                    msg = reader.recv(BULK)  # blocks only for the rest of a small frame on its way
                except _wire.UnpicklingFailed as failed:
                    self.pool._unreadable(conn, failed, touched)
                else:
                    if msg is _wire.LARGE:
                        self._to_bulk(conn)  # a large frame: its own thread reads it
                        return
                    self.pool._handle(conn, msg, touched)
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
        self.pool._lost(conn)

    def _to_bulk(self, conn: WorkerConn) -> None:
        """Stop polling ``conn`` and let its bulk thread read the next frame."""
        with self.lock:
            self.polled(conn, False)
            if conn.bulk is None:
                conn.bulk = queue.SimpleQueue()
                threading.Thread(
                    target=self._bulk_loop, args=(conn,), name=f"slither-{self.name}-w{conn.index}-bulk", daemon=True
                ).start()
        conn.bulk.put(True)

    def _bulk_loop(self, conn: WorkerConn) -> None:
        """Read ``conn``'s frames while they are large (as a reader thread of its own would:
        receiving overlaps the other thread's sends), and give the socket back to the shared
        poll after a small one, once the reader's buffer is empty: frames read into it
        with that one are not in the socket any more, and no poll would see them."""
        reader = conn.reader
        while conn.bulk.get():
            try:
                while True:
                    big = reader.unread() > BULK  # blocks until the next frame's header arrives
                    touched: list[WorkerConn] = []
                    try:
                        msg = reader.recv()
                    except _wire.UnpicklingFailed as failed:
                        self.pool._unreadable(conn, failed, touched)
                    else:
                        self.pool._handle(conn, msg, touched)
                    self.pool.sender.flush(touched)
                    if not big and reader.start == reader.end:
                        break
                    self.wake()  # a thread reading in wait() sees what we put on its queue
            except Exception as exc:  # noqa: BLE001
                self._read_failed(conn, exc)
                return
            with self.lock:
                if not conn.alive:
                    return
                self.polled(conn, True)
            self.wake()  # the reader polls this socket again (and sees the queue we may have put on)

    def _backup_loop(self) -> None:
        """Read the sockets when no waiting thread has for a while; end after close()."""
        self._backup_ident = threading.get_ident()
        while True:
            with self.lock:
                if self.pool.closed and not self.pool.scheduler.workers:
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
                        if self.pool.closed and not self.pool.scheduler.workers:
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
