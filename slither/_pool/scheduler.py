"""Which worker gets which task: queues, session affinity, the least-loaded choice,
deadlines. No I/O and no locks of its own: the pool calls it holding its lock, and
sends what it assigned afterwards (see ``Sender``).

* Each worker holds at most its depth of tasks: one running, the others
  queued in its socket, so it never idles waiting for a round trip. Only the
  head task has started; when a worker dies the head fails (crashed or timed
  out) and the others go back to the front of the queue untouched.
* The depth is the pool's ``depth`` when set. By default (None) it follows
  how long the worker says its recent batches ran: enough of them for about
  ``QUEUE_NS`` (1 ms) of its work, at least ``DEPTH`` (2) and at most
  ``MAX_DEPTH`` (16). A tiny batch is over before the caller has read its
  reply and sent another: with too few queued, the worker runs dry and sleeps,
  and the caller's next send must wake it. Bounding the queue by time, not by
  count, bounds what the end of a dispatch can leave queued behind one worker
  while another idles: about 1 ms of work, or two long batches.
* ``capacity`` is the sum of the connected workers' depths: ``map`` and
  ``dispatch`` size their default windows from it (see ``_Dispatch._take``).
* A task goes to the least-loaded worker with room: it never queues behind a
  running batch while another worker is idle. Ties go round the workers.
* A worker with a ``budget`` (``max_batches``) is given no more tasks than
  that in its life, however deep its queue: it is recycled after exactly that.
* A task's deadline is set when it becomes its worker's head.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from slither._pool.task import Task, WorkerConn
from slither.errors import WorkerCrashed

DEPTH = 2  # the fewest tasks a worker holds with the automatic depth (its batches are long)
MAX_DEPTH = 16  # the most (its batches are tiny)
QUEUE_NS = 1_000_000  # automatic depth: about this much of a worker's recent work queued on it


class Scheduler:
    def __init__(self, name: str, depth: int | None, on_deadline: Callable[[float], None]):
        self.name = name
        self.auto = depth is None  # each worker's depth follows its batches' run time
        self.depth = DEPTH if depth is None else depth
        self.pending: deque[Task] = deque()
        self.workers: dict[int, WorkerConn] = {}  # index -> connection, the workers that take tasks
        self.capacity = 0  # the sum of self.workers' depths
        self.sessions: dict[str, int] = {}  # session id -> worker index
        self._on_deadline = on_deadline  # the timer must look at this deadline
        self._rr = 0
        self._gen = 0  # bumped whenever self.workers changes
        self._rot_gen = -1
        self._rotations: list[list[WorkerConn]] = []

    def route(self, task: Task) -> bool:
        """Queue ``task``: on its worker (pinned, or its session's), else on the pool's queue.
        False when it queues behind other tasks waiting there: every worker is full (see
        :meth:`pump`), and a pump now would place nothing."""
        if task.pinned is not None:
            conn = self.workers.get(task.pinned)
            if conn is None:
                raise WorkerCrashed(f"worker {task.pinned} of pool {self.name!r} is not connected")
            conn.private.append(task)
            return True
        if task.session is not None:
            idx = self.sessions.get(task.session)
            if idx is None and self.workers:
                conn = min(self.workers.values(), key=lambda c: (len(c.sessions), len(c.inflight) + len(c.private)))
                idx = conn.index
                conn.sessions.add(task.session)
                self.sessions[task.session] = idx
            if idx is not None:
                self.workers[idx].private.append(task)
                return True
        behind = bool(self.pending)
        self.pending.append(task)
        return not behind

    def pump(self, touched: list[WorkerConn] | None = None) -> list[WorkerConn]:
        """Hand queued tasks to workers with room; the connections that got tasks (to
        send), added to ``touched`` when given.

        Afterwards a task waits in ``pending`` only while every worker is full, and
        that stays true until the next pump (the pool pumps after every change of a
        worker's load or depth): a task queued behind others needs no pump."""
        if touched is None:
            touched = []
        if not self.workers:
            return touched
        if self._rot_gen != self._gen:  # the workers changed: their rotations, computed once
            vals = list(self.workers.values())
            self._rotations = [vals[i:] + vals[:i] for i in range(len(vals))]
            self._rot_gen = self._gen
        self._rr = (self._rr + 1) % len(self._rotations)
        conns = self._rotations[self._rr]
        pending = self.pending
        progress = True
        while progress:
            progress = False
            for conn in conns:  # tasks bound to a worker (session affinity, probes)
                while conn.private and len(conn.inflight) < conn.depth and conn.budget != 0:
                    self._assign(conn, conn.private.popleft(), touched)
            while pending:
                conn, load = None, None
                for c in conns:  # the least loaded worker with room
                    n = len(c.inflight)
                    if n < c.depth and (load is None or n < load) and c.budget != 0:
                        conn, load = c, n
                        if n == 0:
                            break
                if conn is None:
                    break
                task = pending.popleft()
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
            self._on_deadline(task.deadline)
        if conn.budget is not None:
            conn.budget -= 1
        conn.inflight.append(task)
        conn.sendq.append(task)
        if conn not in touched:
            touched.append(conn)

    def answered(self, conn: WorkerConn, run_ns: int = 0) -> Task:
        """``conn``'s head task got its reply: take it off; the next one's clock starts.
        With the automatic depth, the worker's depth follows ``run_ns``, how long the
        worker says the batch ran (0: not a batch, or it failed)."""
        task = conn.inflight.popleft()
        if self.auto and run_ns > 0:
            # Measured in the worker: a gap between replies seen here would also count
            # the worker's idle waits and this process's own delays in reading them.
            conn.run_ns = run_ns if not conn.run_ns else conn.run_ns + (run_ns - conn.run_ns) // 8
            fits = QUEUE_NS // conn.run_ns if conn.run_ns > 0 else MAX_DEPTH
            depth = MAX_DEPTH if fits >= MAX_DEPTH else DEPTH if fits <= DEPTH else fits
            if depth != conn.depth:
                if self.workers.get(conn.index) is conn:
                    self.capacity += depth - conn.depth
                conn.depth = depth
        if conn.inflight:
            head = conn.inflight[0]
            if head.timeout:
                head.deadline = time.monotonic() + head.timeout
                self._on_deadline(head.deadline)
        return task

    def add(self, conn: WorkerConn) -> WorkerConn | None:
        """A worker connected; the connection it replaces, if that one is still here."""
        old = self.workers.get(conn.index)
        if old is not None:
            self.capacity -= old.depth
        conn.depth = self.depth
        self.workers[conn.index] = conn
        self.capacity += conn.depth
        self._gen += 1
        return old

    def retire(self, conn: WorkerConn) -> None:
        """Give ``conn`` no more tasks (it is dying or dead); what it holds stays on it."""
        if self.workers.get(conn.index) is conn:
            del self.workers[conn.index]
            self.capacity -= conn.depth
            self._gen += 1
        for sess in conn.sessions:
            if self.sessions.get(sess) == conn.index:
                del self.sessions[sess]

    def remove(self, conn: WorkerConn) -> tuple[Task | None, list[Task]]:
        """``conn`` is gone: (its head task, its pinned and its cancelled tasks), all to
        fail; the other tasks it held, which never started, go back to the front of the
        queue, in order."""
        self.retire(conn)
        conn.sendq.clear()  # every queued frame is also in inflight
        head = conn.inflight.popleft() if conn.inflight else None
        held = list(conn.inflight) + list(conn.private)
        conn.inflight.clear()
        conn.private.clear()
        for t in reversed([t for t in held if t.pinned is None and not t.cancelled]):
            self.pending.appendleft(t)
        return head, [t for t in held if t.pinned is not None or t.cancelled]

    def drop(self, owner) -> None:
        """Forget the queued tasks of ``owner`` (sent ones run to their end)."""
        self.pending = deque(t for t in self.pending if t.owner is not owner)
        for conn in self.workers.values():
            conn.private = deque(t for t in conn.private if t.owner is not owner)

    def take_queued(self, with_inflight: bool) -> list[Task]:
        """Every task not sent yet (and, ``with_inflight``, every sent one), taken."""
        victims = list(self.pending)
        self.pending.clear()
        for conn in self.workers.values():
            victims += list(conn.private)
            conn.private.clear()
            if with_inflight:
                victims += list(conn.inflight)
                conn.inflight.clear()
        return victims
