"""One running dispatch: the window, submission, ordering, policies, cancellation.

How a dispatch travels::

    items (lazy) ─▶ strategy.batches() ─▶ [window: at most max_in_flight batches
                                           taken from the input and not yet
                                           handed back to the caller]
                      │ pickle once per batch (SerializationError names the item)
                      ▼
                  Pool.submit ─▶ worker ─▶ reply ─▶ this dispatch's queue
                      ▲                              │
                      └── Retry (backoff timer) ◀────┤ failure → on_error
                                                     ▼
                          ordering: "preserve" (a finished batch waiting for an
                          earlier one still holds its window slot) or "as_completed"

The loop runs in the caller's thread (the fast path: no thread hand-off per
batch); while it waits, that thread also reads the pool's sockets (see
``slither._pool.receiver``).

A pipe's pool stage is fed by other threads (``wakeable``): its loop holds the
stage's turn except while it waits, and a thread putting new input in the
stage's inbox while it waits, with nothing else waiting for it, takes the turn
and submits the batches itself (:meth:`_Dispatch.wake`), so new input reaches
a worker without waking the stage's thread; the reply then wakes it, as any
reply does. A feeder with more input of its own waiting leaves the submitting
to the stage's thread: its own work is the pipe's critical path.
"""

from __future__ import annotations

import heapq
import queue
import threading
import time
import traceback
from collections.abc import Iterator

from slither import telemetry
from slither._dispatch.batch import Packer, _Batch, _RawChunk, bad_item, fixed_batches, wrapped
from slither._dispatch.options import check_dispatch, resolve_fn
from slither._dispatch.policies import Retry, apply_policy
from slither._dispatch.strategies import AutoBatch, FixedBatch
from slither._item import Context, Item, _Fresh, _make
from slither._pool import Task, new_ref
from slither.errors import BadBatchResult, BatchFailure, ConfigurationError, DispatchError, SerializationError, WorkerError

_CANCELLED = object()  # put on a dispatch's queue by cancel()
# A window that follows the pool holds at most this much of pickled batches (beyond its floor).
WINDOW_BYTES = 8 << 20
_START = ("slither", "dispatch", "batch", "start")
_STOP = ("slither", "dispatch", "batch", "stop")
_EXCEPTION = ("slither", "dispatch", "batch", "exception")


class _Window:
    """The state of one dispatch loop: what was taken, what is ready, what waits."""

    __slots__ = ("q", "batches", "ready", "retries", "next_out", "seq", "count", "exhausted", "taken", "idle")

    def __init__(self, q, batches):
        self.q = q
        self.batches = batches
        self.ready: dict[int, list[Item]] = {}  # seq -> results waiting for an earlier batch ("preserve")
        self.retries: list = []  # heap of (when, seq, batch)
        self.next_out = 0
        self.seq = 0
        self.count = 0  # batches taken and not handed back
        self.exhausted = False
        self.taken = 0  # input items taken (FixedBatch: the next batch's position in the input)
        self.idle = False  # a pipe stage's source had nothing right now


class _Dispatch:
    """One dispatch call. Validates everything in ``__init__`` (before any work)."""

    def __init__(
        self,
        items,
        fn=None,
        *,
        runtime=None,
        pool: str = "default",
        strategy=None,
        batch_size: int = 64,
        max_in_flight: int = 8,
        ordering: str = "preserve",
        on_error="halt",
        timeout: float | None = None,
        context: Context | None = None,
        affinity: str = "none",
        executor=None,
        progress: bool | None = None,
        total: int | None = None,
    ):
        self.strategy = check_dispatch(
            items, fn, pool, strategy, batch_size, max_in_flight, ordering, on_error, timeout, context, affinity, executor
        )
        self.executor = executor
        self.fn_key, self.fn_blob = (None, None) if executor is not None else resolve_fn(fn)
        self.pool = None
        if executor is None:
            if runtime is None:
                raise ConfigurationError("dispatch needs a runtime (or executor=): use slither.dispatch or Runtime.dispatch")
            self.pool = runtime.pool(pool)
            if self.pool.down is not None:
                raise self.pool.down_error()
        self.pool_name = pool
        self.items = items
        self.max_in_flight = max_in_flight
        self.preserve = ordering == "preserve"
        self.on_error = on_error
        self.timeout = timeout
        self.ctx = context if context is not None else Context()
        self.packer = Packer(self.fn_key, self.ctx)
        self.session = self.ctx.session_id if affinity == "session" else None
        self.progress = progress
        self.total = total if total is not None or not hasattr(items, "__len__") else len(items)
        self.in_flight = 0  # read by pipe stages: batches on workers right now
        self.cancelled = False
        self._q: queue.SimpleQueue | None = None  # the queue __iter__ waits on (cancel() wakes it)
        self.allow_idle = False  # pipe stages set it: their strategy may yield None for "no input yet"
        self.wakeable = False  # ...and this: new input calls wake(), so an idle wait may block
        self._turn: threading.Lock | None = None  # wakeable: held by whoever runs the loop's steps
        self._w: _Window | None = None  # wakeable: the window, for wake() to take input into
        self._woke_error: BaseException | None = None  # what a take in wake() raised, for the loop to raise
        # Set by the calls whose default window follows the pool (dispatch, map): the
        # window is then sized by _size_window, and never below this.
        self.window_floor: int | None = None
        self._frame_bytes = 0  # its largest batch's frame so far (window_floor)
        self._auto = self.strategy if type(self.strategy) is AutoBatch else None
        self._last_reply: dict = {}  # worker pid -> when its last reply came (AutoBatch)

    # -- one batch -------------------------------------------------------
    def _batch_meta(self, b: _Batch, **extra) -> dict:
        """Metadata of a dispatch batch event (built only when a handler listens)."""
        return {
            "pool": self.pool_name,
            "batch_ref": b.seq,
            "batch_size": len(b),
            "session_id": self.ctx.session_id,
            "attempt": b.attempts,
            "pipe": self.ctx.pipe,
            "stage": self.ctx.stage,
            **extra,
        }

    def _submit(self, b: _Batch, q: queue.SimpleQueue) -> None:
        b.attempts += 1
        b.t0 = time.monotonic_ns()
        if telemetry.has_handlers(_START):
            telemetry.emit(_START, {"system_time": time.time_ns()}, self._batch_meta(b))
        if self.executor is not None:
            q.put(self._execute(b))
            return
        ref = new_ref()
        try:
            chunks = self.packer.pack(b, ref)
        except SerializationError as exc:
            q.put((b, None, exc, None))
            return
        if self.window_floor is not None:
            n = len(chunks[0]) if len(chunks) == 1 else sum(map(len, chunks))  # bytes, byte memoryviews
            if n > self._frame_bytes:
                self._frame_bytes = n

        def done(task, result, error, pid, _b=b, _q=q):
            _q.put((_b, result, error, pid))

        # Positional: a keyword call costs about as much again as the rest of Task().
        self.pool.submit(Task(self.fn_key, self.fn_blob, chunks, ref, self.session, self.timeout, done, self, b.seq))

    def _execute(self, b: _Batch) -> tuple:
        """Run ``b`` on the executor, here: the message a worker's reply would have become."""
        try:
            out = self.executor.execute_batch(b.items, self.ctx)
            if not isinstance(out, list) or len(out) != len(b.items) or not all(isinstance(i, Item) for i in out):
                raise BadBatchResult(
                    f"executor {type(self.executor).__name__} returned {type(out).__name__} "
                    f"of {len(out) if hasattr(out, '__len__') else '?'}; expected a list of {len(b.items)} Items"
                )
            return (b, out, None, None)
        except BatchFailure as exc:
            return (b, None, exc, None)
        except Exception as exc:  # noqa: BLE001
            err = WorkerError(type(exc).__name__, str(exc), traceback.format_exc())
            err.__cause__ = exc  # the real frames, in this process
            return (b, None, err, None)

    def _finish_ok(self, b: _Batch, result, pid) -> list[Item]:
        if self.executor is not None:
            out = result
        elif b._items is None:
            # map() over the columns: about 30% less than a comprehension over zip() (no tuples, no frame)
            out = list(map(_Fresh, b.ids, result))
        else:
            out = [_make(Item, i.id, r, i.meta, i.route) for i, r in zip(b._items, result)]
        if isinstance(self.on_error, Retry):
            out = [i.put_meta({"attempts": b.attempts}) for i in out]
        self._finish_telemetry(b, pid)
        return out

    def _finish_telemetry(self, b: _Batch, pid) -> None:
        if telemetry.has_handlers(_STOP):
            telemetry.emit(_STOP, {"duration": time.monotonic_ns() - b.t0}, self._batch_meta(b, worker=pid))

    def _failed(self, b: _Batch, exc: BaseException, pid, retries: list) -> list[Item] | None:
        """Apply the policy. Returns replacement items, None when retried; raises for halt."""
        if telemetry.has_handlers(_EXCEPTION):
            telemetry.emit(_EXCEPTION, {"duration": time.monotonic_ns() - b.t0}, self._batch_meta(b, worker=pid, error=exc))
        return apply_policy(self.on_error, b, exc, retries)

    def _observe(self, b: _Batch, pid) -> None:
        """Tell the AutoBatch how long ``b`` ran: from when its worker could start it."""
        now = time.monotonic_ns()
        began = max(b.t0, self._last_reply.get(pid, 0))
        self._last_reply[pid] = now
        self._auto.observe((now - began) / 1e9)

    def _unloadable(self, b: _Batch, exc: SerializationError, q) -> SerializationError | None:
        """The worker could not unpickle ``b``: send it again by value (None), unless it
        went so already; then the error names the item (it cannot succeed: not retried)."""
        if not b.by_value:
            self.packer.by_value = True
            b.attempts -= 1  # not an attempt of the policy's: the batch never ran
            self._submit(b, q)
            return None
        if exc.unloadable:
            k, name = exc.unloadable[0]
            return bad_item(b, k, f"could not be unpickled in the worker: class {name} cannot be imported there")
        return exc

    def cancel(self) -> None:
        """Stop this dispatch from any thread: nothing more is taken from the input or
        handed out, queued batches are dropped and the workers running its batches are
        killed (and replaced), as Ctrl-C does."""
        self.cancelled = True
        if self.pool is not None:
            self.pool.cancel(self, kill_running=True)
        q = self._q
        if q is not None:
            q.put(_CANCELLED)
            if self.pool is not None:
                self.pool.wake()  # a thread reading the pool's sockets looks at its queue

    def wake(self, take: bool = True) -> None:
        """New input for a pipe stage. While the stage waits, the calling thread takes
        the input and submits its batches itself (with ``take``: it has nothing else
        waiting for it); otherwise the stage's thread is told to take it at once."""
        q = self._q
        if q is None:
            return
        turn = self._turn if take else None
        if turn is not None and turn.acquire(blocking=False):
            try:
                w = self._w
                if w is None or self.cancelled:
                    return
                try:
                    self._take(w)
                except BaseException as exc:  # noqa: BLE001 - raised by the loop, in the stage's thread
                    self._woke_error = exc
                if not w.exhausted and self._woke_error is None:
                    return  # its replies wake the stage, as any reply does
            finally:
                turn.release()
        q.put(None)
        if self.pool is not None:
            self.pool.wake()  # a thread reading the pool's sockets looks at its queue

    # -- the loop ----------------------------------------------------------
    def __iter__(self) -> Iterator[list[Item]]:
        """Yield each batch's result Items (a list per batch), as the ordering allows."""
        self._q = q = queue.SimpleQueue()
        if type(self.strategy) is FixedBatch:
            source = fixed_batches(self.items, self.strategy.size)
        elif type(self.strategy) is AutoBatch:
            source = fixed_batches(self.items, 0, self.strategy)
        else:
            source = iter(self.strategy.batches(wrapped(self.items)))
        w = _Window(q, source)
        if self.wakeable:
            self._turn = threading.Lock()
            self._turn.acquire()
            self._w = w
        interrupted = False
        try:
            while not self.cancelled:
                if self.preserve:
                    while w.next_out in w.ready:  # in input order, as far as it is complete
                        out = w.ready.pop(w.next_out)
                        w.next_out += 1
                        w.count -= 1
                        yield out
                self._take(w)
                if w.exhausted and w.count == 0:
                    return
                if w.count - len(w.ready) == 0 and not w.retries and not (w.idle and self.wakeable):
                    continue  # nothing in flight: go take more input
                first = self._next_message(w)
                if first is None or first is _CANCELLED or self.cancelled:
                    continue
                # The other replies already here are settled in the same turn: one wait,
                # one take for all of them.
                for msg in (first,) if self.pool is None else (first, *self.pool.ready(w.q)):
                    if msg is None or msg is _CANCELLED:
                        continue
                    if self.cancelled:
                        break
                    out = self._settle(w, msg)
                    if out is None:
                        continue
                    if self.preserve:
                        w.ready[msg[0].seq] = out
                    else:
                        w.count -= 1
                        yield out
        except (KeyboardInterrupt, SystemExit):
            interrupted = True
            raise
        finally:
            if self._turn is not None:
                self._w = None
                self._turn.release()
            if self.pool is not None:
                self.pool.cancel(self, kill_running=interrupted)

    def _take(self, w: _Window) -> None:
        """Fill the window from the input, submitting each batch taken."""
        w.idle = False
        follows = self.window_floor is not None and self.pool is not None
        if follows:
            self._size_window()
        fixed = type(self.strategy) in (FixedBatch, AutoBatch)
        while not w.exhausted and w.count < self.max_in_flight:
            self.in_flight = w.count - len(w.ready)
            try:
                items = next(w.batches)
            except StopIteration:
                w.exhausted = True
                return
            if type(items) is _RawChunk:
                b = _Batch(w.seq, None, items.ids, items.payloads)
            else:
                if items is None and self.allow_idle:
                    w.idle = True  # a pipe stage's source has nothing right now: deliver results meanwhile
                    return
                if not isinstance(items, list) or not items:
                    raise ConfigurationError(
                        f"strategy {type(self.strategy).__name__} produced {items!r} as batch {w.seq}; "
                        "expected a non-empty list of Items"
                    )
                b = _Batch(w.seq, items)
            if fixed:
                b.start = w.taken
                w.taken += len(b)
            w.seq += 1
            w.count += 1
            self._submit(b, w.q)
            if follows and w.seq == 1:
                self._size_window()  # its first frame is known now

    def _size_window(self) -> None:
        """The window of a dispatch that follows the pool: twice the sum of the workers'
        depths (with "preserve", the batches one worker finished while it waits for
        another's earlier ones hold window slots too, and a window only as large as the
        workers' queues left them half full). No more than WINDOW_BYTES of frames as large
        as its largest, though (a depth follows the time a batch runs, not its size), and
        the floor until a frame is known."""
        room = WINDOW_BYTES // self._frame_bytes if self._frame_bytes else 0
        self.max_in_flight = max(self.window_floor, min(2 * self.pool.scheduler.capacity, room))

    def _next_message(self, w: _Window):
        """The next reply for this dispatch (None after a slice of waiting), and the retries now due."""
        wait = max(0.0, w.retries[0][0] - time.monotonic()) if w.retries else None
        if w.idle and not self.wakeable:
            wait = 0.0
        # Sliced waits keep the caller responsive to signals (Ctrl-C) whatever the platform; an
        # idle pipe stage looks at its pipe's cancel as often as its inbox used to be polled.
        timeout = (0.1 if w.idle else 0.5) if wait is None else min(wait, 0.5)
        turn = self._turn
        if turn is not None:
            turn.release()  # new input may be taken and submitted by its feeder meanwhile (wake)
        try:
            msg = w.q.get(timeout=timeout) if self.pool is None else self.pool.wait(w.q, timeout)
        except queue.Empty:
            msg = None
        finally:
            if turn is not None:
                turn.acquire()
        if self._woke_error is not None:
            err, self._woke_error = self._woke_error, None
            raise err
        now = time.monotonic()
        while w.retries and w.retries[0][0] <= now:
            self._submit(heapq.heappop(w.retries)[2], w.q)
        return msg

    def _settle(self, w: _Window, msg) -> list[Item] | None:
        """A batch's outcome as the Items to hand out; None when it goes round again."""
        b, result, error, pid = msg
        if error is not None and getattr(error, "unloadable", None) is not None:
            error = self._unloadable(b, error, w.q)
            if error is None:
                return None
        if error is None:
            if self._auto is not None:
                self._observe(b, pid)
            return self._finish_ok(b, result, pid)
        try:
            return self._failed(b, error, pid, w.retries)
        except DispatchError as exc:
            exc.partial_results = [i for k in sorted(w.ready) for i in w.ready[k]]
            raise
